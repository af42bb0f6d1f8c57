"""One training loop for every stage: AMP, gradient accumulation, checkpoint + resume, metrics log, DDP.

The loop trains a *loss module*: an ``nn.Module`` whose ``forward(x, index, view, label)`` returns
``(loss, {name: float})``. Each stage (teacher fine-tuning, task-oriented distillation, feature
distillation, student fine-tuning) is such a module around its trainable networks, so the engineering
lives here once:

* **Order**: batches come from a :class:`~transferkit.distill.data.StepPlan` (a pure function of seed and
  step), so a resumed run sees exactly the batches an uninterrupted one would, and DDP ranks take disjoint
  slices of the same global batch.
* **Mixed precision**: ``torch.autocast`` (bf16 or fp16) with a gradient scaler for fp16 on CUDA.
* **Accumulation**: ``grad_accum`` micro-batches per optimizer step (the loss is divided accordingly; DDP
  skips the all-reduce on all but the last micro-batch).
* **Checkpoints**: every ``checkpoint_every`` steps (model, optimizer, scheduler, scaler, RNG states, step,
  elapsed time), written atomically by rank 0; ``resume`` continues from the last one.
* **Metrics**: JSONL appended every ``log_every`` steps (rewritten on resume to drop steps that will be
  redone), CSV rewritten atomically at checkpoints and at the end, TensorBoard optional.
* **DDP**: under ``torchrun`` (or any initialised process group) the module is wrapped in
  :class:`~torch.nn.parallel.DistributedDataParallel`; gloo on CPU, NCCL on GPUs.
"""

from __future__ import annotations

import contextlib
import json
import math
import pickle
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import CorruptImageError
from ..features.distributed import DistContext
from ..reporting import atomic_torch_save, atomic_write_text, write_csv
from .config import StageConfig
from .data import StepPlan, ViewDataset, make_loader

__all__ = ["LoopSettings", "MetricsLogger", "TrainResult", "Trainer", "atomic_torch_save", "autocast",
           "seed_everything"]


CHECKPOINT_FORMAT = 2  # 2: resume state in plain types that torch.load(weights_only=True) accepts


def rng_state() -> dict[str, Any]:
    """torch, numpy and python RNG states as tensors, lists, ints, floats and strings only, so that a
    checkpoint loads with ``torch.load(weights_only=True)`` (no pickled classes, no code run on load)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python_rng": {"version": int(version), "internal": [int(v) for v in internal],
                       "gauss_next": None if gauss_next is None else float(gauss_next)},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (also the numpy tuple / python tuple of format-1 checkpoints)."""
    torch.set_rng_state(state["torch_rng"])
    npr = state["numpy_rng"]
    if isinstance(npr, dict):
        npr = (npr["kind"], np.asarray(npr["keys"], dtype=np.int64).astype(np.uint32), npr["pos"],
               npr["has_gauss"], npr["cached_gaussian"])
    np.random.set_state(npr)
    pyr = state["python_rng"]
    if isinstance(pyr, dict):
        pyr = (pyr["version"], tuple(pyr["internal"]), pyr["gauss_next"])
    random.setstate(pyr)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint with ``weights_only=True``: a tampered run folder cannot run code.

    Format-1 checkpoints (numpy RNG state pickled as an array) are still read: only numpy's array
    reconstruction is allow-listed for them. Anything else that needs more is refused with one line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path}: refusing to resume from a checkpoint that needs code to load "
                         "(weights_only=True failed); delete it to start this stage over, or use resume=False"
                         ) from exc


def _numpy_array_globals() -> list[Any]:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    out: list[Any] = [_reconstruct, np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        out.append(dtypes.UInt32DType)
    return out


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for ``precision`` in {fp32, bf16, fp16} (fp32: no autocast)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (initialisations, dropout)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)



