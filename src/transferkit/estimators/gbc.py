"""Gaussian Bhattacharyya Coefficient (Pándy et al., CVPR 2022), spherical and diagonal."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from scipy import sparse
from scipy.linalg import eigh

from ._base import TransferabilityEstimator, register_estimator
from ._validation import CheckedInputs, safe_n_components

__all__ = ["GBC", "GBCDiagonal", "pca_scores"]

# Variance floor of google-research's gbc.py (avoids log(0) for constant dimensions).
_MIN_VARIANCE = 1e-4
# Class pairs are processed in row blocks holding at most this many float64 values.
_BLOCK_ENTRIES = 1 << 21


def pca_scores(X: np.ndarray, n_components: int) -> np.ndarray:
    """Projection of the centred data on its top principal axes (signs arbitrary).

    Eigendecomposition of the smaller Gram matrix (D x D or N x N), which gives the same scores
    as a full SVD up to the sign of each axis at a fraction of the cost.
    """
    Xc = X - X.mean(axis=0)
    n, d = Xc.shape
    if n >= d:
        _, V = eigh(Xc.T @ Xc, subset_by_index=(d - n_components, d - 1))
        return Xc @ V[:, ::-1]
    evals, U = eigh(Xc @ Xc.T, subset_by_index=(n - n_components, n - 1))
    return U[:, ::-1] * np.sqrt(np.clip(evals[::-1], 0.0, None))


def _class_stats(X: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class means and population variances (floored at 1e-4), each (C x D)."""
    n = X.shape[0]
    onehot = sparse.csr_array((np.ones(n), (y, np.arange(n))), shape=(n_classes, n))
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)[:, None]
    means = np.asarray(onehot @ X) / counts
    centred = X - means[y]
    var = np.asarray(onehot @ (centred * centred)) / counts
    return means, np.maximum(var, _MIN_VARIANCE)


def _bhattacharyya_coefficient_sum(means: np.ndarray, var: np.ndarray, spherical: bool) -> float:
    """sum over ordered class pairs i != j of exp(-D_B(i, j)), vectorised over pairs."""
    n_classes, d = means.shape
    total = 0.0
    if spherical:
        # upstream: sigma = mean of the (floored) diagonal variances; the log-det term is
        # log(sigma_avg) - (log s1 + log s2) / 2, *not* multiplied by D (kept as published)
        s = var.mean(axis=1)
        means = means - means.mean(axis=0)  # distances are translation-invariant
        sq = np.einsum("ij,ij->i", means, means)
        dist2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * means @ means.T, 0.0)
        avg = 0.5 * (s[:, None] + s[None, :])
        log_s = np.log(s)
        bd = dist2 / (8.0 * avg) + 0.5 * (np.log(avg) - 0.5 * log_s[:, None] - 0.5 * log_s[None, :])
        coeff = np.exp(-bd)
        np.fill_diagonal(coeff, 0.0)
        return float(coeff.sum())
    log_var_sum = np.log(var).sum(axis=1)
    block = max(1, _BLOCK_ENTRIES // (n_classes * d))
    for start in range(0, n_classes, block):
        stop = min(n_classes, start + block)
        avg = 0.5 * (var[start:stop, None, :] + var[None, :, :])  # (b, C, D)
        diff = means[start:stop, None, :] - means[None, :, :]
        first = np.sum(diff * diff / avg, axis=2) / 8.0
        log_det_pair = log_var_sum[start:stop, None] + log_var_sum[None, :]
        second = np.log(avg).sum(axis=2) - 0.5 * log_det_pair
        coeff = np.exp(-(first + 0.5 * second))
        coeff[np.arange(stop - start), np.arange(start, stop)] = 0.0
        total += float(coeff.sum())
    return total


class _GBCBase(TransferabilityEstimator):
    """GBC = -sum_{i != j} exp(-Bhattacharyya distance between class Gaussians i and j).

    As google-research's benchmark: features are first reduced to `n_components` (64) PCA dims
    (skipped when D <= 64; clipped with a warning when N or D is smaller), classes are Gaussians
    with per-dimension population variances floored at 1e-4. Upstream computes in float32, here
    float64 (differences ~1e-6 relative). The O(C^2) class pairs are vectorised.
    """

    spherical: ClassVar[bool] = True

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"n_components": 64}

    def _score(self, data: CheckedInputs, random_state: int) -> dict[str, float]:
        X = data.X
        k = self.params["n_components"]
        if k is not None and X.shape[1] > k:
            X = pca_scores(X, safe_n_components(int(k), X.shape[0], X.shape[1], self.name))
        means, var = _class_stats(X, data.y, data.n_classes)
        return {"score": -_bhattacharyya_coefficient_sum(means, var, self.spherical)}


_REFERENCE = (
    "google-research stable_transfer/transferability/gbc.py get_gbc_score (gaussian_type='{}') "
    "after PCA to 64 dims; Pándy et al., 'Transferability Estimation using Bhattacharyya Class "
    "Separability', CVPR 2022"
)


@register_estimator
class GBC(_GBCBase):
    __doc__ = _GBCBase.__doc__
    name = "gbc"
    summary = "Gaussian Bhattacharyya coefficient between classes (spherical Gaussians), negated."
    reference = _REFERENCE.format("spherical")
    spherical = True


@register_estimator
class GBCDiagonal(_GBCBase):
    __doc__ = _GBCBase.__doc__
    name = "gbc_diag"
    summary = "Gaussian Bhattacharyya coefficient between classes (diagonal Gaussians), negated."
    reference = _REFERENCE.format("diagonal")
    spherical = False
