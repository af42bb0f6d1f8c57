"""One answer a user can act on: which model to fine-tune, the consensus ranking, and how sure it is.

>>> rec = recommend(zoo)                        # zoo: list of ZooFeatures (or {name: X} with labels=y)  # doctest: +SKIP
>>> rec.model, rec.confidence                                                                        # doctest: +SKIP

Every method runs on the zoo (stochastic ones once per seed, deterministic ones once); a method whose scores
are saturated, mostly tied or unstable across seeds is reported as uninformative and left out; the consensus
(:mod:`transferkit.consensus`, chosen leave-one-dataset-out) of the informative ingredients ranks the models.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .consensus import (CONSENSUS_AGGREGATION, CONSENSUS_METHODS, NOISE_RTOL, zscores, aggregate,
                        competition_ranks, informative_reason, seed_stability, tied_ranks)

__all__ = ["STOCHASTIC_METHODS", "MethodSummary", "ModelRow", "Recommendation", "recommend", "summarize"]

#: Methods whose score depends on the estimator seed (k-means/GMM, random initialisation, randomized PCA,
#: training); every other registered method gives bit-identical scores for every seed
#: (tests/recommend/test_seeds.py checks the deterministic ones), so it runs once.
STOCHASTIC_METHODS = frozenset({"nleep", "pactran", "itm", "ncti", "linear_probe"})


@dataclass
class MethodSummary:
    """One method on the zoo: mean and std over seeds, display ranks (ties as '=2'), informativeness."""

    method: str
    scores: dict[str, float]
    std: dict[str, float]
    seeds: list[int]
    seconds: float
    ranks: dict[str, str] = field(default_factory=dict)
    seed_rho: float | None = None
    uninformative: str | None = None
    error: str | None = None
    per_seed: list[dict[str, float]] = field(default_factory=list)

    @property
    def informative(self) -> bool:
        return self.error is None and self.uninformative is None


@dataclass
class ModelRow:
    """A model in the consensus: score, display rank, and how many informative methods rank it 1st / top 3."""

    model: str
    consensus: float
    rank: str
    n_first: int
    n_top3: int


@dataclass
class Recommendation:
    """The answer of :func:`recommend` (``model`` is None when nothing on this zoo is informative)."""

    model: str | None
    confidence: str
    ranking: list[ModelRow]
    methods: dict[str, MethodSummary]
    consensus_methods: list[str]
    used: list[str]
    excluded: dict[str, str]
    aggregation: str
    margin: float
    spread: float
    n_informative: int
    results: list[Any] = field(default_factory=list, repr=False)  # rank_zoo's MethodResults of the first seed

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("results")
        return out

    def table_rows(self) -> list[dict[str, Any]]:
        """The consensus table (one row per model, best first)."""
        n = self.n_informative
        return [{"rank": r.rank, "model": r.model, "consensus": r.consensus,
                 "first": f"{r.n_first}/{n}", "top3": f"{r.n_top3}/{n}"} for r in self.ranking]


def _zoo_inputs(zoo: Any, labels: Any, source_probs: Mapping[str, Any] | None):
    from .ranking import ZooFeatures

    if isinstance(zoo, Mapping):
        if labels is None:
            raise ValueError("recommend({name: features}, labels): labels are required with a feature dict")
        return [ZooFeatures(k, np.asarray(v), np.asarray(labels), (source_probs or {}).get(k)) for k, v in zoo.items()]
    zoo = list(zoo)
    if not zoo or not all(isinstance(z, ZooFeatures) for z in zoo):
        raise ValueError("recommend: give a list of ZooFeatures or a {model: features} dict with labels")
    return zoo


def summarize(method: str, per_seed: Sequence[Mapping[str, float]], seeds: Sequence[int], seconds: float,
              error: str | None = None, rtol: float = NOISE_RTOL, models: Sequence[str] = ()) -> MethodSummary:
    """Mean/std over seeds, tie-aware display ranks and the informativeness check of one method."""
    if error is not None or not per_seed:
        return MethodSummary(method, {}, {}, list(seeds), seconds, error=error or "no scores")
    missing = [m for m in models if any(m not in s for s in per_seed)]
    models = [m for m in per_seed[0] if all(m in s for s in per_seed)]
    per_seed = [{m: s[m] for m in models} for s in per_seed]
    arr = np.array([[s[m] for m in models] for s in per_seed], dtype=np.float64)
    mean = {m: float(v) for m, v in zip(models, arr.mean(axis=0))}
    std = {m: float(v) for m, v in zip(models, arr.std(axis=0))}
    return MethodSummary(method, mean, std, list(seeds), seconds, ranks=competition_ranks(mean, rtol),
                         seed_rho=seed_stability(per_seed) if len(per_seed) > 1 else None,
                         uninformative=(f"did not score {', '.join(missing)}" if missing else
                                        informative_reason(mean, per_seed, rtol=rtol)),
                         per_seed=[dict(s) for s in per_seed])


def _confidence(first: str, second: str | None, per_method: Mapping[str, Sequence[Mapping[str, float]]],
                consensus: Mapping[str, float], aggregation: str) -> tuple[str, float, float]:
    """One line: the margin of the first over the second model against its spread over the ingredients and
    seeds. Each (method, seed) casts a margin in the consensus' own units (rank points for rank
    aggregations, standard deviations across the zoo for z-score ones); the consensus margin is compared with
    the standard error of those margins."""
    if second is None:
        return f"only one model: {first}", math.nan, math.nan
    margin = consensus[first] - consensus[second]
    ranks = aggregation.startswith("rank")
    votes = []
    for per_seed in per_method.values():
        for s in per_seed:
            v = tied_ranks(s) if ranks else zscores(s, NOISE_RTOL)
            votes.append(v[second] - v[first] if ranks else v[first] - v[second])  # > 0: `first` ahead
    spread = float(np.std(votes, ddof=1)) if len(votes) > 1 else 0.0
    agree = sum(v > 0 for v in votes)
    if margin <= 0:
        return (f"no clear winner: {first} and {second} tie in the consensus; fine-tune both if you can",
                margin, spread)
    z = margin / (spread / math.sqrt(len(votes))) if spread > 0 else math.inf
    unit = "rank points" if ranks else "standard deviations of the zoo's scores"
    what = (f"{first} leads {second} by {margin:.2f} {unit}; {agree} of {len(votes)} "
            "informative ingredient runs put it ahead")
    if z >= 3 and agree == len(votes):
        return f"confident: {what}", margin, spread
    if z >= 1.5:
        return f"fairly confident: {what} (margin {z:.1f} x its standard error)", margin, spread
    return (f"not confident: {what} (margin only {z:.1f} x its standard error); consider fine-tuning "
            f"{first} and {second}", margin, spread)


def recommend(zoo: Any, labels: Any = None, *, methods: Sequence[str] | None = None,
              seeds: Sequence[int] = (0,), consensus_methods: Sequence[str] = CONSENSUS_METHODS,
              aggregation: str = CONSENSUS_AGGREGATION, source_probs: Mapping[str, Any] | None = None,
              method_params: Mapping[str, Mapping[str, Any]] | None = None,
              on_method: Callable[[str], None] | None = None) -> Recommendation:
    """Score the zoo with `methods` (plus the consensus ingredients) and recommend a model.

    `zoo`: a list of :class:`~transferkit.ranking.ZooFeatures`, or ``{model: features}`` with `labels` (and
    optional ``source_probs={model: P}``). Stochastic methods run once per seed in `seeds`, deterministic ones
    once. Returns a :class:`Recommendation`: the model, a one-line confidence statement, the consensus ranking
    (ties shown as '=2'), every method's mean/std and the reason a method was left out."""
    from .ranking import DEFAULT_METHODS, rank_zoo

    zoo = _zoo_inputs(zoo, labels, source_probs)
    seeds = list(dict.fromkeys(int(s) for s in seeds)) or [0]
    wanted = list(dict.fromkeys(m.lower().replace("-", "_") for m in (methods or DEFAULT_METHODS)))
    ingredients = [m.lower().replace("-", "_") for m in consensus_methods]
    run = wanted + [m for m in ingredients if m not in wanted]
    per_seed: dict[str, list[dict[str, float]]] = {m: [] for m in run}
    seconds = {m: 0.0 for m in run}
    errors: dict[str, str] = {}
    first: list[Any] = []
    for i, seed in enumerate(seeds):
        todo = [m for m in run if m not in errors and (i == 0 or m in STOCHASTIC_METHODS)]
        if not todo:
            continue
        res = rank_zoo(zoo, todo, random_state=seed, method_params=method_params,
                       on_method=on_method if i == 0 else None)
        if i == 0:
            first = list(res)
        for r in res:
            seconds[r.method] += r.seconds
            if r.error:
                errors[r.method] = r.error
            else:
                per_seed[r.method].append(dict(r.scores))
    ran_seeds = {m: (seeds if m in STOCHASTIC_METHODS else seeds[:1]) for m in run}
    names = [z.name for z in zoo]
    summaries = {m: summarize(m, per_seed[m], ran_seeds[m], seconds[m], errors.get(m), models=names) for m in run}
    rec = _recommendation(zoo_names=names, summaries=summaries, ingredients=ingredients, aggregation=aggregation)
    rec.results = first
    return rec


