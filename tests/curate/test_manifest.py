"""Transfer-set manifests: round trip, detection, errors, and the crop dataset distill consumes."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.curate.manifest import (
    MANIFEST_COLUMNS,
    ManifestDataset,
    ManifestRow,
    is_transfer_manifest,
    item_ref,
    read_manifest,
    write_manifest,
)
from transferkit.data import open_dataset


def _rows_for(ds, box=(0, 0, 8, 6)) -> list[dict]:
    out = []
    for i in range(len(ds)):
        src, split, item = item_ref(ds, i)
        out.append(dict(source=src, split=split, item=item, x0=box[0], y0=box[1], x1=box[2], y1=box[3],
                        query_id=f"q{i % 2}", similarity=0.5 + i / 100, rank=i))
    return out


def test_round_trip_and_detection(tmp_path: Path, tiny_data: dict) -> None:
    ds = open_dataset(tiny_data["pool"], split="train")
    p = write_manifest(tmp_path / "ts.csv", _rows_for(ds), meta={"model": "m", "budget": 3})
    assert is_transfer_manifest(p)
    man = read_manifest(p)
    assert len(man) == len(ds) and man.meta == {"model": "m", "budget": 3} and man.version == 1
    r = man.rows[3]
    assert isinstance(r, ManifestRow) and r.box == (0, 0, 8, 6) and r.query_id == "q1" and r.rank == 3
    assert r.similarity == pytest.approx(0.53)
    header = [line for line in p.read_text().splitlines() if not line.startswith("#")][0]
    assert header.split(",") == list(MANIFEST_COLUMNS)
    # an ordinary CSV manifest of transferkit.data is not a transfer set
    plain = tmp_path / "plain.csv"
    plain.write_text("path,label\na.png,0\n")
    assert not is_transfer_manifest(plain)
    assert not is_transfer_manifest(tmp_path / "missing.csv")
    assert not is_transfer_manifest(tmp_path)


def test_dataset_returns_crops_unlabeled(tmp_path: Path, tiny_data: dict) -> None:
    ds = open_dataset(tiny_data["pool"], split="train")
    rows = _rows_for(ds, box=(4, 2, 20, 14))
    write_manifest(tmp_path / "ts.csv", rows)
    mds = ManifestDataset(tmp_path / "ts.csv")
    assert len(mds) == len(ds) and mds.classes == [] and (mds.targets == -1).all()
    img, y = mds[5]
    assert y == -1 and isinstance(img, Image.Image) and img.size == (16, 12)
    ref = ds.load(5).crop((4, 2, 20, 14))
    assert np.array_equal(np.asarray(img), np.asarray(ref))
    # the fingerprint depends on the boxes, and subsets keep working without re-opening the sources
    fp = mds.fingerprint()
    write_manifest(tmp_path / "ts2.csv", _rows_for(ds, box=(0, 0, 16, 12)))
    assert ManifestDataset(tmp_path / "ts2.csv").fingerprint() != fp
    assert mds.source_digests() == ds.item_digests()  # crops know the image they come from
    sub = mds.subset([1, 5])
    assert len(sub) == 2 and np.array_equal(np.asarray(sub[1][0]), np.asarray(img))
    assert sub.source_digests() == [ds.item_digests()[1], ds.item_digests()[5]]
    assert mds.describe()["sources"] == {str(tiny_data["pool"].resolve()): len(ds)}
    tf = mds.with_transform(lambda im: im.size)
    assert tf[5] == ((16, 12), -1)


def test_zip_source_and_relative_paths(tmp_path: Path, tiny_data: dict) -> None:
    zpath = tmp_path / "pool.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted((tiny_data["pool"]).rglob("*.png")):
            zf.write(f, f.relative_to(tiny_data["pool"]).as_posix())
    ds = open_dataset(zpath, split="all")
    rows = _rows_for(ds)
    for r in rows:
        r["source"] = "pool.zip"  # relative to the manifest's folder
    write_manifest(tmp_path / "ts.csv", rows)
    mds = ManifestDataset(tmp_path / "ts.csv")
    assert mds.rows[0].source == str(zpath.resolve())
    assert mds[0][0].size == (8, 6)


def test_errors_name_the_problem(tmp_path: Path, tiny_data: dict) -> None:
    ds = open_dataset(tiny_data["pool"], split="train")
    rows = _rows_for(ds)
    with pytest.raises(ValueError, match="bad crop box"):
        write_manifest(tmp_path / "bad.csv", [dict(rows[0], x1=0)])
    rows[2]["item"] = "train/red/nope.png"
    write_manifest(tmp_path / "missing.csv", rows)
    with pytest.raises(ValueError, match="nope.png"):
        ManifestDataset(tmp_path / "missing.csv")
    newer = tmp_path / "newer.csv"
    newer.write_text("# transferkit-transfer-set v99\nsource,split,item,x0,y0,x1,y1\n")
    with pytest.raises(ValueError, match="newer"):
        read_manifest(newer)
    with pytest.raises(ValueError, match="not a transferkit transfer-set"):
        read_manifest(tmp_path / "bad.csv" if (tmp_path / "bad.csv").exists() else Path(__file__))
    # a box outside the image is reported for that item when it is read
    write_manifest(tmp_path / "big.csv", [dict(_rows_for(ds)[0], x1=999)])
    from transferkit.data import CorruptImageError

    with pytest.raises(CorruptImageError, match="outside"):
        ManifestDataset(tmp_path / "big.csv")[0]
