"""Rank correlations and model-selection metrics for transferability benchmarks.

Every function takes ``scores`` (one transferability score per model, higher = predicted
better) and ``accuracies`` (the ground-truth fine-tuned accuracy of the same models, in the same
order).  The weighted Kendall tau exists in several conventions that give different numbers on
the same data; each has its own, explicitly named function - never mix them in one table:

``weighted_tau_scipy``
    ``scipy.stats.weightedtau(scores, accuracies)`` with its defaults (hyperbolic weigher
    ``1/(r+1)``, additive pair weights, average of the rankings by scores and by accuracies).
    Used by LogME/tllib, SFDA, PED, ETran and NCTI benchmark scripts.
``weighted_tau_modelspider``
    ``scipy.stats.weightedtau(accuracies, scores, rank=None)``: pair weights from the
    ground-truth ranking only (Model-Spider's README table).
``weighted_tau_itm``
    Eq. 1 of the ITM paper (arXiv 2510.23145): pairs weighted by ``1/(G_i + G_j)``, G the
    ground-truth ranks (1 = best), normalised by the sum of all pair weights.

Selection metrics: `top1_relative_accuracy` (accuracy of the top-scored model / best accuracy)
and `regret` (best accuracy - accuracy of the top-scored model, absolute or relative).
`rank_metrics` aligns two ``{model: value}`` dicts by name and computes everything.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "weighted_tau_scipy",
    "weighted_tau_modelspider",
    "weighted_tau_itm",
    "kendall_tau",
    "spearman_rho",
    "pearson_r",
    "top1_relative_accuracy",
    "regret",
    "rank_metrics",
]


def _pair(scores: Any, accuracies: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate two equally long 1-D finite float vectors with at least 2 models."""
    s = np.asarray(scores, dtype=np.float64)
    a = np.asarray(accuracies, dtype=np.float64)
    if s.ndim != 1 or a.ndim != 1:
        raise ValueError(
            f"scores and accuracies must be 1-D (one value per model); got shapes {s.shape}, {a.shape}"
        )
    if s.shape != a.shape:
        raise ValueError(f"scores ({s.size}) and accuracies ({a.size}) differ in length")
    if s.size < 2:
        raise ValueError(f"rank metrics need at least 2 models; got {s.size}")
    for name, v in (("scores", s), ("accuracies", a)):
        if not np.all(np.isfinite(v)):
            bad = np.nonzero(~np.isfinite(v))[0]
            raise ValueError(f"{name} contain NaN/inf at position(s) {bad.tolist()}")
    return s, a


def _undefined_if_constant(s: np.ndarray, a: np.ndarray) -> bool:
    return bool(np.ptp(s) == 0 or np.ptp(a) == 0)


def weighted_tau_scipy(scores: Any, accuracies: Any) -> float:
    """``scipy.stats.weightedtau(scores, accuracies)`` with defaults (SFDA/PED/ETran convention).

    NaN when either vector is constant (the correlation is undefined).
    """
    s, a = _pair(scores, accuracies)
    if _undefined_if_constant(s, a):
        return math.nan
    return float(stats.weightedtau(s, a).statistic)


def weighted_tau_modelspider(scores: Any, accuracies: Any) -> float:
    """``scipy.stats.weightedtau(accuracies, scores, rank=None)`` (Model-Spider's table).

    Pair weights follow the ground-truth ranking (best model = rank 0, hyperbolic weigher).
    NaN when either vector is constant.
    """
    s, a = _pair(scores, accuracies)
    if _undefined_if_constant(s, a):
        return math.nan
    return float(stats.weightedtau(a, s, rank=None).statistic)


def weighted_tau_itm(scores: Any, accuracies: Any) -> float:
    """Weighted Kendall tau of the ITM paper, Eq. 1.

    ``tau_w = sum_{i<j} w_ij sign[(G_i - G_j)(P_i - P_j)] / sum_{i<j} w_ij`` with
    ``w_ij = 1 / (G_i + G_j)``; G and P are the ranks (1..M, 1 = highest value; ties get their
    average rank) of the models by accuracy and by score.  Tied pairs contribute 0 to the
    numerator but keep their weight in the denominator.  Perfect agreement gives 1, a fully
    reversed order -1.
    """
    s, a = _pair(scores, accuracies)
    G = stats.rankdata(-a, method="average")
    P = stats.rankdata(-s, method="average")
    i, j = np.triu_indices(len(s), k=1)
    w = 1.0 / (G[i] + G[j])
    agree = np.sign((G[i] - G[j]) * (P[i] - P[j]))
    return float(np.sum(w * agree) / np.sum(w))


