"""WebDataset tar shards and precomputed-embedding folders as curate galleries."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.curate import CurateConfig, ManifestDataset, curate
from transferkit.curate.shards import (
    TarShardDataset,
    expand_shards,
    is_precomputed_folder,
    open_precomputed,
    write_shards,
)

pytest.importorskip("webdataset")


def _png(color: tuple[int, int, int], seed: int, size: tuple[int, int] = (32, 24)) -> bytes:
    rng = np.random.default_rng(seed)
    a = np.clip(np.array(color, np.float32) + rng.normal(0, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


@pytest.fixture()
def shard_dir(tmp_path: Path) -> Path:
    samples = [(f"{i:06d}", _png(COLORS[i % 3], i), "png", f"caption {i}") for i in range(18)]
    write_shards(samples, tmp_path / "pool", per_shard=6)
    return tmp_path / "pool"


def test_brace_pattern_and_corrupt_sample_skipped_and_counted(shard_dir: Path) -> None:
    paths = expand_shards(str(shard_dir / "{00000..00002}.tar"))
    assert [Path(p).name for p in paths] == ["00000.tar", "00001.tar", "00002.tar"]
    # append a corrupt image and an image-less sample to the last shard
    with tarfile.open(paths[2], "a") as tf:
        for name, data in (("bad.jpg", b"not a jpeg at all"), ("lonely.txt", b"caption only")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with pytest.warns(RuntimeWarning, match="skipped 2"):
        ds = TarShardDataset(paths[2])
    assert len(ds) == 6 and ds.skipped == 2
    assert ds.names[0] == "000012.png"
    img = ds.load(0)
    assert img.size == (32, 24) and img.mode == "RGB"
    # the same bytes as written
    assert np.array_equal(np.asarray(img), np.asarray(Image.open(io.BytesIO(_png(COLORS[0], 12))).convert("RGB")))
    with pytest.raises(FileNotFoundError, match="00003.tar .and 4 more"):
        expand_shards(str(shard_dir / "{00000..00007}.tar"))


def test_truncated_shard_keeps_the_readable_samples(shard_dir: Path) -> None:
    p = shard_dir / "00001.tar"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    ds = TarShardDataset(p)  # the cut-off tail ends the stream; what came before is kept
    assert 0 < len(ds) < 6
    for i in range(len(ds)):
        ds.load(i)


def test_curate_from_shards_end_to_end(shard_dir: Path, tiny_data: dict, tiny_model, tmp_path: Path) -> None:
    cfg = CurateConfig(queries=str(tiny_data["target"]), gallery=[str(shard_dir / "{00000..00002}.tar")],
                       budget=12, model=tiny_model, scales=(1.0, 0.5), cache_dir=str(tmp_path / "cache"),
                       out=str(tmp_path / "ts.csv"), device="cpu", progress=False, index={"kind": "numpy"},
                       leak_threshold=None, dup_threshold=None, num_workers=0)
    res = curate(cfg)
    assert len(res.rows) == 12
    assert all(r.source.endswith(".tar") for r in res.rows)
    assert len(res.report["gallery"]["sources"]) == 3
    ds = ManifestDataset(res.manifest)
    crop = ds.load(0)
    r = res.rows[0]
    assert crop.size == (r.x1 - r.x0, r.y1 - r.y0)


def test_precomputed_gallery(tmp_path: Path, tiny_data: dict, tiny_model) -> None:
    """A clip-retrieval style folder is searched without re-embedding: the neighbours follow the given vectors."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "index"
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    n, dim = 10, 96  # test_resnet's feature width
    for part in range(2):
        names = []
        for i in range(n):
            name = f"p{part}_{i}.png"
            (imgs / name).write_bytes(_png(COLORS[i % 3], 100 * part + i))
            names.append(f"../imgs/{name}" if i % 2 else str((imgs / name).resolve()))
        np.save(root / "img_emb" / f"img_emb_{part}.npy", rng.normal(size=(n, dim)).astype(np.float16))
        pq.write_table(pa.table({"image_path": names, "caption": [""] * n}),
                       root / "metadata" / f"metadata_{part}.parquet")
    assert is_precomputed_folder(root)
    images, stores = open_precomputed(root)
    assert len(images) == 20 and [s.n for s in stores] == [10, 10]
    row = stores[1].emb[3]
    assert abs(np.linalg.norm(row) - 1) < 1e-5
    cache = tmp_path / "cache"
    cfg = CurateConfig(queries=str(tiny_data["target"]), gallery=[str(root)], budget=6, model=tiny_model,
                       scales=(1.0,), cache_dir=str(cache), out=str(tmp_path / "ts.csv"), device="cpu",
                       progress=False, index={"kind": "numpy"}, leak_threshold=None, dup_threshold=None,
                       num_workers=0)
    res = curate(cfg)
    assert len(res.rows) == 6
    # only the queries were embedded (one store), never the gallery
    assert len(list((cache / "embeddings").iterdir())) == 1
    ds = ManifestDataset(res.manifest)
    assert ds.load(0).size == (32, 24)
    # the first pick of each query is its exact nearest neighbour among the given vectors
    from transferkit.curate.embed import GalleryEmbeddings

    g = GalleryEmbeddings(stores)
    allv = g.take(np.arange(20))
    q = np.load(next((cache / "embeddings").iterdir()) / "emb.npy")
    best = set(np.argmax(q @ allv.T, axis=1).tolist())
    picked = {images.paths.index(r.item) for r in res.rows if r.rank == 0}
    assert picked <= best


