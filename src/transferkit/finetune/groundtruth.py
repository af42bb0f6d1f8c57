"""The ground-truth CSV: one row per (model, dataset) with the fine-tuned accuracy and how it was obtained.

Columns: ``model, dataset, accuracy`` (percent, the best test accuracy over epochs and grid), the best
configuration (``best_lr, best_weight_decay, best_epoch``), ``seconds`` (fine-tuning compute time), the
subset sizes and resolution, the budget, the model spec and when it finished. Rows are added under an
exclusive lock and the file is rewritten atomically (temp file + rename), so several runs can share one CSV
and a killed run never leaves a partial file. ``transferkit rank --gt`` and ``transferkit bench`` read it.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..reporting import write_csv

__all__ = ["append_ground_truth", "ground_truth_by_dataset", "ground_truth_pairs", "read_ground_truth_rows"]

LEAD_COLUMNS = ("model", "dataset", "accuracy", "best_lr", "best_weight_decay", "best_epoch", "seconds")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    # the lock lives in the temp folder (the CSV itself is replaced by rename, so it cannot carry the lock)
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    lock = Path(tempfile.gettempdir()) / f"transferkit-gt-{digest}.lock"
    with open(lock, "a") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX: best effort without a lock
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def read_ground_truth_rows(path: str | Path) -> list[dict[str, str]]:
    """Rows of a ground-truth CSV (empty list when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows:
        missing = {"model", "dataset", "accuracy"} - set(rows[0])
        if missing:
            raise ValueError(f"{path}: a ground-truth CSV needs columns model, dataset, accuracy; "
                             f"missing {sorted(missing)}")
    return rows


def ground_truth_pairs(path: str | Path) -> set[tuple[str, str]]:
    """The (model, dataset) pairs already in the CSV."""
    return {(r["model"], r["dataset"]) for r in read_ground_truth_rows(path)}


def ground_truth_by_dataset(path: str | Path) -> dict[str, dict[str, float]]:
    """``{dataset: {model: accuracy}}`` from a ground-truth CSV."""
    out: dict[str, dict[str, float]] = {}
    for r in read_ground_truth_rows(path):
        try:
            acc = float(r["accuracy"])
        except ValueError as exc:
            raise ValueError(f"{path}: accuracy {r['accuracy']!r} of {r['model']} on {r['dataset']} "
                             "is not a number") from exc
        out.setdefault(r["dataset"], {})[r["model"]] = acc
    return out


def append_ground_truth(path: str | Path, row: Mapping[str, Any], replace: bool = True) -> Path:
    """Add one row (a (model, dataset) already present is replaced when ``replace``, else kept).

    The whole file is rewritten atomically under an exclusive lock: readers see the old or the new file.
    """
    path = Path(path)
    if "model" not in row or "dataset" not in row or "accuracy" not in row:
        raise ValueError("a ground-truth row needs model, dataset and accuracy")
    with _locked(path):
        rows: list[dict[str, Any]] = list(read_ground_truth_rows(path))
        key = (str(row["model"]), str(row["dataset"]))
        present = [i for i, r in enumerate(rows) if (r["model"], r["dataset"]) == key]
        if present and not replace:
            return path
        rows = [r for r in rows if (r["model"], r["dataset"]) != key]
        rows.append({k: ("" if v is None else v) for k, v in row.items()})
        cols = list(LEAD_COLUMNS)
        for r in rows:
            cols += [k for k in r if k not in cols]
        ordered = [{c: r.get(c, "") for c in cols} for r in rows]
        write_csv(path, ordered)
        os.chmod(path, 0o644)
    return path
