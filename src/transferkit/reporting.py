"""Plain-text and file output shared by the commands: aligned tables, atomic CSV/JSON writes.

Every file the project writes goes through a temporary file beside its destination, created with the mode
a plain ``open()`` would give (``0o666 & ~umask``, not ``tempfile``'s 0600) and renamed into place after
``fsync``. A write that fails because the disk is full, the file system is read-only or the folder is not
writable raises :class:`OutputWriteError`: one line naming the file, with the temporary file removed.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["OutputWriteError", "format_table", "write_csv", "write_json", "atomic_write", "atomic_write_text",
           "atomic_torch_save", "current_umask", "output_errors", "temp_file_beside"]

# errors that mean "this place cannot take the file", as opposed to a bug in the caller
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EISDIR, errno.ENOTDIR,
                   *([errno.EDQUOT] if hasattr(errno, "EDQUOT") else [])}


class OutputWriteError(OSError, ValueError):
    """A file could not be written: disk full (ENOSPC), read-only file system (EROFS), no permission.

    ``str()`` is one line naming the file; ``errno`` and ``filename`` are set as on the original
    ``OSError``. It is also a ``ValueError`` (like :class:`io.UnsupportedOperation`) so that the
    commands' "bad input" handlers report it as one line instead of a traceback.
    """

    def __init__(self, path: str | Path, err: int | None, detail: str = ""):
        reason = os.strerror(err).lower() if err else "write failed"
        self.message = f"cannot write {path}: {reason}" + (f"; {detail}" if detail else "")
        super().__init__(self.message)
        self.errno = err
        self.strerror = reason
        self.filename = str(path)
        self.detail = detail

    def __str__(self) -> str:
        return self.message

    def with_detail(self, detail: str) -> OutputWriteError:
        """The same error with ``detail`` (what was kept, how to go on) appended to the message."""
        return OutputWriteError(self.filename, self.errno, "; ".join(d for d in (self.detail, detail) if d))


@contextlib.contextmanager
def output_errors(path: str | Path, detail: str = "", any_errno: bool = False) -> Iterator[None]:
    """Turn a storage ``OSError`` (full, read-only, not permitted; with ``any_errno`` every ``OSError``)
    raised inside into an :class:`OutputWriteError` naming ``path``; other errors pass through unchanged."""
    try:
        yield
    except OutputWriteError:
        raise
    except OSError as exc:
        if not any_errno and exc.errno not in _STORAGE_ERRNOS:
            raise
        raise OutputWriteError(path, exc.errno, detail) from exc


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read without changing it where /proc allows, else set-and-restore under a lock)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def temp_file_beside(path: str | Path, suffix: str = ".tmp") -> tuple[int, str]:
    """``mkstemp`` in ``path``'s folder (so the final rename is atomic), with the permissions a plain
    ``open()`` would give the finished file: ``0o666 & ~umask`` instead of mkstemp's owner-only 0600."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp


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
    partial file, and an interrupted or failed write leaves nothing at `path` (nor a temp file).
    The file gets ``0o666 & ~umask``. Disk full / read-only / not permitted: :class:`OutputWriteError`."""
    path = Path(path)
    with output_errors(path, any_errno=True):  # the folder cannot be made or written: whatever the errno
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_file_beside(path)
    with output_errors(path, "the partial file was removed"):
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
