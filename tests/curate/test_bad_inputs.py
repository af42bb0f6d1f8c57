"""What `curate` does with inputs that are wrong or unlucky: a clear error before the work, a part of the
gallery skipped with a warning, or the leakage guard kept on; never a traceback from inside a library, never
exit 0 with an empty transfer set."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.curate import read_manifest
from transferkit.curate.crops import CropGrid
from transferkit.curate.pipeline import CurateConfig, curate
from transferkit.curate.shards import TarShardDataset, open_precomputed, write_shards
from transferkit.features import select_device

from transferkit.data import open_dataset

pytest.importorskip("webdataset")


@pytest.fixture()
def cfg_for(tmp_path: Path, tiny_model):
    """``cfg_for(queries, gallery, **overrides)``: a small whole-image curate config with the tiny model."""
    return lambda queries, gallery, **kw: _cfg(tmp_path, tiny_model, queries, gallery, **kw)


def _cfg(tmp_path: Path, model, queries: Path, gallery: list, **kw) -> CurateConfig:
    base = dict(queries=str(queries), gallery=gallery, budget=6, model=model,
                out=str(tmp_path / "ts.csv"), cache_dir=str(tmp_path / "cache"), dup_threshold=None,
                leak_threshold=None, scales=(1.0,), num_workers=0, progress=False, preprocess={"input_size": 32})
    base.update(kw)
    return CurateConfig(**base)


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_bad_shards_are_skipped_and_an_all_bad_gallery_is_one_error(tmp_path: Path, tiny_data: dict, cfg_for) -> None:
    pngs = sorted((tiny_data["pool"] / "train").rglob("*.png"))
    samples = [(f"{i:04d}", p.read_bytes(), "png", None) for i, p in enumerate(pngs[:8])]
    (good,) = write_shards(samples, tmp_path / "pool", per_shard=100)
    bad = _tar(tmp_path / "pool" / "00001.tar", {"0000.jpg": b"not a jpeg", "0001.jpg": b"nor this"})
    (tmp_path / "pool" / "00002.tar").write_bytes(b"")  # an empty file: not a tar
    spec = str(tmp_path / "pool" / "{00000..00002}.tar")
    with pytest.warns(RuntimeWarning, match="skipped 2 gallery part"):
        res = curate(cfg_for(tiny_data["target"], [spec]))
    assert len(read_manifest(res.manifest)) == 6
    assert len(res.report["gallery"]["skipped_parts"]) == 2 and "not a tar" in " ".join(
        res.report["gallery"]["skipped_parts"])
    with pytest.raises(ValueError, match="no readable images"), pytest.warns(RuntimeWarning):
        curate(cfg_for(tiny_data["target"], [str(bad)], out=str(tmp_path / "b.csv")))
    assert good.is_file()


def test_upper_case_member_names_are_read_back(tmp_path: Path, tiny_data: dict) -> None:
    pngs = sorted((tiny_data["pool"] / "train").rglob("*.png"))
    tar = _tar(tmp_path / "upper.tar", {"0000.PNG": pngs[0].read_bytes(), "0001.png": pngs[1].read_bytes(),
                                        "0001.TXT": b"caption"})
    ds = TarShardDataset(tar)
    assert ds.names == ["0000.PNG", "0001.png"] and ds.skipped == 0
    assert ds.load(0).size == Image.open(pngs[0]).size


def test_seeded_query_split_keeps_the_guard_and_query_copies_are_never_selected(tmp_path: Path, tiny_data: dict,
                                                                                  cfg_for) -> None:
    """Queries from a folder without native splits: the seeded train split is the query set, and its
    complement (what `distill` evaluates on) is guarded; byte-identical copies of the queries are excluded."""
    target = tmp_path / "target"
    shutil.copytree(tiny_data["pool"] / "train", target)  # class folders, no train/test folders
    copy = tmp_path / "copy"
    shutil.copytree(target, copy)
    n_test = len(open_dataset(target, split="test", split_seed=0))
    n_query = len(open_dataset(target, split="train", split_seed=0))
    assert n_test and n_query
    other = str(tiny_data["target"])  # other images, so that something is left to select
    res = curate(cfg_for(target, [str(copy), other], budget=4, query_split="train", seed=5))  # split seed is 0
    picked = {r.item for r in read_manifest(res.manifest).rows}
    assert picked and all(r.source == other for r in read_manifest(res.manifest).rows), picked
    guard = res.report["leakage_guard"]
    assert guard["test"] is not None and guard["test_images"] == n_test
    assert guard["exact_copies_images"] == n_test
    assert res.report["gallery"]["query_images_excluded"] == n_query
    with pytest.raises(ValueError, match="no gallery item could be selected"), pytest.warns(RuntimeWarning):
        # with the whole folder as queries (no test split to guard), every gallery image is a query copy
        curate(cfg_for(target, [str(copy)], query_split="all", out=str(tmp_path / "e.csv")))


def test_a_named_test_folder_is_guarded_whole(tmp_path: Path, tiny_data: dict, cfg_for) -> None:
    test = tmp_path / "mytest"
    shutil.copytree(tiny_data["target"] / "test", test)  # class folders, no split folders
    res = curate(cfg_for(tiny_data["target"], [str(tiny_data["pool"])], test=str(test)))
    assert res.report["leakage_guard"]["test_images"] == len(list(test.rglob("*.png")))  # all, not a seeded 20 %


def test_option_values_are_checked_up_front(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_per_image"):
        CurateConfig(queries="q", gallery=["g"], budget=5, model="m", max_per_image=0)
    with pytest.raises(ValueError, match="scales are crop sizes"):
        CropGrid.parse("abc")
    with pytest.raises(ValueError, match="grid is a whole number"):
        CropGrid.parse("1,0.5", "x")
    for bad, msg in (("tpu", "unknown device"), ("meta", "not available"), ("cuda:7", "CUDA")):
        if bad.startswith("cuda") and __import__("torch").cuda.is_available():
            continue
        with pytest.raises(ValueError, match=msg):
            select_device(bad)


def test_precomputed_folder_problems_are_named(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "pre"
    (root / "img_emb").mkdir(parents=True)
    np.save(root / "img_emb" / "img_emb_0.npy", np.ones((2, 4), np.float32))
    with pytest.raises(FileNotFoundError, match="no metadata/ folder"):
        open_precomputed(root)
    (root / "metadata").mkdir()
    (root / "metadata" / "metadata_0.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="metadata_0.parquet: not a readable parquet"):
        open_precomputed(root)
    pq.write_table(pa.table({"image_path": ["https://example.com/a.jpg", "b.jpg"]}),
                   root / "metadata" / "metadata_0.parquet")
    with pytest.raises(ValueError, match="holds URLs"):
        open_precomputed(root)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["transferkit", "curate", *args], capture_output=True, text=True, timeout=300)


def test_cli_one_line_errors_before_any_work(tmp_path: Path, tiny_data: dict, tiny_ckpt: str) -> None:
    base = ["--queries", str(tiny_data["target"]), "--gallery", str(tiny_data["pool"]), "-m", tiny_ckpt,
            "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    cases = [
        (["--budget", "4", "-o", str(tmp_path / "folder")], "is a folder"),
        (["--budget", "4", "-o", str(tmp_path / "t.csv"), "--index-path", str(tmp_path / "afile")], "is a file"),
        (["--budget", "0", "-o", str(tmp_path / "t.csv")], "budget must be >= 1"),
        (["--budget", "4", "-o", str(tmp_path / "t.json")], "the manifest is a CSV file"),
        (["--budget", "4", "-o", str(tmp_path / "t.csv"), "--nprobe", "0"], "nprobe must be"),
        (["--budget", "4", "-o", str(tmp_path / "t.csv"), "--device", "tpu"], "unknown device"),
    ]
    for extra, msg in cases:
        r = _cli(*base, *extra)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode != 0 and msg in r.stderr, (extra, r.stderr)
        assert "Traceback" not in r.stderr and len([ln for ln in lines if "Error" in ln]) == 1, (extra, r.stderr)
    assert not list(tmp_path.glob("t.*"))


def test_ivfpq_on_a_tiny_gallery_warns_once(tmp_path: Path, make_store, capfd) -> None:
    """faiss prints one 'WARNING clustering' line per sub-quantiser when it has too few training points;
    we say it once, as a Python warning, and search still works."""
    pytest.importorskip("faiss")
    from transferkit.curate.embed import GalleryEmbeddings
    from transferkit.curate.index import IndexConfig, build_index

    x = np.random.default_rng(0).normal(size=(30, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    g = GalleryEmbeddings([make_store(tmp_path / "s", x)])
    with pytest.warns(RuntimeWarning, match="fewer than faiss's 39 training points per centroid.*flat"):
        index = build_index(g, IndexConfig(kind="ivfpq", threads=1))
    assert index.search(x[:3], 1)[1][:, 0].tolist() == [0, 1, 2]
    assert "WARNING clustering" not in capfd.readouterr().err