def _recommendation(zoo_names: Sequence[str], summaries: Mapping[str, MethodSummary], ingredients: Sequence[str],
                    aggregation: str) -> Recommendation:
    excluded = {m: (s.error or s.uninformative or "") for m, s in summaries.items()
                if m in ingredients and not s.informative}
    usable = {m: summaries[m] for m in ingredients if summaries[m].informative}
    if usable:
        agg = aggregate({m: s.scores for m, s in usable.items()}, aggregation,
                        seed_scores={m: s.per_seed for m, s in usable.items()})
        consensus = agg.scores
        used = agg.used
        excluded.update(agg.excluded)
    else:
        consensus, used = {m: 0.0 for m in zoo_names}, []
    informative = [s for s in summaries.values() if s.informative]
    firsts = {m: 0 for m in zoo_names}
    top3 = {m: 0 for m in zoo_names}
    for s in informative:
        ranks = tied_ranks(s.scores)
        best = min(ranks.values())
        for m, r in ranks.items():
            firsts[m] += int(r == best)
            top3[m] += int(r <= 3)
    display = competition_ranks(consensus)
    order = sorted(zoo_names, key=lambda m: (-consensus[m], -firsts[m], m))
    rows = [ModelRow(m, consensus[m], display[m], firsts[m], top3[m]) for m in order]
    if not used:
        why = "; ".join(f"{m}: {r}" for m, r in excluded.items()) or "no consensus ingredient ran"
        return Recommendation(None, f"no recommendation: no consensus ingredient is informative here ({why})",
                              rows, dict(summaries), list(ingredients), [], excluded, aggregation, math.nan,
                              math.nan, len(informative))
    groups_top = [m for m in order if display[m] == display[order[0]]]
    second = order[1] if len(order) > 1 else None
    line, margin, spread = _confidence(order[0], second, {m: usable[m].per_seed for m in used}, consensus,
                                       aggregation)
    model = order[0] if len(groups_top) == 1 else None
    if model is None:
        line = f"no single winner: {', '.join(groups_top)} tie at the top of the consensus; fine-tune them all if you can"
    return Recommendation(model, line, rows, dict(summaries), list(ingredients), used, excluded, aggregation,
                          margin, spread, len(informative))
