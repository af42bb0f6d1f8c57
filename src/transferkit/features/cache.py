"""Content-addressed feature cache, written atomically in chunks so that interrupted runs resume.

Layout::

    <cache_dir>/features/<key>/meta.json           what the entry is (key document, chunk size, item count)
    <cache_dir>/features/<key>/chunk-000003.npz    rows of dataset positions [3*chunk_size, 4*chunk_size)
    <cache_dir>/features/<key>/features.npz        the finished FeatureSet (chunks are then deleted)

``key`` = sha256 of the key document: model identity (weights sha256, architecture, head), dataset
fingerprint (content of the selected items and their labels), preprocessing, layer, precision, and whether
probabilities are stored. Every file is written to a temporary name and renamed, so a reader sees either
nothing or a whole file. A run that stops (crash, Ctrl-C, a killed job) keeps its finished chunks; the next
run with the same inputs computes only the missing chunks, and a run after completion computes nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from .featureset import FeatureSet, atomic_savez

__all__ = ["CacheEntry", "FeatureCache", "cache_key"]

from ..reporting import atomic_write_text

FORMAT_VERSION = 1


def cache_key(doc: dict[str, Any]) -> str:
    """sha256 (hex, 32 chars) of a canonical JSON of the key document."""
    blob = json.dumps({"format": FORMAT_VERSION, **doc}, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class FeatureCache:
    """A cache directory of feature entries keyed by content."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    def entry(self, key: str) -> CacheEntry:
        return CacheEntry(self.root / "features" / key, key)

    def entries(self) -> list[CacheEntry]:
        base = self.root / "features"
        return [CacheEntry(p, p.name) for p in sorted(base.iterdir())] if base.is_dir() else []


class CacheEntry:
    """One (model, dataset selection, preprocessing, layer) entry of the cache."""

    def __init__(self, path: Path, key: str):
        self.path = path
        self.key = key

    @property
    def meta_path(self) -> Path:
        return self.path / "meta.json"

    @property
    def final_path(self) -> Path:
        return self.path / "features.npz"

    def chunk_path(self, c: int) -> Path:
        return self.path / f"chunk-{c:06d}.npz"

    def is_complete(self) -> bool:
        return self.final_path.exists()

    def load(self) -> FeatureSet:
        return FeatureSet.load_npz(self.final_path)

    def read_meta(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.meta_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def open(self, n_items: int, chunk_size: int, doc: dict[str, Any]) -> int:
        """Create the entry (or reuse it); returns the chunk size in force (that of an earlier run)."""
        self.path.mkdir(parents=True, exist_ok=True)
        meta = self.read_meta()
        if meta is not None and meta.get("n_items") == n_items and meta.get("chunk_size", 0) > 0:
            return int(meta["chunk_size"])
        # no usable meta (fresh entry, or leftovers of a run whose meta was lost): start over, so
        # chunks of another chunk size can never be counted as done
        for p in self.path.glob("chunk-*.npz"):
            p.unlink(missing_ok=True)
        atomic_write_text(self.meta_path, json.dumps(
            {"key": self.key, "format": FORMAT_VERSION, "n_items": n_items, "chunk_size": chunk_size, "key_doc": doc},
            indent=1, default=str))
        return chunk_size

    def done_chunks(self) -> set[int]:
        out = set()
        for p in self.path.glob("chunk-*.npz"):
            try:
                out.add(int(p.stem.split("-")[1]))
            except (IndexError, ValueError):
                continue
        return out

    def write_chunk(self, c: int, **arrays: np.ndarray) -> None:
        atomic_savez(self.chunk_path(c), **arrays)

    def read_chunk(self, c: int) -> dict[str, np.ndarray]:
        with np.load(self.chunk_path(c), allow_pickle=False) as d:
            return {k: d[k] for k in d.files}

    def finalize(self, n_chunks: int, class_names: list[str], metadata: dict[str, Any]) -> FeatureSet:
        """Merge the chunks in order into ``features.npz`` (atomically), then delete the chunks."""
        try:
            parts = [self.read_chunk(c) for c in range(n_chunks)]
        except FileNotFoundError:
            if self.is_complete():  # another process on the same cache finished (and cleaned up) first
                return self.load()
            raise
        feats = [p["features"] for p in parts if len(p["features"])]
        dim = feats[0].shape[1] if feats else 0
        X = np.concatenate(feats) if feats else np.zeros((0, dim), np.float32)
        y = np.concatenate([p["labels"] for p in parts]) if parts else np.zeros(0, np.int64)
        idx = np.concatenate([p["indices"] for p in parts]) if parts else np.zeros(0, np.int64)
        has_p = bool(parts) and all("probs" in p for p in parts)
        probs = None
        if has_p:
            ps = [p["probs"] for p in parts if len(p["probs"])]
            probs = np.concatenate(ps) if ps else None
        skipped = [{"index": int(i), "item": str(n), "error": str(e)} for p in parts
                   for i, n, e in zip(p["skipped"], p["skipped_names"], p["skipped_errors"], strict=True)]
        metadata = dict(metadata, skipped=skipped, n=int(len(y)), dim=int(dim))
        fs = FeatureSet(X, y, probs, class_names, metadata, idx)
        fs.save_npz(self.final_path)
        for c in range(n_chunks):
            self.chunk_path(c).unlink(missing_ok=True)
        return fs
