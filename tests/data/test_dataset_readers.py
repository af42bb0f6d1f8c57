"""Dataset readers (folders, zips, CSV manifests, npz, IDX), splits, subsampling and fingerprints."""

from __future__ import annotations

import gzip
import io
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from transferkit.data import (
    FASHION_MNIST_DIR,
    CorruptImageError,
    CsvManifestDataset,
    IdxDataset,
    ImageFolderDataset,
    NpzDataset,
    ZipImageDataset,
    open_dataset,
    read_idx,
    reader_for,
    split_layout,
    stratified_split,
    stratified_subsample,
    write_idx,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CLASSES = ["cat", "dog", "owl"]


def _jpeg(seed: int, size: int = 12) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _layout(per_class: dict[str, int], splits: bool = True) -> dict[str, bytes]:
    files, seed = {}, 0
    for split in (["train", "test"] if splits else [""]):
        for c, n in per_class.items():
            for i in range(n if split != "test" else max(1, n // 2)):
                seed += 1
                files[f"{split + '/' if split else ''}{c}/{c}_{i:02d}.jpg"] = _jpeg(seed)
    return files


def _write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def _write_zip(path: Path, files: dict[str, bytes], prefix: str = "") -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for rel, data in files.items():
            zf.writestr(prefix + rel, data)
    return path


@pytest.fixture()
def files() -> dict[str, bytes]:
    return _layout({"cat": 4, "dog": 6, "owl": 2})


# -- folders and zips ---------------------------------------------------------------------------------------
def test_folder_splits_classes_labels(tmp_path, files):
    root = _write_folder(tmp_path / "ds", files)
    ds = open_dataset(root)
    assert isinstance(ds, ImageFolderDataset) and ds.split == "train"  # default: train when present
    assert ds.classes == CLASSES and ds.native_splits == ["test", "train"]
    assert np.bincount(ds.targets).tolist() == [4, 6, 2]
    img, label = ds[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and label == 0
    test = open_dataset(root, split="test")
    assert len(test) == 2 + 3 + 1 and test.classes == CLASSES
    assert len(open_dataset(root, split="all")) == 12 + 6
    with pytest.raises(KeyError):
        open_dataset(root, split="validation")


def test_zip_matches_folder_and_looks_through_a_wrapping_folder(tmp_path, files):
    folder = open_dataset(_write_folder(tmp_path / "ds", files), split="test")
    z = open_dataset(_write_zip(tmp_path / "ds.zip", files, prefix="wrapped/"), split="test")
    assert isinstance(z, ZipImageDataset)
    assert z.classes == folder.classes and z.targets.tolist() == folder.targets.tolist()
    for i in range(len(z)):
        assert np.array_equal(np.asarray(z.load(i)), np.asarray(folder.load(i)))
    # the fingerprint is content-based: a different wrapping folder name keeps it
    z2 = open_dataset(_write_zip(tmp_path / "other.zip", files, prefix="x/"), split="test")
    assert z2.fingerprint() == z.fingerprint()


def test_zip_reads_are_thread_and_worker_safe(tmp_path):
    files = _layout({"a": 30, "b": 30}, splits=False)
    ds = open_dataset(_write_zip(tmp_path / "d.zip", files))
    want = [np.asarray(ds.load(i)) for i in range(len(ds))]
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda i: np.asarray(ds.load(i)), list(range(len(ds))) * 3))
    assert all(np.array_equal(g, want[i % len(ds)]) for i, g in enumerate(got))
    tds = ds.with_transform(lambda im: torch.from_numpy(np.asarray(im).copy()))
    loader = torch.utils.data.DataLoader(tds, batch_size=7, num_workers=2)
    xs = torch.cat([x for x, _ in loader]).numpy()
    assert np.array_equal(xs, np.stack(want))


def test_split_layout_rules():
    assert split_layout(["a/1.jpg", "b/2.jpg"]) == {None: [("a/1.jpg", "a"), ("b/2.jpg", "b")]}
    lay = split_layout(["top/train/a/1.jpg", "top/test/a/2.jpg"])
    assert lay == {"train": [("top/train/a/1.jpg", "a")], "test": [("top/test/a/2.jpg", "a")]}
    # deeper files belong to their class folder, as in ImageFolder
    assert split_layout(["a/x/1.jpg", "b/2.jpg"])[None][0] == ("a/x/1.jpg", "a")


def test_corrupt_items_raise_corrupt_image_error(tmp_path, files):
    root = _write_folder(tmp_path / "ds", files)
    (root / "train" / "cat" / "cat_00.jpg").write_bytes(files["train/cat/cat_00.jpg"][:40])  # truncated
    (root / "train" / "dog" / "zz_text.jpg").write_text("not an image")
    ds = open_dataset(root)
    bad = [i for i in range(len(ds)) if _fails(ds, i)]
    assert [Path(ds.item_name(i)).name for i in bad] == ["cat_00.jpg", "zz_text.jpg"]
    zds = open_dataset(_write_zip(tmp_path / "bad.zip", {"a/x.jpg": b"garbage", "a/y.jpg": _jpeg(1),
                                                           "b/z.jpg": _jpeg(2)}))
    with pytest.raises(CorruptImageError, match="x.jpg"):
        zds.load(0)


def _fails(ds, i: int) -> bool:
    try:
        ds.load(i)
    except CorruptImageError:
        return True
    return False


# -- CSV manifests ------------------------------------------------------------------------------------------
def test_csv_manifest(tmp_path, files):
    root = _write_folder(tmp_path / "imgs", files)
    rows = [f"imgs/{rel},{rel.split('/')[1]},{rel.split('/')[0]}" for rel in files]
    (tmp_path / "m.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    ds = open_dataset(tmp_path / "m.csv", split="test")
    assert isinstance(ds, CsvManifestDataset) and ds.classes == CLASSES and len(ds) == 6
    folder = open_dataset(root, split="test")
    assert ds.targets.tolist() == folder.targets.tolist()
    assert np.array_equal(np.asarray(ds.load(2)), np.asarray(folder.load(2)))
    # no header, integer labels sorted numerically, absolute paths, a missing file
    rels = list(files)[:3]
    (tmp_path / "n.csv").write_text(f"{root / rels[0]},10\n{root / rels[1]},2\n{root / rels[2]},2\nmissing.jpg,10\n")
    n = open_dataset(tmp_path / "n.csv")
    assert n.classes == ["2", "10"] and n.targets.tolist() == [1, 0, 0, 1]
    with pytest.raises(CorruptImageError):
        n.load(3)
    (tmp_path / "bad.csv").write_text("path,colour\na.jpg,red\n")
    with pytest.raises(ValueError, match="label column"):
        open_dataset(tmp_path / "bad.csv")


# -- npz ----------------------------------------------------------------------------------------------------
def test_npz_images(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (10, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "g.npz", images=gray, labels=np.arange(10) % 2)
    ds = open_dataset(tmp_path / "g.npz")
    assert isinstance(ds, NpzDataset) and ds.classes == ["0", "1"] and len(ds) == 10
    img, _ = ds[3]
    assert img.mode == "RGB" and np.array_equal(np.asarray(img)[..., 0], gray[3])
    chw = rng.random((6, 3, 5, 5)).astype(np.float32)  # float in [0, 1], channels first
    np.savez(tmp_path / "s.npz", x_train=chw, y_train=np.array(list("aabbcc")),
             x_test=chw[:2], y_test=np.array(list("ab")))
    tr = open_dataset(tmp_path / "s.npz")
    assert tr.split == "train" and tr.classes == ["a", "b", "c"] and np.asarray(tr[0][0]).shape == (5, 5, 3)
    assert len(open_dataset(tmp_path / "s.npz", split="test")) == 2
    np.savez(tmp_path / "feat.npz", X=rng.random((4, 16)), y=np.arange(4))
    with pytest.raises(ValueError, match="feature file"):
        open_dataset(tmp_path / "feat.npz")


# -- IDX ----------------------------------------------------------------------------------------------------
def test_idx_files_written_here(tmp_path):
    rng = np.random.default_rng(1)
    x_tr, y_tr = rng.integers(0, 255, (12, 6, 6), dtype=np.uint8), (np.arange(12) % 3).astype(np.uint8)
    x_te, y_te = rng.integers(0, 255, (3, 6, 6), dtype=np.uint8), np.arange(3, dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", x_tr)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y_tr)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", x_te)  # plain (not gzipped) works too
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", y_te)
    assert np.array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), x_tr)
    assert reader_for(tmp_path) is IdxDataset
    tr, te = open_dataset(tmp_path), open_dataset(tmp_path, split="test")
    assert tr.split == "train" and len(tr) == 12 and tr.classes == ["0", "1", "2"]
    assert np.array_equal(np.asarray(tr[5][0])[..., 1], x_tr[5]) and tr[5][1] == 2
    assert len(te) == 3 and te.native_splits == ["test", "train"]
    single = open_dataset(tmp_path / "train-images-idx3-ubyte.gz")  # one file: labels found by name
    assert len(single) == 12
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad" / "x-images-idx3-ubyte")
    raw = gzip.decompress((tmp_path / "train-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "bad" / "t-images-idx3-ubyte").write_bytes(raw[:50])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "bad" / "t-images-idx3-ubyte")


def test_fashion_mnist_installed_files():
    if not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST not installed ({FASHION_MNIST_DIR}); apt-get install dataset-fashion-mnist")
    ds = open_dataset("fashion-mnist", split="test")
    assert len(ds) == 10_000 and ds.classes[0] == "T-shirt/top" and len(ds.classes) == 10
    assert np.bincount(ds.targets).tolist() == [1000] * 10
    img, _ = ds[0]
    assert img.size == (28, 28) and img.mode == "RGB"
    sub = open_dataset("fashion-mnist", split="train", per_class=5, seed=3)
    assert len(sub) == 50 and np.bincount(sub.targets).tolist() == [5] * 10


# -- open_dataset, splits, subsampling ------------------------------------------------------------------------
def test_open_dataset_dispatch_and_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_dataset(tmp_path / "nope.zip")
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(ValueError, match="unknown dataset format"):
        open_dataset(tmp_path / "x.parquet")


def test_seeded_split_when_there_is_no_native_split(tmp_path):
    root = _write_folder(tmp_path / "flat", _layout({"a": 10, "b": 5}, splits=False))
    full = open_dataset(root)
    assert full.split is None and full.native_splits == []
    tr, te = open_dataset(root, split="train", seed=1), open_dataset(root, split="test", seed=1)
    names = lambda d: {d.item_name(i) for i in range(len(d))}  # noqa: E731
    assert names(tr).isdisjoint(names(te)) and names(tr) | names(te) == names(full)
    assert np.bincount(te.targets).tolist() == [2, 1]  # 20 % of each class
    assert names(open_dataset(root, split="test", seed=1)) == names(te)
    assert names(open_dataset(root, split="test", seed=2)) != names(te)
    assert tr.split == "train" and "seeded split" in tr.describe()["selection"]


def test_split_seed_fixes_the_split_while_seed_varies_the_subsample(tmp_path):
    root = _write_folder(tmp_path / "flat", _layout({"a": 10, "b": 10}, splits=False))
    names = lambda d: {d.item_name(i) for i in range(len(d))}  # noqa: E731
    test = names(open_dataset(root, split="test", split_seed=0))
    for seed in range(5):  # few-shot subsamples of every seed stay inside the one train split
        shots = names(open_dataset(root, split="train", per_class=3, seed=seed, split_seed=0))
        assert shots.isdisjoint(test)
    with pytest.raises(KeyError, match="generated splits are train/test only"):
        open_dataset(root, split="val")


def test_stratified_subsample_properties():
    y = np.repeat(np.arange(4), [10, 3, 7, 1])
    with pytest.warns(UserWarning, match="fewer"):
        idx = stratified_subsample(y, 5, seed=0)
    assert np.bincount(y[idx]).tolist() == [5, 3, 5, 1] and np.all(np.diff(idx) > 0)
    with pytest.warns(UserWarning):
        assert np.array_equal(idx, stratified_subsample(y, 5, seed=0))
        small = stratified_subsample(y, 2, seed=0)
    assert set(small) <= set(idx)  # nested: a smaller per_class picks a subset
    with pytest.warns(UserWarning):
        assert not np.array_equal(idx, stratified_subsample(y, 5, seed=1))
    with pytest.raises(ValueError):
        stratified_subsample(y, 0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=80), st.integers(1, 6), st.integers(0, 99))
def test_subsample_and_split_invariants(labels, k, seed):
    y = np.array(labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idx = stratified_subsample(y, k, seed)
    counts = np.bincount(y, minlength=6)
    assert np.bincount(y[idx], minlength=6).tolist() == np.minimum(counts, k).tolist()
    tr, te = stratified_split(y, 0.3, seed)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == len(y)
    for c in np.unique(y):  # classes with >= 2 items appear on both sides
        if counts[c] >= 2:
            assert (y[tr] == c).any() and (y[te] == c).any()


# -- fingerprints -------------------------------------------------------------------------------------------
def test_fingerprint_tracks_content_labels_and_selection(tmp_path, files):
    root = _write_folder(tmp_path / "ds", files)
    fp = open_dataset(root).fingerprint()
    assert open_dataset(root).fingerprint() == fp  # stable
    assert open_dataset(root, per_class=1).fingerprint() != fp
    (root / "train" / "cat" / "cat_01.jpg").write_bytes(_jpeg(999))  # same name, new content
    assert open_dataset(root).fingerprint() != fp
    fp2 = open_dataset(root).fingerprint()
    (root / "train" / "owl").rename(root / "train" / "emu")  # relabel
    assert open_dataset(root).fingerprint() != fp2
    assert ImageFolderDataset(root, fingerprint_mode="stat").fingerprint() != fp2


# -- the shared datasets --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,n_train,n_test,n_classes", [
    ("eurosat", 4000, 1000, 10), ("dtd10", 800, 400, 10), ("flower_photos", 2934, 736, 5),
    ("cifar10", 20000, 5000, 10), ("imagenet_samples", None, 1000, 1000)])
def test_shared_zips(name, n_train, n_test, n_classes):
    path = SHARED_DATA / name / f"{name}.zip"
    if not path.exists():
        pytest.skip(f"shared data not available: {path} is absent")
    test = open_dataset(path, split="test")
    assert len(test) == n_test and len(test.classes) == n_classes
    if n_train:
        assert len(open_dataset(path)) == n_train  # default split: train
    else:
        assert open_dataset(path).split == "test"  # the only split
    img, label = test[len(test) - 1]
    assert img.mode == "RGB" and label == n_classes - 1
