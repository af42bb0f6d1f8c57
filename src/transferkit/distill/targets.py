"""Teacher outputs cached on disk: the teacher runs once per (image, augmentation view), ever.

What is stored is the teacher backbone's pooled pre-logit feature vector of each view. Task predictions
are the adapted teacher's head applied to it (a linear layer: free to recompute), and the task-agnostic
feature-distillation baseline matches the same vectors, so one teacher pass over the transfer set serves
both methods, every seed and every linear-probe head.

Layout::

    <cache_dir>/distill_targets/<teacher key>/meta.json
    <cache_dir>/distill_targets/<teacher key>/shard-<id>.values.npy    float32 (n, D)
    <cache_dir>/distill_targets/<teacher key>/shard-<id>.stats.json    seconds spent, item count
    <cache_dir>/distill_targets/<teacher key>/shard-<id>.keys.npy      item keys; written last = shard complete

``teacher key`` hashes the backbone weights (file sha256, or the state-dict digest of an adapted teacher),
the rendering (resolution, resampling, normalisation) and the precision. An item key hashes the image's
content digest and the view (crop box + flips). Every file is written to a temporary name and renamed; an
interrupted pass keeps its finished shards and the next run computes only what is missing. Under DDP each
rank computes a slice of the missing items and writes its own shards (the cache directory must be shared).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import CorruptImageWarning
from ..features.distributed import DistContext
from ..reporting import atomic_write, atomic_write_text
from .data import ViewDataset, make_loader
from .views import make_view

__all__ = ["CacheStats", "TeacherFeatureStore", "item_keys", "teacher_key"]


def teacher_key(identity: dict[str, Any], render: dict[str, Any], precision: str) -> str:
    """Key of a teacher backbone + its input rendering + numeric precision."""
    doc = {"format": 1, "identity": identity, "render": render, "precision": precision, "output": "pre_logits"}
    blob = json.dumps(doc, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def item_keys(view_ds: ViewDataset, items: Sequence[tuple[int, int]]) -> list[str]:
    """Cache key of each ``(index, view_id)``: content digest of the image + the view's geometry."""
    out = []
    for i, v in items:
        d = view_ds.digests[int(i)]
        vk = make_view(d, int(v), view_ds.seed, view_ds.recipe).key()
        out.append(hashlib.blake2b(f"{d}|{vk}".encode(), digest_size=16).hexdigest())
    return out


@dataclass
class CacheStats:
    """What one :meth:`TeacherFeatureStore.features` call cost."""

    requested: int = 0
    computed: int = 0  # teacher forward passes run now (cache misses)
    seconds: float = 0.0
    bad: list[tuple[int, str]] = field(default_factory=list)  # (dataset index, error) of unreadable images

    def merge(self, other: CacheStats) -> CacheStats:
        return CacheStats(self.requested + other.requested, self.computed + other.computed,
                          self.seconds + other.seconds, self.bad + other.bad)


def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, arr))  # umask mode; disk full -> one-line OutputWriteError