def test_precomputed_folder_errors(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    np.save(root / "img_emb" / "a.npy", np.ones((3, 4), np.float32))
    with pytest.raises(ValueError, match="1 embedding shards but 0 metadata"):
        open_precomputed(root)


def test_precomputed_dimension_mismatch_is_one_clear_error(tmp_path: Path, tiny_data: dict, tiny_model) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "index"
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    (tmp_path / "a.png").write_bytes(_png(COLORS[0], 0))
    np.save(root / "img_emb" / "e.npy", np.ones((1, 7), np.float32))
    pq.write_table(pa.table({"image_path": [str(tmp_path / "a.png")]}), root / "metadata" / "m.parquet")
    cfg = CurateConfig(queries=str(tiny_data["target"]), gallery=[str(root)], budget=1, model=tiny_model,
                       scales=(1.0,), cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "ts.csv"),
                       device="cpu", progress=False, leak_threshold=None, num_workers=0)
    with pytest.raises(ValueError, match="7 dimensions but the model gives 96"):
        curate(cfg)


def test_leakage_guard_drops_test_copies_in_shards(tmp_path: Path, tiny_data: dict, tiny_model) -> None:
    """A gallery shard holding byte-identical copies of the target's test images: none is ever selected."""
    test_files = sorted((tiny_data["target"] / "test").rglob("*.png"))
    samples = [(f"copy{i}", f.read_bytes(), "png", None) for i, f in enumerate(test_files)]
    samples += [(f"{i:06d}", _png(COLORS[i % 3], 500 + i), "png", None) for i in range(6)]
    (tar,) = write_shards(samples, tmp_path / "pool", per_shard=100)
    cfg = CurateConfig(queries=str(tiny_data["target"]), gallery=[str(tar)], budget=6, model=tiny_model,
                       scales=(1.0,), cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "ts.csv"), device="cpu",
                       progress=False, index={"kind": "numpy"}, dup_threshold=None, leak_threshold=None,
                       num_workers=0, test="auto")
    for strategy in ("balanced", "random"):
        cfg.strategy = strategy
        res = curate(cfg)
        assert res.report["leakage_guard"]["exact_copies_images"] == len(test_files)
        assert len(res.rows) == 6 and not any(r.item.startswith("copy") for r in res.rows)
