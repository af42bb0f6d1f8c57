"""Leave-one-dataset-out choice of a ranking rule (a single estimator or a consensus of several).

Why: a rule chosen on the same tasks it is scored on looks better than it is (the issue behind this module
saw a consensus fall from tau_w 0.80 in-sample to 0.33 on new data). Here every held-out task is scored with
the rule picked on the *other* tasks; a dataset and its few-shot variant (``<name>_10shot``) are held out
together so that the choice never sees the held-out images.

>>> tasks = [Task("a", {"m": {"x": 1.0, "y": 0.0}}, {"x": 0.9, "y": 0.5}), ...]        # doctest: +SKIP
>>> outcome = leave_one_dataset_out(candidate_rules(["m", "n"]), tasks)               # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .consensus import AGGREGATIONS, aggregate
from .metrics import regret, weighted_tau_scipy

__all__ = ["Rule", "Task", "HeldOut", "LodoOutcome", "candidate_rules", "dataset_group", "evaluate_rules",
           "select_rule", "leave_one_dataset_out", "bootstrap_mean_interval"]

FEW_SHOT_SUFFIXES = ("_10shot", "_5shot", "_1shot")


def dataset_group(task: str) -> str:
    """The dataset a task belongs to: ``eurosat_10shot`` and ``eurosat`` are one group."""
    for suf in FEW_SHOT_SUFFIXES:
        if task.endswith(suf):
            return task[: -len(suf)]
    return task


@dataclass(frozen=True)
class Rule:
    """A ranking rule: one method (``aggregation=None``) or a consensus of methods."""

    methods: tuple[str, ...]
    aggregation: str | None = None

    @property
    def name(self) -> str:
        if self.aggregation is None:
            return self.methods[0]
        return f"{self.aggregation}({'+'.join(self.methods)})"

    @property
    def is_single(self) -> bool:
        return self.aggregation is None

    def scores(self, method_scores: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        """Model scores of this rule on one task (uninformative ingredients left out, as in `rank`)."""
        if self.is_single:
            return dict(method_scores[self.methods[0]])
        return aggregate({m: method_scores[m] for m in self.methods}, self.aggregation).scores


@dataclass
class Task:
    """One benchmark task: every method's scores of the zoo and the fine-tuned accuracies."""

    name: str
    method_scores: dict[str, dict[str, float]]
    accuracies: dict[str, float]
    group: str = ""

    def __post_init__(self) -> None:
        self.group = self.group or dataset_group(self.name)


def candidate_rules(methods: Sequence[str], sizes: Iterable[int] = (2, 3),
                    aggregations: Iterable[str] = tuple(AGGREGATIONS), singles: bool = True) -> list[Rule]:
    """Every single method plus every aggregation of every `sizes`-subset of `methods`."""
    methods = sorted(set(methods))
    rules = [Rule((m,)) for m in methods] if singles else []
    for k in sizes:
        for combo in itertools.combinations(methods, k):
            rules += [Rule(combo, a) for a in aggregations]
    return rules


_METRICS: dict[str, Callable[[Sequence[float], Sequence[float]], float]] = {
    "weighted_tau_scipy": weighted_tau_scipy, "regret": regret}


def evaluate_rules(rules: Sequence[Rule], tasks: Sequence[Task],
                   metrics: Sequence[str] = ("weighted_tau_scipy", "regret")) -> dict[Rule, dict[str, dict[str, float]]]:
    """``{rule: {task: {metric: value}}}``; a rule whose methods a task lacks gets NaN there."""
    out: dict[Rule, dict[str, dict[str, float]]] = {}
    for rule in rules:
        per_task = {}
        for t in tasks:
            if any(m not in t.method_scores for m in rule.methods):
                per_task[t.name] = {k: math.nan for k in metrics}
                continue
            sc = rule.scores(t.method_scores)
            models = sorted(t.accuracies)
            s, a = [sc[m] for m in models], [t.accuracies[m] for m in models]
            per_task[t.name] = {k: float(_METRICS[k](s, a)) for k in metrics}
        out[rule] = per_task
    return out


#: How a rule is chosen on the training tasks: the highest mean tau_w, ties broken by the lower mean regret.
def _criterion(values: Mapping[str, Mapping[str, float]], tasks: Sequence[str]) -> tuple[float, float]:
    tau = [values[t]["weighted_tau_scipy"] for t in tasks]
    reg = [values[t]["regret"] for t in tasks]
    if any(math.isnan(v) for v in tau + reg):
        return (-math.inf, -math.inf)
    return (float(np.mean(tau)), -float(np.mean(reg)))