def _scipy_corr(fn: Any, s: np.ndarray, a: np.ndarray) -> float:
    if _undefined_if_constant(s, a):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(fn(s, a).statistic)


def kendall_tau(scores: Any, accuracies: Any) -> float:
    """Kendall's tau-b (``scipy.stats.kendalltau``); NaN when either vector is constant."""
    s, a = _pair(scores, accuracies)
    return _scipy_corr(stats.kendalltau, s, a)


def spearman_rho(scores: Any, accuracies: Any) -> float:
    """Spearman's rank correlation; NaN when either vector is constant."""
    s, a = _pair(scores, accuracies)
    return _scipy_corr(stats.spearmanr, s, a)


def pearson_r(scores: Any, accuracies: Any) -> float:
    """Pearson's linear correlation; NaN when either vector is constant."""
    s, a = _pair(scores, accuracies)
    return _scipy_corr(stats.pearsonr, s, a)


def _picked(s: np.ndarray, a: np.ndarray) -> int:
    """Index of the model the scores select; ties at the top resolve pessimistically."""
    top = np.flatnonzero(s == s.max())
    return int(top[np.argmin(a[top])])


def top1_relative_accuracy(scores: Any, accuracies: Any) -> float:
    """Accuracy of the highest-scored model divided by the best accuracy (1 = optimal pick).

    If several models share the highest score, the worst of them counts (pessimistic).
    Needs a positive best accuracy.
    """
    s, a = _pair(scores, accuracies)
    best = a.max()
    if best <= 0:
        raise ValueError("top1_relative_accuracy needs a positive best accuracy")
    return float(a[_picked(s, a)] / best)


def regret(scores: Any, accuracies: Any, *, relative: bool = False) -> float:
    """Best accuracy minus the accuracy of the highest-scored model (0 = optimal pick).

    ``relative=False``: absolute, in the accuracies' own units (e.g. percentage points).
    ``relative=True``: divided by the best accuracy (= 1 - `top1_relative_accuracy`).
    Ties at the top score resolve pessimistically.
    """
    s, a = _pair(scores, accuracies)
    best = a.max()
    gap = float(best - a[_picked(s, a)])
    if not relative:
        return gap
    if best <= 0:
        raise ValueError("relative regret needs a positive best accuracy")
    return gap / float(best)


def rank_metrics(scores: Mapping[str, float], accuracies: Mapping[str, float]) -> dict[str, float]:
    """All metrics above for ``{model: score}`` vs ``{model: accuracy}``, aligned by model name.

    Both dicts must name exactly the same models (at least 2), with finite values.
    """
    if not isinstance(scores, Mapping) or not isinstance(accuracies, Mapping):
        raise ValueError("rank_metrics takes two dicts: {model: score}, {model: accuracy}")
    missing_acc = sorted(set(scores) - set(accuracies))
    missing_score = sorted(set(accuracies) - set(scores))
    if missing_acc or missing_score:
        raise ValueError(
            "scores and accuracies name different models: "
            f"no accuracy for {missing_acc}, no score for {missing_score}"
        )
    models = sorted(scores)
    s, a = _pair([scores[m] for m in models], [accuracies[m] for m in models])
    out = {
        "weighted_tau_scipy": weighted_tau_scipy(s, a),
        "weighted_tau_modelspider": weighted_tau_modelspider(s, a),
        "weighted_tau_itm": weighted_tau_itm(s, a),
        "kendall_tau": kendall_tau(s, a),
        "spearman_rho": spearman_rho(s, a),
        "pearson_r": pearson_r(s, a),
        "regret": regret(s, a),
        "n_models": float(len(models)),
    }
    if a.max() > 0:
        out["top1_relative_accuracy"] = top1_relative_accuracy(s, a)
        out["relative_regret"] = regret(s, a, relative=True)
    else:
        out["top1_relative_accuracy"] = math.nan
        out["relative_regret"] = math.nan
    return out