class TeacherFeatureStore:
    """Per-item cache of one teacher's pooled features (see the module docstring)."""

    def __init__(self, cache_dir: str | Path, key: str, meta: dict[str, Any] | None = None,
                 dtype: str = "float32"):
        """``dtype``: storage of the values (``float16`` halves the cache: segmentation logit maps)."""
        self.dir = Path(cache_dir).expanduser() / "distill_targets" / key
        self.dtype = np.dtype(dtype)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = key
        meta_path = self.dir / "meta.json"
        if meta is not None and not meta_path.exists():
            atomic_write_text(meta_path, json.dumps(meta, indent=2, default=str) + "\n")
        self._index: dict[str, tuple[int, int]] = {}
        self._shards: list[np.ndarray] = []
        self._shard_names: set[str] = set()
        self._seconds = 0.0
        self._items = 0
        self.refresh()

    # -- index -----------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Pick up shards written since the last look (by this or another process)."""
        for kp in sorted(self.dir.glob("shard-*.keys.npy")):
            name = kp.name[: -len(".keys.npy")]
            if name in self._shard_names:
                continue
            vals = np.load(self.dir / f"{name}.values.npy", mmap_mode="r")
            keys = np.load(kp)
            sid = len(self._shards)
            self._shards.append(vals)
            self._shard_names.add(name)
            for row, k in enumerate(keys.tolist()):
                self._index.setdefault(str(k), (sid, row))
            sp = self.dir / f"{name}.stats.json"
            if sp.exists():
                st = json.loads(sp.read_text())
                self._seconds += float(st.get("seconds", 0.0))
                self._items += int(st.get("items", 0))

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    @property
    def seconds_per_item(self) -> float | None:
        """Measured teacher seconds per view over every shard of this cache (for cost reports)."""
        return self._seconds / self._items if self._items else None

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Features of the given item keys, in order (KeyError for a key never computed)."""
        if not keys:
            dim = self._shards[0].shape[1] if self._shards else 0
            return np.zeros((0, dim), self.dtype)
        rows = [self._index[k] for k in keys]
        dim = self._shards[rows[0][0]].shape[1]
        out = np.empty((len(keys), dim), self.dtype)
        by_shard: dict[int, list[tuple[int, int]]] = {}
        for pos, (sid, row) in enumerate(rows):
            by_shard.setdefault(sid, []).append((pos, row))
        for sid, pairs in by_shard.items():
            pos = np.array([p for p, _ in pairs])
            rr = np.array([r for _, r in pairs])
            out[pos] = np.asarray(self._shards[sid][rr], dtype=self.dtype)
        return out

    def _write_shard(self, keys: list[str], values: np.ndarray, seconds: float, rank: int) -> None:
        name = f"shard-r{rank}-{uuid.uuid4().hex[:12]}"
        _atomic_save_npy(self.dir / f"{name}.values.npy", np.ascontiguousarray(values, dtype=self.dtype))
        atomic_write_text(self.dir / f"{name}.stats.json", json.dumps({"seconds": seconds, "items": len(keys)}))
        _atomic_save_npy(self.dir / f"{name}.keys.npy", np.asarray(keys, dtype="U32"))

    # -- computing -------------------------------------------------------------------------------
    def features(self, view_ds: ViewDataset, items: Sequence[tuple[int, int]],
                 forward: Callable[[], Callable[[torch.Tensor], torch.Tensor]], *, batch_size: int = 64,
                 num_workers: int = 0, device: torch.device | None = None, ctx: DistContext | None = None,
                 shard_size: int = 2048, progress: bool = True, desc: str = "teacher") -> tuple[np.ndarray, CacheStats]:
        """Features of ``items`` (``(index, view_id)`` pairs of ``view_ds``), computing the missing ones.

        ``forward()`` builds the teacher lazily (only when something is missing) and returns
        ``x -> pooled features``. Unreadable images are skipped, reported in ``stats.bad`` and get NaN rows.
        """
        ctx = ctx or DistContext()
        keys = item_keys(view_ds, items)
        stats = CacheStats(requested=len(items))
        missing: dict[str, tuple[int, int]] = {}
        for k, it in zip(keys, items):
            if k not in self._index and k not in missing:
                missing[k] = (int(it[0]), int(it[1]))
        # rank 0 decides what is missing (another rank's view of the folder may be older or newer)
        todo = (ctx.broadcast(list(missing.items()) if ctx.is_main else None) if ctx.active
                else list(missing.items()))[ctx.rank::ctx.world]
        # every rank joins `together` (also with nothing to do), so one that fails cannot strand the rest
        stats = ctx.together(lambda: self._compute(
            view_ds, todo, forward, stats, batch_size=batch_size, num_workers=num_workers, device=device,
            shard_size=shard_size, progress=progress and ctx.is_main, desc=desc, rank=ctx.rank) if todo else stats)
        if ctx.active:
            ctx.barrier()
            gathered = ctx.all_gather((stats.computed, stats.seconds, stats.bad))
            stats.computed = sum(g[0] for g in gathered)
            stats.seconds = max(g[1] for g in gathered)
            stats.bad = [b for g in gathered for b in g[2]]
        self.refresh()
        bad_idx = {i for i, _ in stats.bad}
        # byte-identical unreadable files share one key: only the first was tried, all of them are bad
        bad_keys = {k for k, it in zip(keys, items) if int(it[0]) in bad_idx}
        present = [k in self._index for k in keys]
        gone = [it for it, k, ok in zip(items, keys, present) if not ok and k not in bad_keys]
        if gone:
            raise RuntimeError(f"{len(gone)} teacher outputs are missing after the pass (e.g. item {gone[0]}); "
                               f"is {self.dir} shared by every process?")
        out = np.full((len(keys), self._dim_or(0)), np.nan, self.dtype)
        ok = np.flatnonzero(present)
        if ok.size:
            out[ok] = self.get([keys[j] for j in ok.tolist()])
        if stats.bad:  # count images, not (image, view) items
            n_bad = len({int(it[0]) for it, k in zip(items, keys) if k in bad_keys})
            warnings.warn(f"{n_bad} unreadable transfer/labeled image(s) skipped, e.g. {stats.bad[0][1]}",
                          CorruptImageWarning, stacklevel=2)
        return out, stats

    def _dim_or(self, default: int) -> int:
        return int(self._shards[0].shape[1]) if self._shards else default

    def _compute(self, view_ds: ViewDataset, todo: list[tuple[str, tuple[int, int]]],
                 forward: Callable[[], Callable[[torch.Tensor], torch.Tensor]], stats: CacheStats, *,
                 batch_size: int, num_workers: int, device: torch.device | None, shard_size: int, progress: bool,
                 desc: str, rank: int) -> CacheStats:
        fn = forward()
        dev = device or torch.device("cpu")
        key_of = {it: k for k, it in todo}
        items = [it for _, it in todo]
        batches = [items[s:s + batch_size] for s in range(0, len(items), batch_size)]
        loader = make_loader(view_ds, batches, num_workers=num_workers, pin_memory=dev.type == "cuda")
        bar = _bar(progress, len(items), desc)
        buf_k: list[str] = []
        buf_v: list[np.ndarray] = []
        t_shard = time.perf_counter()
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                for b in loader:
                    stats.bad.extend(b.bad)
                    if b.x is not None:
                        f = fn(b.x.to(dev, non_blocking=True)).float().cpu().numpy()
                        buf_v.append(f)
                        buf_k.extend(key_of[(int(i), int(v))] for i, v in zip(b.index.tolist(), b.view.tolist()))
                        stats.computed += len(b)
                    bar.update(len(b) + len(b.bad))
                    if len(buf_k) >= shard_size:
                        self._write_shard(buf_k, np.concatenate(buf_v), time.perf_counter() - t_shard, rank)
                        buf_k, buf_v, t_shard = [], [], time.perf_counter()
            if buf_k:
                self._write_shard(buf_k, np.concatenate(buf_v), time.perf_counter() - t_shard, rank)
        finally:
            bar.close()
        stats.seconds += time.perf_counter() - t0
        return stats


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(enabled: bool, total: int, desc: str) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="view", dynamic_ncols=True, leave=False)


def pooled_forward(backbone: nn.Module, device: torch.device, precision: str,
                   channels_last: bool | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> pooled pre-logit features`` of a backbone built with ``num_classes=0`` (eval mode, autocast)."""
    from .trainer import autocast

    model = backbone.to(device).eval()
    cl = device.type != "cpu" if channels_last is None else channels_last
    if cl:
        model = model.to(memory_format=torch.channels_last)

    def fn(x: torch.Tensor) -> torch.Tensor:
        if cl and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            out = model(x)
        if out.ndim > 2:
            out = out.flatten(2).mean(-1)
        return out.float()

    return fn