@dataclass
class LoopSettings:
    """Engineering settings shared by every stage (taken from the run's :class:`DistillConfig`)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    grad_accum: int = 1
    num_workers: int = 0
    checkpoint_every: int = 200
    log_every: int = 10
    log_formats: tuple[str, ...] = ("jsonl", "csv")
    tensorboard: bool = False
    resume: bool = True
    progress: bool = True
    seed: int = 0


@dataclass
class TrainResult:
    """What a stage cost and where it ended."""

    steps: int
    samples: int
    seconds: float
    resumed_from: int = 0
    last: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MetricsLogger:
    """JSONL (+ CSV, + TensorBoard) metrics of one stage; only the main process writes."""

    def __init__(self, stage_dir: Path, stage: str, formats: tuple[str, ...], tensorboard: bool, enabled: bool,
                 resume_step: int = 0):
        self.stage, self.formats, self.enabled = stage, formats, enabled
        self.jsonl = stage_dir / "metrics.jsonl"
        self.csv = stage_dir / "metrics.csv"
        self.records: list[dict[str, Any]] = []
        self.tb = None
        if not enabled:
            return
        stage_dir.mkdir(parents=True, exist_ok=True)
        if self.jsonl.exists():  # keep what precedes the resume point; later steps will be redone
            for line in self.jsonl.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
                if int(rec.get("step", 0)) <= resume_step:
                    self.records.append(rec)
        atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in self.records))
        self._fh = open(self.jsonl, "a")  # noqa: SIM115 - closed in close()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ImportError("tensorboard=True needs the tensorboard package: pip install tensorboard") from exc
            self.tb = SummaryWriter(str(stage_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        rec = {"stage": self.stage, "step": int(step), **{k: _round(v) for k, v in metrics.items()}}
        self.records.append(rec)
        if "jsonl" in self.formats or "csv" in self.formats:
            self._fh.write(json.dumps(rec) + "\n")
            self._fh.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{self.stage}/{k}", v, step)

    def write_csv(self) -> None:
        if self.enabled and "csv" in self.formats:
            write_csv(self.csv, self.records)

    def close(self) -> None:
        if not self.enabled:
            return
        self.write_csv()
        self._fh.close()
        if "jsonl" not in self.formats:
            self.jsonl.unlink(missing_ok=True)
        if self.tb is not None:
            self.tb.close()


def _round(v: Any) -> Any:
    return round(float(v), 6) if isinstance(v, (float, np.floating)) else v


class _MicroBatches:
    """Batch sampler: this rank's micro-batches of steps ``[start, stop)``, generated lazily."""

    def __init__(self, plan: StepPlan, start: int, stop: int, ctx: DistContext, accum: int,
                 policy: Callable[[int, int], int]):
        self.plan, self.start, self.stop, self.ctx, self.accum, self.policy = plan, start, stop, ctx, accum, policy

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for s in range(self.start, self.stop):
            yield from self.plan.micro_batches(s, self.ctx.rank, self.ctx.world, self.accum, self.policy)

    def __len__(self) -> int:
        return (self.stop - self.start) * self.accum


