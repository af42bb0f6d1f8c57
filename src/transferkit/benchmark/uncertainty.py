"""Bootstrap intervals for benchmark metrics: resample the test images behind the ground truth.

The ground truth of a (model, dataset) pair is the best test accuracy over the fine-tuning grid and epochs.
``transferkit finetune`` keeps the predicted class of every test image after every epoch of every grid
point (``<csv stem>_predictions/<model>__<dataset>.npz``, see :func:`transferkit.finetune.records_path`), so
the ground truth can be recomputed on a resampled test set *with the selection over grid and epochs inside
the bootstrap*. Per dataset, each bootstrap sample draws the test images with replacement (the same draw for
every model of the zoo: they were tested on the same images), recomputes every model's accuracy as the best
over (grid point, epoch), and a method's metric is recomputed against its fixed scores. Datasets are
resampled independently; the mean over datasets of sample b uses sample b of every dataset.

Public API (other modules put intervals on their own comparisons with it)::

    from transferkit.benchmark.uncertainty import (load_records, bootstrap_ground_truth, metric_samples,
                                                   metric_interval, mean_interval, paired_share)
    recs = {ds: load_records("groundtruth.csv", ds, models) for ds in datasets}   # {dataset: {model: ...}}
    boot = bootstrap_ground_truth(recs, n_boot=1000, seed=0)       # {dataset: BootstrapGroundTruth}
    boot["eurosat"].samples                                        # (B, n_models) accuracies in %
    iv = metric_interval(scores, boot["eurosat"], "weighted_tau_scipy")   # Interval(point, low, high)
    ivs = metric_intervals(scores_by_ds, boot, "weighted_tau_scipy")      # {dataset: Interval, "mean": Interval}
    per_ds = {ds: metric_samples(scores_by_ds[ds], boot[ds], "regret") for ds in datasets}
    mean_iv = mean_interval(per_ds, points)                        # the mean over datasets
    paired_share(samples_a, samples_b)                             # P(a > b) over samples, ties count 1/2

``scores`` are ``{model: score}`` (a subset of the zoo is fine: the other columns are dropped). Metrics are
those of :mod:`transferkit.benchmark.batch_metrics` (vectorized; equal to :mod:`transferkit.metrics`).
Intervals are percentile intervals; ``level=0.95`` by default. Everything is seeded: the draw of a dataset
depends on ``(seed, dataset name)`` only, so adding a dataset leaves the others' samples unchanged.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .batch_metrics import batch_metric

__all__ = ["BootstrapGroundTruth", "Interval", "PairRecords", "bootstrap_ground_truth", "dataset_rng",
           "load_records", "mean_interval", "metric_interval", "metric_intervals", "metric_samples", "paired_share",
           "random_score_samples"]


@dataclass(frozen=True)
class PairRecords:
    """Per-image records of one (model, dataset) fine-tuning: predicted classes per grid point and epoch."""

    predictions: np.ndarray  # (grid points, epochs, n_test) int
    labels: np.ndarray  # (n_test,)
    test_fingerprint: str = ""

    def correct(self) -> np.ndarray:
        """(grid points x epochs, n_test) bool: which test images each (grid point, epoch) got right."""
        p = np.asarray(self.predictions)
        if p.ndim != 3 or p.shape[-1] != self.labels.shape[0]:
            raise ValueError(f"predictions of shape {p.shape} do not match {self.labels.shape[0]} test labels")
        return (p == self.labels).reshape(-1, p.shape[-1])

    @property
    def accuracy(self) -> float:
        """The ground truth: best accuracy (%) over grid points and epochs on the whole test set."""
        return float(self.correct().mean(axis=1).max() * 100.0)

    @classmethod
    def load(cls, path: str | Path) -> PairRecords:
        with np.load(path, allow_pickle=False) as z:
            if "predictions" not in z or "labels" not in z:
                raise ValueError(f"{path}: not a per-image record file (needs 'predictions' and 'labels')")
            fp = str(z["test_fingerprint"]) if "test_fingerprint" in z else ""
            return cls(np.asarray(z["predictions"]), np.asarray(z["labels"]), fp)


def load_records(ground_truth_csv: str | Path, dataset: str, models: Sequence[str]) -> dict[str, PairRecords]:
    """The records of ``models`` on ``dataset`` next to a ground-truth CSV; FileNotFoundError names the
    missing pairs."""
    from ..finetune import records_path

    paths = {m: records_path(ground_truth_csv, m, dataset) for m in models}
    missing = [m for m, p in paths.items() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"no per-image records for {dataset} x {', '.join(missing)} "
                                f"(expected e.g. {paths[missing[0]]}); recompute them with `transferkit finetune`")
    return {m: PairRecords.load(p) for m, p in paths.items()}


@dataclass(frozen=True)
class BootstrapGroundTruth:
    """Ground truth of one dataset on the full test set (``point``) and on ``B`` resamples (``samples``)."""

    dataset: str
    models: tuple[str, ...]
    point: np.ndarray  # (M,) accuracy in %
    samples: np.ndarray  # (B, M) accuracy in %
    n_test: int

    @property
    def n_boot(self) -> int:
        return int(self.samples.shape[0])

    def columns(self, models: Sequence[str]) -> np.ndarray:
        index = {m: i for i, m in enumerate(self.models)}
        missing = [m for m in models if m not in index]
        if missing:
            raise ValueError(f"{self.dataset}: no bootstrap ground truth for {missing}")
        return np.array([index[m] for m in models], dtype=np.intp)


def dataset_rng(seed: int, dataset: str, stream: int = 0) -> np.random.Generator:
    """The generator of one dataset: depends on (seed, dataset name, stream) only."""
    return np.random.default_rng([int(seed), zlib.crc32(dataset.encode()), int(stream)])


def _check_same_test_set(dataset: str, records: Mapping[str, PairRecords]) -> np.ndarray:
    models = list(records)
    labels = records[models[0]].labels
    for m in models[1:]:
        r = records[m]
        fp0, fp = records[models[0]].test_fingerprint, r.test_fingerprint
        if r.labels.shape != labels.shape or not np.array_equal(r.labels, labels) or (fp0 and fp and fp0 != fp):
            raise ValueError(f"{dataset}: {m} and {models[0]} were not tested on the same images "
                             "(labels or test fingerprint differ); the bootstrap needs one shared test set")
    return labels


def bootstrap_ground_truth(records: Mapping[str, Mapping[str, PairRecords]], n_boot: int = 1000,
                           seed: int = 0) -> dict[str, BootstrapGroundTruth]:
    """Resample the test images of every dataset ``n_boot`` times and recompute each model's ground truth
    (best accuracy over grid points and epochs) on every resample.

    ``records``: ``{dataset: {model: PairRecords}}``. Vectorized: per dataset one multinomial draw of image
    counts (B, N) and one matrix product with the (grid x epoch, N) correctness of every model.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    out = {}
    for dataset, recs in records.items():
        if len(recs) < 2:
            raise ValueError(f"{dataset}: the bootstrap needs records of at least 2 models, got {len(recs)}")
        labels = _check_same_test_set(dataset, recs)
        n = int(labels.shape[0])
        if n == 0:
            raise ValueError(f"{dataset}: the records have no test images")
        models = tuple(recs)
        correct = [recs[m].correct() for m in models]
        sizes = [c.shape[0] for c in correct]
        stacked = np.concatenate(correct, axis=0).astype(np.float32)  # (sum K, N)
        counts = dataset_rng(seed, dataset).multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float32)
        acc = (counts @ stacked.T) * (100.0 / n)  # (B, sum K): exact, counts and sums are small integers
        bounds = np.cumsum([0] + sizes)
        samples = np.stack([acc[:, bounds[k]:bounds[k + 1]].max(axis=1) for k in range(len(models))], axis=1)
        point = np.array([c.mean(axis=1).max() * 100.0 for c in correct])
        out[dataset] = BootstrapGroundTruth(dataset, models, point, samples.astype(np.float64), n)
    return out


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile interval (NaN when undefined)."""

    point: float
    low: float
    high: float

    def format(self, digits: int = 2) -> str:
        if math.isnan(self.point):
            return "—"
        if math.isnan(self.low):
            return f"{self.point:.{digits}f}"
        return f"{self.point:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return math.nan, math.nan
    q = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(s, [q, 100.0 - q])
    return float(lo), float(hi)


def metric_samples(scores: Mapping[str, float], boot: BootstrapGroundTruth, metric: str) -> np.ndarray:
    """``metric`` of fixed ``scores`` against every bootstrap sample of the ground truth: shape (B,)."""
    models = list(scores)
    s = np.array([scores[m] for m in models], dtype=np.float64)
    return batch_metric(s, boot.samples[:, boot.columns(models)], metric)


def metric_interval(scores: Mapping[str, float], boot: BootstrapGroundTruth, metric: str,
                    level: float = 0.95) -> Interval:
    """Point value (full test set) and bootstrap percentile interval of ``metric`` for one method."""
    models = list(scores)
    s = np.array([scores[m] for m in models], dtype=np.float64)
    point = float(batch_metric(s, boot.point[boot.columns(models)], metric))
    return Interval(point, *_percentiles(metric_samples(scores, boot, metric), level))


def metric_intervals(scores: Mapping[str, Mapping[str, float]], boot: Mapping[str, BootstrapGroundTruth],
                     metric: str, level: float = 0.95) -> dict[str, Interval]:
    """Per-dataset intervals of one method (``scores``: ``{dataset: {model: score}}``) and, under ``"mean"``,
    the interval of its mean over those datasets."""
    out, samples, points = {}, {}, {}
    for ds, sc in scores.items():
        if ds not in boot:
            raise ValueError(f"no bootstrap ground truth for dataset {ds!r} (have {sorted(boot)})")
        out[ds] = metric_interval(sc, boot[ds], metric, level)
        samples[ds], points[ds] = metric_samples(sc, boot[ds], metric), out[ds].point
    out["mean"] = mean_interval(samples, points, level)
    return out


def random_score_samples(boot: BootstrapGroundTruth, metric: str, seed: int = 0,
                         models: Sequence[str] | None = None) -> tuple[float, np.ndarray]:
    """The ``random`` baseline: a fresh random ranking of the zoo for every bootstrap sample.

    Returns (expected value on the full test set over ``B`` random rankings, samples (B,) where sample b
    pairs random ranking b with ground-truth sample b)."""
    cols = boot.columns(list(models) if models is not None else list(boot.models))
    rng = dataset_rng(seed, boot.dataset, stream=1)
    perms = np.argsort(rng.random((boot.n_boot, len(cols))), axis=1).astype(np.float64)
    point = float(np.nanmean(batch_metric(perms, boot.point[cols], metric)))
    return point, batch_metric(perms, boot.samples[:, cols], metric)


def mean_interval(samples: Mapping[str, np.ndarray], points: Mapping[str, float], level: float = 0.95) -> Interval:
    """Mean over datasets: point = mean of the points; interval from the per-sample means (sample b of
    every dataset). NaN when a dataset's point is NaN (no partial means)."""
    if not samples:
        return Interval(math.nan, math.nan, math.nan)
    pts = [points[d] for d in samples]
    point = float(np.mean(pts)) if all(np.isfinite(pts)) else math.nan
    stacked = np.stack([np.asarray(samples[d], dtype=np.float64) for d in samples])
    return Interval(point, *_percentiles(stacked.mean(axis=0), level))


def paired_share(a: np.ndarray, b: np.ndarray) -> float:
    """Share of bootstrap samples in which ``a`` exceeds ``b`` (ties count one half; NaN samples dropped).

    A method against itself gives exactly 0.5. For a lower-is-better metric (regret) pass ``-a, -b``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if not ok.any():
        return math.nan
    return float(np.mean((a[ok] > b[ok]) + 0.5 * (a[ok] == b[ok])))
