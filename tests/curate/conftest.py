"""Fixtures for the curate tests: tiny image folders (target + pool) and a tiny random-weight model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

COLORS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


def make_folder(root: Path, spec: dict[str, dict[str, int]], seed: int = 0, size: tuple[int, int] = (32, 24)) -> Path:
    """``spec = {split: {class: n}}``; class names are colours (images are noisy colour fields)."""
    rng = np.random.default_rng(seed)
    for split, classes in spec.items():
        for cls, n in classes.items():
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.array(COLORS[cls], np.float32)
                a = np.clip(base + rng.normal(0, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(d / f"{cls}_{i}.png")
    return root


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a shared, oversubscribed CPU this is many times faster for tiny models."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("curate_data")
    target = make_folder(root / "target", {"train": {"red": 3, "blue": 3}, "test": {"red": 2, "blue": 2}}, seed=1)
    pool = make_folder(root / "pool", {"train": {"red": 6, "green": 6, "blue": 6}}, seed=2)
    return {"target": target, "pool": pool, "root": root}


@pytest.fixture(scope="session")
def tiny_model() -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=0).eval()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory, tiny_model: torch.nn.Module) -> str:
    """A checkpoint spec (``arch@file``) of the tiny model, for code paths that take model specs."""
    import timm

    torch.manual_seed(0)
    m = timm.create_model("test_resnet", pretrained=False)
    p = tmp_path_factory.mktemp("ckpt") / "test_resnet.pth"
    torch.save(m.state_dict(), p)
    return f"test_resnet@{p}"


@pytest.fixture()
def make_store():
    """``make_store(folder, X[, valid])``: a finished embedding store holding the rows of ``X`` as given."""
    from transferkit.curate.embed import EmbeddingStore

    def make(root: Path, x: np.ndarray, valid: np.ndarray | None = None) -> EmbeddingStore:
        root.mkdir(parents=True, exist_ok=True)
        np.save(root / "emb.npy", np.asarray(x, np.float32))
        np.save(root / "valid.npy", np.ones(len(x), bool) if valid is None else valid)
        (root / "progress.json").write_text(json.dumps({"done": [0]}))
        (root / "meta.json").write_text(json.dumps({"key": root.name, "n": len(x), "dim": x.shape[1],
                                                    "shard_size": len(x)}))
        return EmbeddingStore.open(root)

    return make
