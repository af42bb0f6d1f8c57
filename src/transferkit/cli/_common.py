"""Pieces every sub-command shares: list options, --quiet/--verbose, output-folder checks, warnings.

One scheme for every command: repeatable options also take comma-separated lists; ``-m`` means
``--models`` (``-d`` ``--data``, ``-o`` ``--out``, ``-c`` ``--config``, ``-b`` ``--batch-size``,
``-q`` ``--quiet``, ``-v`` ``--verbose``); estimator methods are always spelled ``--methods``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def split_list(values: str | Iterable[str] | None) -> list[str]:
    """``"a,b"`` or ``("a,b", "c")`` -> ``["a", "b", "c"]`` (blanks dropped, order kept)."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [v.strip() for value in values for v in str(value).split(",") if v.strip()]


def verbosity_options(f: F) -> F:
    """Add ``--quiet/-q`` and ``--verbose/-v`` to a command (keyword arguments ``quiet`` and ``verbose``)."""
    f = click.option("--verbose", "-v", is_flag=True,
                     help="Say more: full warnings with their source, more detail on what runs.")(f)
    f = click.option("--quiet", "-q", is_flag=True,
                     help="Say less: no progress bars or notes; results, warnings and errors only.")(f)
    return f


def note(message: str, quiet: bool = False) -> None:
    """An informational line on stderr (kept out of results on stdout); silent with --quiet."""
    if not quiet:
        click.echo(message, err=True)


def check_output_dir(path: str | Path, option: str = "--out") -> Path:
    """Create the output folder and prove it is writable *before* any work, so results are never lost
    after minutes of extraction or scoring. Raises a one-line ClickException naming the folder."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise click.ClickException(f"cannot create the output folder {out} ({option}): {reason}") from exc
    try:
        fd, probe = tempfile.mkstemp(prefix=".transferkit-write-test-", dir=out)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise click.ClickException(f"cannot write to the output folder {out} ({option}): {reason}") from exc
    return out


def check_output_file(path: str | Path, option: str = "--out") -> Path:
    """As :func:`check_output_dir`, for a command that writes one file: its folder must be writable, and the
    path itself must not be a folder (found before the work, not when the result is renamed into place)."""
    p = Path(path)
    if p.is_dir():
        raise click.ClickException(f"{option} {p} is a folder; give a file path, e.g. {p / 'out.csv'}")
    check_output_dir(p.parent if str(p.parent) else Path("."), option)
    return p


def _one_line(message: Warning | str) -> str:
    return " ".join(str(message).split())


@contextlib.contextmanager
def readable_warnings(verbose: bool = False, prefix: Callable[[], str | None] | None = None) -> Iterator[None]:
    """Show Python warnings as one line each on stderr (``ncti: <message>``) instead of
    ``file:line: UserWarning`` plus a source line. ``prefix()`` names what is running (e.g. the method);
    with ``verbose`` the category and source location are added."""
    shown: set[str] = set()

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        head = (prefix() if prefix is not None else None) or "warning"
        body = _one_line(message)
        text = body if body.startswith(f"{head}:") else f"{head}: {body}"
        if verbose:
            text += f"  [{category.__name__} at {filename}:{lineno}]"
        elif text in shown:  # the same method warns alike for every model or seed: say it once
            return
        shown.add(text)
        click.echo(text, err=True)

    old = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = old


def deprecation(message: str) -> None:
    """A one-line note about an old spelling that still works."""
    click.echo(f"note: {message}", err=True)


def one_line(exc: BaseException) -> str:
    """An input error as one line: a KeyError's message without the quotes of its repr, an OSError as
    ``<file>: <reason>``, anything else as ``str(exc)``."""
    if isinstance(exc, KeyError):
        return str(exc.args[0]) if exc.args else str(exc)
    if isinstance(exc, OSError) and not isinstance(exc, ValueError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)


def require_images(sets: Mapping[str, Any], data: str) -> None:
    """Stop with one line when a model's features hold no image (every image unreadable, or a manifest whose
    files are gone): an empty result must not exit 0."""
    for name, fs in sets.items():
        if len(fs) == 0:
            skipped = fs.metadata.get("skipped") or []
            eg = f", e.g. {skipped[0]['item']}: {skipped[0]['error']}" if skipped else ""
            raise click.ClickException(f"{data}: none of its {len(skipped)} image(s) could be read for {name}{eg}")
