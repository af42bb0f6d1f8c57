"""PED: Potential Energy Decline, wrapped around SFDA or LogME.

Li, Hu, Ge, Shan, Duan, "Exploring Model Transferability through the Lens of Potential Energy"
(ICCV 2023). Our own implementation of what lixiaotong97/PED computes (read at commit e5af6e7,
``metrics.py``: ``PED_Score`` and ``One_Step_PED``; defaults from ``PED_Score``'s signature and
the ``evaluate_metric_cpu.py`` command line, which is how the paper's numbers were produced).

PED simulates how fine-tuning would move the classes apart before scoring the features. Each step
(upstream ``One_Step_PED``):

1. standardise per dimension with the mean and std of ``general_features`` (the paper: ImageNet-val
   features of the same model; upstream ``general_X``), stds raised to at least ``min_std``
   (upstream ``eps=1e-3``);
2. every class is a ball: centre = class mean, radius = ``sqrt(sum_d var_cd)`` (population
   variances per dimension); two balls overlap by ``o_ij = max(nsigma r_i + nsigma r_j - d_ij, 0)``;
3. each overlapping pair is pushed apart along the line of centres by
   ``min(1/2 force_constant o_ij time_step^2, o_ij)`` (Hooke force ``force_constant * o``, unit
   mass, from rest; upstream ``constant``), class ``i`` moving by ``sum_j (mu_i - mu_j) / d_ij``
   times that amount; every sample moves with its class;
4. the moved features are mapped back to their own scale; the step's "position change" is the sum
   of the absolute class shifts over classes and dimensions (standardised space).

``PED_Score`` repeats this at most six times (``while number_step < 6``; ``max_steps``): a step
is kept only while its position change is more than ``exit_ratio`` times the first step's; the
first step whose ratio is not above ``exit_ratio`` is discarded and the loop ends. The moved
features are then scored with SFDA (``ped``; upstream ``SFDA_Score``) or LogME (``ped_logme``;
upstream ``LogME_Score``, the fixed-point solver), in float64.

Constants and where they come from: ``time_step=0.1``, ``exit_ratio=0.5``, ``min_std=1e-3`` and
``force_constant=1.0`` are ``PED_Score``'s defaults; ``nsigma=0.6`` is ``evaluate_metric_cpu.py``'s
``--nsigma`` default (``PED_Score``'s own default, 2.0, is overridden by that script; the paper's
candidates are 0.3 and 0.6); ``max_steps=6`` is the literal in ``PED_Score``'s loop (the script's
``--num_step 5`` is parsed but never used).

Departures from upstream (deliberate):

* ``general_features=None`` standardises with the target features themselves; upstream raises
  ``NotImplementedError`` there, and the reference values in ``shared/reference`` were produced by
  passing the target features as ``general_X`` - the same numbers.
* Two classes with the same centre exert no force on each other; upstream divides by the zero
  distance and every feature (so the score) becomes NaN. We do not offer that NaN as an option.
* No overlap at all (first position change 0): no step is taken; upstream computes ``0/0`` (NaN,
  with a warning) and exits with the features unmoved - the same result.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.spatial.distance import cdist

from ._base import TransferabilityEstimator, register_estimator
from ._validation import CheckedInputs, _as_feature_matrix
from .logme import logme_evidence, warn_small_n
from .sfda import class_sums, sfda_score

__all__ = ["PED", "PEDLogME", "ped_features"]


def _standardization(X: np.ndarray, G: np.ndarray | None, min_std: float
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std of G (else of X), stds raised to at least ``min_std``
    (upstream: ``np.maximum(np.std(general_X, axis=0), eps)``)."""
    ref = X if G is None else G
    return ref.mean(axis=0), np.maximum(ref.std(axis=0), min_std)


def _is_real(v: object) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float, np.floating, np.integer))


