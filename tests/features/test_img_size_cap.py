"""`max_img_size` / `rank --img-size` (issue 16): a cap, not a resize - larger models run at the cap with their
own crop and normalisation, smaller ones keep their own input, and capped features are their own cache entry."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from transferkit.features import extract_features


@pytest.fixture()
def weights(make_weights) -> Path:
    return make_weights(0)


def test_cap_lowers_larger_inputs_only(folder: Path, weights: Path, tmp_path: Path) -> None:
    spec = f"test_resnet@{weights}"
    common = dict(split="train", cache_dir=tmp_path / "cache", progress=False, num_workers=0)
    own = extract_features(spec, folder, input_size=40, **common)
    capped = extract_features(spec, folder, input_size=40, max_img_size=24, **common)
    above = extract_features(spec, folder, input_size=40, max_img_size=64, **common)
    assert own.metadata["preprocessing"]["input_size"] == [3, 40, 40]
    assert capped.metadata["preprocessing"]["input_size"] == [3, 24, 24]
    assert above.metadata["preprocessing"]["input_size"] == [3, 40, 40]  # smaller than the cap: untouched
    assert capped.metadata["preprocessing"]["crop_pct"] == own.metadata["preprocessing"]["crop_pct"]
    assert capped.metadata["cache_key"] != own.metadata["cache_key"]
    assert above.metadata["cache_key"] == own.metadata["cache_key"]
    assert not np.allclose(capped.features, own.features)


def test_rank_img_size_option(folder: Path, weights: Path, tmp_path: Path) -> None:
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text("models:\n" + "".join(f"  - name: m{k}\n    model: test_resnet@{weights}\n    input_size: [3, 40, 40]\n"
                                         for k in range(2)))
    run = subprocess.run(["transferkit", "rank", "--zoo", str(zoo), "--data", str(folder), "--split", "train",
                          "--img-size", "24", "--methods", "leep", "--no-plot", "--no-progress", "--workers", "0",
                          "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    models = json.loads((tmp_path / "o" / "scores.json").read_text())["provenance"]["models"]
    assert {m: e["preprocessing"]["input_size"] for m, e in models.items()} == {"m0": [3, 24, 24], "m1": [3, 24, 24]}
    bad = subprocess.run(["transferkit", "rank", "--demo", "--img-size", "24", "--out", str(tmp_path / "d")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "--img-size" in bad.stderr and "Traceback" not in bad.stderr
