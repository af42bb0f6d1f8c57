"""LEEP and NCE: scores computed from the source classifier's outputs on the target data.

Both methods need only `source_probs` (N x C_s softmax outputs of the source model's own head);
features are not used.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import sparse
from scipy.special import xlogy

from ._base import TransferabilityEstimator, register_estimator
from ._validation import CheckedInputs

__all__ = ["LEEP", "NCE"]

# dbolya/parc's NCE smooths the empirical joint distribution with this constant.
_PARC_NCE_EPS = 1e-5


def _label_sums(y: np.ndarray, values: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-target-class sums of the rows of `values` (n_classes x values.shape[1])."""
    n = y.shape[0]
    onehot = sparse.csr_array((np.ones(n), (y, np.arange(n))), shape=(n_classes, n))
    return np.asarray(onehot @ values)


@register_estimator
class LEEP(TransferabilityEstimator):
    """Log Expected Empirical Prediction (Nguyen et al., ICML 2020).

    The empirical conditional P(y | z) of target label y given source class z is estimated from the
    soft source predictions; the score is mean_i log sum_z P(y_i | z) P(z | x_i).
    A source class that receives exactly zero probability on every target sample has an undefined
    P(y | z) upstream (0/0 -> NaN score); it carries no weight, so it is dropped here.
    """

    name = "leep"
    summary = "Log expected empirical prediction of the source classifier mapped to target labels."
    reference = (
        "thuml/LogME LEEP.py LEEP (same as tllib ranking/leep.py and dbolya/parc); "
        "Nguyen et al., 'LEEP: A New Measure to Evaluate Transferability of Learned "
        "Representations', ICML 2020"
    )
    needs_features = False
    needs_source_probs = True

    def _score(self, data: CheckedInputs, random_state: int) -> dict[str, float]:
        assert data.P is not None
        P, y = data.P.astype(np.float64, copy=False), data.y
        joint = _label_sums(y, P, data.n_classes) / P.shape[0]  # (C_t, C_s): P(y, z)
        p_z = joint.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            p_y_given_z = np.where(p_z > 0, joint / p_z, 0.0)  # (C_t, C_s)
        # EEP of the true label only: sum_z P(z | x_i) P(y_i | z)
        eep = np.einsum("nz,nz->n", P, p_y_given_z[y])
        return {"score": float(np.mean(np.log(eep)))}


@register_estimator
class NCE(TransferabilityEstimator):
    """Negative Conditional Entropy -H(Y | Z) (Tran et al., ICCV 2019).

    Z is the source classifier's hard prediction, argmax of `source_probs` (the thuml/LogME and
    tllib convention). ``variant="parc"`` reproduces dbolya/parc's smoothed version, which adds
    1e-5 to every cell of the empirical joint P(y, z) and to P(z) before taking the entropy
    (it differs from the canonical value by 0.002-0.1 on the reference data).
    """

    name = "nce"
    summary = "Negative conditional entropy of target labels given the source model's argmax."
    reference = (
        "thuml/LogME NCE.py NCE on argmax of the source probabilities (same as tllib "
        "ranking/nce.py; variant='parc': dbolya/parc methods.py); Tran et al., 'Transferability "
        "and Hardness of Supervised Classification Tasks', ICCV 2019"
    )
    needs_features = False
    needs_source_probs = True

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"variant": "thuml"}

    def _score(self, data: CheckedInputs, random_state: int) -> dict[str, float]:
        variant = self.params["variant"]
        if variant not in ("thuml", "parc"):
            raise ValueError(f"nce: variant must be 'thuml' or 'parc'; got {variant!r}")
        assert data.P is not None
        z = np.argmax(data.P, axis=1)
        n_src = data.P.shape[1]
        counts = np.bincount(data.y * n_src + z, minlength=data.n_classes * n_src)
        joint = counts.reshape(data.n_classes, n_src) / data.n_samples  # P(y, z)
        p_z = joint.sum(axis=0)
        if variant == "parc":
            # sum_{y,z} (P(y,z)+eps) log((P(y,z)+eps) / (P(z)+eps)); unused z contribute 0
            smoothed = joint + _PARC_NCE_EPS
            return {"score": float(np.sum(smoothed * np.log(smoothed / (p_z + _PARC_NCE_EPS))))}
        used = p_z > 0
        p_y_given_z = joint[:, used] / p_z[used]
        return {"score": float(np.sum(p_z[used] * np.sum(xlogy(p_y_given_z, p_y_given_z), axis=0)))}
