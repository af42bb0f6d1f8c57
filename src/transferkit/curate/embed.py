"""Embedding stores: L2-normalised features of a (crop) dataset in a memory-mapped ``.npy`` file.

A gallery is embedded once and reused by every later curation run with the same model, images, crop
grid and preprocessing. The work goes through :func:`transferkit.features.extract_features` shard by
shard (so each shard is resumable chunk by chunk in the feature cache, and at most one shard of features
is ever in RAM); each finished shard is copied into the store's memory map and recorded, then its
feature-cache entry is dropped (the store supersedes it). Layout::

    <cache_dir>/embeddings/<key>/meta.json       what the store holds (key document, n, dim, shard size)
    <cache_dir>/embeddings/<key>/emb.npy         (n, dim) float32, unit rows (zeros for unreadable items)
    <cache_dir>/embeddings/<key>/valid.npy       (n,) bool: False for items that could not be read
    <cache_dir>/embeddings/<key>/progress.json   shards already written (atomically updated)

``key`` covers the model identity (weights hash, architecture), the dataset fingerprint (item contents
and crop slots), the preprocessing, the layer and the precision.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..data import ImageDataset
from ..features import FeatureCache, FeatureSet, cache_key, extract_features, resolve_precision, select_device
from ..features.distributed import dist_context
from ..models import ModelEntry, ResolvedModel, resolve_model, state_dict_digest
from ..reporting import atomic_write_text

__all__ = ["EmbeddingStore", "GalleryEmbeddings", "embed_dataset", "model_identity", "normalize_rows"]

STORE_VERSION = 1


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def model_identity(model: str | ModelEntry | ResolvedModel | nn.Module, layer: str | None = None,
                   **preprocess: Any) -> dict[str, Any]:
    """What identifies a model's embeddings: weights/architecture identity, preprocessing and layer.

    Computed without building the model when the weights are files or hub names.
    """
    if isinstance(model, nn.Module):
        from timm.data import resolve_data_config

        from ..models import _normalise_preprocess  # the same normalisation extract_features applies

        info = getattr(model, "transferkit_info", {}) or {}
        cfg = resolve_data_config(_normalise_preprocess(preprocess), model=model)
        return {"model": {"state_dict_sha256": state_dict_digest(model), "arch": info.get("arch")},
                "preprocess": json.loads(json.dumps(cfg, default=str)), "layer": layer or "penultimate"}
    entry = ModelEntry.from_spec(model) if isinstance(model, str) else model
    rm = entry if isinstance(entry, ResolvedModel) else resolve_model(entry, **{k: v for k, v in preprocess.items()
                                                                                 if v is not None})
    ident = rm.identity()
    if ident is None:  # random weights: the state dict is the identity
        ident = {"kind": rm.kind, "arch": rm.arch, "state_dict_sha256": state_dict_digest(rm.build())}
    opts = entry.options if isinstance(entry, ModelEntry) else {}
    return {"model": ident, "preprocess": json.loads(json.dumps(rm.data_config(), default=str)),
            "layer": opts.get("layer", layer) or "penultimate"}


@dataclass
class EmbeddingStore:
    """A finished store: ``emb`` (memory-mapped, read-only) and ``valid`` for ``n`` items of ``dim``."""

    path: Path
    key: str
    meta: dict[str, Any]

    @property
    def n(self) -> int:
        return int(self.meta["n"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def emb(self) -> np.ndarray:
        return np.load(self.path / "emb.npy", mmap_mode="r")

    @property
    def valid(self) -> np.ndarray:
        return np.load(self.path / "valid.npy")

    @classmethod
    def open(cls, path: str | Path) -> EmbeddingStore:
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        if not _progress_complete(path, meta):
            raise ValueError(f"{path}: embedding store is incomplete (re-run the embedding to resume)")
        return cls(path, meta["key"], meta)


def _read_progress(path: Path) -> set[int]:
    try:
        return set(json.loads((path / "progress.json").read_text())["done"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return set()


def _progress_complete(path: Path, meta: dict[str, Any]) -> bool:
    n_shards = -(-int(meta["n"]) // int(meta["shard_size"]))
    return len(_read_progress(path)) == n_shards and (path / "emb.npy").exists()


def embed_dataset(model: str | ModelEntry | ResolvedModel | nn.Module, ds: ImageDataset, *,
                  cache_dir: str | Path = ".transferkit_cache", shard_size: int = 8192, batch_size: int = 64,
                  num_workers: int | None = None, device: str = "auto", precision: str = "auto",
                  layer: str | None = None, keep_feature_cache: bool = False, progress: bool = True,
                  desc: str | None = None, distributed: bool | str = "auto", **preprocess: Any) -> EmbeddingStore:
    """Embed every item of ``ds`` into a memory-mapped store (reused when already complete, resumed when not).

    Under ``torchrun`` (``distributed='auto'``) the ranks share each shard's work through
    :func:`transferkit.features.extract_features` (gloo on CPU, NCCL on GPU) and rank 0 writes the store.

    ``shard_size`` bounds the features held in RAM at once. ``keep_feature_cache`` keeps the per-shard
    feature-cache entries after they are copied into the store (they are dropped by default).
    """
    if len(ds) == 0:
        raise ValueError(f"{ds}: nothing to embed")
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    dev = select_device(device)
    prec = resolve_precision(precision, dev)
    if not isinstance(model, nn.Module):
        rm = model if isinstance(model, ResolvedModel) else resolve_model(
            ModelEntry.from_spec(model), **{k: v for k, v in preprocess.items() if v is not None})
        if rm.identity() is None:  # random weights: build once so that every shard sees the same model
            model = rm.build()
    ident = model_identity(model, layer, **preprocess)
    fingerprint = getattr(ds, "_fingerprint_memo", None) or ds.fingerprint()
    doc = {"store": STORE_VERSION, **ident, "data": fingerprint, "precision": prec, "n": len(ds)}
    key = cache_key(doc)
    root = Path(cache_dir).expanduser() / "embeddings" / key
    # under torchrun every rank runs this function; rank 0 alone writes the store (meta, memory map,
    # progress), the features of each shard are computed by all ranks together inside extract_features
    ctx = dist_context(distributed)
    meta_path = root / "meta.json"
    meta: dict[str, Any] | None = None
    if ctx.is_main:
        root.mkdir(parents=True, exist_ok=True)
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if meta.get("n") != len(ds):  # should not happen with a content key: start over
                meta = None
        if meta is None:
            meta = {"key": key, "n": len(ds), "dim": None, "shard_size": int(shard_size), "key_doc": doc,
                    "dataset": ds.describe()}
            atomic_write_text(meta_path, json.dumps(meta, indent=1, default=str))
            for p in ("progress.json", "emb.npy", "valid.npy"):
                (root / p).unlink(missing_ok=True)
    meta = ctx.broadcast(meta)
    assert meta is not None
    shard = int(meta["shard_size"])
    n_shards = -(-len(ds) // shard)
    done = ctx.broadcast(_read_progress(root) if ctx.is_main else None)
    if len(done) == n_shards and ctx.broadcast((root / "emb.npy").exists() if ctx.is_main else None):
        return EmbeddingStore(root, key, meta)
    todo = [s for s in range(n_shards) if s not in done]  # a shard done (by any earlier run) is never redone
    label = desc or f"embed {Path(str(ds.source)).name}"
    for s in todo:
        lo, hi = s * shard, min(len(ds), (s + 1) * shard)
        sub = ds.subset(np.arange(lo, hi), note=f"embedding shard {s}/{n_shards}")
        fs = extract_features(model, sub, cache_dir=cache_dir, batch_size=batch_size, num_workers=num_workers,
                              device=device, precision=precision, layer=layer, probs=False,
                              distributed=distributed, progress=progress and ctx.is_main,
                              name=f"{label} [{s + 1}/{n_shards}]", **preprocess)
        done.add(s)
        # rank 0 stores the shard; if that fails (disk full), every rank stops with the error
        ctx.together(lambda: _store_shard(root, meta, fs, lo, hi, done, cache_dir, keep_feature_cache)
                     if ctx.is_main else None)
        del fs
    meta = ctx.broadcast(meta)  # rank 0 learnt the dimension
    return EmbeddingStore(root, key, meta)


def _store_shard(root: Path, meta: dict[str, Any], fs: FeatureSet, lo: int, hi: int, done: set[int],
                 cache_dir: str | Path | None, keep_feature_cache: bool) -> None:
    """Write one shard's normalised embeddings into the store's arrays and record it as done."""
    meta_path = root / "meta.json"
    rows = np.arange(hi - lo) if fs.indices is None else fs.indices
    if meta["dim"] is None:
        meta["dim"] = int(fs.dim)
        atomic_write_text(meta_path, json.dumps(meta, indent=1, default=str))
    emb, valid = _open_arrays(root, int(meta["n"]), int(meta["dim"]))
    emb[lo:hi] = 0.0
    emb[lo + rows] = normalize_rows(fs.features)
    valid[lo:hi] = False
    valid[lo + rows] = True
    emb.flush()
    valid.flush()
    del emb, valid
    atomic_write_text(root / "progress.json", json.dumps({"done": sorted(done)}))
    if not keep_feature_cache and cache_dir is not None and fs.metadata.get("cache_key"):
        shutil.rmtree(FeatureCache(cache_dir).entry(fs.metadata["cache_key"]).path, ignore_errors=True)


def _open_arrays(root: Path, n: int, dim: int) -> tuple[np.memmap, np.memmap]:
    """The store's arrays opened for writing (created on first use)."""
    from numpy.lib.format import open_memmap

    ep, vp = root / "emb.npy", root / "valid.npy"
    if ep.exists():
        emb = open_memmap(ep, mode="r+")
        if emb.shape != (n, dim):
            raise ValueError(f"{ep}: shape {emb.shape} does not match ({n}, {dim}); delete the store to rebuild")
    else:
        emb = open_memmap(ep, mode="w+", dtype=np.float32, shape=(n, dim))
    valid = open_memmap(vp, mode="r+") if vp.exists() else open_memmap(vp, mode="w+", dtype=np.bool_, shape=(n,))
    return emb, valid


