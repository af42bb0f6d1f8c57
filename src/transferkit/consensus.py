"""Combine several estimators' scores of one zoo into one consensus score, leaving out the uninformative.

Why: single transferability estimators disagree from dataset to dataset, tie, and saturate. The consensus
ranks the models by each *informative* method (ties share an averaged rank) or standardises its scores across the models, then
averages per model. Which aggregation and which method set is the default was chosen leave-one-dataset-out
on the offline benchmark (benchmarks/consensus_lodo.py, docs/recommend.md).

>>> agg = aggregate({"logme": {"a": 1.0, "b": 0.0}, "leep": {"a": -1.0, "b": -2.0}})   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
import numpy as np
from scipy.stats import rankdata


__all__ = [
    "AGGREGATIONS",
    "CONSENSUS_METHODS",
    "CONSENSUS_AGGREGATION",
    "NOISE_RTOL",
    "SEED_INSTABILITY_MIN_RHO",
    "Aggregate",
    "aggregate",
    "competition_ranks",
    "informative_reason",
    "seed_stability",
    "tie_groups",
    "tied_ranks",
    "zscores",
]

#: Scores closer than this (relative to the largest |score| of the zoo) are one value: float32 features and
#: iterative solvers leave differences of ~1e-7 relative that carry no ranking information.
NOISE_RTOL = 1e-6
#: A method whose rankings under different estimator seeds correlate (mean Spearman rho between seeds) below
#: this is "unstable across seeds". Measured on the offline zoo (EuroSAT, seeds 0-2): PACTran 0.98, NCTI 0.97,
#: NLEEP 0.95, ITM 0.54 (docs/recommend.md); 0.8 separates them.
SEED_INSTABILITY_MIN_RHO = 0.8
#: The default consensus, chosen leave-one-dataset-out (docs/recommend.md).
CONSENSUS_METHODS: tuple[str, ...] = ("leep", "parc", "etran")
CONSENSUS_AGGREGATION = "zscore_mean"


def tie_groups(scores: Mapping[str, float], rtol: float = NOISE_RTOL) -> list[list[str]]:
    """Models grouped by equal score (within `rtol` of the largest |score|), best group first."""
    items = sorted(scores.items(), key=lambda kv: -kv[1])
    if not items:
        return []
    scale = max(abs(v) for _, v in items)
    tol = rtol * scale if scale > 0 else 0.0
    groups = [[items[0][0]]]
    last = items[0][1]
    for m, v in items[1:]:
        if last - v <= tol:
            groups[-1].append(m)
        else:
            groups.append([m])
        last = v
    return groups


def tied_ranks(scores: Mapping[str, float], rtol: float = NOISE_RTOL) -> dict[str, float]:
    """Rank 1 = best; models tied within noise share the average of their ranks (as scipy's rankdata)."""
    out: dict[str, float] = {}
    start = 1
    for g in tie_groups(scores, rtol):
        r = start + (len(g) - 1) / 2.0
        out.update({m: r for m in g})
        start += len(g)
    return out


def competition_ranks(scores: Mapping[str, float], rtol: float = NOISE_RTOL) -> dict[str, str]:
    """Display ranks: '1', '=2', '=2', '4' (a tie shows '=' and the best rank of its group)."""
    out: dict[str, str] = {}
    start = 1
    for g in tie_groups(scores, rtol):
        out.update({m: (f"={start}" if len(g) > 1 else str(start)) for m in g})
        start += len(g)
    return out


def seed_stability(per_seed: Sequence[Mapping[str, float]]) -> float:
    """Mean Spearman rho between the model rankings of every pair of seeds (1 = seed-independent)."""
    if len(per_seed) < 2:
        return 1.0
    models = sorted(per_seed[0])
    ranks = [rankdata([-s[m] for m in models]) for s in per_seed]
    rhos = []
    for i in range(len(ranks)):
        for j in range(i + 1, len(ranks)):
            a, b = ranks[i] - ranks[i].mean(), ranks[j] - ranks[j].mean()
            den = float(np.sqrt((a * a).sum() * (b * b).sum()))
            rhos.append(float((a * b).sum() / den) if den > 0 else 0.0)
    return float(np.mean(rhos))


def informative_reason(scores: Mapping[str, float], per_seed: Sequence[Mapping[str, float]] = (),
                       *, rtol: float = NOISE_RTOL,
                       min_seed_rho: float = SEED_INSTABILITY_MIN_RHO) -> str | None:
    """Why a method says nothing about this zoo, or None when its scores are informative.

    Uninformative: fewer than two distinct values (saturated/constant), more than half of the models tied
    at one value (the ranking hangs on a tie), or rankings that change with the estimator seed
    (mean Spearman rho between seeds below `min_seed_rho`)."""
    n = len(scores)
    if n < 2:
        return "fewer than two models scored"
    groups = tie_groups(scores, rtol)
    if len(groups) == 1:
        return f"all {n} scores equal (saturated)"
    biggest = max(len(g) for g in groups)
    if biggest > n / 2:
        return f"{biggest} of {n} models tied at one score"
    if len(per_seed) >= 2:
        rho = seed_stability(per_seed)
        if rho < min_seed_rho:
            return (f"unstable across seeds {len(per_seed)}: rankings correlate at rho={rho:.2f} "
                    f"< {min_seed_rho}")
    return None


def zscores(scores: Mapping[str, float], rtol: float = NOISE_RTOL) -> dict[str, float]:
    """Scores standardised across the models (all equal within noise -> all 0)."""
    v = np.array(list(scores.values()), dtype=np.float64)
    sd = v.std()
    if sd <= rtol * max(np.abs(v).max(), 1e-300):
        return {m: 0.0 for m in scores}
    return {m: float((s - v.mean()) / sd) for m, s in scores.items()}


def _trimmed(values: np.ndarray) -> float:
    """Mean without the single highest and lowest value (plain mean with fewer than 4 values)."""
    if values.size < 4:
        return float(values.mean())
    return float(np.sort(values)[1:-1].mean())


#: Aggregations of per-method values into one consensus score (higher = better). Ranks enter as
#: (n_models - rank) so that every aggregation is "higher is better".
AGGREGATIONS: dict[str, str] = {
    "rank_mean": "mean over methods of the tie-averaged rank (Borda count up to a constant)",
    "rank_median": "median over methods of the tie-averaged rank",
    "zscore_mean": "mean over methods of the z-scored score (scores standardised across models)",
    "zscore_trimmed": "mean of z-scores without each model's best and worst method (4+ methods)",
}


@dataclass
class Aggregate:
    """Consensus of one zoo: score per model (higher = better), the methods used and those left out."""

    scores: dict[str, float]
    used: list[str]
    excluded: dict[str, str] = field(default_factory=dict)
    aggregation: str = CONSENSUS_AGGREGATION


def aggregate(method_scores: Mapping[str, Mapping[str, float]], aggregation: str = CONSENSUS_AGGREGATION, *,
              seed_scores: Mapping[str, Sequence[Mapping[str, float]]] | None = None,
              rtol: float = NOISE_RTOL, min_seed_rho: float = SEED_INSTABILITY_MIN_RHO) -> Aggregate:
    """Consensus score of every model from ``{method: {model: score}}`` (higher = better).

    Uninformative methods (see :func:`informative_reason`; `seed_scores` adds the seed check) are left out
    with their reason. If none is informative every model scores 0 (a tie: no recommendation)."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose from {', '.join(AGGREGATIONS)}")
    if not method_scores:
        raise ValueError("consensus needs at least one method's scores")
    models = list(next(iter(method_scores.values())))
    excluded: dict[str, str] = {}
    used: list[str] = []
    for method, s in method_scores.items():
        if set(s) != set(models):
            raise ValueError(f"consensus: method {method!r} scored {sorted(s)}, expected {sorted(models)}")
        reason = informative_reason(s, (seed_scores or {}).get(method, ()), rtol=rtol, min_seed_rho=min_seed_rho)
        if reason:
            excluded[method] = reason
        else:
            used.append(method)
    if not used:
        return Aggregate({m: 0.0 for m in models}, [], excluded, aggregation)
    n = len(models)
    per_method = [(tied_ranks if aggregation.startswith("rank") else zscores)(method_scores[k], rtol) for k in used]
    if aggregation.startswith("rank"):
        mat = np.array([[n - r[m] for m in models] for r in per_method])
    else:
        mat = np.array([[z[m] for m in models] for z in per_method])
    if aggregation in ("rank_mean", "zscore_mean"):
        col = mat.mean(axis=0)
    elif aggregation == "rank_median":
        col = np.median(mat, axis=0)
    else:
        col = np.array([_trimmed(mat[:, j]) for j in range(n)])
    return Aggregate({m: float(v) for m, v in zip(models, col)}, used, excluded, aggregation)
