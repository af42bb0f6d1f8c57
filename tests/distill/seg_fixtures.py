"""Fixtures for the segmentation tests: a tiny image/mask dataset in the CamVid layout and a config.

Imported by the test modules (``from seg_fixtures import *``), like ``distill_fixtures``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

__all__ = ["COLOURS", "make_pair", "seg_config", "seg_data"]

COLOURS = np.array([(200, 40, 40), (40, 200, 40), (40, 40, 200)], dtype=np.float64)


def make_pair(rng: np.random.Generator, w: int = 40, h: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A label map of random rectangles of classes 0-2 (a void=3 border) and a noisy image coloured by it."""
    mask = np.zeros((h, w), np.uint8)
    for _ in range(4):
        x0, y0 = rng.integers(0, w - 8), rng.integers(0, h - 8)
        mask[y0:y0 + rng.integers(6, 16), x0:x0 + rng.integers(6, 20)] = rng.integers(0, 3)
    mask[0, :] = 3
    img = COLOURS[np.minimum(mask, 2)] + rng.normal(0, 20, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8), mask


@pytest.fixture(scope="session")
def seg_data(tmp_path_factory) -> Path:
    """``root/{train,val,test}/{images,masks}/*``: 10 / 4 / 4 pairs, 3 classes + void (3)."""
    root = tmp_path_factory.mktemp("seg_data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("val", 4), ("test", 4)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            img, mask = make_pair(rng)
            Image.fromarray(img).save(root / split / "images" / f"{split}{i}.png")
            Image.fromarray(mask, mode="L").save(root / split / "masks" / f"{split}{i}.png")
    return root


@pytest.fixture()
def seg_config(seg_data, tiny_models, tmp_path):
    """A segmentation DistillConfig that runs every stage in seconds."""
    from transferkit.distill import DistillConfig

    return DistillConfig(
        task="segmentation", teacher=tiny_models["teacher"], student=tiny_models["student"], data=str(seg_data),
        num_classes=3, ignore_index=3, class_names=("red", "green", "blue"), seg_size=(32, 40), n_labeled=6,
        transfer_split="train+val", teacher_adapt="head_only", decoder_channels=8, teacher_decoder_channels=8,
        views=2, aug_ratio=(0.9, 1.1), adapt={"steps": 2, "batch_size": 4}, distill={"steps": 3, "batch_size": 4},
        finetune={"steps": 2, "batch_size": 4}, num_workers=0, num_threads=1, checkpoint_every=2, log_every=1,
        progress=False, eval_batch_size=4, teacher_batch_size=4, cache_dir=str(tmp_path / "cache"),
        out_dir=str(tmp_path / "run"))
