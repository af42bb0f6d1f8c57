"""Nearest-neighbour search over gallery embeddings (cosine = inner product of unit vectors).

* ``flat``: exact search (faiss ``IndexFlatIP``; without faiss, a blockwise numpy scan of the memory map).
* ``ivf``: faiss ``IndexIVFFlat`` (inverted lists; the vectors are held in RAM).
* ``ivfpq``: faiss ``IndexIVFPQ`` (product-quantised codes, ``m`` bytes per vector: galleries far larger
  than RAM fit), followed by an exact re-ranking of the top ``k * rerank`` candidates read back from
  the memory map.
* ``auto``: ``flat`` up to ``exact_max`` gallery items, ``ivfpq`` above.

Approximate indexes report their recall@k against exact search (:func:`recall_at_k`). faiss is an
optional extra (``pip install 'transferkit[retrieval]'``); without it every kind falls back to the exact
numpy scan with a warning. A GPU is used when faiss-gpu sees one (``gpu='auto'``).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .embed import GalleryEmbeddings

__all__ = ["ExactIndex", "FaissIndex", "IndexConfig", "SearchIndex", "build_index", "faiss_available",
           "gallery_signature", "recall_at_k"]

INDEX_KINDS = ("auto", "flat", "ivf", "ivfpq", "numpy")


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _faiss_gpus() -> int:
    try:
        import faiss

        return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except Exception:  # pragma: no cover - broken GPU runtime
        return 0


class SearchIndex(Protocol):
    kind: str
    ntotal: int

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(similarities, ids)``, both ``(nq, k)``, best first; missing neighbours have id -1."""
        ...

    def describe(self) -> dict[str, Any]:
        ...


