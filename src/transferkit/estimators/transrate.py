"""TransRate: coding-rate reduction of the features by the labels (Huang et al., ICML 2022)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.linalg import cho_factor

from ._base import TransferabilityEstimator, register_estimator
from ._validation import CheckedInputs

__all__ = ["TransRate", "coding_rate"]


def coding_rate(Z: np.ndarray, eps: float) -> float:
    """0.5 logdet(I_D + Z^T Z / (n eps)), Z (n x D).

    Computed as 0.5 logdet(I_n + Z Z^T / (n eps)) when n < D (Sylvester's determinant identity),
    by Cholesky: the matrix is symmetric with eigenvalues >= 1.
    """
    n, d = Z.shape
    gram = Z @ Z.T if n < d else Z.T @ Z
    A = gram / (n * eps)
    A.flat[:: A.shape[0] + 1] += 1.0
    L, _ = cho_factor(A, lower=True, overwrite_a=True, check_finite=False)
    return float(np.sum(np.log(np.diag(L))))


@register_estimator
class TransRate(TransferabilityEstimator):
    """R(f) - mean_c R(f_c): coding rate of all features minus the uniform average over classes.

    As tllib: features are centred once globally (not per class) and the class average is
    unweighted. The per-class rates use the class's own sample count in the 1/(n eps) factor.
    """

    name = "transrate"
    summary = "TransRate: coding rate of the features minus their average per-class coding rate."
    reference = (
        "thuml/Transfer-Learning-Library tllib/ranking/transrate.py transrate (eps 1e-4); Huang et "
        "al., 'Frustratingly Easy Transferability Estimation', ICML 2022"
    )
    components = ("rate_all", "rate_class_mean")

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"eps": 1e-4}

    def _score(self, data: CheckedInputs, random_state: int) -> dict[str, float]:
        eps = float(self.params["eps"])
        if not eps > 0:
            raise ValueError(f"transrate: eps must be > 0; got {eps}")
        Xc = data.X - data.X.mean(axis=0)
        r_all = coding_rate(Xc, eps)
        order = np.argsort(data.y, kind="stable")
        splits = np.cumsum(data.class_counts)[:-1]
        r_class = [coding_rate(part, eps) for part in np.split(Xc[order], splits)]
        r_mean = float(np.mean(r_class))
        return {"score": r_all - r_mean, "rate_all": r_all, "rate_class_mean": r_mean}