def _param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases and normalisation parameters (1-D tensors)."""
    decay, no_decay = [], []
    for _, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if not groups:
        raise ValueError("the module has no trainable parameters")
    return groups


def _schedule(steps: int, warmup_fraction: float) -> Callable[[int], float]:
    warm = int(round(warmup_fraction * steps))

    def fn(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        rest = max(1, steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / rest)))

    return fn


class Trainer:
    """Train a loss module for ``steps`` optimizer steps over a view dataset (see the module docstring).

    ``digest`` identifies the run a checkpoint belongs to: resuming from a checkpoint written by a run with
    a different digest raises instead of silently mixing runs.
    """

    def __init__(self, module: nn.Module, dataset: ViewDataset, plan: StepPlan,
                 policy: Callable[[int, int], int], *, steps: int, stage: StageConfig, settings: LoopSettings,
                 stage_dir: str | Path, name: str, ctx: DistContext | None = None, digest: str = ""):
        self.module, self.dataset, self.plan, self.policy = module, dataset, plan, policy
        self.steps, self.stage, self.s, self.name = int(steps), stage, settings, name
        self.dir = Path(stage_dir)
        self.ctx = ctx or DistContext()
        self.digest = digest
        if plan.batch_size % (self.ctx.world * settings.grad_accum):
            raise ValueError(f"{name}: batch_size {plan.batch_size} is not divisible by "
                             f"world_size x grad_accum = {self.ctx.world * settings.grad_accum}")

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoint.pt"

    def _save(self, step: int, elapsed: float, opt: torch.optim.Optimizer, sched: Any, scaler: Any) -> None:
        def write() -> None:
            if self.ctx.is_main:
                atomic_torch_save({
                    "format": CHECKPOINT_FORMAT, "step": step, "elapsed": elapsed, "digest": self.digest,
                    "stage": self.name, "model": self.module.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), **rng_state(),
                }, self.checkpoint_path)

        # rank 0 writes; a failed write (disk full) stops every rank with that error instead of stranding them
        self.ctx.together(write)

    def _load(self, opt: torch.optim.Optimizer, sched: Any, scaler: Any) -> tuple[int, float, dict[str, Any]]:
        ck = load_checkpoint(self.checkpoint_path)
        if self.digest and ck.get("digest") and ck["digest"] != self.digest:
            raise ValueError(f"{self.checkpoint_path} belongs to a run with a different configuration "
                             f"(digest {ck['digest']} != {self.digest}); use another out_dir or resume=False")
        self.module.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        rng = {k: ck[k] for k in ("torch_rng", "numpy_rng", "python_rng")}
        return int(ck["step"]), float(ck.get("elapsed", 0.0)), rng

    def fit(self) -> TrainResult:
        s, ctx, dev = self.s, self.ctx, self.s.device
        self.module.to(dev)
        opt = torch.optim.AdamW(_param_groups(self.module, self.stage.weight_decay), lr=self.stage.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(self.steps, self.stage.warmup_fraction))
        scaler = torch.amp.GradScaler(dev.type, enabled=(s.precision == "fp16" and dev.type == "cuda"))
        start, elapsed0, rng = 0, 0.0, None
        if s.resume and self.checkpoint_path.exists():
            start, elapsed0, rng = self._load(opt, sched, scaler)
            self.module.to(dev)
        elif self.checkpoint_path.exists() and ctx.is_main:
            self.checkpoint_path.unlink()
        start = min(start, self.steps)
        logger = MetricsLogger(self.dir, self.name, s.log_formats, s.tensorboard, ctx.is_main, resume_step=start)
        net: nn.Module = self.module
        if ctx.active:
            net = nn.parallel.DistributedDataParallel(self.module, device_ids=[dev.index] if dev.type == "cuda" else None)
        net.train()
        loader = make_loader(self.dataset, _MicroBatches(self.plan, start, self.steps, ctx, s.grad_accum, self.policy),
                             num_workers=s.num_workers, pin_memory=dev.type == "cuda")
        batches = iter(loader)  # draws its worker seed from the torch RNG: restore the saved RNG after this
        if rng is not None:
            set_rng_state(rng)
        bar = _bar(s.progress and ctx.is_main, self.steps, start, self.name)
        t0 = time.perf_counter()
        last: dict[str, float] = {}
        win_loss, win_parts, win_n, win_t = 0.0, {}, 0, time.perf_counter()
        step, micro = start, 0
        try:
            for batch in batches:
                if batch.bad:
                    raise CorruptImageError(self.dataset.ds.item_name(batch.bad[0][0]),
                                            f"unreadable training image ({batch.bad[0][1]}); remove it from the data")
                x = batch.x.to(dev, non_blocking=True)
                sync = micro == s.grad_accum - 1
                ctx_sync = contextlib.nullcontext() if (sync or not ctx.active) else net.no_sync()
                with ctx_sync:
                    with autocast(dev, s.precision):
                        loss, parts = net(x, batch.index.to(dev), batch.view.to(dev), batch.label.to(dev))
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"{self.name}: loss is {float(loss)} at step {step}; "
                                                 "lower the learning rate or use fp32")
                    scaler.scale(loss / s.grad_accum).backward()
                win_loss += float(loss.detach()) / s.grad_accum
                for k, v in parts.items():
                    win_parts[k] = win_parts.get(k, 0.0) + float(v) / s.grad_accum
                micro += 1
                if not sync:
                    continue
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                sched.step()
                micro = 0
                step += 1
                win_n += 1
                bar.update(1)
                if step % s.log_every == 0 or step == self.steps:
                    metrics = {"loss": win_loss / win_n, **{k: v / win_n for k, v in win_parts.items()}}
                    metrics = _all_reduce_mean(metrics, ctx, dev)
                    now = time.perf_counter()
                    metrics.update(epoch=self.plan.epoch_of(step), lr=opt.param_groups[0]["lr"],
                                   samples_per_s=win_n * self.plan.batch_size / max(now - win_t, 1e-9),
                                   elapsed_s=elapsed0 + now - t0)
                    logger.log(step, metrics)
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                    last = metrics
                    win_loss, win_parts, win_n, win_t = 0.0, {}, 0, now
                if step % s.checkpoint_every == 0 and step < self.steps:
                    self._save(step, elapsed0 + time.perf_counter() - t0, opt, sched, scaler)
                    logger.write_csv()
        finally:
            bar.close()
            logger.close()
        elapsed = elapsed0 + time.perf_counter() - t0
        if ctx.active:  # BatchNorm statistics of the last forward are rank-local: take rank 0's everywhere
            import torch.distributed as dist

            for b in self.module.buffers():
                dist.broadcast(b.data, src=0)
        if step > start:
            self._save(step, elapsed, opt, sched, scaler)
        net.eval()
        return TrainResult(steps=self.steps, samples=self.steps * self.plan.batch_size, seconds=round(elapsed, 3),
                           resumed_from=start, last=last)


def _all_reduce_mean(metrics: dict[str, float], ctx: DistContext, dev: torch.device) -> dict[str, float]:
    if not ctx.active:
        return metrics
    import torch.distributed as dist

    keys = sorted(metrics)
    t = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return {k: float(v) / ctx.world for k, v in zip(keys, t.tolist())}


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix(self, **kw: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(enabled: bool, total: int, initial: int, desc: str) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, leave=False)