def _check_int(name: str, value: Any, low: int, high: int | None = None, note: str = "") -> None:
    """An index option must be a whole number in ``[low, high]`` (a ValueError naming it, before any work)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"index {name} must be an integer {span}{note}, got {value!r}")


@dataclass
class IndexConfig:
    """How to index the gallery (see the module docstring for the kinds)."""

    kind: str = "auto"
    exact_max: int = 200_000
    nlist: int | None = None  # IVF lists (None: ~4 sqrt(n), at most n / 39)
    nprobe: int = 32
    m: int = 32  # PQ sub-quantisers (bytes per vector); reduced to a divisor of the dimension
    nbits: int = 8
    rerank: int = 4  # IVF-PQ: re-rank the top k * rerank by exact inner product (0 / 1: off)
    train_size: int = 100_000
    gpu: str | bool = "auto"
    block: int = 32768  # rows read from the memory map at a time
    threads: int | None = None  # faiss OpenMP threads (None: faiss default = all cores)
    seed: int = 0
    path: str | None = None  # save the built index here and reload it when the gallery is the same
    ondisk: bool = False  # IVF kinds: inverted lists in a memory-mapped file next to the index, not in RAM
    ondisk_part: int = 1_000_000  # on-disk build: rows filled in RAM before being written out as one part

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {self.kind!r}")
        if isinstance(self.gpu, str) and self.gpu not in ("auto", "true", "false"):
            raise ValueError("gpu must be auto, true or false")
        _check_int("rerank", self.rerank, 0, note=" (0 or 1: off)")
        for name, low in (("nprobe", 1), ("m", 1), ("train_size", 1), ("block", 1), ("exact_max", 0),
                          ("ondisk_part", 1)):
            _check_int(name, getattr(self, name), low)
        if self.nlist is not None:
            _check_int("nlist", self.nlist, 1, note=" (or unset: ~4 sqrt(n))")
        _check_int("nbits", self.nbits, 1, 16)
        if self.ondisk and not self.path:  # checked here, before any embedding or training
            raise ValueError("ondisk inverted lists need an index path (--index-path; index: {path: ...} in a "
                             "config; IndexConfig.path)")
        if self.ondisk and self.kind in ("flat", "numpy"):
            raise ValueError(f"ondisk keeps IVF inverted lists on disk; index kind {self.kind!r} has none "
                             "(use ivf, ivfpq or auto)")


# ------------------------------------------------------------------------------------------------
# exact numpy scan
# ------------------------------------------------------------------------------------------------
def _merge_topk(best_s: np.ndarray, best_i: np.ndarray, s: np.ndarray, i: np.ndarray, k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    all_s = np.concatenate([best_s, s], axis=1)
    all_i = np.concatenate([best_i, i], axis=1)
    if all_s.shape[1] > k:
        part = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
        all_s = np.take_along_axis(all_s, part, 1)
        all_i = np.take_along_axis(all_i, part, 1)
    return all_s, all_i


def _sort_desc(s: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-s, axis=1, kind="stable")
    s = np.take_along_axis(s, order, 1)
    i = np.take_along_axis(i, order, 1)
    i[~np.isfinite(s)] = -1
    return s, i


class ExactIndex:
    """Exact inner-product search by scanning the memory-mapped gallery block by block (numpy)."""

    kind = "numpy"

    def __init__(self, gallery: GalleryEmbeddings, block: int = 32768, query_batch: int = 1024):
        self.gallery = gallery
        self.block = block
        self.query_batch = query_batch
        self.ntotal = int(gallery.valid.sum())

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        nq, k = len(q), max(1, int(k))
        best_s = np.full((nq, 0), -np.inf, np.float32)
        best_i = np.full((nq, 0), -1, np.int64)
        valid = self.gallery.valid
        for start, blk in self.gallery.blocks(self.block):
            ok = valid[start:start + len(blk)]
            parts_s, parts_i = [], []
            for a in range(0, nq, self.query_batch):
                s = q[a:a + self.query_batch] @ blk.T
                s[:, ~ok] = -np.inf
                kk = min(k, s.shape[1])
                idx = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
                parts_s.append(np.take_along_axis(s, idx, 1))
                parts_i.append(idx.astype(np.int64) + start)
            best_s, best_i = _merge_topk(best_s, best_i, np.concatenate(parts_s), np.concatenate(parts_i), k)
        if best_s.shape[1] < k:  # fewer gallery items than k
            pad = k - best_s.shape[1]
            best_s = np.concatenate([best_s, np.full((nq, pad), -np.inf, np.float32)], 1)
            best_i = np.concatenate([best_i, np.full((nq, pad), -1, np.int64)], 1)
        return _sort_desc(best_s, best_i)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "ntotal": self.ntotal, "exact": True, "backend": "numpy"}


# ------------------------------------------------------------------------------------------------
# faiss
# ------------------------------------------------------------------------------------------------
def _divisor_at_most(d: int, m: int) -> int:
    m = max(1, min(m, d))
    while d % m:
        m -= 1
    return m


def gallery_signature(gallery: GalleryEmbeddings) -> dict[str, Any]:
    """What a saved index was built from: the stores (content keys) and their sizes."""
    return {"stores": [str(getattr(s, "key", "")) for s in gallery.stores], "n": int(gallery.n),
            "valid": int(gallery.valid.sum()), "dim": int(gallery.dim)}


class FaissIndex:
    """A faiss index over the valid gallery rows (ids = global gallery row numbers).

    IVF kinds are trained on a seeded sample of ``train_size`` vectors and filled block by block from the
    memory map (never the whole gallery in RAM); with ``ondisk`` the inverted lists live in a
    memory-mapped file (``faiss.OnDiskInvertedLists``), so only the coarse centroids and the PQ tables are
    in RAM. :meth:`save` / :meth:`load` write and re-open it (``IO_FLAG_MMAP`` for on-disk lists).
    """

    INDEX_FILE = "index.faiss"
    LISTS_FILE = "lists.ivfdata"
    META_FILE = "index.json"

    def __init__(self, gallery: GalleryEmbeddings, kind: str, cfg: IndexConfig, progress: bool = False):
        import faiss

        self.gallery, self.kind, self.cfg = gallery, kind, cfg
        self.nbits = None
        if cfg.threads is not None:  # on a shared CPU, spinning OpenMP threads can slow faiss down many times
            faiss.omp_set_num_threads(int(cfg.threads))
        d, n = gallery.dim, int(gallery.valid.sum())
        if n == 0:
            raise ValueError("the gallery has no readable items to index")
        self.nlist = self.m = None
        if kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        else:
            nlist = cfg.nlist or int(round(4 * math.sqrt(n)))
            nlist = max(1, min(nlist, n // 39 if n >= 39 else 1))
            quantizer = faiss.IndexFlatIP(d)
            if kind == "ivf":
                index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            else:
                self.m = _divisor_at_most(d, cfg.m)
                nbits = cfg.nbits if n >= 2 ** cfg.nbits * 39 else max(1, int(math.log2(max(2, n // 39))))
                index = faiss.IndexIVFPQ(quantizer, d, nlist, self.m, nbits, faiss.METRIC_INNER_PRODUCT)
                self.nbits = nbits
            _, train = gallery.sample(max(cfg.train_size, 39 * nlist), seed=cfg.seed)
            centroids = max(nlist, 2 ** self.nbits if self.nbits else 0)
            if len(train) < 39 * centroids:  # one warning of ours instead of one faiss line per sub-quantiser
                fix = ("raise train_size" if len(train) < n else
                       "--index flat is exact and fast for a gallery this small")
                warnings.warn(f"{kind}: {len(train)} training items for {centroids} centroids, fewer than faiss's "
                              f"39 training points per centroid, so recall may suffer ({fix})",
                              RuntimeWarning, stacklevel=3)
                index.cp.min_points_per_centroid = 1
                if kind == "ivfpq":
                    index.pq.cp.min_points_per_centroid = 1
            index.train(train)
            index.nprobe = min(cfg.nprobe, nlist)
            self.nlist = nlist
            self._quantizer = quantizer  # keep alive (faiss does not own it)
        self.gpu = False
        want = cfg.gpu is True or str(cfg.gpu).lower() == "true"
        if (want or cfg.gpu == "auto") and _faiss_gpus() > 0 and not cfg.ondisk:
            self._res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._res, 0, index)
            self.gpu = True
        elif want:
            warnings.warn("gpu=true but faiss sees no GPU: searching on the CPU", RuntimeWarning, stacklevel=2)
        if cfg.ondisk and kind != "flat":
            index = self._add_ondisk(index, progress)
        else:
            self._add(index, progress)
        self.index = index
        self.ntotal = int(index.ntotal)

    def _add(self, index: Any, progress: bool, lo: int = 0, hi: int | None = None) -> None:
        """Add the valid gallery rows ``lo:hi`` block by block (``cfg.block`` rows read at a time)."""
        from tqdm.auto import tqdm

        g, valid = self.gallery, self.gallery.valid
        hi = g.n if hi is None else hi
        bar = tqdm(total=hi - lo, desc=f"index ({self.kind})", unit="vec", disable=not progress, leave=False)
        for start, blk in g.blocks(self.cfg.block):
            if start + len(blk) <= lo or start >= hi:
                continue
            a, b = max(lo, start) - start, min(hi, start + len(blk)) - start
            ok = valid[start + a:start + b]
            ids = np.arange(start + a, start + b, dtype=np.int64)[ok]
            if len(ids):
                index.add_with_ids(np.ascontiguousarray(blk[a:b][ok]), ids)
            bar.update(b - a)
        bar.close()

    def _add_ondisk(self, trained: Any, progress: bool) -> Any:
        """faiss's on-disk recipe: fill one in-RAM copy of the trained index per part of ``ondisk_part`` rows,
        write it, then merge every part's lists into one memory-mapped ``lists.ivfdata`` file."""
        import faiss
        from faiss.contrib.ondisk import merge_ondisk

        folder = Path(str(self.cfg.path)).expanduser().resolve()
        parts_dir = folder / "parts"
        parts_dir.mkdir(parents=True, exist_ok=True)
        names = []
        for k, lo in enumerate(range(0, self.gallery.n, self.cfg.ondisk_part)):
            part = faiss.clone_index(trained)
            self._add(part, progress, lo, min(self.gallery.n, lo + self.cfg.ondisk_part))
            name = parts_dir / f"part{k:05d}.index"
            faiss.write_index(part, str(name))
            names.append(str(name))
            del part
        lists = folder / self.LISTS_FILE
        lists.unlink(missing_ok=True)
        merge_ondisk(trained, names, str(lists))
        for n in names:
            Path(n).unlink()
        parts_dir.rmdir()
        return trained

    def save(self, path: str | Path | None = None) -> Path:
        """Write the index (CPU copy) and what it was built from to ``path`` (a folder; atomically)."""
        import faiss

        from ..reporting import atomic_write_text

        out = Path(path or self.cfg.path or "")
        if not str(out):
            raise ValueError("no index path to save to")
        out.mkdir(parents=True, exist_ok=True)
        idx = faiss.index_gpu_to_cpu(self.index) if self.gpu else self.index
        tmp = out / (self.INDEX_FILE + ".tmp")
        faiss.write_index(idx, str(tmp))
        os.replace(tmp, out / self.INDEX_FILE)
        meta = {"kind": self.kind, "nlist": self.nlist, "m": self.m, "nbits": self.nbits,
                "ondisk": bool(self.cfg.ondisk), "gallery": gallery_signature(self.gallery)}
        atomic_write_text(out / self.META_FILE, json.dumps(meta, indent=1))
        return out

    @classmethod
    def load(cls, path: str | Path, gallery: GalleryEmbeddings, cfg: IndexConfig | None = None) -> FaissIndex:
        """Re-open a saved index for ``gallery`` (refused when it was built from other embeddings)."""
        import faiss

        cfg = cfg or IndexConfig()
        folder = Path(path)
        meta_p, idx_p = folder / cls.META_FILE, folder / cls.INDEX_FILE
        if not (meta_p.is_file() and idx_p.is_file()):
            raise FileNotFoundError(f"{folder}: no saved index ({cls.INDEX_FILE} + {cls.META_FILE})")
        meta = json.loads(meta_p.read_text())
        if meta["gallery"] != gallery_signature(gallery):
            raise ValueError(f"{folder}: the saved index was built from other gallery embeddings; delete it "
                             "or choose another index path")
        if cfg.threads is not None:
            faiss.omp_set_num_threads(int(cfg.threads))
        # on-disk lists are memory-mapped by faiss itself, from the absolute path stored at build time
        index = faiss.read_index(str(idx_p))
        self = cls.__new__(cls)
        self.gallery, self.kind, self.cfg = gallery, meta["kind"], cfg
        self.nlist, self.m, self.nbits = meta.get("nlist"), meta.get("m"), meta.get("nbits")
        if self.nlist:
            faiss.extract_index_ivf(index).nprobe = min(cfg.nprobe, self.nlist)
        self.index, self.gpu, self.ntotal = index, False, int(index.ntotal)
        return self

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, int(k))
        rr = self.cfg.rerank if self.kind == "ivfpq" else 0
        kk = min(self.ntotal, k * rr) if rr and rr > 1 else min(self.ntotal, k)
        s, i = self.index.search(q, max(1, kk))
        s = s.astype(np.float32)
        i = i.astype(np.int64)
        s[i < 0] = -np.inf
        if rr and rr > 1:  # exact re-ranking from the memory map, a few queries at a time
            for a in range(0, len(q), 256):
                ib = i[a:a + 256]
                flat = np.unique(ib[ib >= 0])
                if not len(flat):
                    continue
                vecs = self.gallery.take(flat)
                pos = np.searchsorted(flat, np.where(ib >= 0, ib, flat[0]))
                sb = np.einsum("qd,qkd->qk", q[a:a + 256], vecs[pos])
                sb[ib < 0] = -np.inf
                s[a:a + 256] = sb
        s, i = _sort_desc(s, i)
        s, i = s[:, :k], i[:, :k]
        if s.shape[1] < k:
            pad = k - s.shape[1]
            s = np.concatenate([s, np.full((len(q), pad), -np.inf, np.float32)], 1)
            i = np.concatenate([i, np.full((len(q), pad), -1, np.int64)], 1)
        return s, i

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "ntotal": self.ntotal, "exact": self.kind == "flat",
                             "backend": "faiss-gpu" if self.gpu else "faiss-cpu"}
        if self.nlist:
            d.update(nlist=self.nlist, nprobe=int(min(self.cfg.nprobe, self.nlist)))
        if self.kind == "ivfpq":
            d.update(m=self.m, nbits=self.nbits, rerank=self.cfg.rerank,
                     bytes_per_vector=int(math.ceil(self.m * self.nbits / 8)))
        if self.cfg.ondisk and self.nlist:  # auto may have chosen exact search: no lists to keep on disk
            d["ondisk"] = True
        if self.cfg.path:
            d["path"] = str(self.cfg.path)
        return d


