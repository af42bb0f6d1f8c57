"""NCTI: Neural-Collapse-informed Transferability Index (Wang et al., ICCV 2023).

Our own implementation of what BUserName/NCTI computes (read at commit b18d395, ``metrics.py``,
``NCTI_Score``, lines 531-567; run by ``evaluate_metric_group{1,2}_cpu.py``):

1. ``PCA(n_components=64)`` with scikit-learn's automatic solver choice (randomized SVD for most
   shapes, drawn from NumPy's global RNG, which the reference seeded with 0 - the same stream as
   ``random_state=0`` here).  Upstream crashes when min(N, D) < 64; we clip with
   `safe_n_components` and warn.
2. Linear discriminant analysis of the PCA features with the shrinkage
   ``s = max(exp(-pca.explained_variance_[:32].sum()), 1e-10)`` (upstream line 537;
   `upstream_shrinkage`):

   * ``s > 1e-10``: ``LinearDiscriminantAnalysis(solver='eigen', shrinkage=s)`` (line 546):
     within-class scatter ``Sw`` = prior-weighted class covariances, Sw and St shrunk towards
     (trace / d) I, generalized eigenproblem ``eigh(St - Sw, Sw)``, projection onto the top
     ``min(C - 1, d)`` discriminant directions (our code, same numbers);
   * ``s`` at the floor (``if temp == 1e-10``, lines 542-543): ``LinearDiscriminantAnalysis(solver='svd')``
     - no shrinkage at all; scikit-learn drops within-class directions whose standardised
     singular value is below its ``tol`` (1e-4), so a singular ``Sw`` is handled without any
     regularisation (we call scikit-learn for this path).  This is the usual case for real
     features (the top-32 variances sum to far more than 23 = -ln 1e-10).

   ``s`` is negligible for features with large variances and matters for small-variance,
   ill-conditioned ones (1e-3 .. 1e-2 on the digits inputs).
3. Components (upstream lines 548-567)
   * ``ncti_seli`` (simplex-encoded-label-interpolation geometry): nuclear norm of the centred
     LDA projection ``Z = X_pca @ W``;
   * ``ncti_ncc`` (nearest-centre classifier): mean LDA posterior of the true class;
   * ``ncti_vc`` (within-class variability collapse, lower is better):
     ``log(sum_c ||P_c||_*)`` with ``P_c`` the posterior rows of class c.

The published NCTI score is zoo-level: ``minmax(ncc) + minmax(seli) - minmax(vc)`` across
models; a single model's `score` is ``ncti_seli``.  ``ncti_shrinkage`` reports the shrinkage
applied (0.0 on the svd path).

Speed: the PCA step reproduces scikit-learn's randomized SVD (same random draws, same subspace
``X (X^T X)^q Omega``, same final projection) but runs the power iterations on the small Gram
matrix instead of the N x D data, which is several times faster and equal to rounding; exact
solvers use the eigendecomposition of the smaller Gram matrix.  Everything downstream is exactly
invariant to the sign/rotation freedom of the PCA basis.

Departures: with fewer than 64 PCA dimensions (upstream crashes) the rule sums the first
min(32, k); ``shrinkage`` may also be a fixed number in [0, 1] (eigen path; 0 restricts the LDA to
the range of ``Sw``) instead of ``"ncti"`` (upstream's rule).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import linalg
from threadpoolctl import threadpool_limits

from ._base import TransferabilityEstimator, minmax, register_estimator
from ._validation import CheckedInputs, safe_n_components
from .etran import class_means

__all__ = ["NCTI", "ncti_components", "pca_transform", "upstream_shrinkage"]


# -- PCA, equal to sklearn.decomposition.PCA(n, random_state=rs).fit_transform up to column signs
def _sklearn_auto_solver(n_samples: int, n_features: int, n_components: int) -> str:
    """scikit-learn's (>= 1.5) automatic choice of PCA solver for dense input."""
    if n_features <= 1_000 and n_samples >= 10 * n_features:
        return "covariance_eigh"
    if max(n_samples, n_features) <= 500:
        return "full"
    if 1 <= n_components < 0.8 * min(n_samples, n_features):
        return "randomized"
    return "full"


def _gram(A: np.ndarray) -> np.ndarray:
    """A.T @ A (numpy dispatches this to BLAS syrk)."""
    return A.T @ A


