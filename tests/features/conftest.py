"""Fixtures of the feature tests: a tiny class-folder dataset and tiny timm checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """<tmp>/data/train/c{0,1}/{0..3}.png: 2 classes x 4 random 48 px images."""
    rng = np.random.default_rng(0)
    for c in range(2):
        d = tmp_path / "data" / "train" / f"c{c}"
        d.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return tmp_path / "data"


@pytest.fixture()
def make_weights(tmp_path: Path) -> Callable[[int], Path]:
    """make_weights(seed) -> a safetensors checkpoint of timm's test_resnet (3 classes) initialised with seed."""
    def make(seed: int = 0) -> Path:
        torch.manual_seed(seed)
        m = timm.create_model("test_resnet", pretrained=False, num_classes=3)
        p = tmp_path / f"w{seed}.safetensors"
        save_file({n: v.contiguous() for n, v in m.state_dict().items()}, str(p))
        return p

    return make
