"""`transferkit extract` on a tiny folder and a tiny checkpoint model."""

from __future__ import annotations

import io

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file

from transferkit.cli import main


@pytest.fixture()
def env(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("x", "y"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(buf, "JPEG")
            (tmp_path / "imgs" / c / f"{i}.jpg").write_bytes(buf.getvalue())
    torch.manual_seed(0)
    m = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "w.safetensors"))
    return tmp_path, f"test_resnet@{tmp_path / 'w.safetensors'}"


def test_extract_command_writes_npz_and_hits_the_cache(env):
    tmp, spec = env
    args = ["extract", "-m", spec, "--data", str(tmp / "imgs"), "--cache", str(tmp / "c"), "--out", str(tmp / "o"),
            "--input-size", "32", "--workers", "0", "--no-progress"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "computed" in r.output and "test_resnet@w" in r.output
    with np.load(tmp / "o" / "test_resnet@w.npz") as d:
        assert d["X"].shape == (6, 96) and d["P"].shape == (6, 3) and d["y"].tolist() == [0, 0, 0, 1, 1, 1]
    r2 = CliRunner().invoke(main, args)
    assert r2.exit_code == 0 and "hit" in r2.output


def test_extract_command_errors(env):
    tmp, spec = env
    r = CliRunner().invoke(main, ["extract", "--data", str(tmp / "imgs")])
    assert r.exit_code != 0 and "--models or --zoo" in r.output
    (tmp / "imgs" / "x" / "0.jpg").write_bytes(b"broken")
    r = CliRunner().invoke(main, ["extract", "-m", spec, "--data", str(tmp / "imgs"), "--cache", str(tmp / "c"),
                                  "--input-size", "32", "--workers", "0", "--no-progress", "--strict"])
    assert r.exit_code == 1 and "0.jpg" in r.output
    r = CliRunner().invoke(main, ["extract", "-m", "no_such_model_abc", "--data", str(tmp / "imgs"), "--no-progress"])
    assert r.exit_code == 1 and "unknown model" in r.output
