"""PED: Potential Energy Decline, wrapped around SFDA or LogME.

Li, Hu, Ge, Shan, Duan, "Exploring Model Transferability through the Lens of Potential Energy"
(ICCV 2023). Reference: lixiaotong97/PED ``PED_Score(type='SFDA' | 'LOGME')`` with
``time_step=0.1, nsigma=0.6, exit_ratio=0.5``.

PED simulates how fine-tuning moves the features before scoring them: every class is a ball
(centre = class mean, radius = ``nsigma`` x the class's RMS spread); overlapping balls repel with an
elastic (Hooke) force proportional to the overlap, the classes move by ``time_step`` x force per
step (each sample moves with its class), and the simulation stops once the elastic potential
energy has declined to ``exit_ratio`` of its initial value. The moved features are then scored
with SFDA (``ped``) or LogME (``ped_logme``). Features are standardised per dimension with the
statistics of ``general_features`` (the paper: ImageNet features of the same model) when given,
else with the target features themselves.

**Not a verified reproduction.** The reference implementation was not available when this module
was written; the dynamics above follow the paper's description, and the numbers do *not* match
the reference values in ``shared/reference/expected.json`` (``ped_sfda`` / ``ped_logme``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import TransferabilityEstimator, register_estimator
from ._validation import CheckedInputs, _as_feature_matrix
from .logme import logme_evidence
from .sfda import class_sums, sfda_score

__all__ = ["PED", "PEDLogME", "ped_features"]


def _standardize(X: np.ndarray, G: np.ndarray | None) -> np.ndarray:
    ref = X if G is None else G
    mean = ref.mean(axis=0)
    std = ref.std(axis=0)
    std[std == 0] = 1.0  # constant dimensions (as sklearn's StandardScaler)
    return (X - mean) / std


def ped_features(X: np.ndarray, y: np.ndarray, general_features: np.ndarray | None = None, *,
                 time_step: float = 0.1, nsigma: float = 0.6, exit_ratio: float = 0.5,
                 max_steps: int = 1000) -> np.ndarray:
    """Standardise ``X`` and move its classes apart until the potential energy has declined."""
    X = _standardize(np.asarray(X, dtype=np.float64), general_features)
    y = np.asarray(y, dtype=np.int64)
    C = int(y.max()) + 1
    counts = np.bincount(y, minlength=C).astype(np.float64)
    mu = class_sums(X, y, C) / counts[:, None]
    spread = np.bincount(y, weights=np.einsum("ij,ij->i", X - mu[y], X - mu[y]), minlength=C)
    radius = nsigma * np.sqrt(spread / counts)
    reach = radius[:, None] + radius[None, :]
    start = mu.copy()
    energy0 = None
    for _ in range(max_steps):
        sq = np.einsum("ij,ij->i", mu, mu)
        dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * (mu @ mu.T), 0.0))
        overlap = np.maximum(reach - dist, 0.0)
        np.fill_diagonal(overlap, 0.0)
        energy = 0.25 * float(np.sum(overlap**2))  # 1/2 k delta^2 over unordered pairs
        if energy0 is None:
            energy0 = energy
        if energy0 == 0.0 or energy <= exit_ratio * energy0:
            break
        # F_i = sum_j overlap_ij (mu_i - mu_j) / d_ij  (coincident centres exert no force)
        w = np.divide(overlap, dist, out=np.zeros_like(dist), where=dist > 0)
        force = w.sum(axis=1)[:, None] * mu - w @ mu
        mu = mu + time_step * force
    return X + (mu - start)[y]


class _PEDBase(TransferabilityEstimator):
    _inner: str = "SFDA"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"time_step": 0.1, "nsigma": 0.6, "exit_ratio": 0.5, "general_features": None}

    def _score(self, data: CheckedInputs, random_state: int) -> dict[str, float]:
        p = self.params
        G = p["general_features"]
        if G is not None:
            G = _as_feature_matrix(G, name="general_features")
            if G.shape[1] != data.n_features:
                raise ValueError(f"{self.name}: general_features have {G.shape[1]} dimensions, "
                                 f"features have {data.n_features}")
        Z = ped_features(data.X, data.y, G, time_step=p["time_step"], nsigma=p["nsigma"],
                         exit_ratio=p["exit_ratio"])
        value = sfda_score(Z, data.y) if self._inner == "SFDA" else logme_evidence(Z, data.y)
        return {"score": value, self.components[0]: value}


@register_estimator
class PED(_PEDBase):
    """PED on SFDA (Li et al., ICCV 2023); paper-based, not a verified reproduction."""

    name = "ped"
    summary = "Potential-energy-decline feature dynamics, then SFDA (Li et al., 2023; unverified)"
    reference = "lixiaotong97/PED: PED_Score(type='SFDA'); ICCV 2023 (paper-based, not verified)"
    components = ("ped_sfda",)
    _inner = "SFDA"


@register_estimator
class PEDLogME(_PEDBase):
    """PED on LogME (Li et al., ICCV 2023); paper-based, not a verified reproduction."""

    name = "ped_logme"
    summary = "Potential-energy-decline feature dynamics, then LogME (Li et al., 2023; unverified)"
    reference = "lixiaotong97/PED: PED_Score(type='LOGME'); ICCV 2023 (paper-based, not verified)"
    components = ("ped_logme",)
    _inner = "LOGME"
