"""Compute a spec's ground truth: fine-tune every (model, dataset) pair, skipping pairs already in the CSV.

Safe to kill at any moment and to run again (in a later session too): finished pairs are rows of the
ground-truth CSV, finished grid points and epochs are in each pair's run state (see
:mod:`transferkit.finetune.run`). ``shard=(i, n)`` takes every n-th pair, so n processes (one per core)
can share one table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..finetune import FinetuneResult, finetune, ground_truth_pairs
from .spec import BenchmarkSpec

__all__ = ["GroundTruthPlan", "compute_ground_truth", "plan_ground_truth"]


@dataclass
class GroundTruthPlan:
    todo: list[tuple[str, str]]  # (model, dataset)
    done: list[tuple[str, str]]


def plan_ground_truth(spec: BenchmarkSpec, shard: tuple[int, int] = (0, 1), force: bool = False) -> GroundTruthPlan:
    """Which pairs of the spec (this shard) still need fine-tuning."""
    path = spec.ground_truth_csv()
    if path is None:
        raise ValueError(f"spec {spec.name!r}: 'ground_truth' must be a CSV path to compute it "
                         f"(got {spec.ground_truth!r})")
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {i}/{n}")
    have = set() if force else ground_truth_pairs(path)
    pairs = [(e.name, d.name) for d in spec.datasets for e in spec.zoo]
    mine = pairs[i::n]
    return GroundTruthPlan([p for p in mine if p not in have], [p for p in mine if p in have])


def _hms(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def compute_ground_truth(spec: BenchmarkSpec, *, shard: tuple[int, int] = (0, 1), force: bool = False,
                         overrides: dict[str, Any] | None = None,
                         log: Callable[[str], None] = print) -> list[FinetuneResult]:
    """Fine-tune the pairs still missing from the spec's ground-truth CSV (in dataset-major order, so the
    decoded-image cache is reused), appending each result to the CSV as soon as it is done."""
    plan = plan_ground_truth(spec, shard, force)
    entries = {e.name: e for e in spec.zoo}
    dsets = {d.name: d for d in spec.datasets}
    log(f"ground truth -> {spec.ground_truth_csv()}: {len(plan.done)} pair(s) done, {len(plan.todo)} to do"
        + (f" (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else ""))
    t0, out = time.perf_counter(), []
    for k, (model, dataset) in enumerate(plan.todo):
        cfg = spec.finetune_config(entries[model], dsets[dataset], **(overrides or {}))
        log(f"[{k + 1}/{len(plan.todo)}] {model} on {dataset} ...")
        t1 = time.perf_counter()
        res = finetune(cfg)
        out.append(res)
        spent = time.perf_counter() - t0
        eta = spent / (k + 1) * (len(plan.todo) - k - 1)
        log(f"[{k + 1}/{len(plan.todo)}] {model} on {dataset}: {res.accuracy:.2f}% (lr {res.best_lr:g}, "
            f"wd {res.best_weight_decay:g}, epoch {res.best_epoch}) in {_hms(time.perf_counter() - t1)}; "
            f"elapsed {_hms(spent)}, eta {_hms(eta)}")
    return out
