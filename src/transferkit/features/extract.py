"""Feature extraction: frozen features (+ source-class probabilities) of models on one dataset.

The loop runs at the speed of the forward pass: a DataLoader with workers and pinned memory decodes and
preprocesses while the model runs under ``torch.inference_mode`` (channels_last, bf16/fp16 autocast on
GPU), outputs stay on the device until a cache chunk is complete, and each finished chunk is written
atomically. Nothing is computed twice: the cache key covers the model weights, the exact items and
labels, the preprocessing, the layer and the precision (see :mod:`transferkit.features.cache`).

Chunks are bounded by size and by time: one is written every ``chunk_size`` images or every
``chunk_seconds`` of work, whichever comes first, and the images done so far are written when the run
is interrupted (Ctrl-C, SIGTERM), so a stopped run loses at most one batch. Batches sit on a fixed grid
of dataset positions (multiples of the batch size), so a resumed run feeds the model exactly the batches
an uninterrupted run would, and its features are bit-identical.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import CorruptImageError, CorruptImageWarning, ImageDataset, open_dataset
from ..models import ModelEntry, ResolvedModel, make_feature_fn, read_zoo, resolve_model, state_dict_digest
from ..reporting import OutputWriteError
from .allocator import keep_allocations_in_heap
from .cache import CacheEntry, FeatureCache, cache_key, intersect_spans
from .distributed import DistContext, dist_context
from .featureset import FeatureSet

__all__ = ["DEFAULT_CHUNK_SECONDS", "DEFAULT_CHUNK_SIZE", "ExtractionInterrupted", "default_num_workers",
           "extract_features", "extract_zoo", "resolve_precision", "select_device"]

DEFAULT_CHUNK_SIZE = 1024  # images per cache chunk at most
DEFAULT_CHUNK_SECONDS = 30.0  # ... and a chunk is written at least this often (seconds of work)


class ExtractionInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during extraction; the finished images were written to the cache first.

    ``str()`` is one line saying what was kept and how to resume. Attributes: ``model``, ``kept_images``,
    ``n_images``, ``kept_chunks``, ``path`` (the cache entry, ``None`` without a cache) and ``signum``."""

    def __init__(self, model: str, kept_images: int, n_images: int, kept_chunks: int, path: Path | None,
                 signum: int = signal.SIGINT):
        self.model, self.kept_images, self.n_images = model, kept_images, n_images
        self.kept_chunks, self.path, self.signum = kept_chunks, path, int(signum)
        if path is None:
            msg = f"interrupted while extracting {model}: nothing kept (no cache_dir)"
        else:
            msg = (f"interrupted while extracting {model}: kept {kept_images} of {n_images} images "
                   f"({kept_chunks} chunk{'s' if kept_chunks != 1 else ''}) in {path}; "
                   "run again with the same inputs to resume")
        super().__init__(msg)


class _Terminated(KeyboardInterrupt):
    """SIGTERM turned into an exception, so that the finished images are written before the process ends."""


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While extracting, SIGTERM (a killed job, ``timeout``, a scheduler) raises like Ctrl-C does instead
    of ending the process on the spot; only in the main thread and only if nobody else handles SIGTERM."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# ------------------------------------------------------------------------------------------------
