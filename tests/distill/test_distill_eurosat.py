"""The benchmark's real models and data (../shared), on a tiny budget. Skipped when ../shared is absent."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distill_fixtures import *  # noqa: F401,F403 - fixtures

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"


def _shared(*parts: str) -> Path:
    # same contract as tests/conftest.py's shared_path (not imported: `conftest` is ambiguous across folders)
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not available: {p} is absent")
    return p


@pytest.mark.shared
def test_benchmark_config_runs_on_real_models(tmp_path, monkeypatch):
    from transferkit.distill import DistillConfig, run_distill

    _shared("data", "eurosat", "eurosat.zip")
    _shared("weights", "tf_efficientnet_lite2.in1k")
    monkeypatch.chdir(REPO)  # the YAML's paths are relative to the repository root
    run = yaml.safe_load((REPO / "benchmarks" / "distill_eurosat.yaml").read_text())["run"]
    cfg = DistillConfig.from_dict(run).replace(
        per_class=1, test_per_class=1, transfer_max_items=6, views=1, probe_l2=(0.1,), teacher_input_size=96,
        distill={"steps": 2, "batch_size": 4}, finetune={"steps": 2, "batch_size": 5}, num_workers=0,
        progress=False, cache_dir=str(tmp_path / "cache"), out_dir=str(tmp_path / "run"))
    r = run_distill(cfg)
    assert r["n_labeled"] == 10 and r["n_test"] == 10 and r["transfer"]["n"] == 6
    assert r["student_bn_recalibrated"] == 27  # the Coral MobileNet's folded BatchNorm layers
    assert r["student_params"] < 500_000 and 0.0 <= r["student_accuracy"] <= 1.0
    assert r["cost"]["teacher_forward"] == {"adapt": 10, "test": 10, "transfer": 6}