class GalleryEmbeddings:
    """Several stores seen as one ``(n, dim)`` matrix, read block by block (never loaded whole)."""

    def __init__(self, stores: Sequence[EmbeddingStore]):
        if not stores:
            raise ValueError("a gallery needs at least one embedding store")
        dims = {s.dim for s in stores}
        if len(dims) != 1:
            raise ValueError(f"gallery stores have different dimensions {sorted(dims)} (different models?)")
        self.stores = list(stores)
        self.dim = dims.pop()
        self.offsets = np.cumsum([0] + [s.n for s in self.stores])
        self.n = int(self.offsets[-1])
        self._mm = [s.emb for s in self.stores]
        self.valid = np.concatenate([s.valid for s in self.stores])

    def __len__(self) -> int:
        return self.n

    def blocks(self, block: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """``(start row, float32 block)`` over the whole gallery, in order."""
        for off, mm in zip(self.offsets[:-1], self._mm):
            for lo in range(0, len(mm), block):
                yield int(off + lo), np.asarray(mm[lo:lo + block], dtype=np.float32)

    def take(self, ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Rows by global id (in the given order)."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.zeros((len(ids), self.dim), np.float32)
        which = np.searchsorted(self.offsets, ids, side="right") - 1
        for k, mm in enumerate(self._mm):
            sel = np.nonzero(which == k)[0]
            if len(sel):
                local = ids[sel] - self.offsets[k]
                order = np.argsort(local)
                out[sel[order]] = mm[local[order]]
        return out

    def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """A seeded random sample of valid rows: ``(ids, vectors)`` (for index training and recall checks)."""
        ok = np.nonzero(self.valid)[0]
        rng = np.random.default_rng(seed)
        ids = np.sort(rng.choice(ok, size=min(n, len(ok)), replace=False))
        return ids, self.take(ids)

