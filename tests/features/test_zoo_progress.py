"""extract_zoo shows the zoo's stage (models done of n, the current model) above the per-model image bars."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from transferkit.features import extract_zoo


def test_zoo_bar_counts_models(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    for c in range(2):
        d = tmp_path / "data" / "train" / f"c{c}"
        d.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")
    specs = []
    for k in range(2):
        torch.manual_seed(k)
        m = timm.create_model("test_resnet", pretrained=False, num_classes=3)
        p = tmp_path / f"w{k}.safetensors"
        save_file({n: v.contiguous() for n, v in m.state_dict().items()}, str(p))
        specs.append(f"test_resnet@{p}")
    import transferkit.features.extract as ex

    bars = []
    real = ex._zoo_progress

    def spy(enabled, n_models):
        bars.append(real(enabled, n_models))
        return bars[-1]

    monkeypatch.setattr(ex, "_zoo_progress", spy)
    extract_zoo(specs, tmp_path / "data", split="train", cache_dir=tmp_path / "c", progress=True, num_workers=0,
                input_size=16)
    bar = bars[-1]
    assert bar.total == 2 and bar.n == 2 and bar.unit == "model"
    extract_zoo(specs, tmp_path / "data", split="train", cache_dir=tmp_path / "c", progress=False, num_workers=0,
                input_size=16)
    assert isinstance(bars[-1], ex._NoBar)
