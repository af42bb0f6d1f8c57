"""``finetune``: the ground-truth protocol for one (model, dataset) pair, resumable and seeded.

Run state lives in ``<work_dir>/runs/<model>__<dataset>-<identity>/``: ``state.json`` (finished grid
points and their per-epoch accuracies, written atomically), ``point<i>.npy`` (the predicted class of every
test image after every epoch of finished grid point ``i``) and ``checkpoint.pt`` (the grid point in
progress, saved after every epoch).

Per-image records: with ``cfg.output`` (a ground-truth CSV), the predictions of every grid point and epoch
are also written to ``<csv folder>/<csv stem>_predictions/<model>__<dataset>.npz`` (see
:func:`records_path`), so the ground truth can be recomputed on resampled test sets with the selection over
epochs and grid inside the resampling (``transferkit bench`` bootstraps it). The identity hashes every option that changes the result, so a new
budget never resumes a stale run. The decoded images are cached in ``<work_dir>/images/``.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import open_dataset
from ..models import PREPROCESS_KEYS, ModelEntry, resolve_model
from ..reporting import atomic_write, atomic_write_text
from .config import FinetuneConfig
from .groundtruth import append_ground_truth
from .images import load_image_tensors
from .train import EpochCallback, TrainContext, train_grid_point

# zoo-entry options that matter for fine-tuning (the head size is ours; layer/batch size are extraction options)
_MODEL_OPTIONS = frozenset(PREPROCESS_KEYS) | {"model_args", "pretrained"}

__all__ = ["FinetuneResult", "finetune", "init_head", "records_path", "resolve_device", "run_dir"]


@dataclass
class FinetuneResult:
    """Best test accuracy over epochs and grid, the configuration that reached it, and every history."""

    model: str
    dataset: str
    accuracy: float
    best_lr: float
    best_weight_decay: float
    best_epoch: int
    histories: list[dict[str, Any]]
    seconds: float
    n_train: int
    n_test: int
    img_size: int
    device: str
    spec: str
    budget: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The ground-truth CSV row."""
        return {"model": self.model, "dataset": self.dataset, "accuracy": round(self.accuracy, 4),
                "best_lr": f"{self.best_lr:g}", "best_weight_decay": f"{self.best_weight_decay:g}",
                "best_epoch": self.best_epoch, "seconds": round(self.seconds, 1), "n_train": self.n_train,
                "n_test": self.n_test, "img_size": self.img_size, **self.budget, "device": self.device,
                "spec": self.spec, "torch": torch.__version__,
                "finished_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def resolve_device(device: str, amp: str) -> tuple[torch.device, str]:
    """``auto``: CUDA, else MPS, else CPU; precision ``auto``: bf16/fp16 on GPUs (AMP), fp32 on CPU."""
    from ..features import resolve_precision, select_device

    dev = select_device(device)
    return dev, resolve_precision(amp, dev)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")[:60] or "x"


def run_dir(cfg: FinetuneConfig) -> Path:
    """Folder of the resumable state of this configuration."""
    return Path(cfg.work_dir) / "runs" / f"{_slug(cfg.display_model)}__{_slug(cfg.display_dataset)}-{cfg.identity()}"


def records_path(ground_truth_csv: str | Path, model: str, dataset: str) -> Path:
    """Where the per-image records of one (model, dataset) pair live, next to its ground-truth CSV."""
    csv = Path(ground_truth_csv)
    return csv.parent / f"{csv.stem}_predictions" / f"{_slug(model)}__{_slug(dataset)}.npz"


def init_head(model: torch.nn.Module, how: str) -> None:
    """Initialise the new classifier: ``zeros``, ``normal`` (std 0.01, zero bias) or ``default`` (keep)."""
    if how == "default":
        return
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    layers = [m for m in head.modules() if isinstance(m, torch.nn.Linear)] if isinstance(head, torch.nn.Module) else []
    if not layers:
        raise ValueError(f"cannot find the linear classifier of {type(model).__name__} to initialise")
    with torch.no_grad():
        for lin in layers:
            if how == "zeros":
                lin.weight.zero_()
            else:
                lin.weight.normal_(0.0, 0.01)
            if lin.bias is not None:
                lin.bias.zero_()


def relative_spec(spec: str, base: Path) -> str:
    """A model spec with its file path written relative to ``base`` (portable ground-truth rows)."""
    import os

    prefix, path = "", spec
    if spec.startswith("local-dir:"):
        prefix, path = "local-dir:", spec[len("local-dir:"):]
    elif "@" in spec and "/" not in spec.split("@", 1)[0]:
        prefix, path = spec.split("@", 1)[0] + "@", spec.split("@", 1)[1]
    if not os.path.isabs(path):
        return spec
    return prefix + os.path.relpath(path, base)


def _read_state(path: Path, cfg: FinetuneConfig) -> dict[str, Any]:
    if path.exists():
        try:
            state = json.loads(path.read_text())
            if state.get("identity") == cfg.identity():
                return state
        except json.JSONDecodeError:
            pass
    return {"identity": cfg.identity(), "config": cfg.to_dict(), "points": {}}


def finetune(cfg: FinetuneConfig, *, on_epoch: EpochCallback | None = None) -> FinetuneResult:
    """Fine-tune ``cfg.model`` on ``cfg.data`` over the (lr, weight decay) grid; returns the ground truth.

    Finished grid points are never recomputed; the point in progress restarts from its last epoch. When
    ``cfg.output`` is set, the result is added to that ground-truth CSV.
    """
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    device, precision = resolve_device(cfg.device, cfg.amp)
    train_ds = open_dataset(cfg.data, cfg.train_split, per_class=cfg.per_class_train, seed=cfg.seed)
    test_ds = open_dataset(cfg.data, cfg.test_split, per_class=cfg.per_class_test, seed=cfg.seed)
    if list(train_ds.classes) != list(test_ds.classes):
        raise ValueError(f"{cfg.data}: the {cfg.train_split!r} and {cfg.test_split!r} splits have different classes "
                         f"({len(train_ds.classes)} vs {len(test_ds.classes)})")
    num_classes = len(train_ds.classes)
    if num_classes < 2:
        raise ValueError(f"{cfg.data}: fine-tuning needs at least 2 classes, found {num_classes}")
    opts = {k: v for k, v in cfg.model_options.items() if k in _MODEL_OPTIONS}
    entry = ModelEntry(cfg.display_model, cfg.model, opts)
    rm = resolve_model(entry, num_classes=num_classes)
    dcfg = rm.data_config()
    native = int(dcfg["input_size"][-1])
    size = min(int(cfg.img_size), native) if cfg.img_size else native
    interp = str(dcfg.get("interpolation", "bicubic"))
    cache = Path(cfg.work_dir) / "images"
    name = f"{cfg.display_model}@{cfg.display_dataset}"
    train = load_image_tensors(train_ds, size, interp, cache, cfg.progress, f"{cfg.display_dataset} train {size}px")
    test = load_image_tensors(test_ds, size, interp, cache, cfg.progress, f"{cfg.display_dataset} test {size}px")
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"{cfg.data}: no readable images in the train or test split")
    ctx = TrainContext(train, test, torch.tensor(dcfg["mean"], dtype=torch.float32),
                       torch.tensor(dcfg["std"], dtype=torch.float32), device, precision)

    rdir = run_dir(cfg)
    rdir.mkdir(parents=True, exist_ok=True)
    state_path, ckpt = rdir / "state.json", rdir / "checkpoint.pt"
    state = _read_state(state_path, cfg)
    state.update(n_train=len(train), n_test=len(test), img_size=size, spec=rm.spec)
    base = None
    for i, (lr, wd) in enumerate(cfg.grid):
        if state["points"].get(str(i), {}).get("done") and (rdir / f"point{i}.npy").exists():
            continue
        if base is None:
            torch.manual_seed(cfg.seed)  # the new head starts from the same weights at every grid point
            base = rm.build()
            if int(getattr(base, "num_classes", num_classes) or 0) != num_classes:
                raise ValueError(f"{cfg.model}: could not give the model a {num_classes}-class head")
            init_head(base, cfg.head_init)
        desc = f"{name} lr={lr:g} wd={wd:g} [{i + 1}/{len(cfg.grid)}]"
        history, secs, preds = train_grid_point(base, i, lr, wd, cfg, ctx, ckpt, on_epoch=on_epoch, desc=desc)
        atomic_write(rdir / f"point{i}.npy", lambda fh, a=preds.numpy(): np.save(fh, a))
        state["points"][str(i)] = {"lr": lr, "weight_decay": wd, "history": history, "seconds": secs, "done": True}
        atomic_write_text(state_path, json.dumps(state, indent=1, default=str))
        ckpt.unlink(missing_ok=True)
    atomic_write_text(state_path, json.dumps(state, indent=1, default=str))

    histories = [state["points"][str(i)] for i in range(len(cfg.grid))]
    best = (-1.0, 0, 0)
    for i, h in enumerate(histories):
        for epoch, acc in zip(cfg.eval_epochs, h["history"], strict=True):
            if acc > best[0]:  # ties: the earlier grid point / epoch wins
                best = (acc, i, epoch)
    acc, bi, be = best
    result = FinetuneResult(cfg.display_model, cfg.display_dataset, acc, histories[bi]["lr"],
                            histories[bi]["weight_decay"], be, histories, sum(h["seconds"] for h in histories),
                            len(train), len(test), size, str(device), rm.spec, cfg.budget())
    if cfg.output:
        preds = np.stack([np.load(rdir / f"point{i}.npy") for i in range(len(cfg.grid))])
        records = {"predictions": preds.astype(np.int16), "labels": ctx.test.labels.numpy().astype(np.int16),
                   "lrs": np.array([g[0] for g in cfg.grid]), "weight_decays": np.array([g[1] for g in cfg.grid]),
                   "epochs": np.array(cfg.eval_epochs), "classes": np.array(train_ds.classes),
                   "test_fingerprint": np.array(test_ds.fingerprint())}
        # compressed: committed next to the ground truth (about 5x smaller than plain int16)
        atomic_write(records_path(cfg.output, cfg.display_model, cfg.display_dataset),
                     lambda fh: np.savez_compressed(fh, **records))
        row = result.row()
        row["spec"] = relative_spec(rm.spec, Path(cfg.output).resolve().parent)
        append_ground_truth(cfg.output, row)
    return result

