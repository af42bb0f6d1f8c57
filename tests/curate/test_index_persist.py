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


def test_index_options_are_checked_when_configured() -> None:
    """Bad index options fail in IndexConfig, before any embedding or training (not inside faiss)."""
    with pytest.raises(ValueError, match="need an index path"):
        IndexConfig(kind="ivfpq", nlist=8, m=8, ondisk=True, threads=1)
    with pytest.raises(ValueError, match="'flat' has none"):
        IndexConfig(kind="flat", ondisk=True, path="idx")
    for bad in ({"nprobe": 0}, {"nlist": 0}, {"m": 0}, {"nbits": 0}, {"nbits": 17}, {"train_size": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            IndexConfig(kind="ivfpq", **bad)


def _rank_builds(rank: int, g: GalleryEmbeddings, cfg: IndexConfig, q: np.ndarray, out: str, port: int) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    if rank == 1:  # the other ranks must load what rank 0 saved, never build into the same folder
        def refuse(*a, **k):
            raise AssertionError("rank 1 built the index instead of loading rank 0's")
        FaissIndex.__init__ = refuse  # type: ignore[method-assign]
    try:
        np.save(f"{out}/rank{rank}.npy", build_index(g, cfg).search(q, 10)[1])
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_two_ranks_share_one_saved_index(gallery, tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    g, x = gallery
    q = x[:50] + 0.01
    cfg = IndexConfig(kind="ivfpq", nlist=16, nprobe=4, m=8, train_size=2000, block=500, threads=1,
                      path=str(tmp_path / "idx"), ondisk=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank_builds, args=(g, cfg, q, str(tmp_path), port), nprocs=2, start_method="fork", join=True)
    r0, r1 = np.load(tmp_path / "rank0.npy"), np.load(tmp_path / "rank1.npy")
    assert np.array_equal(r0, r1)
    assert np.array_equal(r0, FaissIndex.load(tmp_path / "idx", g, cfg).search(q, 10)[1])
    assert not (tmp_path / "idx" / "parts").exists()
