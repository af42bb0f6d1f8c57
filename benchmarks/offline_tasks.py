"""Shared by the offline-benchmark scripts: the tasks of benchmarks/offline/spec.yaml whose ground truth is
complete, their features (through the bench's own extraction, so the cache entries are the bench's), and the
bootstrap of their ground truth over test images.

    from offline_tasks import complete_tasks, task_zoo, task_bootstrap
    spec = load_spec(SPEC); tasks = complete_tasks(spec)         # {task: {model: accuracy}}
    zoo = task_zoo(spec, "eurosat", img_size=48)                 # [ZooFeatures] at min(48, native) px
    boot = task_bootstrap(spec, tasks, n_boot=1000)              # {task: BootstrapGroundTruth}
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from transferkit.benchmark.runner import feature_entries
from transferkit.benchmark.spec import BenchmarkSpec, load_spec
from transferkit.benchmark.uncertainty import BootstrapGroundTruth, bootstrap_ground_truth, load_records
from transferkit.features import extract_zoo
from transferkit.ranking import ZooFeatures

SPEC = Path(__file__).resolve().parent / "offline" / "spec.yaml"


def offline_spec(path: Path = SPEC) -> BenchmarkSpec:
    return load_spec(path)


def complete_tasks(spec: BenchmarkSpec, ground_truth_csv: Path | None = None) -> dict[str, dict[str, float]]:
    """Tasks (spec order) with a ground-truth accuracy for every model of the zoo (from the spec's CSV, or
    ``ground_truth_csv``, e.g. the v1 table benchmarks/offline/groundtruth_v1_50test.csv)."""
    if ground_truth_csv is not None:
        from transferkit.finetune import ground_truth_by_dataset

        gt = ground_truth_by_dataset(ground_truth_csv)
    else:
        gt = spec.load_ground_truth()
    names = {e.name for e in spec.zoo}
    return {d.name: gt[d.name] for d in spec.datasets if names <= set(gt.get(d.name, {}))}


def task_zoo(spec: BenchmarkSpec, task: str, img_size: int | None = None, progress: bool = False) -> list[ZooFeatures]:
    """The zoo's features on one task as the bench extracts them (cached); ``img_size`` replaces the spec's
    resolution cap (each model runs at min(img_size, its native size), crop 1, as the bench does)."""
    ds = next(d for d in spec.datasets if d.name == task)
    if img_size is not None:
        spec = dataclasses.replace(spec, features=dataclasses.replace(spec.features, img_size=img_size))
    fo = spec.feature_options(ds)
    sets = extract_zoo(feature_entries(spec, ds, spec.zoo), ds.data, split=fo.split, cache_dir=fo.cache_dir,
                       per_class=fo.per_class, seed=spec.seed, batch_size=fo.batch_size,
                       num_workers=fo.num_workers, device=fo.device, progress=progress, precision=fo.precision)
    return [ZooFeatures(n, fs.features, fs.labels, fs.probs, dict(fs.metadata)) for n, fs in sets.items()]


def task_bootstrap(spec: BenchmarkSpec, tasks: list[str] | dict, n_boot: int = 1000,
                   seed: int = 0) -> dict[str, BootstrapGroundTruth]:
    """Bootstrap of each task's ground truth over its test images (from the per-image records)."""
    models = [e.name for e in spec.zoo]
    recs = {t: load_records(spec.ground_truth_csv(), t, models) for t in tasks}
    return bootstrap_ground_truth(recs, n_boot=n_boot, seed=seed)
