"""What the report says beyond point values: bootstrap intervals, paired comparisons, stability checks, ties.

:func:`analyse` takes a :class:`~.runner.BenchmarkResult` (saved scores) and the per-image records of its
ground truth (next to the ground-truth CSV) and computes, without any model or feature:

* per method and dataset, and for the mean over datasets, the metric with a 95 % bootstrap interval over
  test images (:mod:`.uncertainty`; the ``random`` baseline gets a fresh random ranking per sample);
* the paired comparison: share of bootstrap samples in which method A's mean beats method B's;
* leave-one-model-out: τw with the best model of each dataset left out, and the lowest mean τw over leaving
  out any one model;
* the seed spread: the mean τw of each stochastic method at every estimator seed;
* ties: how many models share a score with another model (accuracy-based scores saturate on few-shot tasks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .runner import BenchmarkResult
from .uncertainty import (BootstrapGroundTruth, Interval, bootstrap_ground_truth, load_records, mean_interval,
                          metric_samples, paired_share, random_score_samples)

__all__ = ["Analysis", "INTERVAL_METRICS", "analyse", "lower_is_better", "tie_summary"]

INTERVAL_METRICS = ("weighted_tau_scipy", "regret")


def lower_is_better(metric: str) -> bool:
    return metric in ("regret", "relative_regret")


@dataclass
class Analysis:
    """Intervals and stability tables of one benchmark result (see the module docstring)."""

    n_boot: int
    level: float
    metrics: tuple[str, ...]
    per_dataset: dict[str, dict[str, dict[str, Interval]]] = field(default_factory=dict)  # metric->method->ds
    mean: dict[str, dict[str, Interval]] = field(default_factory=dict)  # metric -> method
    paired: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # metric -> A -> B -> share
    lomo: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> dataset -> τw w/o best model
    lomo_worst: dict[str, float] = field(default_factory=dict)  # method -> lowest mean τw, any one model out
    seed_spread: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> seed -> mean τw
    seed_spread_datasets: dict[str, float] = field(default_factory=dict)  # method -> max per-dataset range
    ground_truth: dict[str, dict[str, Interval]] = field(default_factory=dict)  # dataset -> model -> accuracy
    without_records: list[str] = field(default_factory=list)  # datasets without per-image records
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """``intervals.csv`` rows: method, dataset (or ``mean``), metric, point, low, high."""
        out = []
        for metric, by_method in self.per_dataset.items():
            for method, by_ds in by_method.items():
                for ds, iv in [*by_ds.items(), ("mean", self.mean[metric][method])]:
                    out.append({"method": method, "dataset": ds, "metric": metric, "point": iv.point,
                                "low": iv.low, "high": iv.high, "n_boot": self.n_boot})
        return out


def _records(result: BenchmarkResult, csv: Path | None, log: Any) -> tuple[dict[str, dict], list[str]]:
    recs, without = {}, []
    for d in result.datasets:
        if csv is None:
            without.append(d.dataset)
            continue
        try:
            r = load_records(csv, d.dataset, sorted(d.accuracies))
        except FileNotFoundError as exc:
            log(f"no intervals for {d.dataset}: {exc}")
            without.append(d.dataset)
            continue
        for m, rec in r.items():
            if abs(rec.accuracy - d.accuracies[m]) > 0.01:
                raise ValueError(f"{d.dataset} x {m}: the per-image records give {rec.accuracy:.4f} % but the "
                                 f"ground truth says {d.accuracies[m]:.4f} %; records and CSV are out of step")
        recs[d.dataset] = r
    return recs, without


def tie_summary(scores: dict[str, float]) -> tuple[int, int]:
    """(models sharing their score with another model, models tied at the top score)."""
    if not scores:
        return 0, 0
    v = np.array(list(scores.values()))
    _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
    return int(np.sum(counts[inv] > 1)), int(np.sum(v == v.max()))


def _lomo(result: BenchmarkResult, metric: str) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    from .baselines import random_expected_metrics
    from .batch_metrics import batch_metric

    seed = int(result.info.get("seed", 0))
    best_out: dict[str, dict[str, float]] = {}
    any_out: dict[str, dict[str, dict[str, float]]] = {}  # method -> left-out model -> ds -> value
    for d in result.datasets:
        best = max(d.accuracies, key=d.accuracies.get)
        for o in d.methods:
            if o.error is not None or len(o.scores) < 3:
                continue
            models = list(o.scores)
            keep = ~np.eye(len(models), dtype=bool)  # row k: every model but model k
            s = np.array([o.scores[m] for m in models])
            a = np.array([d.accuracies[m] for m in models])
            S, A = np.stack([s[r] for r in keep]), np.stack([a[r] for r in keep])
            if o.method == "random":
                vals = np.array([random_expected_metrics(dict(zip(np.array(models)[r], A[k])), seed)[metric]
                                 for k, r in enumerate(keep)])
            else:
                vals = batch_metric(S, A, metric)
            for out_model, v in zip(models, vals):
                any_out.setdefault(o.method, {}).setdefault(out_model, {})[d.dataset] = float(v)
                if out_model == best:
                    best_out.setdefault(o.method, {})[d.dataset] = float(v)
    n = len(result.datasets)
    worst = {}
    for method, by_model in any_out.items():
        # leaving out model k on every dataset where it is in the zoo
        means = [float(np.mean(list(v.values()))) for v in by_model.values() if len(v) == n]
        worst[method] = min(means) if means else math.nan
    return best_out, worst


def analyse(result: BenchmarkResult, ground_truth_csv: str | Path | None, *, n_boot: int = 1000,
            seed: int | None = None, level: float = 0.95, metrics: Sequence[str] = INTERVAL_METRICS,
            log: Any = print) -> Analysis:
    """Intervals, paired comparisons and stability checks of ``result`` (see the module docstring)."""
    seed = int(result.info.get("seed", 0)) if seed is None else int(seed)
    metrics = tuple(dict.fromkeys([result.primary_metric, *metrics]))
    csv = Path(ground_truth_csv) if ground_truth_csv else None
    recs, without = _records(result, csv, log)
    boot: dict[str, BootstrapGroundTruth] = bootstrap_ground_truth(recs, n_boot, seed) if recs else {}
    an = Analysis(n_boot, level, metrics, without_records=without)
    table_by_metric = {m: result.table(m) for m in metrics}
    for metric in metrics:
        per: dict[str, dict[str, Interval]] = {}
        samples: dict[str, dict[str, np.ndarray]] = {}
        for d in result.datasets:
            b = boot.get(d.dataset)
            for o in d.methods:
                pt = table_by_metric[metric].get(o.method, {}).get(d.dataset, math.nan)
                if o.error is not None or b is None:
                    per.setdefault(o.method, {})[d.dataset] = Interval(pt, math.nan, math.nan)
                    continue
                if o.method == "random":
                    _, s = random_score_samples(b, metric, seed, models=list(o.scores))
                else:
                    s = metric_samples(o.scores, b, metric)
                samples.setdefault(o.method, {})[d.dataset] = s
                q = 100.0 * (1 - level) / 2
                fin = s[np.isfinite(s)]
                lo, hi = (np.percentile(fin, [q, 100 - q]) if fin.size else (math.nan, math.nan))
                per.setdefault(o.method, {})[d.dataset] = Interval(pt, float(lo), float(hi))
        an.per_dataset[metric] = per
        an.mean[metric] = {}
        mean_samples: dict[str, np.ndarray] = {}
        for method in result.methods:
            by_ds = per.get(method, {})
            pts = {d.dataset: by_ds.get(d.dataset, Interval(math.nan, math.nan, math.nan)).point
                   for d in result.datasets}
            have = samples.get(method, {})
            if len(have) == len(result.datasets) and not without:
                iv = mean_interval(have, pts, level)
                mean_samples[method] = np.mean(np.stack(list(have.values())), axis=0)
            else:
                p = [pts[k] for k in pts]
                iv = Interval(float(np.mean(p)) if p and all(np.isfinite(p)) else math.nan, math.nan, math.nan)
            an.mean[metric][method] = iv
        sign = -1.0 if lower_is_better(metric) else 1.0
        an.paired[metric] = {a: {b: paired_share(sign * sa, sign * sb) for b, sb in mean_samples.items()}
                             for a, sa in mean_samples.items()}
    for d in result.datasets:
        b = boot.get(d.dataset)
        an.ground_truth[d.dataset] = {}
        for m, acc in d.accuracies.items():
            if b is None:
                an.ground_truth[d.dataset][m] = Interval(acc, math.nan, math.nan)
            else:
                s = b.samples[:, b.columns([m])[0]]
                lo, hi = np.percentile(s, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
                an.ground_truth[d.dataset][m] = Interval(acc, float(lo), float(hi))
    an.lomo, an.lomo_worst = _lomo(result, result.primary_metric)
    _seed_spread(result, an)
    return an


def _seed_spread(result: BenchmarkResult, an: Analysis) -> None:
    from ..metrics import rank_metrics

    metric = result.primary_metric
    per: dict[str, dict[str, dict[str, float]]] = {}  # method -> seed -> dataset -> value
    for d in result.datasets:
        for method, by_seed in d.seed_scores.items():
            for s, scores in by_seed.items():
                try:
                    v = rank_metrics(scores, {m: d.accuracies[m] for m in scores}).get(metric, math.nan)
                except ValueError:
                    v = math.nan
                per.setdefault(method, {}).setdefault(s, {})[d.dataset] = v
    n = len(result.datasets)
    for method, by_seed in per.items():
        an.seed_spread[method] = {s: (float(np.mean(list(v.values()))) if len(v) == n else math.nan)
                                  for s, v in sorted(by_seed.items(), key=lambda kv: int(kv[0]))}
        ranges = []
        for d in result.datasets:
            vals = [by_seed[s].get(d.dataset, math.nan) for s in by_seed]
            vals = [v for v in vals if np.isfinite(v)]
            if len(vals) > 1:
                ranges.append(max(vals) - min(vals))
        an.seed_spread_datasets[method] = max(ranges) if ranges else math.nan