def select_rule(table: Mapping[Rule, Mapping[str, Mapping[str, float]]], tasks: Sequence[str],
                allowed: Callable[[Rule], bool] = lambda r: True,
                criterion: Callable[[Mapping[str, Mapping[str, float]], Sequence[str]], tuple] = _criterion) -> Rule:
    """The allowed rule with the best criterion on `tasks` (deterministic: ties go to the earlier rule)."""
    best, best_key = None, None
    for rule, values in table.items():
        if not allowed(rule):
            continue
        key = criterion(values, tasks)
        if best_key is None or key > best_key:
            best, best_key = rule, key
    if best is None:
        raise ValueError("no candidate rule is allowed")
    return best


@dataclass
class HeldOut:
    """One held-out task: the rule chosen without it and that rule's metrics on it."""

    task: str
    rule: Rule
    metrics: dict[str, float]


@dataclass
class LodoOutcome:
    """Per selection family ('any', 'single', 'consensus'): held-out results; plus the in-sample choices."""

    held_out: dict[str, list[HeldOut]]
    chosen_on_all: dict[str, Rule]
    table: dict[Rule, dict[str, dict[str, float]]] = field(repr=False, default_factory=dict)

    def mean(self, family: str, metric: str) -> float:
        return float(np.mean([h.metrics[metric] for h in self.held_out[family]]))


FAMILIES: dict[str, Callable[[Rule], bool]] = {
    "any": lambda r: True,
    "single": lambda r: r.is_single,
    "consensus": lambda r: not r.is_single,
}
#: sizes of the "top-k" consensus family: the k best single methods on the training tasks, aggregated
TOP_K = (2, 3, 4, 5)


class _LazyTable(dict):
    """``{rule: {task: metrics}}`` filled on first use (top-k rules depend on the training fold)."""

    def __init__(self, tasks: Sequence[Task]) -> None:
        super().__init__()
        self.tasks = list(tasks)

    def get_rule(self, rule: Rule) -> dict[str, dict[str, float]]:
        if rule not in self:
            self.update(evaluate_rules([rule], self.tasks))
        return self[rule]


def top_k_rules(table: _LazyTable, train: Sequence[str], singles: Sequence[Rule],
                ks: Iterable[int] = TOP_K, aggregations: Iterable[str] = tuple(AGGREGATIONS)) -> list[Rule]:
    """Consensus of the k single methods that are best on `train` (by the selection criterion)."""
    order = sorted(singles, key=lambda r: _criterion(table.get_rule(r), train), reverse=True)
    rules = []
    for k in ks:
        if k <= len(order):
            methods = tuple(sorted(r.methods[0] for r in order[:k]))
            rules += [Rule(methods, a) for a in aggregations]
    for r in rules:
        table.get_rule(r)
    return rules


def leave_one_dataset_out(rules: Sequence[Rule], tasks: Sequence[Task], *,
                          top_k: Iterable[int] = TOP_K) -> LodoOutcome:
    """For each dataset group: choose a rule on the other groups' tasks, score it on the group's tasks.

    Families: ``single`` (one method), ``consensus`` (any multi-method rule in `rules`), ``top_k`` (an
    aggregation of the k best single methods of the training tasks, k and aggregation chosen there too) and
    ``any`` (the best of `rules` and the top-k rules)."""
    if len({t.group for t in tasks}) < 2:
        raise ValueError("leave-one-dataset-out needs tasks from at least two datasets")
    table = _LazyTable(tasks)
    table.update(evaluate_rules(rules, tasks))
    singles = [r for r in rules if r.is_single]
    top_k = tuple(top_k)
    fams = [*FAMILIES, "top_k"]
    held: dict[str, list[HeldOut]] = {f: [] for f in fams}

    def choose(train: Sequence[str]) -> dict[str, Rule]:
        base = {fam: select_rule({r: table[r] for r in rules}, train, allowed) for fam, allowed in FAMILIES.items()
                if any(allowed(r) for r in rules)}
        tk = top_k_rules(table, train, singles, top_k) if singles and top_k else []
        if tk:
            base["top_k"] = select_rule({r: table[r] for r in tk}, train)
            cands = {base["any"]: table[base["any"]], base["top_k"]: table[base["top_k"]]}
            base["any"] = select_rule(cands, train)
        return base

    for group in sorted({t.group for t in tasks}):
        train = [t.name for t in tasks if t.group != group]
        for fam, rule in choose(train).items():
            for t in tasks:
                if t.group == group:
                    held[fam].append(HeldOut(t.name, rule, dict(table[rule][t.name])))
    chosen = choose([t.name for t in tasks])
    return LodoOutcome({f: h for f, h in held.items() if h}, chosen, dict(table))


def bootstrap_mean_interval(values: Sequence[float], n_boot: int = 10000, level: float = 0.95,
                            seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean by resampling the values (here: tasks) with replacement."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)