def _centred_gram(X: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """(X - mean).T @ (X - mean) without the centred copy when the mean is not dominant."""
    n = X.shape[0]
    G = X.T @ X
    G -= n * np.outer(mean, mean)
    var = np.diag(G) / n
    if np.any(mean**2 > 1e6 * np.maximum(var, np.finfo(float).tiny)):  # cancellation: be exact
        Xc = X - mean
        G = Xc.T @ Xc
    return G


def _exact_pca(Xc: np.ndarray, k: int) -> np.ndarray | None:
    """Top-k principal scores of centred data, from the smaller Gram matrix; None when some of
    the k directions are numerical noise (rank < k), whose values depend on the solver."""
    n, d = Xc.shape
    if d <= n:
        w, V = linalg.eigh(_gram(Xc), subset_by_index=[d - k, d - 1])
        scores = Xc @ V[:, ::-1]
    else:
        w, U = linalg.eigh(_gram(Xc.T), subset_by_index=[n - k, n - 1])
        scores = U[:, ::-1] * np.sqrt(np.clip(w[::-1], 0.0, None))
    if w[0] <= 1e-10 * max(w[-1], 0.0):
        return None
    return scores


def _randomized_pca(X: np.ndarray, mean: np.ndarray, k: int, random_state: int) -> np.ndarray | None:
    """scikit-learn's randomized PCA scores (n_oversamples=10, n_iter='auto'), Gram-based.

    sklearn forms Q = orth(M (M^T M)^q Omega), B = Q^T M and returns the top-k singular triplets
    of B, with M the centred data (or its transpose when N < D).  The column space does not
    depend on the normalisation between power iterations, so we iterate on the small Gram
    matrix M^T M.  Returns None when the sketch is (numerically) rank deficient; the caller then
    falls back to scikit-learn itself.
    """
    n, d = X.shape
    size = k + 10
    q = 7 if k < 0.1 * min(n, d) else 4
    transpose = n < d
    omega = np.random.RandomState(random_state).normal(size=(n if transpose else d, size))
    if transpose:
        Xc = X - mean
        G = _gram(Xc.T)  # M = Xc^T: M^T M = Xc Xc^T (n x n)
    else:
        G = _centred_gram(X, mean)  # M = Xc: M^T M (d x d)
    W = omega
    for _ in range(q):
        W = linalg.lu(G @ W, permute_l=True, check_finite=False)[0]
    GW = G @ W
    try:
        R = linalg.cholesky(W.T @ GW, lower=False)  # (M W)^T (M W) = R^T R, Q = M W R^-1
    except linalg.LinAlgError:
        return None
    diag = np.abs(np.diag(R))
    if not np.all(np.isfinite(R)) or diag.min() <= 1e-7 * diag.max():
        return None
    Bt = linalg.solve_triangular(R, GW.T, trans="T", lower=False).T  # B^T = M^T Q
    Ub, s, _ = linalg.svd(Bt.T, full_matrices=False)
    if transpose:  # scores = B^T Ub_k
        return Bt @ Ub[:, :k]
    # scores = Q Ub_k s_k = Xc W R^-1 Ub_k s_k
    T = W @ linalg.solve_triangular(R, Ub[:, :k] * s[:k], lower=False)
    return X @ T - mean @ T


def pca_transform(X: np.ndarray, n_components: int, random_state: int = 0) -> np.ndarray:
    """``PCA(n_components, random_state=random_state).fit_transform(X)`` up to column signs."""
    mean = X.mean(axis=0)
    n, d = X.shape
    if _sklearn_auto_solver(n, d, n_components) == "randomized":
        Z = _randomized_pca(X, mean, n_components, random_state)
        if Z is not None and np.all(np.isfinite(Z)):
            return Z
        from sklearn.decomposition import PCA  # rank-deficient sketch: defer to sklearn

        return PCA(n_components, random_state=random_state).fit_transform(X)
    Z = _exact_pca(X - mean, n_components)
    if Z is None:  # rank-deficient: the noise directions are scikit-learn's own
        from sklearn.decomposition import PCA

        return PCA(n_components, random_state=random_state).fit_transform(X)
    return Z


_SHRINKAGE_TOP = 32  # upstream sums the first 32 of the 64 explained variances
_SHRINKAGE_FLOOR = 1e-10  # upstream: max(exp(-...), 1e-10); at the floor it uses solver='svd'

def _numerical_rank(w: np.ndarray) -> int:
    """Rank of a symmetric PSD matrix from its ascending eigenvalues ``w``."""
    return int(np.sum(w > max(w[-1], 0.0) * 1e-12 * w.size))


# -- LDA (scikit-learn LinearDiscriminantAnalysis semantics) -------------------------------------
def _lda(X: np.ndarray, y: np.ndarray, C: int, shrinkage: float):
    """Discriminant directions (d x r, Sw-orthonormal, most discriminative first), means, priors."""
    n, d = X.shape
    means, counts = class_means(X, y, C)
    priors = counts / n
    xbar = priors @ means
    Sw = _gram(X - means[y]) / n  # = sum_c pi_c cov_c (biased), as sklearn
    Mc = (means - xbar) * np.sqrt(priors)[:, None]
    Sb_eff = Mc.T @ Mc  # = St - Sw
    if shrinkage > 0.0:
        rank = _numerical_rank(linalg.eigvalsh(Sw))
        if rank < d:
            warnings.warn(
                f"ncti: within-class scatter is singular after PCA (rank {rank} of {d}); the "
                f"shrinkage (s = {shrinkage:.3g}) regularises it, which makes the components "
                "depend on the feature scale (tiny s: LDA restricted to the range)",
                UserWarning,
                stacklevel=4,
            )
        # sklearn shrinks every class covariance, and St, towards (trace / d) * I
        St = Sw + Sb_eff
        Sw = (1.0 - shrinkage) * Sw + shrinkage * (np.trace(Sw) / d) * np.eye(d)
        St = (1.0 - shrinkage) * St + shrinkage * (np.trace(St) / d) * np.eye(d)
        Sb_eff = St - Sw
    # whiten with Sw (restricted to its numerical range when singular), then diagonalise Sb
    w, U = linalg.eigh(Sw)
    keep = np.arange(d) >= d - _numerical_rank(w)
    if not keep.all() and shrinkage == 0.0:
        warnings.warn(
            f"ncti: within-class scatter is singular after PCA (rank {int(keep.sum())} of {d}); "
            "LDA is restricted to its range",
            UserWarning,
            stacklevel=4,
        )
    A = U[:, keep] / np.sqrt(w[keep])
    lam, V = linalg.eigh(A.T @ Sb_eff @ A)
    order = np.argsort(lam)[::-1]
    scalings = A @ V[:, order]
    return scalings, means, priors


def _sum_classwise_nuclear_norms(P: np.ndarray, y: np.ndarray, C: int) -> float:
    """sum_c ||P[y == c]||_* (upstream: ``np.linalg.norm(c_pred, ord='nuc')`` per class),
    batched over classes: blocks zero-padded to equal height (zero rows leave the singular values
    unchanged), one batched SVD. Exact SVD, not the Gram matrix: near one-hot posteriors have
    tiny singular values whose square roots would lose precision (~1e-9 relative on vc)."""
    counts = np.bincount(y, minlength=C)
    order = np.argsort(y, kind="stable")
    rank_in_class = np.arange(len(y)) - np.repeat(np.cumsum(counts) - counts, counts)
    blocks = np.zeros((C, int(counts.max()), P.shape[1]))
    blocks[y[order], rank_in_class] = P[order]
    return float(np.sum(np.linalg.svd(blocks, compute_uv=False)))


def upstream_shrinkage(Xp: np.ndarray, n_top: int = _SHRINKAGE_TOP) -> float:
    """NCTI's LDA shrinkage ``max(exp(-sum of the top n_top PCA explained variances), 1e-10)``.

    BUserName/NCTI ``metrics.py`` ``NCTI_Score`` line 537:
    ``max(np.exp(-pca.explained_variance_[:32].sum()), 1e-10)``; scikit-learn's
    ``explained_variance_`` is the variance (ddof 1) of each PCA score column.  ``Xp`` holds the
    centred PCA scores, most variant first.  At the floor upstream switches to the svd solver
    (no shrinkage; see `ncti_components`).
    """
    if n_top < 1:
        raise ValueError(f"ncti: n_top must be >= 1; got {n_top!r}")
    n = Xp.shape[0]
    top = Xp[:, : min(n_top, Xp.shape[1])]
    return max(float(np.exp(-np.einsum("ij,ij->", top, top) / max(n - 1, 1))), _SHRINKAGE_FLOOR)


def _lda_svd(X: np.ndarray, y: np.ndarray, C: int) -> tuple[np.ndarray, np.ndarray]:
    """Upstream's ``LinearDiscriminantAnalysis(solver='svd')`` path: (projection, posteriors)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    d = X.shape[1]
    means, _ = class_means(X, y, C)
    rank = _numerical_rank(linalg.eigvalsh(_gram(X - means[y])))
    if rank < d:
        warnings.warn(
            f"ncti: within-class scatter is singular after PCA (rank {rank} of {d}); as upstream "
            "(svd solver, no shrinkage) the LDA drops the null directions",
            UserWarning,
            stacklevel=4,
        )
    lda = LinearDiscriminantAnalysis(solver="svd").fit(X, y)
    return lda.transform(X), lda.predict_proba(X)


def _nuclear_norm_centred(Z: np.ndarray) -> float:
    Z = Z - Z.mean(axis=0, keepdims=True)
    return float(np.sum(np.sqrt(np.clip(linalg.eigvalsh(_gram(Z)), 0.0, None))))


def ncti_components(
    X: np.ndarray, y: np.ndarray, n_classes: int, shrinkage: float = 0.0, solver: str = "eigen"
) -> dict[str, float]:
    """(seli, ncc, vc) of PCA features X (N x d) - steps 2-3 of the module docstring.

    ``solver="svd"``: scikit-learn's svd solver, no shrinkage (upstream at the shrinkage floor);
    ``"eigen"``: the shrunk eigen solver with ``shrinkage``.
    """
    if solver == "svd":
        Z, P = _lda_svd(X, y, n_classes)
        n = X.shape[0]
        total = _sum_classwise_nuclear_norms(P, y, n_classes)
        return {"ncti_seli": _nuclear_norm_centred(Z),
                "ncti_ncc": float(np.mean(P[np.arange(n), y])),
                "ncti_vc": float(np.log(total))}
    if solver != "eigen":
        raise ValueError(f"ncti: solver must be 'eigen' or 'svd'; got {solver!r}")
    n, d = X.shape
    C = n_classes
    scalings, means, priors = _lda(X, y, C, shrinkage)
    r = min(C - 1, d, scalings.shape[1])
    W = scalings[:, :r]
    # ||X W||_* from the r x r Gram matrix: W^T Sw W = I makes it >= N*I without shrinkage, so
    # the square roots lose no precision (X is centred: the Gram is N * W^T St W)
    gram_z = W.T @ _gram(X) @ W
    seli = float(np.sum(np.sqrt(np.clip(linalg.eigvalsh(gram_z), 0.0, None))))
    # posteriors: softmax(X Sw^+ mu_c - mu_c Sw^+ mu_c / 2 + log pi_c)  (sklearn eigen solver)
    coef = (means @ scalings) @ scalings.T
    logits = X @ coef.T
    logits += -0.5 * np.einsum("cd,cd->c", means, coef) + np.log(priors)
    logits -= logits.max(axis=1, keepdims=True)
    P = np.exp(logits)
    P /= P.sum(axis=1, keepdims=True)
    ncc = float(np.mean(P[np.arange(n), y]))
    total = _sum_classwise_nuclear_norms(P, y, C)
    return {"ncti_seli": seli, "ncti_ncc": ncc, "ncti_vc": float(np.log(total))}


@register_estimator
class NCTI(TransferabilityEstimator):
    """NCTI (SELI, NCC and VC components; zoo-level min-max combination)."""

    name = "ncti"
    summary = "NCTI: neural-collapse geometry (SELI nuclear norm, NCC posterior, VC) after PCA+LDA"
    reference = (
        "BUserName/NCTI: NCTI_Score; Wang et al., How Far Pre-trained Models Are from Neural "
        "Collapse on the Target Dataset Informs their Transferability, ICCV 2023"
    )
    needs_features = True
    needs_source_probs = False
    zoo_level = True
    components = ("ncti_seli", "ncti_ncc", "ncti_vc", "ncti_shrinkage")
    min_per_class = 1

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        # shrinkage "ncti": upstream's rule (`upstream_shrinkage`); a number in [0, 1]: fixed
        return {"n_components": 64, "shrinkage": "ncti"}

    def _score(self, data: CheckedInputs, random_state: int) -> dict[str, float]:
        shrinkage = self.params["shrinkage"]
        if shrinkage != "ncti":
            if isinstance(shrinkage, (str, bool)) or not isinstance(
                    shrinkage, (int, float, np.floating, np.integer)) or not (
                    0.0 <= float(shrinkage) <= 1.0):
                raise ValueError(f"ncti: shrinkage must be 'ncti' (upstream's rule) or a number "
                                 f"in [0, 1]; got {shrinkage!r}")
            shrinkage = float(shrinkage) + 0.0  # -0.0 -> 0.0
        k = safe_n_components(
            int(self.params["n_components"]), data.n_samples, data.n_features, "ncti"
        )
        # one BLAS thread: the Gram products are small and threads only contend (2x slower here)
        with threadpool_limits(limits=1, user_api="blas"):
            Xp = pca_transform(data.X, k, random_state)
            solver = "eigen"
            if shrinkage == "ncti":
                shrinkage = upstream_shrinkage(Xp)
                if shrinkage == _SHRINKAGE_FLOOR:  # upstream: `if temp == 1e-10: solver='svd'`
                    solver, shrinkage = "svd", 0.0
            out = ncti_components(Xp, data.y, data.n_classes, shrinkage, solver)
        return {"score": out["ncti_seli"], "ncti_shrinkage": shrinkage, **out}

    def combine_zoo(self, per_model: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        """Published NCTI: ``minmax(ncc) + minmax(seli) - minmax(vc)`` across models."""
        if not per_model:
            raise ValueError("ncti: combine_zoo needs at least one model")
        ncc = minmax({m: float(r["ncti_ncc"]) for m, r in per_model.items()})
        seli = minmax({m: float(r["ncti_seli"]) for m, r in per_model.items()})
        vc = minmax({m: float(r["ncti_vc"]) for m, r in per_model.items()})
        return {m: ncc[m] + seli[m] - vc[m] for m in per_model}
