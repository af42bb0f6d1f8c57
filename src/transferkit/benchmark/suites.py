"""Built-in benchmark suites: published zoos mapped to loadable models, with their published ground truth.

``itm10`` is the benchmark of the ITM paper (Sec. 4.1, Tables 1 and 3): 10 models × 10 datasets. Eight
models come from timm (weights from the Hugging Face hub); MoCo v3 ViT-B/16 and SimMIM ViT-B/16 have no
timm weights and take local checkpoints (a state dict in timm's ``vit_base_patch16_224`` key layout; the
``module.`` prefix of MoCo v3's ``main_lincls.py`` checkpoints is removed on loading). Datasets are found
under one root folder as ``<root>/<name>`` (an image folder with ``train/`` and ``test/``), ``<name>.zip`` or
``<name>.csv``. The ground truth is the paper's Table 3 (built in), so

    transferkit bench itm10 --data-root /data --checkpoint MoCov3-B16=mocov3.pth --checkpoint SimMIM-B16=simmim.pth

reproduces Table 1 without fine-tuning anything.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

from ..models import ModelEntry
from .spec import BenchmarkSpec, DatasetSpec, FeatureOptions

__all__ = ["ITM10_DATASETS", "ITM10_METHODS", "ITM10_MODELS", "SUITES", "get_suite", "itm10_spec"]

# (name in Table 3, timm name or None for a local checkpoint, timm architecture of that checkpoint, note)
ITM10_MODELS: list[tuple[str, str | None, str, str]] = [
    ("DenseNet-121", "densenet121.tv_in1k", "densenet121", "torchvision ImageNet-1k weights"),
    ("EfficientNet-B0", "efficientnet_b0.ra_in1k", "efficientnet_b0", "timm RandAugment ImageNet-1k weights"),
    ("MobileNetv2", "mobilenetv2_100.ra_in1k", "mobilenetv2_100", "timm RandAugment ImageNet-1k weights"),
    ("ResNet-18", "resnet18.tv_in1k", "resnet18", "torchvision ImageNet-1k weights"),
    ("DINO-B16", "vit_base_patch16_224.dino", "vit_base_patch16_224", "DINO self-supervised"),
    ("DINO-S8", "vit_small_patch8_224.dino", "vit_small_patch8_224", "DINO self-supervised"),
    ("MoCov3-B16", None, "vit_base_patch16_224", "MoCo v3 (local checkpoint)"),
    ("MAE-B16", "vit_base_patch16_224.mae", "vit_base_patch16_224", "MAE self-supervised"),
    ("MAE-L16", "vit_large_patch16_224.mae", "vit_large_patch16_224", "MAE self-supervised"),
    ("SimMIM-B16", None, "vit_base_patch16_224", "SimMIM (local checkpoint)"),
]
ITM10_DATASETS = ["caltech101", "cars", "cifar100", "cifar10", "dtd", "aircraft", "flowers", "food", "pets", "sun397"]
ITM10_METHODS = ["ped", "logme", "nleep", "parc", "sfda", "etran", "itm"]  # the methods of Table 1


def _find_dataset(root: Path, name: str) -> Path | None:
    for cand in (root / name, root / f"{name}.zip", root / f"{name}.csv", root / f"{name}.npz"):
        if cand.exists():
            return cand
    return None


def itm10_spec(data_root: str | Path, checkpoints: Mapping[str, str] | None = None, *,
               datasets: list[str] | None = None, report: str = "itm10_report",
               cache_dir: str = ".transferkit_cache", skip_missing: bool = False,
               methods: list[str] | None = None) -> BenchmarkSpec:
    """The ITM paper's benchmark as a spec. ``checkpoints``: ``{"MoCov3-B16": path, "SimMIM-B16": path}``.
    ``skip_missing``: leave out models without a checkpoint and datasets not under ``data_root`` (with a
    warning) instead of raising."""
    root = Path(data_root).expanduser().resolve()
    ckpts = dict(checkpoints or {})
    known = {m[0] for m in ITM10_MODELS}
    bad = sorted(set(ckpts) - known)
    if bad:
        raise ValueError(f"--checkpoint for unknown model(s) {bad}; itm10 models: {sorted(known)}")
    zoo, missing = [], []
    for name, timm_name, arch, _note in ITM10_MODELS:
        if name in ckpts:
            p = Path(ckpts[name]).expanduser().resolve()
            if not p.exists():
                raise FileNotFoundError(f"checkpoint for {name} not found: {p}")
            zoo.append(ModelEntry(name, f"{arch}@{p}"))
        elif timm_name is not None:
            zoo.append(ModelEntry(name, timm_name))
        else:
            missing.append(name)
    if missing:
        msg = (f"itm10: no checkpoint for {', '.join(missing)} (timm has no weights for them); pass "
               + " ".join(f"--checkpoint {m}=PATH" for m in missing))
        if not skip_missing:
            raise ValueError(msg)
        warnings.warn(msg + "; left out", stacklevel=2)
    dsets, absent = [], []
    for name in datasets or ITM10_DATASETS:
        if name not in ITM10_DATASETS:
            raise ValueError(f"unknown itm10 dataset {name!r}; choose from {ITM10_DATASETS}")
        p = _find_dataset(root, name)
        if p is None:
            absent.append(name)
        else:
            dsets.append(DatasetSpec(name, str(p)))
    if absent:
        msg = f"itm10: dataset(s) {absent} not found under {root} (expected <root>/<name>[.zip|.csv])"
        if not skip_missing or not dsets:
            raise FileNotFoundError(msg)
        warnings.warn(msg + "; left out", stacklevel=2)
    return BenchmarkSpec(
        name="itm10", zoo=zoo, datasets=dsets, ground_truth="published:itm10", methods=methods or list(ITM10_METHODS),
        primary_metric="weighted_tau_itm", features=FeatureOptions(split="train", cache_dir=cache_dir),
        report=report, base_dir=Path.cwd(),
        description="The benchmark of the ITM paper (arXiv 2510.23145, Sec. 4.1): 10 pre-trained models "
                    "(supervised CNNs, contrastive and masked-image-modelling ViTs) on 10 datasets, ground truth "
                    "= the paper's Table 3; features at each model's native preprocessing on the full training "
                    "split.")


SUITES = {"itm10": itm10_spec}


def get_suite(name: str, **kwargs: object) -> BenchmarkSpec:
    """A built-in suite by name (see :data:`SUITES`)."""
    if name not in SUITES:
        raise KeyError(f"unknown suite {name!r}; available: {sorted(SUITES)}")
    return SUITES[name](**kwargs)  # type: ignore[arg-type]
