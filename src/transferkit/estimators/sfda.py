"""SFDA: Self-challenging Fisher Discriminant Analysis.

Shao et al., "Not All Models Are Equal: Predicting Model Transferability in a Self-challenging
Fisher Space" (ECCV 2022). Reference: TencentARC/SFDA ``metrics.py``, ``SFDA_Score``.

The published method, reproduced as released:

1. a regularised FDA is fitted; its shrinkage is ``max(exp(-5 * lambda), 1e-10)`` with
   ``lambda`` the largest eigenvalue of the within-class scatter estimated by 3 power iterations
   (``iterative_A``);
2. its class probabilities are soft-maxed **a second time** (softmax of probabilities; upstream
   calls it "softening" and it is part of the published numbers, so we keep it);
3. self-challenging ConfMix: each sample is mixed with the mean of the *other* classes' means,
   weighted by its (soft) probability of the true class;
4. a second FDA with the same shrinkage is fitted on the mixed features; the score is the mean
   predicted probability of the true class (no log).

Upstream builds the classifier as ``means @ V @ V.T`` with ``V`` the generalised eigenvectors of
``(S_b, S_w)``; as ``V`` is square with ``V^T S_w V = I``, ``V V^T = S_w^{-1}``, so we solve with
the Cholesky factor of the shrunk ``S_w`` instead (same numbers, no eigen-decomposition).
"""

from __future__ import annotations

import numpy as np
from scipy import linalg, sparse
from threadpoolctl import threadpool_limits

from ._base import TransferabilityEstimator, register_estimator
from ._validation import CheckedInputs

__all__ = ["SFDA", "sfda_score"]


def class_sums(X: np.ndarray, y: np.ndarray, C: int) -> np.ndarray:
    """Per-class sums of the rows of X (C, D), via a sparse indicator (fast ``np.add.at``)."""
    N = X.shape[0]
    ind = sparse.csr_matrix((np.ones(N), (y, np.arange(N))), shape=(C, N))
    return np.asarray(ind @ X)


def _class_means(X: np.ndarray, y: np.ndarray, C: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(y, minlength=C).astype(np.float64)
    return class_sums(X, y, C) / counts[:, None], counts


def _within_scatter(X: np.ndarray, y: np.ndarray, means: np.ndarray) -> np.ndarray:
    """sum_c prior_c * cov_c (biased) = centred Gram / N."""
    Xc = X - means[y]
    return (Xc.T @ Xc) / X.shape[0]


def _largest_eigenvalue(A: np.ndarray, n_iter: int = 3) -> float:
    """Upstream ``iterative_A``: a few power iterations from the row sums."""
    x = A.sum(axis=1)
    y = x
    for _ in range(n_iter):
        t = A @ x
        nt = np.linalg.norm(t, 2)
        if nt == 0:  # e.g. zero within-class scatter (upstream: 0 / 0 = NaN)
            return 0.0
        y = t / nt
        t = A @ y
        nt = np.linalg.norm(t, 2)
        if nt == 0:
            return 0.0
        x = t / nt
    return float(x @ A @ y)


def _shrink(S: np.ndarray, shrinkage: float) -> np.ndarray:
    D = S.shape[0]
    mu = np.trace(S) / D
    out = (1.0 - shrinkage) * S
    out.flat[:: D + 1] += shrinkage * mu
    return out


def _solve_spd(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """A^{-1} B for symmetric positive (semi-)definite A; pseudo-inverse if Cholesky fails."""
    with threadpool_limits(limits=1, user_api="blas"):  # LAPACK: threads gain little here
        try:
            return linalg.cho_solve(linalg.cho_factor(A, lower=True, check_finite=False), B,
                                    check_finite=False)
        except linalg.LinAlgError:
            return linalg.lstsq(A, B, check_finite=False)[0]


def _softmax(Z: np.ndarray) -> np.ndarray:
    Z = Z - Z.max(axis=1, keepdims=True)
    np.exp(Z, out=Z)
    Z /= Z.sum(axis=1, keepdims=True)
    return Z


def _fda_proba(X: np.ndarray, y: np.ndarray, C: int, shrinkage: float | None
               ) -> tuple[np.ndarray, float]:
    """Fit the regularised FDA (upstream class ``SFDA``) and return (p(y|x), shrinkage)."""
    means, counts = _class_means(X, y, C)
    Sw = _within_scatter(X, y, means)
    if shrinkage is None:
        shrinkage = max(float(np.exp(-5.0 * _largest_eigenvalue(Sw))), 1e-10)
    coef = _solve_spd(_shrink(Sw, shrinkage), means.T).T  # means @ Sw_shrunk^{-1}
    intercept = -0.5 * np.einsum("cd,cd->c", means, coef) + np.log(counts / X.shape[0])
    return _softmax(X @ coef.T + intercept), shrinkage


def sfda_score(X: np.ndarray, y: np.ndarray) -> float:
    """SFDA score of features ``X`` (N, D) for labels ``y`` in 0..C-1 (higher is better)."""
    X = np.array(X, dtype=np.float64)  # copy: ConfMix rewrites it
    y = np.asarray(y, dtype=np.int64)
    N = X.shape[0]
    C = int(y.max()) + 1
    rows = np.arange(N)

    prob, shrinkage = _fda_proba(X, y, C, None)
    prob = _softmax(prob)  # upstream's second softmax ("softening"), kept deliberately
    means, _ = _class_means(X, y, C)
    outer = (means.sum(axis=0)[None, :] - means) / (C - 1)  # mean of the other classes' means
    p_true = prob[rows, y][:, None]
    X = p_true * X + (1.0 - p_true) * outer[y]

    prob, _ = _fda_proba(X, y, C, shrinkage)
    return float(prob[rows, y].sum() / N)


@register_estimator
class SFDA(TransferabilityEstimator):
    """SFDA (Shao et al., ECCV 2022) as released in TencentARC/SFDA."""

    name = "sfda"
    summary = "Self-challenging Fisher discriminant analysis (Shao et al., 2022)"
    reference = "TencentARC/SFDA: metrics.py, SFDA_Score; ECCV 2022"
    components = ()

    def _score(self, data: CheckedInputs, random_state: int) -> dict[str, float]:
        return {"score": sfda_score(data.X, data.y)}
