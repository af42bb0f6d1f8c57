"""Search indexes: exact numpy scan, faiss flat / IVF / IVF-PQ, recall@k, the no-faiss fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from transferkit.curate import index as index_mod
from transferkit.curate.embed import GalleryEmbeddings
from transferkit.curate.index import ExactIndex, IndexConfig, build_index, recall_at_k


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def gallery(tmp_path: Path, make_store) -> tuple[GalleryEmbeddings, np.ndarray]:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((20, 32))
    x = unit(centers[rng.integers(0, 20, 3000)] + 0.5 * rng.standard_normal((3000, 32)))
    valid = np.ones(3000, bool)
    valid[::97] = False
    a = make_store(tmp_path / "a", x[:1200], valid[:1200])
    b = make_store(tmp_path / "b", x[1200:], valid[1200:])
    return GalleryEmbeddings([a, b]), x


def brute(x: np.ndarray, valid: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    s = q @ x.T
    s[:, ~valid] = -np.inf
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def test_gallery_view(gallery: tuple) -> None:
    g, x = gallery
    assert g.n == 3000 and g.dim == 32
    ids = np.array([2999, 5, 1200, 1199])
    assert np.allclose(g.take(ids), x[ids])
    assert np.allclose(np.concatenate([b for _, b in g.blocks(700)]), x)


def test_exact_numpy_matches_brute_force(gallery: tuple) -> None:
    g, x = gallery
    q = x[:40] + 0.01
    s, i = ExactIndex(g, block=500, query_batch=16).search(q, 7)
    assert (i == brute(x, g.valid, q, 7)).all()
    assert np.allclose(s, np.take_along_axis(q @ x.T, i, 1), atol=1e-5)
    assert not np.isin(i, np.nonzero(~g.valid)[0]).any()
    s, i = ExactIndex(g).search(q[:2], 5000)  # more than the gallery: padded with -1
    assert (i[:, -1] == -1).all() and (i[:, 0] >= 0).all()


def test_faiss_flat_equals_exact(gallery: tuple) -> None:
    pytest.importorskip("faiss")
    g, x = gallery
    idx = build_index(g, IndexConfig(kind="flat", threads=1))
    assert idx.describe()["backend"].startswith("faiss") and idx.ntotal == int(g.valid.sum())
    q = x[100:130]
    s, i = idx.search(q, 10)
    s2, i2 = ExactIndex(g).search(q, 10)
    assert np.allclose(s, s2, atol=1e-5)
    assert recall_at_k(idx, ExactIndex(g), q, 10) == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_approximate_indexes_recall(gallery: tuple, kind: str) -> None:
    pytest.importorskip("faiss")
    g, x = gallery
    idx = build_index(g, IndexConfig(kind=kind, nlist=16, nprobe=8, m=8, train_size=3000, threads=1))
    d = idx.describe()
    assert d["kind"] == kind and not d["exact"] and d["nlist"] == 16
    q = x[::50]
    rec = recall_at_k(idx, ExactIndex(g), q, 10)
    assert 0.8 <= rec <= 1.0
    s, i = idx.search(q, 10)
    assert (np.diff(s, axis=1) <= 1e-6).all()  # best first
    assert not np.isin(i, np.nonzero(~g.valid)[0]).any()


def test_ivfpq_rerank_depth(gallery: tuple) -> None:
    """Re-ranking returns exact cosines, and a deeper re-rank never lowers recall (the --rerank knob)."""
    pytest.importorskip("faiss")
    g, x = gallery
    q = x[::50]
    recalls = []
    for depth in (1, 4, 16):
        idx = build_index(g, IndexConfig(kind="ivfpq", nlist=16, nprobe=16, m=4, train_size=3000, threads=1,
                                         rerank=depth))
        s, i = idx.search(q, 10)
        if depth > 1:
            exact = np.einsum("qd,qkd->qk", q, g.take(i.ravel()).reshape(len(q), 10, -1))
            assert np.allclose(s, exact, atol=1e-5)
        recalls.append(recall_at_k(idx, ExactIndex(g), q, 10))
    assert recalls[0] <= recalls[1] + 1e-9 <= recalls[2] + 2e-9 and recalls[2] > recalls[0]


def test_auto_and_fallback(gallery: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    g, _ = gallery
    monkeypatch.setattr(index_mod, "faiss_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="faiss is not installed"):
        idx = build_index(g, IndexConfig(kind="ivfpq"))
    assert isinstance(idx, ExactIndex)
    with pytest.raises(ValueError, match="index kind"):
        IndexConfig(kind="hnsw")
    with pytest.raises(ValueError, match="rerank"):
        IndexConfig(rerank=-1)
