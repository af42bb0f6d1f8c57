"""Fixtures for the distillation tests: a tiny image dataset and tiny teacher/student checkpoints.

Imported by the test modules (``from distill_fixtures import *``) rather than living in a ``conftest.py``:
a second ``conftest`` module would shadow ``tests/conftest.py`` for ``from shared_data import shared_path``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

__all__ = ["TinyNet", "one_thread", "tiny_config", "tiny_data", "tiny_models", "tiny_net"]

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """``root/{train,test}/c{0,1,2}/*.png``: noisy colour patches, 12 train / 4 test images per class."""
    root = tmp_path_factory.mktemp("tiny_data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for c, col in enumerate(COLOURS):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                a = np.clip(np.array(col)[None, None] + rng.normal(0, 50, (20, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """Specs of a tiny teacher (timm test_resnet) and student (test_efficientnet) as checkpoint files."""
    import timm

    root = tmp_path_factory.mktemp("tiny_models")
    torch.manual_seed(0)
    t = root / "teacher.pth"
    s = root / "student.pth"
    torch.save(timm.create_model("test_resnet", num_classes=5).state_dict(), t)
    torch.save(timm.create_model("test_efficientnet", num_classes=7).state_dict(), s)
    return {"teacher": f"test_resnet@{t}", "student": f"test_efficientnet@{s}"}


@pytest.fixture()
def tiny_config(tiny_data, tiny_models, tmp_path):
    """A DistillConfig that runs every stage in a second or two."""
    from transferkit.distill import DistillConfig

    return DistillConfig(
        teacher=tiny_models["teacher"], student=tiny_models["student"], teacher_input_size=32,
        student_input_size=32, data=str(tiny_data), per_class=4, views=2, probe_folds=2,
        distill={"steps": 4, "batch_size": 8}, finetune={"steps": 3, "batch_size": 6},
        num_workers=0, num_threads=1, checkpoint_every=2, log_every=1, progress=False,
        cache_dir=str(tmp_path / "cache"), out_dir=str(tmp_path / "run"))


class TinyNet(nn.Module):
    """A small conv net with or without BatchNorm (BN-free: exact DDP / accumulation equivalence)."""

    def __init__(self, bn: bool = False, classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.fixture()
def tiny_net():
    return TinyNet


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is fastest (and avoids spinning on a shared 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
