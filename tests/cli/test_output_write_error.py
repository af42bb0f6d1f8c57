"""A result file that cannot be written at the very end of a command is one line, not a traceback."""

from __future__ import annotations

import errno

import pytest
from click.testing import CliRunner

from transferkit.cli import main
from transferkit.reporting import OutputWriteError


def test_disk_full_on_the_last_write_is_one_line(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transferkit.cli.rank_cmd as rank_cmd

    def full(path, *a, **k):
        raise OutputWriteError(str(path), errno.ENOSPC, "the partial file was removed")

    monkeypatch.setattr(rank_cmd, "write_json", full)
    res = CliRunner().invoke(main, ["rank", "--demo", "--methods", "leep", "--no-plot", "-o", str(tmp_path / "o")])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("Error: cannot write") and "no space left on device" in last
