"""Embedding stores: unit rows in a memory map, reuse across runs, resume after an interruption."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from transferkit.curate import embed as embed_mod
from transferkit.curate.crops import CropDataset, CropGrid
from transferkit.curate.embed import EmbeddingStore, GalleryEmbeddings, embed_dataset
from transferkit.data import open_dataset


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = embed_mod.extract_features

    def spy(model, ds, **kw):
        calls.append(len(ds))
        return real(model, ds, **kw)

    monkeypatch.setattr(embed_mod, "extract_features", spy)
    return calls


def test_store_is_unit_memmap_and_reused(tmp_path: Path, tiny_data: dict, tiny_model, monkeypatch) -> None:
    ds = CropDataset(open_dataset(tiny_data["pool"], split="train"), CropGrid((1.0, 0.5)))
    calls = _count_calls(monkeypatch)
    st = embed_dataset(tiny_model, ds, cache_dir=tmp_path, shard_size=32, num_workers=0, progress=False)
    assert calls == [32, 32, 26]
    assert isinstance(st.emb, np.memmap) and st.emb.shape == (90, st.dim) and st.valid.all()
    assert np.allclose(np.linalg.norm(st.emb, axis=1), 1.0, atol=1e-5)
    # the shard feature-cache entries were folded into the store
    assert not any((tmp_path / "features").glob("*/features.npz"))
    again = embed_dataset(tiny_model, ds, cache_dir=tmp_path, shard_size=32, num_workers=0, progress=False)
    assert calls == [32, 32, 26] and again.path == st.path  # nothing recomputed
    assert np.array_equal(np.asarray(again.emb), np.asarray(st.emb))
    # a different crop grid is a different store
    other = embed_dataset(tiny_model, CropDataset(ds.base), cache_dir=tmp_path, num_workers=0, progress=False)
    assert other.path != st.path and other.n == 18
    # rows agree with extracting the same crops directly
    first = embed_dataset(tiny_model, ds.subset(np.arange(5)), cache_dir=tmp_path, num_workers=0, progress=False)
    assert np.allclose(np.asarray(first.emb), np.asarray(st.emb)[:5], atol=1e-5)


def test_resume_recomputes_only_missing_shards(tmp_path: Path, tiny_data: dict, tiny_model, monkeypatch) -> None:
    ds = CropDataset(open_dataset(tiny_data["pool"], split="train"), CropGrid((1.0, 0.5)))
    st = embed_dataset(tiny_model, ds, cache_dir=tmp_path, shard_size=40, num_workers=0, progress=False)
    full = np.asarray(st.emb).copy()
    # simulate a run killed after the first shard: shard 1 and 2 are not recorded
    (st.path / "progress.json").write_text(json.dumps({"done": [0]}))
    with pytest.raises(ValueError, match="incomplete"):
        EmbeddingStore.open(st.path)
    calls = _count_calls(monkeypatch)
    st2 = embed_dataset(tiny_model, ds, cache_dir=tmp_path, shard_size=999, num_workers=0, progress=False)
    assert calls == [40, 10]  # the shard size of the first run stays in force
    assert np.allclose(np.asarray(st2.emb), full, atol=1e-6)


def test_random_weight_specs_are_built_once(tmp_path: Path, tiny_data: dict) -> None:
    ds = open_dataset(tiny_data["target"], split="train")
    from transferkit.models import ModelEntry

    entry = ModelEntry("tiny", "test_resnet", {"pretrained": False})
    st = embed_dataset(entry, ds, cache_dir=tmp_path, shard_size=2, num_workers=0, progress=False)
    # the same image embedded in two different shards gives the same vector only if one model was used
    ds2 = ds.subset([0, 1, 0])
    st2 = embed_dataset(entry, ds2, cache_dir=tmp_path / "b", shard_size=2, num_workers=0, progress=False)
    e = np.asarray(st2.emb)
    assert np.allclose(e[0], e[2], atol=1e-5) and st.n == len(ds)


def test_gallery_requires_same_dim(tmp_path: Path, make_store) -> None:
    a = make_store(tmp_path / "a", np.eye(4, dtype=np.float32))
    b = make_store(tmp_path / "b", np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="different dimensions"):
        GalleryEmbeddings([a, b])
