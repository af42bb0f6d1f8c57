"""Train one grid point (lr, weight decay): full fine-tuning with AdamW, test accuracy after every epoch.

Every epoch ends with an atomic checkpoint (model, optimizer, scheduler, AMP scaler, accuracy history), and
every random choice of an epoch (shuffling, crops, flips, dropout) comes from a generator seeded with
``(seed, grid point, epoch)``: a run killed at any moment restarts from its last finished epoch and gives
the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..reporting import atomic_torch_save
from .config import FinetuneConfig
from .images import ImageTensors, augment_batch, normalize_batch

__all__ = ["EpochCallback", "TrainContext", "evaluate", "predict", "train_grid_point"]

EpochCallback = Callable[[int, int, float], None]  # (grid point index, epoch (1-based), test accuracy %)
# called after every evaluated epoch (see FinetuneConfig.eval_every)


@dataclass
class TrainContext:
    """What every grid point shares: data, normalisation, device and precision."""

    train: ImageTensors
    test: ImageTensors
    mean: torch.Tensor
    std: torch.Tensor
    device: torch.device
    precision: str  # fp32 / bf16 / fp16


def _epoch_seed(seed: int, point: int, epoch: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(point), int(epoch)]).generate_state(1)[0])


def _autocast(ctx: TrainContext) -> contextlib.AbstractContextManager:
    if ctx.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if ctx.precision == "bf16" else torch.float16
    return torch.autocast(device_type=ctx.device.type, dtype=dtype)


def _set_train_mode(model: nn.Module, bn: str) -> None:
    model.train()
    if bn == "frozen":  # keep running statistics (affine parameters still train)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _param_groups(model: nn.Module, lr: float, wd: float, head_scale: float) -> list[dict[str, Any]]:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    head_ids = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    top = [p for p in model.parameters() if p.requires_grad and id(p) in head_ids]
    groups = [{"params": body, "lr": lr, "weight_decay": wd}]
    if top:
        groups.append({"params": top, "lr": lr * head_scale, "weight_decay": wd})
    return groups


@torch.inference_mode()
def predict(model: nn.Module, data: ImageTensors, ctx: TrainContext, batch_size: int) -> torch.Tensor:
    """Predicted class of every image of ``data`` (int16, in ``data``'s order)."""
    model.eval()
    out = torch.empty(len(data), dtype=torch.int16)
    for s in range(0, len(data), batch_size):
        x = normalize_batch(data.batch(slice(s, s + batch_size)), ctx.mean, ctx.std).to(ctx.device)
        with _autocast(ctx):
            logits = model(x)
        out[s:s + batch_size] = logits.argmax(1).cpu().to(torch.int16)
    return out


def evaluate(model: nn.Module, data: ImageTensors, ctx: TrainContext, batch_size: int) -> float:
    """Top-1 accuracy (percent) of ``model`` on ``data``."""
    pred = predict(model, data, ctx, batch_size)
    return 100.0 * int((pred.long() == data.labels).sum()) / max(1, len(data))


def train_grid_point(base_model: nn.Module, point: int, lr: float, wd: float, cfg: FinetuneConfig,
                     ctx: TrainContext, checkpoint: Path, *, on_epoch: EpochCallback | None = None,
                     desc: str = "") -> tuple[list[float], float, torch.Tensor]:
    """Fine-tune a copy of ``base_model`` at (lr, wd) for ``cfg.epochs`` epochs, resuming from ``checkpoint``
    when it belongs to this grid point. Returns (test accuracy after each evaluated epoch — every epoch of
    ``cfg.eval_epochs`` —, seconds spent in total, the predicted class of every test image after each evaluated
    epoch: ``(len(cfg.eval_epochs), n_test)`` int16)."""
    model = copy.deepcopy(base_model).to(ctx.device)
    opt = torch.optim.AdamW(_param_groups(model, lr, wd, cfg.head_lr_scale), lr=lr, weight_decay=wd)
    n, bs = len(ctx.train), cfg.batch_size
    steps_per_epoch = max(1, math.ceil(n / bs))
    total = steps_per_epoch * cfg.epochs
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total)))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=ctx.precision == "fp16")
    history: list[float] = []
    predictions: list[torch.Tensor] = []
    seconds = 0.0
    done = 0  # finished epochs
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=ctx.device, weights_only=True)
        # a checkpoint of another grid point, or one without per-image records, is not resumed
        if int(state["point"]) == point and "predictions" in state:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            history, seconds = [float(a) for a in state["history"]], float(state["seconds"])
            predictions = list(state["predictions"].cpu())
            done = int(state.get("epochs_done", len(history)))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=done * steps_per_epoch, desc=desc, unit="step", leave=False,
               dynamic_ncols=True, disable=not cfg.progress)
    try:
        for epoch in range(done, cfg.epochs):
            t0 = time.perf_counter()
            es = _epoch_seed(cfg.seed, point, epoch)
            gen = torch.Generator().manual_seed(es)
            torch.manual_seed(es)  # dropout / drop-path
            order = torch.randperm(n, generator=gen)
            _set_train_mode(model, cfg.bn)
            for s in range(0, n, bs):
                idx = order[s:s + bs]
                x = augment_batch(ctx.train.batch(idx), cfg.augment, gen)
                x = normalize_batch(x, ctx.mean, ctx.std).to(ctx.device, non_blocking=True)
                y = ctx.train.labels[idx].to(ctx.device, non_blocking=True)
                with _autocast(ctx):
                    loss = loss_fn(model(x).float(), y)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                bar.update(1)
            if epoch + 1 in cfg.eval_epochs:
                pred = predict(model, ctx.test, ctx, cfg.eval_batch_size)
                history.append(100.0 * int((pred.long() == ctx.test.labels).sum()) / max(1, len(ctx.test)))
                predictions.append(pred)
            seconds += time.perf_counter() - t0
            if history:
                bar.set_postfix(acc=f"{history[-1]:.2f}", best=f"{max(history):.2f}", loss=f"{loss.item():.3f}")
            atomic_torch_save({"point": point, "lr": lr, "weight_decay": wd, "model": model.state_dict(),
                                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                "scaler": scaler.state_dict(), "history": history, "seconds": seconds,
                                "epochs_done": epoch + 1,
                                "predictions": torch.stack(predictions) if predictions
                                else torch.empty(0, len(ctx.test), dtype=torch.int16)},
                               checkpoint)
            if on_epoch is not None and epoch + 1 in cfg.eval_epochs:
                on_epoch(point, epoch + 1, history[-1])
    finally:
        bar.close()
    return history, seconds, torch.stack(predictions) if predictions else torch.empty(0, len(ctx.test),
                                                                                      dtype=torch.int16)