def build_index(gallery: GalleryEmbeddings, cfg: IndexConfig | None = None, progress: bool = False) -> SearchIndex:
    """The index ``cfg.kind`` asks for (``auto``: exact below ``cfg.exact_max`` items, IVF-PQ above)."""
    cfg = cfg or IndexConfig()
    kind = cfg.kind
    if kind == "auto":
        kind = "flat" if int(gallery.valid.sum()) <= cfg.exact_max else "ivfpq"
    if kind == "numpy":
        return ExactIndex(gallery, block=cfg.block)
    if not faiss_available():
        warnings.warn(f"faiss is not installed: using exact numpy search instead of {kind!r} "
                      "(pip install 'transferkit[retrieval]' for IVF / IVF-PQ and faster search)",
                      RuntimeWarning, stacklevel=2)
        return ExactIndex(gallery, block=cfg.block)
    if cfg.path:
        from ..features.distributed import dist_context

        ctx = dist_context()
        if ctx.active:  # under torchrun the ranks share the folder: rank 0 builds and saves, the others load it
            index = ctx.together(lambda: _saved_or_built(gallery, kind, cfg, progress) if ctx.is_main else None)
            return index if index is not None else _saved_or_built(gallery, kind, cfg, progress=False)
        return _saved_or_built(gallery, kind, cfg, progress)
    return FaissIndex(gallery, kind, cfg, progress=progress)


def _saved_or_built(gallery: GalleryEmbeddings, kind: str, cfg: IndexConfig, progress: bool) -> FaissIndex:
    """The index saved at ``cfg.path`` when it was built from ``gallery`` as ``kind``, else a new one saved there."""
    if (Path(cfg.path) / FaissIndex.META_FILE).is_file():
        try:
            idx = FaissIndex.load(cfg.path, gallery, cfg)
            if idx.kind == kind:
                return idx
        except ValueError:  # built from other embeddings: rebuild over it
            pass
    index = FaissIndex(gallery, kind, cfg, progress=progress)
    index.save(cfg.path)
    return index


def recall_at_k(index: SearchIndex, exact: SearchIndex, queries: np.ndarray, k: int = 10) -> float:
    """Mean fraction of the exact top-``k`` neighbours that ``index`` also returns in its top ``k``."""
    _, ia = index.search(queries, k)
    _, ie = exact.search(queries, k)
    hits = []
    for a, e in zip(ia, ie):
        e = e[e >= 0]
        if len(e):
            hits.append(len(np.intersect1d(a[a >= 0], e)) / len(e))
    return float(np.mean(hits)) if hits else float("nan")
