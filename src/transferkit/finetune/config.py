"""``FinetuneConfig``: everything that defines one ground-truth fine-tuning run (loadable from YAML).

The defaults are the protocol of the ITM paper (Sec. 4.1): a new classification head on the pre-trained
backbone, full fine-tuning with AdamW over lr ∈ {1e-5, 2e-5, 5e-5} × weight decay ∈ {1e-2, 1e-4}, test
accuracy after every epoch, ground truth = the best test accuracy over epochs and grid. The budget knobs
(epochs, per-class subsets, resolution, augmentation, batch size) make the same protocol affordable on a CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FinetuneConfig", "PAPER_LRS", "PAPER_WEIGHT_DECAYS"]

PAPER_LRS = (1e-5, 2e-5, 5e-5)
PAPER_WEIGHT_DECAYS = (1e-2, 1e-4)
AUGMENTATIONS = ("none", "flip", "flip_crop")
SCHEDULES = ("constant", "cosine")
BN_MODES = ("train", "frozen")
HEAD_INITS = ("zeros", "normal", "default")

# fields that change the result (they go into the run's identity); the rest are runtime choices
_RESULT_FIELDS = ("model", "model_options", "data", "train_split", "test_split", "per_class_train", "per_class_test",
                  "img_size", "epochs", "batch_size", "lrs", "weight_decays", "head_lr_scale", "head_init", "schedule",
                  "augment", "bn", "label_smoothing", "seed")


@dataclass
class FinetuneConfig:
    """One (model, dataset) fine-tuning job and its budget.

    ``img_size`` caps the resolution: images are resized (shorter side) and centre-cropped to
    ``min(img_size, the model's native input size)``, so a 32-px CIFAR ResNet stays at 32 px while an
    ImageNet model is fine-tuned at ``img_size``. ``per_class_train`` / ``per_class_test``: seeded stratified
    subsets of the train / test splits (None: all). ``head_lr_scale`` multiplies the learning rate of the new
    head (1.0 = the paper). ``bn='frozen'`` keeps BatchNorm running statistics fixed while training its affine
    parameters (needed for weights with folded BatchNorm and for small batches).
    """

    model: str
    data: str
    model_name: str | None = None
    dataset_name: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    test_split: str = "test"
    per_class_train: int | None = None
    per_class_test: int | None = None
    img_size: int | None = None
    epochs: int = 10
    eval_every: int = 1
    batch_size: int = 32
    eval_batch_size: int = 128
    lrs: tuple[float, ...] = PAPER_LRS
    weight_decays: tuple[float, ...] = PAPER_WEIGHT_DECAYS
    head_lr_scale: float = 1.0
    head_init: str = "zeros"
    schedule: str = "constant"
    augment: str = "flip_crop"
    bn: str = "train"
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    num_threads: int | None = None
    work_dir: str = ".transferkit_cache/finetune"
    output: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.lrs = tuple(float(v) for v in _as_list(self.lrs))
        self.weight_decays = tuple(float(v) for v in _as_list(self.weight_decays))
        self.model_options = dict(self.model_options or {})
        problems = []
        if not self.model:
            problems.append("model is empty")
        if not self.data:
            problems.append("data is empty")
        if int(self.epochs) < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if int(self.eval_every) < 1:
            problems.append(f"eval_every must be >= 1, got {self.eval_every}")
        if int(self.batch_size) < 1 or int(self.eval_batch_size) < 1:
            problems.append("batch sizes must be >= 1")
        if not self.lrs or any(v <= 0 for v in self.lrs):
            problems.append(f"lrs must be a non-empty list of positive numbers, got {self.lrs}")
        if not self.weight_decays or any(v < 0 for v in self.weight_decays):
            problems.append(f"weight_decays must be a non-empty list of numbers >= 0, got {self.weight_decays}")
        for name, value in (("per_class_train", self.per_class_train), ("per_class_test", self.per_class_test),
                            ("img_size", self.img_size)):
            if value is not None and int(value) < 1:
                problems.append(f"{name} must be >= 1 or null, got {value}")
        if self.head_lr_scale <= 0:
            problems.append(f"head_lr_scale must be > 0, got {self.head_lr_scale}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.augment not in AUGMENTATIONS:
            problems.append(f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}")
        if self.head_init not in HEAD_INITS:
            problems.append(f"head_init must be one of {HEAD_INITS}, got {self.head_init!r}")
        if self.bn not in BN_MODES:
            problems.append(f"bn must be one of {BN_MODES}, got {self.bn!r}")
        if str(self.amp) not in ("auto", "fp32", "bf16", "fp16"):
            problems.append(f"amp must be auto, fp32, bf16 or fp16, got {self.amp!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if problems:
            raise ValueError("invalid fine-tuning config: " + "; ".join(problems))
        self.epochs, self.batch_size, self.eval_every = int(self.epochs), int(self.batch_size), int(self.eval_every)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        """Build from a mapping; unknown keys raise a ValueError that names them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown fine-tuning option(s) {unknown}; allowed: {sorted(names)}")
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> FinetuneConfig:
        import yaml

        try:
            doc = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:  # one line naming the file
            raise ValueError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: expected a mapping of fine-tuning options")
        return cls.from_dict({**doc, **overrides})

    def replace(self, **changes: Any) -> FinetuneConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lrs"], d["weight_decays"] = list(self.lrs), list(self.weight_decays)
        return d

    # -- derived ---------------------------------------------------------------------------------
    @property
    def grid(self) -> list[tuple[float, float]]:
        """(lr, weight decay) pairs in a fixed order: lr-major, as listed."""
        return [(lr, wd) for lr in self.lrs for wd in self.weight_decays]

    @property
    def eval_epochs(self) -> list[int]:
        """The epochs (1-based) after which the test set is evaluated."""
        return [e for e in range(1, self.epochs + 1) if e % self.eval_every == 0 or e == self.epochs]

    @property
    def display_model(self) -> str:
        from ..models import default_model_name

        return self.model_name or default_model_name(self.model)

    @property
    def display_dataset(self) -> str:
        if self.dataset_name:
            return self.dataset_name
        p = Path(str(self.data))
        return p.stem if p.suffix else (p.name or str(self.data))

    def identity(self) -> str:
        """Short hash of everything that changes the result (names the resumable run state)."""
        doc = {k: getattr(self, k) for k in _RESULT_FIELDS}
        doc["lrs"], doc["weight_decays"] = list(self.lrs), list(self.weight_decays)
        if self.eval_every != 1:  # absent when 1, so runs from before the option keep their identity
            doc["eval_every"] = self.eval_every
        blob = json.dumps(doc, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def budget(self) -> dict[str, Any]:
        """The budget fields recorded next to each ground-truth row."""
        return {"epochs": self.epochs, "eval_every": self.eval_every, "batch_size": self.batch_size, "per_class_train": self.per_class_train,
                "per_class_test": self.per_class_test, "img_size_cap": self.img_size,
                "lrs": " ".join(f"{v:g}" for v in self.lrs),
                "weight_decays": " ".join(f"{v:g}" for v in self.weight_decays),
                "head_lr_scale": self.head_lr_scale, "head_init": self.head_init, "schedule": self.schedule,
                "augment": self.augment,
                "bn": self.bn, "seed": self.seed}


def _as_list(v: Any) -> list[Any]:
    if isinstance(v, str):
        return [x for x in v.replace(",", " ").split() if x]
    if isinstance(v, (int, float)):
        return [v]
    return list(v)
