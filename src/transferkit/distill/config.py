"""One config object per distillation run (:class:`DistillConfig`), loadable from and savable to YAML.

The three optimisation stages (teacher adaptation, distillation, student fine-tuning) share the same
hyper-parameter block, :class:`StageConfig`; everything else (models, data, transfer set, loss,
engineering) is a flat field. ``--set distill.lr=0.002`` style overrides go through :meth:`DistillConfig.override`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["METHODS", "TASKS", "DistillConfig", "StageConfig"]

METHODS = ("task_oriented", "feature_distill", "pretrained", "scratch")
"""``task_oriented``: the paper's method (adapt teacher -> match its task predictions on the transfer set ->
fine-tune). ``feature_distill``: task-agnostic baseline (match the frozen teacher's features through a learned
projection -> fine-tune). ``pretrained``: the student's own pretrained weights -> fine-tune. ``scratch``:
random init -> fine-tune."""

TASKS = ("classification", "segmentation")
TEACHER_ADAPT = ("linear_probe", "head_only", "finetune")  # head_only: segmentation (frozen backbone, trained decoder)
TARGET_DTYPES = ("float16", "float32")
FEATURE_LOSSES = ("cosine", "mse", "smooth_l1")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LOG_FORMATS = ("jsonl", "csv")

# segmentation-only fields: left out of the digest of classification runs (existing run folders stay valid)
_SEG_FIELDS = frozenset({"task", "num_classes", "ignore_index", "class_names", "seg_size", "n_labeled",
                         "decoder_channels", "teacher_decoder_channels", "target_stride", "target_dtype"})

# fields that do not change what a run computes (excluded from the run digest, so changing them resumes)
_NON_SEMANTIC = frozenset({"out_dir", "cache_dir", "progress", "num_workers", "num_threads", "resume",
                           "checkpoint_every", "log_every", "log_formats", "tensorboard", "export_onnx",
                           "eval_batch_size", "teacher_batch_size"})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# annotation (as written in the dataclasses) -> (check, what the error says it must be)
_TYPE_CHECKS: dict[str, tuple[Any, str]] = {
    "int": (_is_int, "an integer"),
    "float": (_is_number, "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "tuple[float, float]": (lambda v: isinstance(v, tuple) and len(v) == 2 and all(map(_is_number, v)),
                            "a pair of numbers, e.g. [0.35, 1.0]"),
    "tuple[int, int]": (lambda v: isinstance(v, tuple) and len(v) == 2 and all(map(_is_int, v)),
                        "a pair of integers, e.g. [180, 240]"),
    "tuple[float, ...]": (lambda v: isinstance(v, tuple) and all(map(_is_number, v)), "a list of numbers"),
    "tuple[str, ...]": (lambda v: isinstance(v, tuple) and all(isinstance(x, str) for x in v), "a list of strings"),
    "StageConfig": (lambda v: isinstance(v, StageConfig), "a mapping of stage settings (epochs, steps, lr, ...)"),
}


def _check_types(obj: Any, prefix: str = "") -> None:
    """Every field's value against its annotation: a config value of the wrong type (``steps: abc``,
    ``resume: maybe``, ``steps: 2.5``) is a ValueError naming the field, not a TypeError deep in a run."""
    for f in dataclasses.fields(obj):
        ann = str(f.type).replace(" ", "")
        optional = ann.endswith("|None")
        check = _TYPE_CHECKS.get((ann[: -len("|None")] if optional else ann).replace(",", ", "))
        if check is None:
            continue
        value = getattr(obj, f.name)
        if value is None and optional:
            continue
        if ann.startswith("str") and isinstance(value, os.PathLike):  # a Path given through the API
            value = os.fspath(value)
            setattr(obj, f.name, value)
        ok, what = check
        if not ok(value):  # ints stay ints where floats are allowed: the run digest of existing runs is kept
            raise ValueError(f"{prefix}{f.name} must be {what}{' (or null)' if optional else ''}, got {value!r}")


@dataclass
class StageConfig:
    """Optimisation settings of one training stage (AdamW, linear warm-up then cosine decay).

    ``epochs`` counts passes over the stage's data (transfer set x 1 for distillation, labeled set for
    fine-tuning); ``steps`` (optimizer steps), when set, wins over ``epochs``. ``batch_size`` is the global
    batch per optimizer step (over all processes and accumulation micro-steps).
    """

    epochs: float = 10.0
    steps: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.05
    batch_size: int = 64
    warmup_fraction: float = 0.05
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        _check_types(self, "stage ")

    def validate(self, name: str) -> None:
        if self.steps is None and not self.epochs > 0:
            raise ValueError(f"{name}.epochs must be > 0 (or set {name}.steps)")
        if self.steps is not None and self.steps < 0:
            raise ValueError(f"{name}.steps must be >= 0")
        if not self.lr > 0:
            raise ValueError(f"{name}.lr must be > 0")
        if self.weight_decay < 0:
            raise ValueError(f"{name}.weight_decay must be >= 0")
        if self.batch_size < 1:
            raise ValueError(f"{name}.batch_size must be >= 1")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"{name}.warmup_fraction must be in [0, 1)")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"{name}.label_smoothing must be in [0, 1)")

    def num_steps(self, n_items: int) -> int:
        """Optimizer steps for a dataset of ``n_items`` (``steps`` if set, else ceil(epochs * n / batch))."""
        if self.steps is not None:
            return int(self.steps)
        return max(1, -(-int(round(self.epochs * n_items)) // self.batch_size))


@dataclass
class DistillConfig:
    """Everything one ``transferkit distill`` run needs.

    Models are any spec :func:`transferkit.models.load_model` accepts (timm name, ``local-dir:<folder>``,
    ``<arch>@<checkpoint>``, checkpoint file). Datasets are any spec :func:`transferkit.data.open_dataset`
    reads; the transfer set may also be a ``transferkit curate`` manifest. Relative paths are used as given
    (relative to the working directory).
    """

    # -- task ----------------------------------------------------------------------------------------
    task: str = "classification"  # or "segmentation" (per-pixel labels; see docs/distill.md)
    # -- models ------------------------------------------------------------------------------------
    teacher: str = ""
    student: str = ""
    teacher_input_size: int | None = None  # override the teacher's own resolution (cost ~ size^2)
    student_input_size: int | None = None
    # -- method ------------------------------------------------------------------------------------
    method: str = "task_oriented"
    student_init: str = "pretrained"  # for the two distillation methods: start from pretrained or random weights
    # -- labeled target data -----------------------------------------------------------------------
    data: str = ""
    train_split: str | None = "train"
    test_split: str | None = "test"
    per_class: int | None = None  # few-shot: keep N labeled images per class (seeded by data_seed)
    data_seed: int | None = None  # seed of the few-shot subsample (None: same as seed)
    test_per_class: int | None = None  # evaluate on a seeded subsample of the test split (None: all of it)
    # -- unlabeled transfer set --------------------------------------------------------------------
    transfer: str | None = None  # dataset spec or curated manifest; None: the target's training split
    transfer_split: str | None = None  # None: train_split when transfer is the target dataset, else the default
    transfer_max_items: int | None = None  # seeded random subset (transfer_seed) of at most this many images
    transfer_seed: int = 0
    transfer_exclude_labeled: bool = True  # drop transfer images identical to labeled ones (content digest)
    views: int = 2  # augmented views per transfer image; the teacher runs once per (image, view)
    aug_scale: tuple[float, float] = (0.35, 1.0)  # random-resized-crop area range
    aug_ratio: tuple[float, float] = (0.75, 4 / 3)
    aug_hflip: bool = True
    aug_vflip: bool = False
    # -- teacher adaptation ------------------------------------------------------------------------
    teacher_adapt: str = "linear_probe"
    probe_l2: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)  # L2 grid, chosen by k-fold CV on the labeled set
    probe_folds: int = 5
    adapt: StageConfig = field(default_factory=lambda: StageConfig(epochs=30, lr=1e-4, batch_size=32))
    # -- distillation ------------------------------------------------------------------------------
    temperature: float = 1.0
    soft_weight: float = 1.0  # KL(teacher || student) of temperature-softened predictions, x T^2
    hard_weight: float = 0.0  # cross-entropy to the teacher's arg-max (hard pseudo-labels)
    feature_loss: str = "cosine"  # feature_distill: cosine | mse | smooth_l1
    distill: StageConfig = field(default_factory=lambda: StageConfig(epochs=10, lr=2e-3, batch_size=64))
    # -- student fine-tuning -----------------------------------------------------------------------
    finetune: StageConfig = field(default_factory=lambda: StageConfig(epochs=50, lr=1e-3, batch_size=32))
    # -- segmentation (task: segmentation) ------------------------------------------------------------
    num_classes: int | None = None  # label values 0..num_classes-1 (required for segmentation)
    ignore_index: int | None = 255  # mask value left out of losses and metrics (CamVid void: 11)
    class_names: tuple[str, ...] | None = None
    seg_size: tuple[int, int] = (180, 240)  # (H, W) both models see (views are resized to it)
    n_labeled: int | None = None  # few-shot: a seeded subset (data_seed) of this many labeled image/mask pairs
    decoder_channels: int = 64  # width of the student's FPN decoder
    teacher_decoder_channels: int = 128
    target_stride: int = 4  # cached teacher logits at 1/target_stride of seg_size (4 = the decoder's own grid)
    target_dtype: str = "float16"  # storage of cached teacher logits / dense features
    # -- engineering -------------------------------------------------------------------------------
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto: bf16/fp16 autocast on GPU, fp32 on CPU
    grad_accum: int = 1
    num_workers: int | None = None  # DataLoader processes (None: 1 on a 2-core CPU, more on GPU machines)
    num_threads: int | None = None  # torch CPU threads (None: torch's default)
    teacher_batch_size: int = 64
    eval_batch_size: int = 128
    checkpoint_every: int = 200  # optimizer steps
    log_every: int = 10
    log_formats: tuple[str, ...] = ("jsonl", "csv")
    tensorboard: bool = False
    resume: bool = True
    export_onnx: bool = False
    cache_dir: str = ".transferkit_cache"
    out_dir: str = "transferkit_distill"
    progress: bool = True

    # -- validation --------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        for name in ("adapt", "distill", "finetune"):
            v = getattr(self, name)
            if isinstance(v, dict):
                setattr(self, name, _stage_from_dict(v, name))
        for name in ("aug_scale", "aug_ratio", "probe_l2", "log_formats", "seg_size", "class_names"):
            v = getattr(self, name)
            if isinstance(v, (list, tuple)):
                setattr(self, name, tuple(v))
            elif name in ("probe_l2", "log_formats") and v is not None:
                setattr(self, name, (v,))
        _check_types(self)

    def validate(self) -> DistillConfig:
        """Check every field; raises ``ValueError`` naming the problem. Returns ``self``."""
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task == "segmentation":
            self._validate_segmentation()
        elif self.teacher_adapt == "head_only":
            raise ValueError("teacher_adapt 'head_only' is for segmentation; classification uses 'linear_probe'")
        if not self.student:
            raise ValueError("no student model: set `student` (a timm name, local-dir:<folder> or checkpoint)")
        if self.method in ("task_oriented", "feature_distill") and not self.teacher:
            raise ValueError(f"method {self.method!r} needs a teacher model: set `teacher`")
        if not self.data:
            raise ValueError("no labeled target dataset: set `data`")
        if self.student_init not in ("pretrained", "scratch"):
            raise ValueError(f"student_init must be 'pretrained' or 'scratch', got {self.student_init!r}")
        if self.teacher_adapt not in TEACHER_ADAPT:
            raise ValueError(f"teacher_adapt must be one of {TEACHER_ADAPT}, got {self.teacher_adapt!r}")
        if self.feature_loss not in FEATURE_LOSSES:
            raise ValueError(f"feature_loss must be one of {FEATURE_LOSSES}, got {self.feature_loss!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        bad = set(self.log_formats) - set(LOG_FORMATS)
        if bad:
            raise ValueError(f"log_formats: unknown {sorted(bad)}; use {LOG_FORMATS}")
        for n in ("per_class", "test_per_class"):
            if getattr(self, n) is not None and getattr(self, n) < 1:
                raise ValueError(f"{n} must be >= 1")
        for n in ("seed", "data_seed", "transfer_seed"):
            if getattr(self, n) is not None and getattr(self, n) < 0:
                raise ValueError(f"{n} must be >= 0, got {getattr(self, n)}")
        if self.views < 1:
            raise ValueError("views must be >= 1")
        if self.transfer_max_items is not None and self.transfer_max_items < 1:
            raise ValueError("transfer_max_items must be >= 1")
        lo, hi = self.aug_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"aug_scale must satisfy 0 < lo <= hi <= 1, got {self.aug_scale}")
        if not 0 < self.aug_ratio[0] <= self.aug_ratio[1]:
            raise ValueError(f"aug_ratio must satisfy 0 < lo <= hi, got {self.aug_ratio}")
        if not self.temperature > 0:
            raise ValueError("temperature must be > 0")
        if self.soft_weight < 0 or self.hard_weight < 0 or self.soft_weight + self.hard_weight == 0:
            raise ValueError("soft_weight and hard_weight must be >= 0 and not both 0")
        if not self.probe_l2 or any(v < 0 for v in self.probe_l2):
            raise ValueError("probe_l2 must be a non-empty list of values >= 0")
        if self.probe_folds < 2:
            raise ValueError("probe_folds must be >= 2")
        if self.grad_accum < 1:
            raise ValueError("grad_accum must be >= 1")
        for n in ("teacher_batch_size", "eval_batch_size", "checkpoint_every", "log_every"):
            if getattr(self, n) < 1:
                raise ValueError(f"{n} must be >= 1")
        for n in ("teacher_input_size", "student_input_size", "num_threads"):
            v = getattr(self, n)
            if v is not None and v < 1:
                raise ValueError(f"{n} must be >= 1")
        for name in ("adapt", "distill", "finetune"):
            getattr(self, name).validate(name)
        return self

    def _validate_segmentation(self) -> None:
        if self.num_classes is None or self.num_classes < 2:
            raise ValueError("task: segmentation needs num_classes (>= 2): the label values 0..num_classes-1")
        if self.ignore_index is not None and 0 <= self.ignore_index < self.num_classes:
            raise ValueError(f"ignore_index {self.ignore_index} is a class label (num_classes {self.num_classes})")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} names, num_classes is {self.num_classes}")
        if self.teacher_adapt not in ("head_only", "finetune"):
            raise ValueError("segmentation: teacher_adapt must be 'head_only' (decoder trained on the frozen teacher "
                             f"backbone) or 'finetune' (backbone too), got {self.teacher_adapt!r}")
        if self.per_class is not None or self.test_per_class is not None:
            raise ValueError("segmentation has no classes per image: use n_labeled instead of per_class/test_per_class")
        if len(self.seg_size) != 2 or min(self.seg_size) < 8:
            raise ValueError(f"seg_size must be [height, width] with both >= 8, got {list(self.seg_size)}")
        if self.n_labeled is not None and self.n_labeled < 1:
            raise ValueError("n_labeled must be >= 1")
        for n in ("decoder_channels", "teacher_decoder_channels", "target_stride"):
            if getattr(self, n) < 1:
                raise ValueError(f"{n} must be >= 1")
        if self.target_dtype not in TARGET_DTYPES:
            raise ValueError(f"target_dtype must be one of {TARGET_DTYPES}, got {self.target_dtype!r}")

    # -- (de)serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        if not isinstance(d, dict):
            raise ValueError(f"a distill config must be a mapping, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; known: {sorted(names)}")
        return cls(**d)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """YAML text of this config (written atomically to ``path`` when given)."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            from ..reporting import atomic_write_text

            atomic_write_text(path, text)
        return text

    @classmethod
    def from_yaml(cls, path: str | Path) -> DistillConfig:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:  # one line: the parser's message spans several
            raise ValueError(f"{p}: not valid YAML ({' '.join(str(exc).split())})") from exc
        except UnicodeDecodeError as exc:
            raise ValueError(f"{p}: not a text (YAML) file ({exc.reason} at byte {exc.start})") from exc
        if isinstance(doc, dict) and isinstance(doc.get("run"), dict) and set(doc) <= {"run", "grid"}:
            doc = doc["run"]  # a benchmark file (benchmarks/distill_*.yaml): its run: block is the config
        try:
            return cls.from_dict(doc)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{p}: {exc}") from exc

    def replace(self, **changes: Any) -> DistillConfig:
        return dataclasses.replace(self, **changes)

    def override(self, assignments: list[str] | tuple[str, ...]) -> DistillConfig:
        """Apply ``key=value`` strings (values parsed as YAML; ``stage.key`` for stage fields)."""
        d = self.to_dict()
        for a in assignments:
            if "=" not in a:
                raise ValueError(f"override {a!r}: expected key=value")
            key, _, raw = a.partition("=")
            key = key.strip()
            value = yaml.safe_load(raw) if raw.strip() else None
            target, leaf = d, key
            if "." in key:
                head, leaf = key.split(".", 1)
                if head not in ("adapt", "distill", "finetune"):
                    raise ValueError(f"override {a!r}: only adapt./distill./finetune. take a dotted key")
                target = d[head]
                if leaf not in {f.name for f in dataclasses.fields(StageConfig)}:
                    raise ValueError(f"override {a!r}: unknown stage field {leaf!r}")
            elif key not in d:
                raise ValueError(f"override {a!r}: unknown config key {key!r}")
            target[leaf] = value
        return DistillConfig.from_dict(d)

    # -- identity ----------------------------------------------------------------------------------
    def effective_data_seed(self) -> int:
        return self.seed if self.data_seed is None else int(self.data_seed)

    def digest(self, exclude: frozenset[str] | set[str] = frozenset()) -> str:
        """sha256 of the fields that change results (paths of outputs, logging, workers... excluded)."""
        d = {k: v for k, v in self.to_dict().items() if k not in _NON_SEMANTIC and k not in exclude}
        if self.task == "classification":  # digests of classification runs are what they were before segmentation
            defaults = DistillConfig().to_dict()
            d = {k: v for k, v in d.items() if k not in _SEG_FIELDS or v != defaults[k]}
        blob = json.dumps(d, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _stage_from_dict(d: dict[str, Any], name: str) -> StageConfig:
    names = {f.name for f in dataclasses.fields(StageConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {name}; known: {sorted(names)}")
    try:
        return StageConfig(**d)
    except ValueError as exc:
        raise ValueError(str(exc).replace("stage ", f"{name}.", 1)) from None