# runtime choices
# ------------------------------------------------------------------------------------------------
def select_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: CUDA (this rank's GPU), else Apple MPS, else CPU. A device that does not exist here is a
    ValueError naming it (not torch's error from deep inside the first ``.to()``)."""
    if str(device) != "auto":
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"unknown device {str(device)!r}: use auto, cpu, cuda, cuda:N or mps") from exc
        if dev.type == "cuda":
            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if n == 0:
                raise ValueError(f"device {str(device)!r}: no CUDA GPU is available here (use auto or cpu)")
            if dev.index is not None and dev.index >= n:
                raise ValueError(f"device {str(device)!r}: this machine has {n} CUDA GPU(s), cuda:0..cuda:{n - 1}")
        elif dev.type == "mps":
            mps = getattr(torch.backends, "mps", None)
            if mps is None or not mps.is_available():
                raise ValueError(f"device {str(device)!r}: Apple MPS is not available here (use auto or cpu)")
        elif dev.type != "cpu":  # other accelerators torch knows (xpu, ...) when their backend is present
            backend = getattr(torch, dev.type, None)
            if not (callable(getattr(backend, "is_available", None)) and backend.is_available()):
                raise ValueError(f"device {str(device)!r} is not available here: use auto, cpu, cuda, cuda:N or mps")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on CUDA GPUs that support it, fp16 on other GPUs / MPS, fp32 on CPU."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError("precision must be auto, fp32, bf16 or fp16")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "mps":
        return "fp16"
    return "fp32"


def default_num_workers(device: torch.device, preprocessed: bool) -> int:
    """Loader processes: none for pre-made tensors; on CPU leave the cores to the model (at most 4)."""
    if preprocessed:
        return 0
    n = os.cpu_count() or 1
    if device.type == "cpu":
        return max(1, min(4, n // 2))
    return min(8, max(1, n - 1))


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _versions() -> dict[str, str]:
    import timm

    from .. import __version__

    return {"transferkit": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0], "platform": platform.platform()}


# ------------------------------------------------------------------------------------------------
# loading items
# ------------------------------------------------------------------------------------------------
class _Batch:
    __slots__ = ("x", "idx", "bad")

    def __init__(self, x: torch.Tensor | None, idx: list[int], bad: list[tuple[int, str, str]]):
        self.x, self.idx, self.bad = x, idx, bad

    def pin_memory(self) -> _Batch:  # used by the DataLoader's pin-memory thread
        if self.x is not None:
            self.x = self.x.pin_memory()
        return self


class _Items(torch.utils.data.Dataset):
    """Transformed items by dataset position; unreadable items come back as errors, not exceptions."""

    def __init__(self, ds: ImageDataset, transform: Any):
        self.ds, self.transform = ds, transform

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[int, Any, str | None, str | None]:
        memo: DecodedImages | None = getattr(self.ds, "_decoded_images", None)
        try:
            x = memo.load(self.ds, i) if memo is not None else self.ds.load(i)
        except CorruptImageError as exc:
            return i, None, exc.name, exc.cause
        return i, (self.transform(x) if self.transform is not None else x), None, None

    def __getitems__(self, idx: Sequence[int]) -> Any:
        if self.transform is None and hasattr(self.ds, "load_batch"):  # pre-made tensors: one gather
            return _Batch(self.ds.load_batch(idx), list(idx), [])
        return [self[i] for i in idx]


class DecodedImages:
    """Decoded images of one dataset kept in memory (up to ``budget_bytes``), so that the models of a zoo
    decode each image once (:func:`extract_zoo`); the transforms never modify their input image, so the
    features are those of a fresh decode. Unreadable items are remembered too (their error)."""

    def __init__(self, budget_bytes: int = 1 << 30):
        self.budget, self.used = int(budget_bytes), 0
        self.images: dict[int, Any] = {}
        self.hits = self.misses = 0

    def load(self, ds: ImageDataset, i: int) -> Any:
        got = self.images.get(i)
        if got is not None:
            self.hits += 1
            if isinstance(got, CorruptImageError):
                raise got
            return got
        self.misses += 1
        try:
            x = ds.load(i)
        except CorruptImageError as exc:
            self.images[i] = exc
            raise
        size = _image_bytes(x)
        if self.used + size <= self.budget:
            self.images[i] = x
            self.used += size
        return x


def _image_bytes(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.element_size() * x.nelement()
    w, h = getattr(x, "size", (0, 0))
    return int(w) * int(h) * len(getattr(x, "getbands", lambda: "RGB")())


def _collate(items: Any) -> _Batch:
    if isinstance(items, _Batch):
        return items
    good = [(i, x) for i, x, _, _ in items if x is not None]
    bad = [(i, n, e) for i, x, n, e in items if x is None]
    x = torch.stack([torch.as_tensor(x) for _, x in good]) if good else None
    return _Batch(x, [i for i, _ in good], bad)


Span = tuple[int, int]  # dataset positions [lo, hi)


def _work_units(gaps: Sequence[Span], batch_size: int, chunk_size: int) -> list[list[Span]]:
    """Cut the missing position ranges into units of whole batches, at most ``chunk_size`` images each.

    Batch boundaries sit on the global grid of multiples of ``batch_size`` (cut by the gap edges), so the
    batches of a resumed run are the batches an uninterrupted run feeds the model: same rows, same order."""
    units: list[list[Span]] = []
    for lo, hi in gaps:
        cuts = [lo, *range((lo // batch_size + 1) * batch_size, hi, batch_size), hi]
        unit: list[Span] = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            if unit and (b - unit[0][0]) > chunk_size:
                units.append(unit)
                unit = []
            unit.append((a, b))
        if unit:
            units.append(unit)
    return units


# ------------------------------------------------------------------------------------------------
# the model side
# ------------------------------------------------------------------------------------------------
class _Prepared:
    """A resolved model (or a given nn.Module) with its identity and preprocessing, built lazily."""

    def __init__(self, model: Any, ds: ImageDataset, options: Mapping[str, Any]):
        self.module: nn.Module | None = None
        self.resolved: ResolvedModel | None = None
        pre = {k: v for k, v in options.items() if k in ("input_size", "img_size", "interpolation", "crop_pct",
                                                            "crop_mode", "mean", "std") and v is not None}
        if isinstance(model, nn.Module):
            from timm.data import resolve_data_config

            from ..models import _jsonable, _normalise_preprocess

            self.module = model.eval()
            info = getattr(model, "transferkit_info", {}) or {}
            self.spec = info.get("spec", type(model).__name__)
            self.kind, self.arch = "module", info.get("arch", type(model).__name__)
            self.background_index = info.get("background_index")
            self.identity: dict[str, Any] | None = {"state_dict_sha256": state_dict_digest(model)}
            self.weights_sha256 = info.get("weights_sha256") or self.identity["state_dict_sha256"]
            self.data_config = _jsonable(resolve_data_config(_normalise_preprocess(pre), model=model))
        else:
            rm = model if isinstance(model, ResolvedModel) else resolve_model(model, **pre)
            self.resolved = rm
            self.spec, self.kind, self.arch = rm.spec, rm.kind, rm.arch
            self.background_index = rm.background_index if rm.num_classes is None else None
            if rm.config_needs_build:
                self.module = rm.build()  # downloads; fills rm.pretrained_cfg from the hub's config
            self.identity = rm.identity()
            if self.identity is None:  # random weights: the state dict is the identity
                self.module = rm.build()
                self.identity = {"kind": rm.kind, "arch": rm.arch, "state_dict_sha256": state_dict_digest(self.module)}
            self.weights_sha256 = rm.weights_sha256() or self.identity.get("state_dict_sha256")
            self.data_config = rm.data_config(**pre)
        cap = options.get("max_img_size")
        if cap and max(self.data_config["input_size"][1:]) > int(cap):
            self.data_config = self._capped(int(cap), pre)
        if ds.is_preprocessed:
            self.data_config = dict(getattr(ds, "preprocessing", {"premade": True}))

    def _capped(self, cap: int, pre: dict[str, Any]) -> dict[str, Any]:
        """The data config at ``cap`` px (``max_img_size``): the model's own interpolation, crop and
        normalisation, a smaller input. Only for models whose own input is larger than the cap."""
        pre = {k: v for k, v in pre.items() if k not in ("input_size", "img_size")}
        pre["img_size"] = cap
        if self.resolved is not None:
            return self.resolved.data_config(**pre)
        from timm.data import resolve_data_config

        from ..models import _jsonable, _normalise_preprocess

        return _jsonable(resolve_data_config(_normalise_preprocess(pre), model=self.module))

    def build(self) -> nn.Module:
        if self.module is None:
            assert self.resolved is not None
            self.module = self.resolved.build()
        return self.module

    def transform(self, ds: ImageDataset) -> Any:
        if ds.is_preprocessed:
            return None
        from timm.data import create_transform

        return create_transform(**self.data_config, is_training=False)


def _probs(logits: torch.Tensor, background: int | None) -> torch.Tensor:
    logits = logits.float()
    if background is not None and 0 <= background < logits.shape[1]:
        logits = torch.cat([logits[:, :background], logits[:, background + 1:]], dim=1)
    return torch.softmax(logits, dim=1)


# ------------------------------------------------------------------------------------------------
# public API
# ------------------------------------------------------------------------------------------------
def extract_features(
    model: str | ModelEntry | ResolvedModel | nn.Module,
    data: str | Path | ImageDataset,
    *,
    split: str | None = None,
    layer: str | None = None,
    cache_dir: str | Path | None = ".transferkit_cache",
    per_class: int | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    probs: bool = True,
    drop_background: bool = True,
    strict: bool = False,
    chunk_size: int | None = None,
    chunk_seconds: float | None = DEFAULT_CHUNK_SECONDS,
    channels_last: bool | None = None,
    distributed: bool | str = "auto",
    progress: bool = True,
    name: str | None = None,
    positions: Sequence[tuple[int, int]] | None = None,
    **preprocess: Any,
) -> FeatureSet:
    """Extract the pooled penultimate features (or ``layer``) of one model on one dataset split.

    ``model``: a spec string (see :mod:`transferkit.models`), a zoo :class:`~transferkit.models.ModelEntry`
    or an ``nn.Module`` (timm-like). ``data``: a dataset path/spec or an :class:`~transferkit.data.ImageDataset`.
    Results are cached in ``cache_dir`` (``None`` disables the cache); an interrupted run resumes.
    ``probs``: also store softmax source-class probabilities when the model has a classifier (a
    "background" output is dropped with ``drop_background``). Corrupt images are skipped with a
    :class:`~transferkit.data.CorruptImageWarning` (``strict=True``: raise). ``preprocess``: overrides of
    the model's data config (``input_size``, ``crop_pct``, ``interpolation``, ``mean``, ``std``, ``crop_mode``),
    or ``max_img_size``: a cap on the input resolution (a model whose own input is larger runs at the cap,
    with its own crop and normalisation; smaller ones keep theirs; the default is no cap).
    Under ``torchrun`` the work is sharded over ranks and merged by rank 0 (see ``distributed.py``).

    Resuming: the cache is written in chunks of at most ``chunk_size`` images (default 1024; the batch size
    is capped at it), and at least every ``chunk_seconds`` of work (default 30; ``None``: size only). On
    Ctrl-C / SIGTERM the images done so far are written and :class:`ExtractionInterrupted` says what was
    kept; the next call with the same inputs computes only the missing images, whatever its chunk size.
    ``metadata`` then reports ``chunks_from_cache`` of ``total_chunks``. A full or read-only disk raises
    :class:`~transferkit.reporting.OutputWriteError` naming the file, with the finished chunks kept.

    ``positions``: only these ``[lo, hi)`` ranges of dataset positions (successive halving, issue 16). They
    are computed into the same cache entry as the whole dataset, so a later full call computes only the
    rest; the FeatureSet returned holds the rows of those positions, in position order.
    """
    entry = ModelEntry.from_spec(model, name) if isinstance(model, (str, ModelEntry)) else None
    opts: dict[str, Any] = dict(entry.options) if entry is not None else {}
    layer = opts.pop("layer", layer)
    batch_size = int(opts.pop("batch_size", batch_size))
    chunk_size = _check_chunking(batch_size, chunk_size, chunk_seconds)
    precision = opts.pop("precision", precision)
    drop_background = opts.pop("drop_background", drop_background)
    ds = open_dataset(data, split, per_class=per_class, seed=seed, test_fraction=test_fraction)
    ctx = dist_context(distributed)
    dev = select_device(device, ctx.local_rank)
    prec = resolve_precision(precision, dev)
    prep = _Prepared(entry if entry is not None else model, ds, {**preprocess, **opts})
    display = name or (entry.name if entry is not None else prep.spec)
    fingerprint = _fingerprint(ds)
    doc = {"model": prep.identity, "data": fingerprint, "preprocess": prep.data_config,
           "layer": layer or "penultimate", "precision": prec, "probs": bool(probs),
           "drop_background": bool(drop_background) and prep.background_index is not None}
    key = cache_key(doc)
    metadata = {
        "model": {"name": display, "spec": prep.spec, "kind": prep.kind, "arch": prep.arch,
                  "weights_sha256": prep.weights_sha256, "identity": prep.identity,
                  "background_index": prep.background_index if drop_background else None},
        "preprocessing": prep.data_config,
        "dataset": {**ds.describe(), "fingerprint": fingerprint, "per_class": per_class, "seed": seed},
        "layer": layer or "penultimate", "precision": prec, "cache_key": key, "versions": _versions(),
    }
    cache = FeatureCache(cache_dir) if cache_dir is not None else None
    if cache is None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="transferkit_nocache_") as tmp:
            fs = _run(prep, ds, FeatureCache(tmp).entry(key), ctx, dev, prec, doc, metadata, layer=layer,
                      batch_size=batch_size, num_workers=num_workers, probs=probs, drop_background=drop_background,
                      strict=strict, chunk_size=chunk_size, chunk_seconds=chunk_seconds, channels_last=channels_last,
                      progress=progress, display=display, persistent=False, positions=positions)
    else:
        fs = _run(prep, ds, cache.entry(key), ctx, dev, prec, doc, metadata, layer=layer, batch_size=batch_size,
                  num_workers=num_workers, probs=probs, drop_background=drop_background, strict=strict,
                  chunk_size=chunk_size, chunk_seconds=chunk_seconds, channels_last=channels_last, progress=progress,
                  display=display, persistent=True, positions=positions)
    fs.metadata["model"]["name"] = display
    _report_skipped(fs, strict)
    return fs


def _check_chunking(batch_size: int, chunk_size: int | None, chunk_seconds: float | None) -> int:
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK_SIZE
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of images, got {chunk_size!r}")
    if chunk_seconds is not None and not (float(chunk_seconds) > 0):
        raise ValueError(f"chunk_seconds must be positive (or None: no time bound), got {chunk_seconds!r}")
    return int(chunk_size)


def _fingerprint(ds: ImageDataset) -> str:
    fp = getattr(ds, "_fingerprint_memo", None)
    if fp is None:
        fp = ds.fingerprint()
        ds._fingerprint_memo = fp  # type: ignore[attr-defined]
    return fp


def _clean_error(err: object) -> str:
    """An image error without PIL's name of the in-memory buffer (``<_io.BytesIO object at 0x...>``)."""
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(err))


def _report_skipped(fs: FeatureSet, strict: bool) -> None:
    skipped = fs.metadata.get("skipped") or []
    if not skipped:
        return
    if strict:  # one line: the first unreadable image stops the run
        more = f" ({len(skipped)} unreadable in all)" if len(skipped) > 1 else ""
        first = _clean_error(skipped[0]["error"])
        raise CorruptImageError(skipped[0]["item"], f"{first}; --strict stops on unreadable images{more}")
    listing = "\n".join(f"  {s['item']}: {_clean_error(s['error'])}" for s in skipped[:20])
    more = f"\n  ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""
    msg = f"{len(skipped)} unreadable image(s) skipped:\n{listing}{more}"
    warnings.warn(msg, CorruptImageWarning, stacklevel=3)


def _run(prep: _Prepared, ds: ImageDataset, entry: CacheEntry, ctx: DistContext, dev: torch.device, prec: str,
         doc: dict[str, Any], metadata: dict[str, Any], *, layer: str | None, batch_size: int,
         num_workers: int | None, probs: bool, drop_background: bool, strict: bool, chunk_size: int,
         chunk_seconds: float | None, channels_last: bool | None, progress: bool, display: str,
         persistent: bool, positions: Sequence[Span] | None = None) -> FeatureSet:
    t0 = time.perf_counter()
    n = len(ds)
    if n == 0:
        raise ValueError(f"{ds}: no items to extract")
    # 1. is it done already? (rank 0 decides; in a group everyone follows)
    complete = ctx.broadcast(entry.is_complete() if ctx.is_main else None)
    if complete:
        fs = _share_result(ctx, entry, entry.load() if ctx.is_main else None, cache_hit=True)
        return fs if positions is None else _rows_at(fs, positions)
    # 2. which positions are missing, cut into units of whole batches
    bs = min(batch_size, chunk_size)
    plan = None
    if ctx.is_main:
        entry.open(n, doc)
        pieces, gaps = entry.cover(n)
        if positions is not None:
            gaps = intersect_spans(gaps, positions)
        plan = (len(pieces), _work_units(gaps, bs, chunk_size))
    from_cache, units = ctx.broadcast(plan)
    if not ctx.is_main:  # not open(): on a shared file system that lags, it could delete rank 0's new chunks
        entry.create_dir()
    mine = units[ctx.rank::ctx.world]
    try:
        with _sigterm_interrupts():  # a rank that fails tells the others (they raise PeerFailedError, not hang)
            written = ctx.together(lambda: _compute(
                prep, ds, entry, mine, dev, prec, layer=layer, num_workers=num_workers, probs=probs,
                drop_background=drop_background, strict=strict, chunk_seconds=chunk_seconds,
                channels_last=channels_last, progress=progress and ctx.is_main, display=display))
    except KeyboardInterrupt as exc:
        pieces, gaps = entry.cover(n)
        kept = n - sum(b - a for a, b in gaps)
        signum = signal.SIGTERM if isinstance(exc, _Terminated) else signal.SIGINT
        if not persistent:
            raise ExtractionInterrupted(display, 0, n, 0, None, signum) from None
        raise ExtractionInterrupted(display, kept, n, len(pieces), entry.path, signum) from None
    except OutputWriteError as exc:
        pieces, gaps = entry.cover(n)
        kept = n - sum(b - a for a, b in gaps)
        raise exc.with_detail(f"{kept} of {n} images of {display} computed so far are kept in {entry.path}; "
                              "free some space and run again to resume" if persistent and kept else
                              "nothing was kept") from None
    # 3. merge on rank 0 (chunks it cannot see on its disk come over the process group)
    if ctx.active:
        ctx.barrier()
        everyone = ctx.all_gather(written)
        need = None
        if ctx.is_main:
            on_disk = set(entry.chunk_ranges())
            need = [(r, span) for r, spans in enumerate(everyone) for span in spans if span not in on_disk]
        for owner, span in ctx.broadcast(need):
            got = ctx.gather(entry.read_chunk(*span) if ctx.rank == owner else None)
            if ctx.is_main:
                entry.write_chunk(*span, **got[owner])
    if positions is not None:  # part of the dataset: read those rows back, leave the entry open
        if ctx.active:
            raise ValueError("positions= is not supported under torchrun")
        part = entry.read_rows(positions, ds.classes)
        part.metadata.update(metadata, device=str(dev), computed_images=sum(u[-1][1] - u[0][0] for u in units),
                             positions=[list(p) for p in positions], cache_hit=not units)
        return part
    fs = None
    if ctx.is_main:
        computed = sum(len(w) for w in everyone) if ctx.active else len(written)
        meta = dict(metadata, seconds=round(time.perf_counter() - t0, 3), device=str(dev),
                    world_size=ctx.world, computed_chunks=computed, chunks_from_cache=from_cache,
                    computed_images=sum(u[-1][1] - u[0][0] for u in units), chunk_size=chunk_size,
                    chunk_seconds=chunk_seconds, batch_size=bs)
        try:
            fs = entry.finalize(n, ds.classes, meta)
        except OutputWriteError as exc:
            raise exc.with_detail(f"all {n} images of {display} are computed and kept as chunks in {entry.path}; "
                                  "free some space and run again to finish" if persistent else "") from None
    return _share_result(ctx, entry, fs, cache_hit=False)


def _rows_at(fs: FeatureSet, positions: Sequence[Span]) -> FeatureSet:
    """The rows of a finished FeatureSet whose dataset positions lie in ``positions``."""
    idx = fs.indices if fs.indices is not None else np.arange(len(fs.labels))
    keep = np.zeros(len(idx), bool)
    for lo, hi in positions:
        keep |= (idx >= lo) & (idx < hi)
    return FeatureSet(fs.features[keep], fs.labels[keep], fs.probs[keep] if fs.probs is not None else None,
                      fs.class_names, dict(fs.metadata, positions=[list(p) for p in positions]), idx[keep])


def _share_result(ctx: DistContext, entry: CacheEntry, fs: FeatureSet | None, cache_hit: bool) -> FeatureSet:
    if ctx.active:
        ctx.barrier()
        visible = ctx.all_gather(ctx.is_main or entry.is_complete())
        if all(visible):
            fs = fs if ctx.is_main else entry.load()
            ctx.barrier()  # every rank has read the entry before rank 0 returns (its caller may delete it)
        else:
            sent = ctx.broadcast(fs)
            if not ctx.is_main and not entry.is_complete():  # a private cache: rank 0 holds the chunks now
                entry.remove_chunks()
            fs = fs if ctx.is_main else sent
    assert fs is not None
    fs.metadata["cache_hit"] = cache_hit
    return fs


def _compute(prep: _Prepared, ds: ImageDataset, entry: CacheEntry, units: list[list[Span]],
             dev: torch.device, prec: str, *, layer: str | None, num_workers: int | None, probs: bool,
             drop_background: bool, strict: bool, chunk_seconds: float | None, channels_last: bool | None,
             progress: bool, display: str) -> list[Span]:
    """Run the model over the units' batches; a chunk is written at the end of each unit, when
    ``chunk_seconds`` have passed since the last write, and (what is done) when the run is stopped.
    Returns the position ranges of the chunks written."""
    if not units:
        return []
    if dev.type == "cpu":
        keep_allocations_in_heap()  # activations reuse heap pages instead of mmap/munmap per layer
    model = prep.build().to(dev).eval()
    if channels_last is None:  # NHWC helps convolutions on GPUs and on CPUs (oneDNN); no-op for transformers
        channels_last = any(isinstance(m, nn.Conv2d) for m in model.modules())
    cl = channels_last
    if cl:
        model = model.to(memory_format=torch.channels_last)
    fn = make_feature_fn(model, layer, with_logits=probs)
    background = prep.background_index if drop_background else None
    if num_workers is None:  # decoded images shared by a zoo live in this process: decode here
        num_workers = 0 if getattr(ds, "_decoded_images", None) is not None else None
    workers = default_num_workers(dev, ds.is_preprocessed) if num_workers is None else num_workers
    spans = [(a, b, k == len(u) - 1) for u in units for k, (a, b) in enumerate(u)]  # (lo, hi, ends a unit)
    loader = torch.utils.data.DataLoader(
        _Items(ds, prep.transform(ds)), batch_sampler=[list(range(a, b)) for a, b, _ in spans],
        num_workers=workers, collate_fn=_collate, pin_memory=dev.type == "cuda",
        prefetch_factor=4 if workers > 0 else None, persistent_workers=False)
    bar = _progress(progress, sum(b - a for a, b, _ in spans), display)
    written: list[Span] = []
    buf = _ChunkBuffer()
    last_write = time.monotonic()

    def flush() -> None:
        nonlocal buf, last_write
        entry.write_chunk(buf.lo, buf.hi, **buf.arrays(ds))
        written.append((buf.lo, buf.hi))
        buf, last_write = _ChunkBuffer(), time.monotonic()

    try:
        with torch.inference_mode():
            for (lo, hi, unit_end), batch in zip(spans, loader, strict=True):
                if batch.bad and strict:
                    i, nm, err = batch.bad[0]
                    raise CorruptImageError(nm, f"{_clean_error(err)}; --strict stops on unreadable images (finished "
                                                "chunks are kept in the cache)")
                feats = lg = None
                if batch.x is not None:
                    x = batch.x.to(dev, non_blocking=True)
                    if cl and x.ndim == 4:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with _autocast(dev, prec):
                        feats, lg = fn(x)
                buf.add(lo, hi, batch, feats, _probs(lg, background) if probs and lg is not None else None)
                bar.update(hi - lo)
                if unit_end or (chunk_seconds is not None and time.monotonic() - last_write >= chunk_seconds):
                    flush()
    except OutputWriteError:
        raise
    except BaseException:
        if buf.count:  # keep the whole batches done before the stop (Ctrl-C, SIGTERM, strict, OOM...)
            with contextlib.suppress(Exception):
                flush()
        raise
    finally:
        bar.close()
        if hasattr(fn, "remove_hook"):
            fn.remove_hook()
    return written


class _ChunkBuffer:
    """Outputs of consecutive batches (dataset positions ``[lo, hi)``) waiting to be written as one chunk."""

    def __init__(self) -> None:
        self.feats: list[torch.Tensor] = []
        self.probs: list[torch.Tensor] = []
        self.idx: list[int] = []
        self.bad: list[tuple[int, str, str]] = []
        self.lo = self.hi = -1
        self.count = 0

    def add(self, lo: int, hi: int, batch: _Batch, feats: torch.Tensor | None, probs: torch.Tensor | None) -> None:
        if self.count == 0:
            self.lo = lo
        self.hi = hi
        self.count += hi - lo
        self.bad.extend(batch.bad)
        if feats is not None:
            self.feats.append(feats.float())
            self.idx.extend(batch.idx)
        if probs is not None:
            self.probs.append(probs)

    def arrays(self, ds: ImageDataset) -> dict[str, np.ndarray]:
        idx = np.asarray(self.idx, dtype=np.int64)
        out: dict[str, np.ndarray] = {"indices": idx, "labels": ds.targets[idx]}
        if self.feats:
            out["features"] = torch.cat(self.feats).cpu().numpy().astype(np.float32, copy=False)
        else:
            out["features"] = np.zeros((0, 0), np.float32)
        if self.probs:
            out["probs"] = torch.cat(self.probs).cpu().numpy().astype(np.float32, copy=False)
        elif not self.feats and self.bad:
            out["probs"] = np.zeros((0, 0), np.float32)
        out["skipped"] = np.asarray([b[0] for b in self.bad], dtype=np.int64)
        out["skipped_names"] = np.asarray([b[1] for b in self.bad], dtype=str)
        out["skipped_errors"] = np.asarray([b[2] for b in self.bad], dtype=str)
        return out


class _NoBar:
    def update(self, k: int) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def _zoo_progress(enabled: bool, n_models: int) -> Any:
    """The zoo's stage bar above the per-model image bars: models done of n, the one in progress, elapsed
    time and tqdm's rate-based estimate of the rest (models differ in cost, so it firms up as models finish)."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=n_models, desc="zoo", unit="model", dynamic_ncols=True, leave=False)


def _progress(enabled: bool, total: int, desc: str) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, leave=False)


def extract_zoo(
    models: list[str] | str,
    data: str | Path | ImageDataset,
    *,
    split: str | None = None,
    cache_dir: str | Path = ".transferkit_cache",
    per_class: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str = "auto",
    progress: bool = True,
    chunk_size: int | None = None,
    chunk_seconds: float | None = DEFAULT_CHUNK_SECONDS,
    decode_budget_bytes: int = 1 << 30,
    **kwargs: Any,
) -> dict[str, FeatureSet]:
    """Features of every model of a zoo on one dataset: ``{model name: FeatureSet}``.

    ``models``: a list of specs (or :class:`~transferkit.models.ModelEntry`), or the path of a zoo YAML
    file (``.yaml``/``.yml``; per-model options apply); any other single string is one spec. The dataset is
    opened and fingerprinted once. Cached models cost nothing; an interrupted call resumes where it stopped
    (``chunk_size`` / ``chunk_seconds``: how often the cache is written, see :func:`extract_features`);
    other keyword arguments go to :func:`extract_features`. Each image is decoded once for all models (kept
    in memory up to ``decode_budget_bytes``, 0: off); loading then runs in this process unless
    ``num_workers`` is given.
    """
    if isinstance(models, (str, Path)) and Path(models).suffix.lower() in (".yaml", ".yml"):
        entries = read_zoo(models)
    elif isinstance(models, (str, Path)):
        entries = [ModelEntry.from_spec(str(models))]
    else:
        entries = [ModelEntry.from_spec(m) for m in models]
    names = [e.name for e in entries]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"duplicate model names {dup}: name them in a zoo file")
    ds = open_dataset(data, split, per_class=per_class, seed=seed, test_fraction=kwargs.pop("test_fraction", 0.2))
    out: dict[str, FeatureSet] = {}
    share = len(entries) > 1 and not ds.is_preprocessed and decode_budget_bytes > 0
    if share:  # each image is decoded once for the whole zoo (see DecodedImages)
        ds._decoded_images = DecodedImages(decode_budget_bytes)  # type: ignore[attr-defined]
    zoo_bar = _zoo_progress(progress and len(entries) > 1, len(entries))
    try:
        for e in entries:
            zoo_bar.set_postfix_str(e.name, refresh=True)
            out[e.name] = extract_features(e, ds, cache_dir=cache_dir, batch_size=batch_size,
                                           num_workers=num_workers, device=device, progress=progress, seed=seed,
                                           chunk_size=chunk_size, chunk_seconds=chunk_seconds, **kwargs)
            out[e.name].metadata["dataset"].update(per_class=per_class, seed=seed)
            zoo_bar.update(1)
    finally:
        zoo_bar.close()
        if share:
            del ds._decoded_images  # type: ignore[attr-defined]
    return out
