"""The rank metrics of :mod:`transferkit.metrics`, vectorized over many ground-truth samples at once.

A bootstrap recomputes every metric on ~1000 resampled ground truths per method and dataset; calling
``scipy.stats.weightedtau`` that often costs minutes, so this module computes the same numbers with array
operations over all pairs of models (zoos are small: M models give M(M-1)/2 pairs).

``batch_metric(scores, accuracies, metric)`` takes arrays of shape ``(..., M)`` (broadcast against each
other: fixed scores against ``(B, M)`` resampled accuracies, or ``(B, M)`` random scores) and returns the
metric per row. Every function equals its scalar counterpart in :mod:`transferkit.metrics` (tested
against it, ties included):

* ``weighted_tau_scipy`` — scipy's additive hyperbolic weighted τ (``_weightedrankedtau`` in
  ``scipy/stats/_stats.pyx``): rank r from the decreasing lexicographic order by (x, y) (exact joint ties:
  the later index ranks first, as scipy's stable lexsort reversed), pair weight ``1/(r_i+1) + 1/(r_j+1)``,
  τ = Σ w sgn(dx) sgn(dy) / sqrt(Σ w [dx≠0]) / sqrt(Σ w [dy≠0]); ``rank=True`` averages (x, y) and (y, x).
* ``weighted_tau_modelspider`` — the same with x = accuracies, y = scores, one direction.
* ``weighted_tau_itm`` (ITM Eq. 1), ``kendall_tau`` (τ-b), ``spearman_rho``, ``pearson_r``.
* ``regret``, ``relative_regret``, ``top1_relative_accuracy`` — ties at the top score resolve
  pessimistically (the worst of the tied models counts).

Undefined values (a constant score or accuracy vector) are NaN, as in :mod:`transferkit.metrics`.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["BATCH_METRICS", "batch_metric"]


def _pairs(m: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(m, k=1)


def _tau_core(x: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """Σ w sgn(dx) sgn(dy) / sqrt(Σ w[dx≠0] Σ w[dy≠0]) over all pairs (w None: unweighted = Kendall τ-b)."""
    i, j = _pairs(x.shape[-1])
    sx = np.sign(x[..., i] - x[..., j])
    sy = np.sign(y[..., i] - y[..., j])
    if w is None:
        w = np.ones_like(sx)
    num = np.sum(w * sx * sy, axis=-1)
    den_x = np.sum(w * (sx != 0), axis=-1)
    den_y = np.sum(w * (sy != 0), axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = num / np.sqrt(den_x) / np.sqrt(den_y)
    tau = np.where((den_x > 0) & (den_y > 0), tau, np.nan)
    return np.clip(tau, -1.0, 1.0)


def _lexrank(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """scipy's rank: 0 for the largest (x, y) in lexicographic order; exact ties: later index first."""
    perm = np.lexsort((y, x), axis=-1)  # ascending, stable
    m = x.shape[-1]
    rank = np.empty_like(perm)
    np.put_along_axis(rank, perm, np.broadcast_to(np.arange(m - 1, -1, -1), perm.shape), axis=-1)
    return rank


def _weighted_tau_directed(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    h = 1.0 / (_lexrank(x, y) + 1.0)
    i, j = _pairs(x.shape[-1])
    return _tau_core(x, y, h[..., i] + h[..., j])


def _weighted_tau_scipy(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    return 0.5 * (_weighted_tau_directed(s, a) + _weighted_tau_directed(a, s))


def _weighted_tau_modelspider(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    return _weighted_tau_directed(a, s)


def _weighted_tau_itm(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    G = stats.rankdata(-a, method="average", axis=-1)
    P = stats.rankdata(-s, method="average", axis=-1)
    i, j = _pairs(s.shape[-1])
    w = 1.0 / (G[..., i] + G[..., j])
    agree = np.sign((G[..., i] - G[..., j]) * (P[..., i] - P[..., j]))
    return np.sum(w * agree, axis=-1) / np.sum(w, axis=-1)


def _kendall(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    return _tau_core(s, a, None)


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    den = np.sqrt(np.sum(xc * xc, axis=-1) * np.sum(yc * yc, axis=-1))
    const = (np.ptp(x, axis=-1) == 0) | (np.ptp(y, axis=-1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.sum(xc * yc, axis=-1) / den
    return np.where(const, np.nan, np.clip(r, -1.0, 1.0))


def _spearman(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    return _pearson(stats.rankdata(s, axis=-1), stats.rankdata(a, axis=-1))


def _picked_accuracy(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    top = s == s.max(axis=-1, keepdims=True)
    return np.where(top, a, np.inf).min(axis=-1)


def _regret(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    return a.max(axis=-1) - _picked_accuracy(s, a)


def _relative_regret(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    best = a.max(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(best > 0, (best - _picked_accuracy(s, a)) / best, np.nan)


def _top1_relative(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    best = a.max(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(best > 0, _picked_accuracy(s, a) / best, np.nan)


BATCH_METRICS = {
    "weighted_tau_scipy": _weighted_tau_scipy,
    "weighted_tau_modelspider": _weighted_tau_modelspider,
    "weighted_tau_itm": _weighted_tau_itm,
    "kendall_tau": _kendall,
    "spearman_rho": _spearman,
    "pearson_r": _pearson,
    "regret": _regret,
    "relative_regret": _relative_regret,
    "top1_relative_accuracy": _top1_relative,
}


def batch_metric(scores: np.ndarray, accuracies: np.ndarray, metric: str) -> np.ndarray:
    """``metric`` of every row: ``scores`` and ``accuracies`` of shape ``(..., M)``, broadcast together."""
    if metric not in BATCH_METRICS:
        raise ValueError(f"unknown metric {metric!r}; one of {sorted(BATCH_METRICS)}")
    s, a = np.broadcast_arrays(np.asarray(scores, dtype=np.float64), np.asarray(accuracies, dtype=np.float64))
    if s.shape[-1] < 2:
        raise ValueError(f"rank metrics need at least 2 models; got {s.shape[-1]}")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(a))):
        raise ValueError("scores and accuracies must be finite")
    return np.asarray(BATCH_METRICS[metric](s, a), dtype=np.float64)
