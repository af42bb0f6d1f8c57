"""Atomic writers: the umask decides file modes (not mkstemp's 0600); a full or read-only destination
gives one OutputWriteError naming the file and leaves neither the file nor a temp file behind."""

from __future__ import annotations

import errno
import os
import stat

import numpy as np
import pytest

from transferkit import reporting
from transferkit.features import atomic_savez
from transferkit.reporting import OutputWriteError, atomic_write_text, write_csv, write_json


@pytest.fixture()
def umask():
    """Set a umask for the test, restore the old one afterwards."""
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_files_get_the_mode_the_umask_gives(tmp_path, umask, mask, expected):
    umask(mask)
    assert reporting.current_umask() == mask
    paths = [write_csv(tmp_path / "a.csv", [{"x": 1}]), write_json(tmp_path / "b.json", {"x": 1}),
             atomic_savez(tmp_path / "c.npz", x=np.zeros(2)), reporting.atomic_torch_save({"x": 1}, tmp_path / "d.pt")]
    assert {p.name: _mode(p) for p in paths} == {p.name: expected for p in paths}


@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "no space left on device"),
                                          (errno.EROFS, "read-only file system"),
                                          (errno.EACCES, "permission denied")])
def test_a_full_or_read_only_disk_is_one_line_naming_the_file(tmp_path, monkeypatch, code, reason):
    def failing_fsync(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(reporting.os, "fsync", failing_fsync)
    target = tmp_path / "out" / "scores.csv"
    with pytest.raises(OutputWriteError) as info:
        write_csv(target, [{"model": "a", "logme": 1.0}])
    msg = str(info.value)
    assert msg == f"cannot write {target}: {reason}; the partial file was removed"
    assert "\n" not in msg and info.value.errno == code and info.value.filename == str(target)
    assert isinstance(info.value, OSError) and isinstance(info.value, ValueError)  # caught by `except ValueError`
    assert list(target.parent.iterdir()) == []  # no file, no temp file


def test_an_unwritable_folder_is_named_whatever_the_errno(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputWriteError, match=f"cannot write {blocker}/x/y.txt: "):
        atomic_write_text(blocker / "x" / "y.txt", "hello")


def test_other_errors_of_the_writer_pass_through(tmp_path):
    def broken(fh):
        raise RuntimeError("a bug, not the disk")

    with pytest.raises(RuntimeError, match="a bug"):
        reporting.atomic_write(tmp_path / "x.bin", broken)
    assert list(tmp_path.iterdir()) == []
