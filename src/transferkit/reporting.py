"""Plain-text and file output shared by the commands: aligned tables, atomic CSV/JSON writes."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["format_table", "write_csv", "write_json", "atomic_write", "atomic_write_text", "atomic_torch_save"]


def _fmt(value: Any, precision: int) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{precision}g}" if abs(value) >= 1e4 or (0 < abs(value) < 1e-3) else f"{value:.{precision}f}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
                 precision: int = 4) -> str:
    """Rows of dicts -> an aligned text table (first row's keys give the column order)."""
    if not rows:
        return "(empty)"
    cols = list(columns or rows[0].keys())
    cells = [[_fmt(r.get(c, ""), precision) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join([line.rstrip(), sep, *body])


def atomic_write(path: str | Path, write: Callable[[IO[Any]], None], mode: str = "wb") -> Path:
    """Call ``write(fh)`` on a temp file beside `path`, fsync, then rename: readers never see a
    partial file, and an interrupted write leaves nothing at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({"newline": ""} if "b" not in mode else {})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())  # the rename must not publish a file whose data is not on disk
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text to `path` atomically (temp file + fsync + rename)."""
    return atomic_write(path, lambda fh: fh.write(text), mode="w")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` atomically (temp file + fsync + rename)."""
    import torch

    return atomic_write(path, lambda fh: torch.save(obj, fh))


def write_csv(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    rows = list(rows)
    buf = io.StringIO()
    if rows:
        cols: list[str] = []
        for r in rows:
            cols += [k for k in r if k not in cols]
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=float) + "\n")
