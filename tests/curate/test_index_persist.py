"""IVF-PQ indexes saved and reloaded (in RAM and with on-disk inverted lists) give the same neighbours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from transferkit.curate.embed import GalleryEmbeddings
from transferkit.curate.index import FaissIndex, IndexConfig, build_index

faiss = pytest.importorskip("faiss")


@pytest.fixture()
def gallery(tmp_path: Path, make_store) -> tuple[GalleryEmbeddings, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    valid = np.ones(3000, bool)
    valid[::101] = False
    return GalleryEmbeddings([make_store(tmp_path / "a", x[:1700], valid[:1700]),
                              make_store(tmp_path / "b", x[1700:], valid[1700:])]), x


@pytest.mark.parametrize("ondisk", [False, True])
def test_ivfpq_save_reload_same_neighbours(gallery, tmp_path: Path, ondisk: bool) -> None:
    g, x = gallery
    cfg = IndexConfig(kind="ivfpq", nlist=16, nprobe=4, m=8, train_size=2000, block=500, threads=1,
                      path=str(tmp_path / "idx"), ondisk=ondisk)
    built = build_index(g, cfg)
    assert isinstance(built, FaissIndex) and built.ntotal == int(g.valid.sum())
    assert (tmp_path / "idx" / "index.faiss").is_file()
    assert (tmp_path / "idx" / "lists.ivfdata").is_file() == ondisk
    q = x[:50] + 0.01
    s1, i1 = built.search(q, 10)
    again = FaissIndex.load(tmp_path / "idx", g, cfg)
    s2, i2 = again.search(q, 10)
    assert np.array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, rtol=1e-6)
    assert not np.isin(i1, np.nonzero(~g.valid)[0]).any()
    # build_index with the same path reuses the saved index (nothing retrained)
    reused = build_index(g, cfg)
    assert np.array_equal(reused.search(q, 10)[1], i1)


def test_saved_index_refused_for_other_gallery(gallery, tmp_path: Path, make_store) -> None:
    g, x = gallery
    cfg = IndexConfig(kind="ivf", nlist=8, path=str(tmp_path / "idx"), threads=1)
    build_index(g, cfg)
    other = GalleryEmbeddings([make_store(tmp_path / "c", x[:1000])])
    with pytest.raises(ValueError, match="other gallery embeddings"):
        FaissIndex.load(tmp_path / "idx", other, cfg)
    assert build_index(other, cfg).ntotal == 1000  # rebuilt over it


def test_ondisk_needs_a_path(gallery) -> None:
    g, _ = gallery
    with pytest.raises(ValueError, match="need an index path"):
        build_index(g, IndexConfig(kind="ivfpq", nlist=8, m=8, ondisk=True, threads=1))
