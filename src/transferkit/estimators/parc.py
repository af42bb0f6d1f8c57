"""PARC: Pairwise Annotation Representation Comparison.

Bolya, Mittapalli, Hoffman, "Scalable Diverse Model Selection for Accessible Transfer Learning"
(NeurIPS 2021). Reference: dbolya/parc ``methods.py``, ``PARC(n_dims=32)``:
randomized PCA to 32 dims (``random_state=1919, iterated_power=1``), ``StandardScaler``, then
100 x the Spearman correlation between the upper triangles of the feature RDM
``1 - corrcoef(features)`` and the label RDM ``1 - corrcoef(one_hot(y))``.

Speed: instead of ranking both ~N^2/2 triangles, the label RDM is grouped by its few distinct
values (one tie group per value) and only the feature triangle is sorted once; the Spearman
correlation is then the Pearson correlation of the two average-rank vectors, assembled from the
rank sums of the feature entries within each label group (exact average-rank tie handling, as
``scipy.stats.rankdata``).

Faithfulness note: upstream's label RDM is *not* two-valued. ``np.corrcoef`` of identical one-hot
rows returns 1 or 1 - 2^-53 depending on BLAS rounding (on the class, and on where the pair falls
in the blocked, threaded matrix product), so the "same class" pairs split into several tie groups.
Against the mathematically intended two-valued RDM this moves PARC by up to ~0.4 %, and between
BLAS thread counts upstream's own value moves by up to ~2e-5 (relative). With
``exact_label_ties=False`` (default) we build the label RDM exactly as upstream does, with 2 BLAS
threads as when the reference values were produced; that reproduces them (rtol 1e-6) on this
OpenBLAS build. ``exact_label_ties=True`` uses the two-valued RDM (same class / different class)
and is independent of floating-point details.

Upstream raises for fewer than ``n_dims`` features or samples; we clip the PCA size with a
warning.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from ._base import TransferabilityEstimator, register_estimator
from ._validation import CheckedInputs, safe_n_components

__all__ = ["PARC", "parc_score", "spearman_vs_grouped"]


def _upper(A: np.ndarray) -> np.ndarray:
    """Strict upper triangle, row-major (the order of ``np.triu_indices(n, 1)``)."""
    return A[np.triu(np.ones(A.shape, dtype=bool), 1)]


def _upper_blocks(n: int):
    """Row blocks (i0, i1, offset) covering the strict upper triangle in row-major order."""
    rows = max(1, (1 << 22) // max(n, 1))
    offset = 0
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        yield i0, i1, offset
        offset += sum(n - 1 - i for i in range(i0, i1))


def _sum_sq_avg_ranks(M: int, tie_sizes: np.ndarray) -> float:
    """Sum of squared average ranks of M values with the given tie-group sizes."""
    t = tie_sizes.astype(np.float64)
    return M * (M + 1.0) * (2.0 * M + 1.0) / 6.0 - float(np.sum(t**3 - t)) / 12.0


def spearman_vs_grouped(values: np.ndarray, group: np.ndarray, n_groups: int, *,
                        overwrite_values: bool = False) -> float:
    """Spearman correlation between ``values`` and a variable that is constant within groups.

    ``group[i]`` in 0..n_groups-1 identifies the tie group of entry i of the second variable,
    groups numbered in increasing order of its value. Exact average-rank (``rankdata``) ties
    on both sides. With ``overwrite_values`` the array is sorted in place (saves a copy).
    """
    M = values.size
    sizes = np.bincount(group, minlength=n_groups)
    nonempty = sizes > 0
    # average rank of each label group
    start = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    r2 = start + (sizes + 1) / 2.0

    # rank sums of the feature entries inside every group but the largest (that one is the rest)
    big = int(np.argmax(sizes))
    members = {int(g): np.sort(values[group == g]) for g in np.flatnonzero(nonempty) if g != big}
    if overwrite_values:
        values.sort()
        srt = values
    else:
        srt = np.sort(values)
    sums = np.zeros(n_groups)
    for g, v in members.items():
        lo = np.searchsorted(srt, v, side="left")
        hi = np.searchsorted(srt, v, side="right")
        sums[g] = float(np.sum(lo + hi + 1, dtype=np.int64)) / 2.0  # avg rank = (lo+hi+1)/2
    sums[big] = M * (M + 1) / 2.0 - sums.sum()

    # tie groups of the feature values: runs of equal neighbours in the sorted array
    eq = np.flatnonzero(srt[1:] == srt[:-1])  # i where srt[i] == srt[i+1]; usually few
    if eq.size:
        starts_run = np.concatenate(([0], np.flatnonzero(np.diff(eq) != 1) + 1))
        ties1 = np.diff(np.concatenate((starts_run, [eq.size]))) + 1
    else:
        ties1 = np.zeros(0, dtype=np.int64)

    mean = (M + 1) / 2.0
    cov = float(np.dot(r2[nonempty], sums[nonempty])) - M * mean * mean
    var1 = _sum_sq_avg_ranks(M, ties1) - M * mean * mean
    var2 = _sum_sq_avg_ranks(M, sizes[nonempty]) - M * mean * mean
    if var1 <= 0 or var2 <= 0:
        return float("nan")  # one side is constant: the rank correlation is undefined
    return cov / np.sqrt(var1 * var2)


def _label_groups(y: np.ndarray, C: int, exact_ties: bool) -> tuple[np.ndarray, int]:
    """Tie-group id (ordered by RDM value) of every upper-triangle pair of the label RDM."""
    if exact_ties:
        return _upper(y[:, None] != y[None, :]).astype(np.int64), 2
    # Exactly upstream's RDM (1 - np.corrcoef of the one-hot rows, same floating-point
    # operations). Its rounding pattern depends on how BLAS blocks the product and splits it
    # between threads (up to ~2e-5 in the final score); the reference values were computed
    # with 2 BLAS threads, so we fix that count to make the result reproducible.
    X = np.eye(C)[y]
    X -= X.mean(axis=1)[:, None]
    with threadpool_limits(limits=2, user_api="blas"):
        c = np.dot(X, X.T.conj())  # one product, as np.cov: its rounding depends on blocking
    c *= np.true_divide(1, C - 1)
    std = np.sqrt(np.diag(c))
    n = c.shape[0]
    # The RDM is 1 - (a correlation clipped to [-1, 1]): same-class values are multiples of
    # 2^-53 in [0, 0.5), different-class ones 1 + multiples of 2^-52 in [1, 2], so v * 2^53
    # is an exact, order-preserving integer key for every value.
    key = np.empty(n * (n - 1) // 2, dtype=np.int64)
    for i0, i1, off in _upper_blocks(n):
        blk = c[i0:i1, i0:] / std[i0:i1, None]
        blk /= std[None, i0:]
        v = blk[np.triu(np.ones(blk.shape, dtype=bool), 1)]
        np.clip(v, -1.0, 1.0, out=v)
        np.subtract(1.0, v, out=v)
        v *= 2.0**53
        key[off:off + v.size] = v
    del c
    far = key >= 2**52
    near_max = int(key.max(where=~far, initial=-1))
    far_min = int(key.min(where=far, initial=2**62))
    if far_min < 2**62:  # far keys right after the near ones
        np.subtract(key, far_min - near_max - 1, out=key, where=far)
    span = int(key.max()) + 1
    if span <= 1_000_000:
        return key, span
    # not expected for a correlation RDM; sort-based grouping
    _, group = np.unique(key, return_inverse=True)
    return group.astype(np.int64).reshape(-1), int(group.max()) + 1


def _feature_rdm_upper(feats: np.ndarray) -> np.ndarray:
    """Upper triangle of ``1 - np.corrcoef(feats)`` (rows = samples), computed block by block."""
    Zc = feats - feats.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.einsum("ij,ij->i", Zc, Zc))
    Zn = np.divide(Zc, norms[:, None], out=np.zeros_like(Zc), where=norms[:, None] > 0)
    n = Zn.shape[0]
    out = np.empty(n * (n - 1) // 2)
    for i0, i1, off in _upper_blocks(n):
        blk = Zn[i0:i1] @ Zn[i0:].T
        vals = blk[np.triu(np.ones(blk.shape, dtype=bool), 1)]
        out[off:off + vals.size] = vals
    np.clip(out, -1.0, 1.0, out=out)
    np.subtract(1.0, out, out=out)
    return out


def parc_score(X: np.ndarray, y: np.ndarray, *, n_dims: int = 32, random_state: int = 1919,
               exact_label_ties: bool = False) -> float:
    """PARC score (x100) of features ``X`` (N, D) for labels ``y`` in 0..C-1."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    C = int(y.max()) + 1
    k = safe_n_components(n_dims, X.shape[0], X.shape[1], "parc")
    from sklearn.decomposition import PCA  # imported here: keeps `import transferkit` light
    from sklearn.preprocessing import StandardScaler

    feats = PCA(n_components=k, svd_solver="randomized", random_state=random_state,
                iterated_power=1).fit_transform(X)
    feats = StandardScaler().fit_transform(feats)
    if feats.shape[1] < 2 or X.shape[0] < 3:
        raise ValueError(
            f"parc needs at least 3 samples and 2 feature dimensions (correlations between "
            f"samples' feature vectors); got N={X.shape[0]}, D={X.shape[1]}")
    rdm1 = _feature_rdm_upper(feats)
    group, n_groups = _label_groups(y, C, exact_label_ties)
    value = spearman_vs_grouped(rdm1, group, n_groups, overwrite_values=True)
    if not np.isfinite(value):
        raise ValueError("parc: the feature or label dissimilarities are all equal (e.g. "
                         "duplicated samples or one sample per class), so their rank "
                         "correlation is undefined")
    return 100.0 * value


@register_estimator
class PARC(TransferabilityEstimator):
    """PARC (Bolya et al., NeurIPS 2021) as in dbolya/parc ``PARC(n_dims=32)``."""

    name = "parc"
    summary = "Spearman correlation of feature and label dissimilarity matrices (Bolya et al. 2021)"
    reference = "dbolya/parc: methods.py, PARC(n_dims=32); NeurIPS 2021"
    components = ()

    @classmethod
    def default_params(cls) -> dict:
        # random_state of the PCA is fixed upstream (1919), independent of the call's seed
        return {"n_dims": 32, "pca_random_state": 1919, "exact_label_ties": False}

    def _score(self, data: CheckedInputs, random_state: int) -> dict[str, float]:
        p = self.params
        return {"score": parc_score(data.X, data.y, n_dims=p["n_dims"],
                                    random_state=p["pca_random_state"],
                                    exact_label_ties=p["exact_label_ties"])}
