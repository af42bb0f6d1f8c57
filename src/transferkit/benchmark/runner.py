"""Run a benchmark spec: features of the zoo on every dataset, every method's scores, rank metrics, timings.

Per dataset: features come from :func:`transferkit.features.extract_zoo` (content-addressed cache: a rerun
costs nothing), scores and per-method wall-clock from :func:`transferkit.ranking.rank_zoo`, the baseline rows
from :mod:`.baselines`, and the rank metrics against the ground truth from :func:`transferkit.metrics.rank_metrics`.
The stochastic methods (``STOCHASTIC_METHODS``: they read ``random_state``) are also scored at the spec's
``spread_seeds`` for the seed-spread check. :func:`rescore` recomputes every metric from saved scores and a
(new) ground truth: no model, no features.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..models import ModelEntry, resolve_model
from ..reporting import write_csv, write_json
from .spec import BenchmarkSpec, DatasetSpec

__all__ = ["STOCHASTIC_METHODS", "BenchmarkResult", "DatasetResult", "MethodOutcome", "feature_entries", "rescore",
           "run_benchmark"]

# Estimators whose score depends on random_state: ITM (random initialisation of its training), NLEEP (GMM /
# k-means initialisation), NCTI (randomized PCA), PACTran (random initial weights), linear_probe (fold
# assignment). PARC fixes its PCA seed upstream (1919) and kNN-1 is exact, so they are deterministic.
STOCHASTIC_METHODS = ("itm", "nleep", "ncti", "pactran", "linear_probe")


@dataclass
class MethodOutcome:
    """One method on one dataset: scores per model, wall-clock for the whole zoo, rank metrics."""

    method: str
    scores: dict[str, float]
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    note: str = ""


@dataclass
class DatasetResult:
    dataset: str
    accuracies: dict[str, float]
    methods: list[MethodOutcome]
    extract_seconds: dict[str, float] = field(default_factory=dict)
    n_images: int = 0
    missing_ground_truth: list[str] = field(default_factory=list)
    seed_scores: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # method -> seed -> scores


@dataclass
class BenchmarkResult:
    """All datasets of one run, with the tables the report and the plots are made of."""

    name: str
    primary_metric: str
    ground_truth: str | None
    methods: list[str]
    datasets: list[DatasetResult]
    info: dict[str, Any] = field(default_factory=dict)

    # -- tables ----------------------------------------------------------------------------------
    def table(self, metric: str | None = None) -> dict[str, dict[str, float]]:
        """``{method: {dataset: value}}`` of one metric (``seconds`` for the wall-clock); NaN where a
        method failed."""
        metric = metric or self.primary_metric
        out: dict[str, dict[str, float]] = {m: {} for m in self.methods}
        for d in self.datasets:
            for o in d.methods:
                v = o.seconds if metric == "seconds" else o.metrics.get(metric, math.nan)
                out.setdefault(o.method, {})[d.dataset] = float(v) if o.error is None else math.nan
        return out

    def average(self, metric: str | None = None) -> dict[str, float]:
        """Mean over datasets per method (NaN when a method failed anywhere: no partial averages)."""
        return {m: (float(np.mean(list(v.values()))) if v else math.nan) for m, v in self.table(metric).items()}

    def metric_rows(self) -> list[dict[str, Any]]:
        rows = []
        for d in self.datasets:
            for o in d.methods:
                rows.append({"dataset": d.dataset, "method": o.method, **o.metrics, "seconds": round(o.seconds, 4),
                             "n_models": len(o.scores), "n_images": d.n_images, "error": o.error or ""})
        return rows

    def score_rows(self) -> list[dict[str, Any]]:
        rows = []
        for d in self.datasets:
            for o in d.methods:
                for m, s in o.scores.items():
                    rows.append({"dataset": d.dataset, "method": o.method, "model": m, "score": s,
                                 "accuracy": d.accuracies.get(m, math.nan)})
        return rows

    # -- persistence -----------------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """``metrics.csv``, ``scores.csv`` and ``results.json`` (everything, for re-plotting) in ``out_dir``."""
        out = Path(out_dir)
        return {"metrics": write_csv(out / "metrics.csv", self.metric_rows()),
                "scores": write_csv(out / "scores.csv", self.score_rows()),
                "results": write_json(out / "results.json", asdict(self))}

    @classmethod
    def load(cls, path: str | Path) -> BenchmarkResult:
        """Read ``results.json`` written by :meth:`save` (a folder or the file)."""
        path = Path(path)
        if path.is_dir():
            path = path / "results.json"
        if not path.exists():
            raise FileNotFoundError(f"no benchmark results at {path}: run `transferkit bench` first")
        doc = json.loads(path.read_text())
        dsets = [DatasetResult(**{**d, "methods": [MethodOutcome(**o) for o in d["methods"]]})
                 for d in doc["datasets"]]
        return cls(**{**doc, "datasets": dsets})


def feature_entries(spec: BenchmarkSpec, dataset: DatasetSpec, models: list[ModelEntry]) -> list[ModelEntry]:
    """Zoo entries with the spec's resolution budget applied: ``input_size = min(img_size, native)`` and
    ``crop_pct = 1`` (shorter side resized, centre crop), as in the fine-tuning."""
    fo = spec.feature_options(dataset)
    out = []
    for e in models:
        opts = dict(e.options)
        if fo.img_size:
            native = int(resolve_model(e).data_config()["input_size"][-1])
            opts.update(input_size=min(int(fo.img_size), native), crop_pct=1.0)
        out.append(ModelEntry(e.name, e.spec, opts))
    return out


def _run_dataset(spec: BenchmarkSpec, ds: DatasetSpec, accuracies: dict[str, float], methods: list[str],
                 progress: bool, log: Callable[[str], None]) -> DatasetResult:
    from ..features import extract_zoo
    from ..metrics import rank_metrics
    from ..ranking import ZooFeatures, rank_zoo

    models = [e for e in spec.zoo if e.name in accuracies]
    missing = [e.name for e in spec.zoo if e.name not in accuracies]
    if missing:
        log(f"  {ds.name}: no ground truth for {', '.join(missing)}: left out")
    if len(models) < 2:
        raise ValueError(f"dataset {ds.name!r}: ground truth for {len(models)} model(s) of the zoo; need at least 2")
    fo = spec.feature_options(ds)
    sets = extract_zoo(feature_entries(spec, ds, models), ds.data, split=fo.split, cache_dir=fo.cache_dir,
                       per_class=fo.per_class, seed=spec.seed, batch_size=fo.batch_size, num_workers=fo.num_workers,
                       device=fo.device, progress=progress, precision=fo.precision)
    zoo = [ZooFeatures(name, fs.features, fs.labels, fs.probs) for name, fs in sets.items()]
    extract_s = {name: float(fs.metadata.get("seconds", math.nan)) for name, fs in sets.items()}
    outcomes = []
    for r in rank_zoo(zoo, methods, random_state=spec.seed, method_params=spec.method_params):
        failed = getattr(r, "failed", None) or {}
        o = MethodOutcome(r.method, {k: float(v) for k, v in r.scores.items()}, float(r.seconds), error=r.error,
                          note=("left out: " + "; ".join(f"{m} ({why})" for m, why in failed.items())) if failed
                          else "")
        if o.error is None:
            try:
                o.metrics = rank_metrics(o.scores, {m: accuracies[m] for m in o.scores})
            except ValueError as exc:
                o.error = f"rank metrics: {exc}"
        outcomes.append(o)
        status = f"{o.metrics.get(spec.primary_metric, math.nan):+.3f}" if o.error is None else f"failed: {o.error}"
        log(f"  {ds.name:>16} {o.method:<12} {spec.primary_metric}={status}  ({o.seconds:.2f} s)")
    acc = {m.name: accuracies[m.name] for m in models}
    if spec.baselines:
        from .baselines import baseline_outcomes

        for o in baseline_outcomes(models, acc, baselines=spec.baselines, cache_dir=fo.cache_dir, seed=spec.seed):
            outcomes.append(o)
            status = f"{o.metrics.get(spec.primary_metric, math.nan):+.3f}" if o.error is None else f"failed: {o.error}"
            log(f"  {ds.name:>16} {o.method:<12} {spec.primary_metric}={status}  (baseline)")
    seed_scores: dict[str, dict[str, dict[str, float]]] = {}
    stochastic = [o.method for o in outcomes if o.method in STOCHASTIC_METHODS and o.error is None]
    if stochastic and len(set(spec.spread_seeds) | {spec.seed}) > 1:
        for o in outcomes:
            if o.method in stochastic:
                seed_scores[o.method] = {str(spec.seed): dict(o.scores)}
        for s in sorted(set(spec.spread_seeds) - {spec.seed}):
            log(f"  {ds.name:>16} seed spread: {', '.join(stochastic)} at seed {s}")
            for r in rank_zoo(zoo, stochastic, random_state=s, method_params=spec.method_params):
                if r.error is None:
                    seed_scores[r.method][str(s)] = {k: float(v) for k, v in r.scores.items()}
    return DatasetResult(ds.name, acc, outcomes, extract_s, n_images=len(zoo[0].y), missing_ground_truth=missing,
                         seed_scores=seed_scores)


def run_benchmark(spec: BenchmarkSpec, *, progress: bool = True,
                  log: Callable[[str], None] = print) -> BenchmarkResult:
    """Score the spec's zoo with every method on every dataset and compare with the ground truth."""
    gt = spec.load_ground_truth()
    methods = spec.method_list()
    t0 = time.perf_counter()
    results = []
    for i, ds in enumerate(spec.datasets):
        if ds.name not in gt:
            raise ValueError(f"the ground truth has no dataset {ds.name!r} (it has {sorted(gt)})")
        log(f"[{i + 1}/{len(spec.datasets)}] {ds.name}: {len(spec.zoo)} models x {len(methods)} methods")
        results.append(_run_dataset(spec, ds, gt[ds.name], methods, progress, log))
    import platform

    import torch

    from ..finetune.run import relative_spec

    info = {"description": spec.description, "seconds_total": round(time.perf_counter() - t0, 2),
            "seed": spec.seed, "spec": spec.source,
            "zoo": {e.name: relative_spec(e.spec, spec.base_dir) for e in spec.zoo}, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
            "features": {d.name: {k: v for k, v in asdict(spec.feature_options(d)).items() if k != "cache_dir"}
                         for d in spec.datasets}}
    ran = {o.method for d in results for o in d.methods}
    extra = [b for b in spec.baselines if b not in methods and b in ran]
    return BenchmarkResult(spec.name, spec.primary_metric, spec.ground_truth, methods + extra, results, info)


def rescore(result: BenchmarkResult, ground_truth: dict[str, dict[str, float]]) -> BenchmarkResult:
    """Recompute every metric of ``result`` from its saved scores against ``ground_truth``
    (``{dataset: {model: accuracy}}``), in place; no model or feature is needed."""
    from .baselines import outcome_metrics

    seed = int(result.info.get("seed", 0))
    for d in result.datasets:
        if d.dataset not in ground_truth:
            raise ValueError(f"the ground truth has no dataset {d.dataset!r} (it has {sorted(ground_truth)})")
        gt = ground_truth[d.dataset]
        lacking = sorted(set(d.accuracies) - set(gt))
        if lacking:
            raise ValueError(f"{d.dataset}: the ground truth lacks {lacking}, which the saved scores cover")
        d.accuracies = {m: float(gt[m]) for m in d.accuracies}
        for o in d.methods:
            if o.error is None and o.scores:
                try:
                    o.metrics = outcome_metrics(o.method, o.scores, d.accuracies, seed)
                except ValueError as exc:
                    o.error = f"rank metrics: {exc}"
    return result
