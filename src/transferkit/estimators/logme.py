"""LogME: the log maximum evidence of a Bayesian linear model on the features.

You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning"
(ICML 2021) and "Ranking and Tuning Pre-trained Models" (JMLR 2022, the fixed-point solver).
Reference: thuml/LogME ``LogME.py``, ``LogME(regression=False).fit`` (``_fit_fixed_point``).

Faithful to the reference, including its quirks: the one-hot target of each class is fitted
separately and the per-class evidences (each divided by N) are averaged; when N > D the spectrum
comes from the D x D Gram matrix (all D directions kept, as upstream's SVD does in practice) and
``D`` in the evidence is the feature dimension even when N <= D (only N directions enter).
Faster than the reference because one symmetric eigen-decomposition is shared by all classes, the
projections of all one-hot targets are one matrix product, and the fixed-point iteration runs for
all classes at once (each class stops at its own iteration, as in the reference loop).
"""

from __future__ import annotations

import warnings

import numpy as np
from threadpoolctl import threadpool_limits

from ._base import TransferabilityEstimator, register_estimator
from ._validation import CheckedInputs

__all__ = ["LogME", "logme_evidence", "logme_per_class", "warn_small_n"]

_EPS = 1e-5  # added to the residual / weight norms, as upstream
_MAX_ITER = 11
_RTOL = 1e-3


def _spectrum(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared singular values ``sigma`` (k,) and projections ``x = U^T Y`` (k, C)."""
    N, D = X.shape
    if N > D:
        # Upstream: SVD of X^T X, s = sqrt(singular values), keep s > 1e-10, U = X V / s. The Gram
        # matrix is symmetric PSD, so eigh gives the same spectrum (|lambda|) faster, and
        # U^T Y = (V^T X^T Y) / s avoids forming the N x k matrix U. Upstream's SVD reports
        # rounding noise (~1e-6, far above its 1e-10 cut) for exactly null directions, so it
        # keeps all D of them; we keep all D too (their sigma ~ 0 leaves the evidence unchanged
        # up to rounding except for the log(alpha) term that upstream also counts).
        G = X.T @ X
        with threadpool_limits(limits=1, user_api="blas"):  # LAPACK: threads gain little
            lam, V = np.linalg.eigh(G)
        s = np.sqrt(np.abs(lam))
        XtY = V.T @ (X.T @ Y)
        x = np.divide(XtY, s[:, None], out=np.zeros_like(XtY), where=s[:, None] > 0)
        return s**2, x
    # N <= D: upstream takes the thin SVD of X and keeps all N directions; U and s^2 are the
    # eigenvectors / eigenvalues of the N x N Gram matrix X X^T.
    G = X @ X.T
    with threadpool_limits(limits=1, user_api="blas"):
        lam, U = np.linalg.eigh(G)
    return np.abs(lam), U.T @ Y


def logme_per_class(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-class LogME evidence / N for features ``X`` (N, D) and labels ``y`` in 0..C-1."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    N, D = X.shape
    C = int(y.max()) + 1
    Y = np.zeros((N, C))
    Y[np.arange(N), y] = 1.0
    sigma, x = _spectrum(X, Y)
    sigma = sigma[:, None]
    x2 = x**2
    res_x2 = Y.sum(axis=0) - x2.sum(axis=0)  # residual outside the span of U

    alpha = np.ones(C)
    beta = np.ones(C)
    m2 = np.zeros(C)
    res2 = np.zeros(C)
    active = np.ones(C, dtype=bool)
    for _ in range(_MAX_ITER):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        t = alpha[idx] / beta[idx]
        sig_t = sigma + t  # (k, c)
        gamma = (sigma / sig_t).sum(axis=0)
        m2_i = (sigma * x2[:, idx] / sig_t**2).sum(axis=0)
        res2_i = (x2[:, idx] / (1.0 + sigma / t) ** 2).sum(axis=0) + res_x2[idx]
        alpha_i = gamma / (m2_i + _EPS)
        beta_i = (N - gamma) / (res2_i + _EPS)
        alpha[idx], beta[idx], m2[idx], res2[idx] = alpha_i, beta_i, m2_i, res2_i
        active[idx[np.abs(alpha_i / beta_i - t) / t <= _RTOL]] = False

    evidence = (
        D / 2.0 * np.log(alpha)
        + N / 2.0 * np.log(beta)
        - 0.5 * np.log(alpha[None, :] + beta[None, :] * sigma).sum(axis=0)
        - beta / 2.0 * res2
        - alpha / 2.0 * m2
        - N / 2.0 * np.log(2 * np.pi)
    )
    return evidence / N


def logme_evidence(X: np.ndarray, y: np.ndarray) -> float:
    """LogME score: mean over classes of the per-class evidence / N (higher is better)."""
    return float(np.mean(logme_per_class(X, y)))


@register_estimator
class LogME(TransferabilityEstimator):
    """LogME (You et al., ICML 2021), fixed-point solver of thuml/LogME."""

    name = "logme"
    summary = "Log maximum evidence of a Bayesian linear model on the features (You et al., 2021)"
    reference = "thuml/LogME: LogME.py, LogME(regression=False).fit (fixed-point); ICML 2021"
    components = ()

    def _score(self, data: CheckedInputs, random_state: int) -> dict[str, float]:
        warn_small_n(data.n_samples, data.n_features)
        return {"score": logme_evidence(data.X, data.y)}


def warn_small_n(n: int, d: int, method: str = "logme") -> None:
    """Warn when N < D: LogME then grows with the feature dimension whatever the features say.

    Measured on features that carry no label information (Gaussian noise, 10 classes;
    benchmarks/recommend_measurements.py logme): at N >= D every D gives the no-information value
    (-0.27), at N = 0.9 D it is +0.28 (D=256) / +0.35 (D=1280), at N=400 with D=1280 it is 9.75 and at
    N=20 it is 297. The jump sits exactly at N = D (the evidence counts D prior dimensions of which only
    N are constrained by data), so the threshold is N < D."""
    if n < d:
        warnings.warn(f"{method}: N={n} images < D={d} feature dimensions: LogME is inflated by the feature "
                      "dimension here (pure-noise features score higher with more dimensions), so models "
                      "with different D are not comparable; use at least D images", UserWarning, stacklevel=3)