def _check_dynamics(time_step: float, nsigma: float, exit_ratio: float, max_steps: int,
                    min_std: float, force_constant: float) -> None:
    for name, v in (("time_step", time_step), ("nsigma", nsigma), ("min_std", min_std),
                    ("force_constant", force_constant)):
        if not (_is_real(v) and math.isfinite(v) and v > 0):
            raise ValueError(f"ped: {name} must be a finite number > 0; got {v!r}")
    if not (_is_real(exit_ratio) and 0.0 <= exit_ratio <= 1.0):
        raise ValueError(f"ped: exit_ratio must be in [0, 1]; got {exit_ratio!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 0:
        raise ValueError(f"ped: max_steps must be an integer >= 0; got {max_steps!r}")


def _class_shifts(Z: np.ndarray, y: np.ndarray, counts: np.ndarray, *, time_step: float,
                  nsigma: float, force_constant: float) -> np.ndarray:
    """One step of upstream ``One_Step_PED`` in standardised space: the (C, D) class shifts."""
    C = counts.size
    mu = class_sums(Z, y, C) / counts[:, None]
    resid = Z - mu[y]
    # radius: sqrt of the summed per-dimension (population) variances of the class
    radius = np.sqrt(np.bincount(y, weights=np.einsum("ij,ij->i", resid, resid), minlength=C)
                     / counts)
    dist = cdist(mu, mu)  # direct differences, as upstream (no Gram-matrix cancellation)
    overlap = np.maximum(nsigma * radius[:, None] + nsigma * radius[None, :] - dist, 0.0)
    np.fill_diagonal(overlap, 0.0)
    move = np.minimum(0.5 * time_step**2 * force_constant * overlap, overlap)
    # shift_i = sum_j move_ij (mu_i - mu_j) / d_ij; coincident centres exert no force (departure)
    w = np.divide(move, dist, out=np.zeros_like(dist), where=dist > 0)
    return w.sum(axis=1)[:, None] * mu - w @ mu


def ped_dynamics(X: np.ndarray, y: np.ndarray, general_features: np.ndarray | None = None, *,
                 time_step: float = 0.1, nsigma: float = 0.6, exit_ratio: float = 0.5,
                 max_steps: int = 6, min_std: float = 1e-3, force_constant: float = 1.0
                 ) -> tuple[np.ndarray, int]:
    """The moved features (in X's own scale) and the number of steps kept (upstream
    ``PED_Score`` before its final scoring call)."""
    _check_dynamics(time_step, nsigma, exit_ratio, max_steps, min_std, force_constant)
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"ped: need X (N, D) and y (N,); got {X.shape} and {y.shape}")
    if y.dtype.kind not in "iu" or y.size == 0 or y.min() < 0:
        raise ValueError("ped: y must hold integer labels 0..C-1")
    counts = np.bincount(y).astype(np.float64)
    if np.any(counts == 0):
        raise ValueError("ped: y must hold labels 0..C-1 with every class present "
                         f"(missing: {np.flatnonzero(counts == 0)[:5].tolist()})")
    if general_features is not None:
        general_features = np.asarray(general_features, dtype=np.float64)
        if general_features.ndim != 2 or general_features.shape[1] != X.shape[1] or (
                general_features.shape[0] < 2):
            raise ValueError(f"ped: general_features must be (M >= 2, {X.shape[1]}); "
                             f"got {general_features.shape}")
    mean, std = _standardization(X, general_features, min_std)
    first_change = None
    steps = 0
    while steps < max_steps:
        Z = (X - mean) / std
        shift = _class_shifts(Z, y, counts, time_step=time_step, nsigma=nsigma,
                              force_constant=force_constant)
        change = float(np.abs(shift).sum())
        if first_change is None:
            first_change = change
        # upstream keeps the step iff change / first_change > exit_ratio (0 / 0 = NaN: not kept)
        if first_change == 0.0 or not change / first_change > exit_ratio:
            break
        X = (Z + shift[y]) * std + mean
        steps += 1
    return X, steps


def ped_features(X: np.ndarray, y: np.ndarray, general_features: np.ndarray | None = None,
                 **dynamics: Any) -> np.ndarray:
    """``X`` with every class shifted as PED's potential-energy dynamics move it (X's scale).

    ``y`` holds labels 0..C-1 (every class present); ``general_features`` (M x D, M >= 2), when
    given, supply the standardisation statistics; ``dynamics`` are ``ped_dynamics``'s keywords.
    """
    return ped_dynamics(X, y, general_features, **dynamics)[0]


class _PEDBase(TransferabilityEstimator):
    _inner: str = "SFDA"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"time_step": 0.1, "nsigma": 0.6, "exit_ratio": 0.5, "max_steps": 6,
                "min_std": 1e-3, "force_constant": 1.0, "general_features": None}

    def _score(self, data: CheckedInputs, random_state: int) -> dict[str, float]:
        p = self.params
        G = p["general_features"]
        if G is not None:  # finite 2-D float matrix; ped_dynamics checks its shape
            G = _as_feature_matrix(G, name="general_features")
        Z, _ = ped_dynamics(data.X, data.y, G, time_step=p["time_step"], nsigma=p["nsigma"],
                            exit_ratio=p["exit_ratio"], max_steps=p["max_steps"],
                            min_std=p["min_std"], force_constant=p["force_constant"])
        if self._inner == "LOGME":  # PED moves class means only: LogME's small-N dimension bias stays
            warn_small_n(data.n_samples, data.n_features, self.name)
        value = sfda_score(Z, data.y) if self._inner == "SFDA" else logme_evidence(Z, data.y)
        return {"score": value, self.components[0]: value}


@register_estimator
class PED(_PEDBase):
    """PED on SFDA (Li et al., ICCV 2023), as lixiaotong97/PED ``PED_Score(type='SFDA')``."""

    name = "ped"
    summary = "Potential-energy-decline feature dynamics, then SFDA (Li et al., 2023)"
    reference = "lixiaotong97/PED: metrics.py, PED_Score(type='SFDA'); ICCV 2023"
    components = ("ped_sfda",)
    _inner = "SFDA"


@register_estimator
class PEDLogME(_PEDBase):
    """PED on LogME (Li et al., ICCV 2023), as lixiaotong97/PED ``PED_Score(type='LOGME')``."""

    name = "ped_logme"
    summary = "Potential-energy-decline feature dynamics, then LogME (Li et al., 2023)"
    reference = "lixiaotong97/PED: metrics.py, PED_Score(type='LOGME'); ICCV 2023"
    components = ("ped_logme",)
    _inner = "LOGME"
