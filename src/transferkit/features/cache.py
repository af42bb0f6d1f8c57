"""Content-addressed feature cache, written atomically in chunks so that interrupted runs resume.

Layout::

    <cache_dir>/features/<key>/meta.json                      what the entry is (key document, item count)
    <cache_dir>/features/<key>/rows-00000128-00000192.npz     rows of dataset positions [128, 192)
    <cache_dir>/features/<key>/features.npz                   the finished FeatureSet (chunks are then deleted)

``key`` = sha256 of the key document: model identity (weights sha256, architecture, head), dataset
fingerprint (content of the selected items and their labels), preprocessing, layer, precision, and whether
probabilities are stored. Every file is written to a temporary name and renamed, so a reader sees either
nothing or a whole file.

A chunk's file name holds the dataset positions it covers, so chunks of any size (fixed by
``chunk_size``, cut short by a time bound, or flushed when a run is interrupted) mix freely: a run
covers what is on disk (:meth:`CacheEntry.cover`) and computes only the gaps. A run that stops (crash,
Ctrl-C, a killed job) keeps its finished chunks; the next run with the same inputs computes only the
missing positions, and a run after completion computes nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..reporting import atomic_write_text, output_errors
from .featureset import FeatureSet, atomic_savez

__all__ = ["CacheEntry", "FeatureCache", "cache_key"]

FORMAT_VERSION = 1  # of the key document and of features.npz (chunk names may change without a new key)
_CHUNK = re.compile(r"^rows-(\d+)-(\d+)\.npz$")
_LEGACY_CHUNK = re.compile(r"^chunk-(\d+)\.npz$")  # fixed-size chunks of transferkit <= 0.1 (meta chunk_size)
Piece = tuple[int, int, int, int]  # (chunk lo, chunk hi, take from, take to): a slice of one chunk file


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


def intersect_spans(spans: Any, wanted: Any) -> list[tuple[int, int]]:
    """The parts of ``spans`` inside ``wanted`` (both sorted, non-overlapping ``[lo, hi)`` lists)."""
    out = []
    for a, b in spans:
        for c, d in wanted:
            lo, hi = max(a, c), min(b, d)
            if lo < hi:
                out.append((lo, hi))
    return sorted(out)


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

    def chunk_path(self, lo: int, hi: int) -> Path:
        return self.path / f"rows-{lo:08d}-{hi:08d}.npz"

    def is_complete(self) -> bool:
        return self.final_path.exists()

    def load(self) -> FeatureSet:
        return FeatureSet.load_npz(self.final_path)

    def read_meta(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.meta_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def create_dir(self) -> None:
        """The entry's folder, without touching what is in it (a torchrun rank other than 0 writes chunks
        there; only rank 0 decides which chunks count)."""
        with output_errors(self.path, any_errno=True):  # read-only or not permitted: one line naming the folder
            self.path.mkdir(parents=True, exist_ok=True)

    def open(self, n_items: int, doc: dict[str, Any]) -> None:
        """Create the entry, or reuse the chunks of an earlier run of the same key and item count."""
        self.create_dir()
        meta = self.read_meta()
        if meta is not None and meta.get("n_items") == n_items:
            self._adopt_legacy_chunks(int(meta.get("chunk_size") or 0), n_items)
            return
        # no usable meta (fresh entry, or leftovers of a run whose meta was lost): start over, so that
        # nothing of unknown origin is counted as done
        for p in [*self.path.glob("rows-*.npz"), *self.path.glob("chunk-*.npz")]:
            p.unlink(missing_ok=True)
        atomic_write_text(self.meta_path, json.dumps(
            {"key": self.key, "format": FORMAT_VERSION, "n_items": n_items, "key_doc": doc}, indent=1, default=str))

    def _adopt_legacy_chunks(self, chunk_size: int, n_items: int) -> None:
        """Rename ``chunk-000003.npz`` (fixed ``chunk_size`` of an older version) to its row range."""
        for p in self.path.glob("chunk-*.npz"):
            m = _LEGACY_CHUNK.match(p.name)
            if m is None or chunk_size <= 0:
                p.unlink(missing_ok=True)
                continue
            c = int(m.group(1))
            lo, hi = c * chunk_size, min(n_items, (c + 1) * chunk_size)
            if lo < hi:
                p.replace(self.chunk_path(lo, hi))
            else:
                p.unlink(missing_ok=True)

    def chunk_ranges(self) -> list[tuple[int, int]]:
        """The ``[lo, hi)`` position ranges of the chunk files on disk, sorted."""
        out = []
        for p in self.path.glob("rows-*.npz"):
            m = _CHUNK.match(p.name)
            if m is not None and int(m.group(1)) < int(m.group(2)):
                out.append((int(m.group(1)), int(m.group(2))))
        return sorted(out)

    def cover(self, n_items: int) -> tuple[list[Piece], list[tuple[int, int]]]:
        """Which chunk files supply which positions of ``[0, n_items)``, and the gaps no chunk covers.

        Greedy from position 0: the chunk that starts at or before the position and reaches furthest
        supplies it; overlapping chunks (two runs on one cache at once) are sliced, never double counted."""
        ranges = [r for r in self.chunk_ranges() if r[1] <= n_items]
        pieces: list[Piece] = []
        gaps: list[tuple[int, int]] = []
        pos = 0
        while pos < n_items:
            over = [r for r in ranges if r[0] <= pos < r[1]]
            if over:
                lo, hi = max(over, key=lambda r: r[1])
                pieces.append((lo, hi, pos, hi))
                pos = hi
            else:  # nothing covers pos: a gap up to the next chunk (or the end)
                end = min((r[0] for r in ranges if r[0] > pos), default=n_items)
                gaps.append((pos, end))
                pos = end
        return pieces, gaps

    def write_chunk(self, lo: int, hi: int, **arrays: np.ndarray) -> Path:
        return atomic_savez(self.chunk_path(lo, hi), **arrays)

    def read_chunk(self, lo: int, hi: int) -> dict[str, np.ndarray]:
        with np.load(self.chunk_path(lo, hi), allow_pickle=False) as d:
            return {k: d[k] for k in d.files}

    def remove_chunks(self) -> None:
        for p in self.path.glob("rows-*.npz"):
            p.unlink(missing_ok=True)

    def read_rows(self, positions: list[tuple[int, int]] | Any, class_names: list[str]) -> FeatureSet:
        """The rows of the positions in ``positions`` (sorted ``[lo, hi)`` ranges) from the chunks on disk
        (a partial entry: successive halving reads the images of its rounds before the entry is complete)."""
        n = max((hi for _, hi in positions), default=0)
        pieces, gaps = self.cover(n)
        missing = intersect_spans(gaps, positions)
        if missing:
            raise FileNotFoundError(f"{self.path}: positions [{missing[0][0]}, {missing[0][1]}) have no chunk")
        parts = []
        for lo, hi, a, b in pieces:
            inside = intersect_spans([(a, b)], positions)
            if inside:  # each chunk is read once, however many ranges (one per class) it holds
                chunk = self.read_chunk(lo, hi)
                parts.extend(_slice_chunk(chunk, x, y) for x, y in inside)
        feats = [p["features"] for p in parts if len(p["features"])]
        X = np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)
        y = np.concatenate([p["labels"] for p in parts]) if parts else np.zeros(0, np.int64)
        idx = np.concatenate([p["indices"] for p in parts]) if parts else np.zeros(0, np.int64)
        probs = None
        if parts and all("probs" in p for p in parts):
            ps = [p["probs"] for p in parts if len(p["probs"])]
            probs = np.concatenate(ps) if ps else None
        return FeatureSet(X, y, probs, class_names, {"n": int(len(y))}, idx)

    def finalize(self, n_items: int, class_names: list[str], metadata: dict[str, Any]) -> FeatureSet:
        """Merge the chunks in position order into ``features.npz`` (atomically), then delete the chunks."""
        pieces, gaps = self.cover(n_items)
        try:
            if gaps:
                raise FileNotFoundError(f"{self.path}: positions {gaps[:3]} have no chunk")
            parts = [_slice_chunk(self.read_chunk(lo, hi), a, b) for lo, hi, a, b in pieces]
        except FileNotFoundError:
            if self.is_complete():  # another process on the same cache finished (and cleaned up) first
                self.remove_chunks()  # what this process wrote meanwhile
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
        metadata = dict(metadata, skipped=skipped, n=int(len(y)), dim=int(dim), total_chunks=len(pieces))
        fs = FeatureSet(X, y, probs, class_names, metadata, idx)
        fs.save_npz(self.final_path)
        self.remove_chunks()
        return fs


def _slice_chunk(part: dict[str, np.ndarray], a: int, b: int) -> dict[str, np.ndarray]:
    """The rows (and skipped items) of one chunk whose dataset positions lie in ``[a, b)``."""
    idx = part["indices"]
    keep = (idx >= a) & (idx < b)
    if keep.all():
        rows = part
    else:
        rows = dict(part, indices=idx[keep], labels=part["labels"][keep])
        for k in ("features", "probs"):
            if k in part and len(part[k]):
                rows[k] = part[k][keep]
    sk = part["skipped"]
    if len(sk) and not ((sk >= a) & (sk < b)).all():
        m = (sk >= a) & (sk < b)
        rows = dict(rows, skipped=sk[m], skipped_names=part["skipped_names"][m],
                    skipped_errors=part["skipped_errors"][m])
    return rows
