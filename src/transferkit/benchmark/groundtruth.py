"""Compute a spec's ground truth: fine-tune every (model, dataset) pair, skipping pairs already in the CSV.

Safe to kill at any moment and to run again (in a later session too): finished pairs are rows of the
ground-truth CSV, finished grid points and epochs are in each pair's run state (see
:mod:`transferkit.finetune.run`). Several processes (one per core) can work on one table at once: each takes
the next pair that is neither in the CSV nor held by another process (an advisory ``flock`` on
``<work_dir>/claims/<pair>.lock``, released by the OS when a process dies, so a killed worker never blocks a
pair). ``shard=(i, n)`` splits the pairs statically instead (e.g. across machines).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..finetune import FinetuneResult, finetune, ground_truth_pairs
from .spec import BenchmarkSpec

__all__ = ["GroundTruthPlan", "claim", "compute_ground_truth", "plan_ground_truth"]


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


@contextlib.contextmanager
def claim(lock_dir: Path, model: str, dataset: str) -> Iterator[bool]:
    """Try to hold the (model, dataset) pair for this process; yields False when another process holds it."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{model}__{dataset}")
    fh = open(lock_dir / f"{name}.lock", "a")
    try:
        try:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            got = True
        except ImportError:  # pragma: no cover - non-POSIX: no sharing between processes
            got = True
        except OSError:
            got = False
        yield got
    finally:
        fh.close()  # closing the file releases the lock


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
    t0, out, csv_path = time.perf_counter(), [], spec.ground_truth_csv()
    for k, (model, dataset) in enumerate(plan.todo):
        cfg = spec.finetune_config(entries[model], dsets[dataset], **(overrides or {}))
        tag = f"[{k + 1}/{len(plan.todo)}] {model} on {dataset}"
        if not force and (model, dataset) in ground_truth_pairs(csv_path):
            log(f"{tag}: done meanwhile by another process")
            continue
        with claim(Path(cfg.work_dir) / "claims", model, dataset) as mine:
            if not mine:
                log(f"{tag}: being fine-tuned by another process, next")
                continue
            log(f"{tag} ...")
            t1 = time.perf_counter()
            res = finetune(cfg)
        out.append(res)
        spent = time.perf_counter() - t0
        eta = spent / len(out) * (len(plan.todo) - k - 1)
        log(f"{tag}: {res.accuracy:.2f}% (lr {res.best_lr:g}, wd {res.best_weight_decay:g}, epoch "
            f"{res.best_epoch}) in {_hms(time.perf_counter() - t1)}; elapsed {_hms(spent)}, eta <= {_hms(eta)}")
    return out
