"""Helpers for the benchmark tests: a toy benchmark (a 3-class image folder, three small random-weight
models, a spec file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

COLOURS = [(140, 110, 110), (110, 140, 110), (110, 110, 140)]  # close colours: not trivially separable

SPEC = """
name: toy
seed: 0
zoo:
  - {name: r20, model: cifar_resnet20, pretrained: false}
  - {name: eff, model: test_efficientnet, pretrained: false}
  - {name: res, model: test_resnet, pretrained: false}
datasets:
  toy: {data: data}
  toy2: {data: data, finetune: {epochs: 2}, features: {per_class: 6}}
ground_truth: gt.csv
methods: [logme, sfda]
primary_metric: weighted_tau_scipy
features: {batch_size: 16, cache_dir: cache, num_workers: 0}
finetune: {epochs: 1, batch_size: 9, img_size: 24, lrs: [1.0e-3], weight_decays: [0.0], work_dir: work,
           num_threads: 1, progress: false, model_options: {}}
report: report
"""


def make_image_folder(root: Path, per_split: dict[str, int] | None = None, size: int = 20) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (per_split or {"train": 8, "test": 4}).items():
        for c, colour in enumerate(COLOURS):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = np.clip(np.array(colour) + rng.normal(0, 60, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(d / f"{i}.png")
    return root


def build_toy(root: Path) -> Path:
    """Write the toy benchmark (images, spec, ground truth) under ``root``; returns the spec path."""
    make_image_folder(root / "data")
    (root / "spec.yaml").write_text(SPEC)
    (root / "gt.csv").write_text("model,dataset,accuracy\nr20,toy,70\neff,toy,80\nres,toy,60\n"
                                 "r20,toy2,50\neff,toy2,55\n")
    return root / "spec.yaml"


@pytest.fixture()
def toy_spec(tmp_path: Path) -> Path:
    return build_toy(tmp_path)
