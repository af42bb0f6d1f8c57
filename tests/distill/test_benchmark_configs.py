"""The benchmark files the README and `distill --help` point at are configs `transferkit distill -c` accepts:
their `run:` block is the config, `grid:` is for the benchmark script only."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from transferkit.distill.config import DistillConfig

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["distill_eurosat.yaml", "distill_camvid.yaml"])
def test_benchmark_file_is_a_distill_config(name: str) -> None:
    path = REPO / "benchmarks" / name
    cfg = DistillConfig.from_yaml(path)
    run = yaml.safe_load(path.read_text())["run"]
    assert cfg.teacher == run["teacher"] and cfg.task == run.get("task", "classification")
    out = subprocess.run(["transferkit", "distill", "-c", str(path), "--print-config"], capture_output=True,
                         text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["student"] == run["student"]


def test_a_plain_config_with_an_unknown_key_still_fails(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("run: {teacher: x}\nteachr: y\n")
    with pytest.raises(ValueError, match="unknown config key"):
        DistillConfig.from_yaml(p)
