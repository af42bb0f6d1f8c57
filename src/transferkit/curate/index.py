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

import math
import warnings
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .embed import GalleryEmbeddings

__all__ = ["ExactIndex", "FaissIndex", "IndexConfig", "SearchIndex", "build_index", "faiss_available",
           "recall_at_k"]

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

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {self.kind!r}")
        if isinstance(self.gpu, str) and self.gpu not in ("auto", "true", "false"):
            raise ValueError("gpu must be auto, true or false")


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


class FaissIndex:
    """A faiss index over the valid gallery rows (ids = global gallery row numbers)."""

    def __init__(self, gallery: GalleryEmbeddings, kind: str, cfg: IndexConfig, progress: bool = False):
        import faiss

        self.gallery, self.kind, self.cfg = gallery, kind, cfg
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
            index.train(train)
            index.nprobe = min(cfg.nprobe, nlist)
            self.nlist = nlist
            self._quantizer = quantizer  # keep alive (faiss does not own it)
        self.gpu = False
        want = cfg.gpu is True or str(cfg.gpu).lower() == "true"
        if (want or cfg.gpu == "auto") and _faiss_gpus() > 0:
            self._res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._res, 0, index)
            self.gpu = True
        elif want:
            warnings.warn("gpu=true but faiss sees no GPU: searching on the CPU", RuntimeWarning, stacklevel=2)
        from tqdm.auto import tqdm

        bar = tqdm(total=gallery.n, desc=f"index ({kind})", unit="vec", disable=not progress, leave=False)
        valid = gallery.valid
        for start, blk in gallery.blocks(cfg.block):
            ok = valid[start:start + len(blk)]
            ids = np.arange(start, start + len(blk), dtype=np.int64)[ok]
            if len(ids):
                index.add_with_ids(np.ascontiguousarray(blk[ok]), ids)
            bar.update(len(blk))
        bar.close()
        self.index = index
        self.ntotal = int(index.ntotal)

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
    return FaissIndex(gallery, kind, cfg, progress=progress)


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
