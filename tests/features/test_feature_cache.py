"""Extraction: correctness against a direct forward pass, the content-addressed cache (hits compute
nothing, interrupted runs resume), corrupt images, npz export, zoo extraction, layers and precision."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.data import create_transform

import transferkit.features.extract as extract_mod
from transferkit.data import CorruptImageError, CorruptImageWarning, TensorImageDataset, open_dataset
from transferkit.features import (
    ExtractionInterrupted,
    FeatureCache,
    FeatureSet,
    atomic_savez,
    extract_features,
    extract_zoo,
    resolve_precision,
    select_device,
)
from transferkit.models import ResolvedModel, load_model

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
KW = dict(progress=False, num_workers=0, input_size=32)


def _jpeg(seed: int, size: int = 40) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture()
def folder(tmp_path) -> Path:
    root = tmp_path / "imgs"
    for c, n in {"a": 5, "b": 4, "c": 3}.items():
        (root / c).mkdir(parents=True)
        for i in range(n):
            (root / c / f"{i}.jpg").write_bytes(_jpeg(hash((c, i)) % 10_000))
    return root


@pytest.fixture()
def ckpt(tmp_path) -> str:
    """A tiny timm model saved as a checkpoint: a fixed, file-identified set of weights."""
    torch.manual_seed(0)
    m = timm.create_model("test_resnet", pretrained=False, num_classes=6)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "tiny.safetensors"))
    return f"test_resnet@{tmp_path / 'tiny.safetensors'}"


def test_features_match_a_direct_forward_pass(folder, ckpt, tmp_path):
    fs = extract_features(ckpt, folder, cache_dir=tmp_path / "c", batch_size=5, **KW)
    assert isinstance(fs, FeatureSet) and len(fs) == 12 and fs.probs.shape == (12, 6)
    model, dc = load_model(ckpt, input_size=32)
    ds = open_dataset(folder)
    x = torch.stack([create_transform(**dc)(ds.load(i)) for i in range(len(ds))])
    with torch.inference_mode():
        h = model.forward_features(x)
        feats, probs = model.forward_head(h, pre_logits=True), model.forward_head(h).softmax(1)
    np.testing.assert_allclose(fs.features, feats.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fs.probs, probs.numpy(), rtol=1e-4, atol=1e-6)
    assert fs.labels.tolist() == ds.targets.tolist() and fs.class_names == ["a", "b", "c"]
    assert fs.indices.tolist() == list(range(12))
    md = fs.metadata
    assert md["model"]["weights_sha256"] == md["model"]["identity"]["weights_sha256"]
    assert md["preprocessing"]["input_size"] == [3, 32, 32] and md["dataset"]["fingerprint"] == ds.fingerprint()
    assert {"torch", "timm", "numpy", "transferkit"} <= set(md["versions"]) and md["precision"] == "fp32"


def test_second_run_computes_nothing(folder, ckpt, tmp_path, monkeypatch):
    first = extract_features(ckpt, folder, cache_dir=tmp_path / "c", **KW)
    assert first.metadata["cache_hit"] is False

    def no_build(self):
        raise AssertionError("a cache hit must not build the model")

    monkeypatch.setattr(ResolvedModel, "build", no_build)
    again = extract_features(ckpt, folder, cache_dir=tmp_path / "c", **KW)
    assert again.metadata["cache_hit"] is True
    assert np.array_equal(again.features, first.features) and np.array_equal(again.probs, first.probs)
    entries = FeatureCache(tmp_path / "c").entries()
    assert len(entries) == 1 and sorted(p.name for p in entries[0].path.iterdir()) == ["features.npz", "meta.json"]


def test_cache_key_follows_inputs(folder, ckpt, tmp_path):
    base = extract_features(ckpt, folder, cache_dir=tmp_path / "c", **KW).metadata["cache_key"]
    keys = {
        "input": extract_features(ckpt, folder, cache_dir=tmp_path / "c", **{**KW, "input_size": 36}),
        "subset": extract_features(ckpt, folder, cache_dir=tmp_path / "c", per_class=2, **KW),
        "layer": extract_features(ckpt, folder, cache_dir=tmp_path / "c", layer="layer2", **KW),
        "noprobs": extract_features(ckpt, folder, cache_dir=tmp_path / "c", probs=False, **KW),
    }
    assert all(fs.metadata["cache_hit"] is False for fs in keys.values())
    assert len({base} | {fs.metadata["cache_key"] for fs in keys.values()}) == 5
    assert keys["noprobs"].probs is None and len(keys["subset"]) == 6
    # batch size, worker count and chunking are not part of the key
    again = extract_features(ckpt, folder, cache_dir=tmp_path / "c", batch_size=3, **KW)
    assert again.metadata["cache_hit"] is True


def test_interrupted_run_resumes_where_it_stopped(folder, ckpt, tmp_path, monkeypatch):
    real = extract_mod.make_feature_fn
    calls = {"n": 0, "fail_at": 4}

    def counting(model, layer=None, with_logits=True):
        fn = real(model, layer, with_logits)

        def wrapped(x):
            calls["n"] += 1
            if calls["n"] == calls["fail_at"]:
                raise KeyboardInterrupt("simulated interruption")
            return fn(x)
        return wrapped

    monkeypatch.setattr(extract_mod, "make_feature_fn", counting)
    opts = dict(cache_dir=tmp_path / "c", batch_size=2, chunk_size=4, **KW)  # chunks of 2 batches
    with pytest.raises(ExtractionInterrupted, match=r"kept 6 of 12 images \(2 chunks\) in .*run again") as info:
        extract_features(ckpt, folder, **opts)
    assert isinstance(info.value, KeyboardInterrupt) and info.value.kept_images == 6
    entry = FeatureCache(tmp_path / "c").entries()[0]
    # batches 1-2 = the first chunk; batch 3 was written when batch 4 was interrupted
    assert entry.chunk_ranges() == [(0, 4), (4, 6)] and not entry.is_complete()
    assert not list(entry.path.glob(".*.tmp"))
    calls.update(n=0, fail_at=-1)
    resumed = extract_features(ckpt, folder, **{**opts, "batch_size": 4})  # any batch size resumes
    assert calls["n"] == 2  # [6, 8) up to the batch grid of 4, then [8, 12)
    md = resumed.metadata
    assert (md["computed_images"], md["chunks_from_cache"], md["computed_chunks"], md["total_chunks"]) == (6, 2, 2, 4)
    fresh = extract_features(ckpt, folder, **{**opts, "cache_dir": tmp_path / "fresh"})
    np.testing.assert_allclose(resumed.features, fresh.features, rtol=1e-5, atol=1e-6)
    assert resumed.labels.tolist() == fresh.labels.tolist()
    assert sorted(p.name for p in entry.path.iterdir()) == ["features.npz", "meta.json"]


def test_chunks_are_bounded_by_time_and_a_resume_is_bit_identical(folder, ckpt, tmp_path, monkeypatch):
    real = extract_mod.make_feature_fn
    calls = {"n": 0, "fail_at": 5}

    def counting(model, layer=None, with_logits=True):
        fn = real(model, layer, with_logits)

        def wrapped(x):
            calls["n"] += 1
            if calls["n"] == calls["fail_at"]:
                raise KeyboardInterrupt("simulated interruption")
            return fn(x)
        return wrapped

    monkeypatch.setattr(extract_mod, "make_feature_fn", counting)
    clock = iter(range(0, 10_000, 20))  # every batch "takes" 20 s: a 30 s bound writes every second batch
    monkeypatch.setattr(extract_mod.time, "monotonic", lambda: float(next(clock)))
    opts = dict(cache_dir=tmp_path / "c", batch_size=1, chunk_size=100, chunk_seconds=30, **KW)
    with pytest.raises(ExtractionInterrupted):
        extract_features(ckpt, folder, **opts)
    entry = FeatureCache(tmp_path / "c").entries()[0]
    assert entry.chunk_ranges() == [(0, 2), (2, 4)]  # size alone would have written nothing yet
    calls.update(n=0, fail_at=-1)
    resumed = extract_features(ckpt, folder, **{**opts, "chunk_size": 3, "chunk_seconds": None})
    assert calls["n"] == 8 and resumed.metadata["chunks_from_cache"] == 2
    assert resumed.metadata["total_chunks"] == 2 + 3  # [4, 7), [7, 10), [10, 12)
    fresh = extract_features(ckpt, folder, **{**opts, "cache_dir": tmp_path / "fresh"})
    for k in ("features", "probs", "labels", "indices"):
        assert np.array_equal(getattr(resumed, k), getattr(fresh, k)), k  # same batches: same bits


def test_chunk_options_are_checked(folder, ckpt, tmp_path):
    for bad in ({"chunk_size": 0}, {"chunk_size": 2.5}, {"chunk_seconds": 0}, {"batch_size": 0}):
        with pytest.raises(ValueError, match="chunk_size|chunk_seconds|batch_size"):
            extract_features(ckpt, folder, cache_dir=tmp_path / "c", **{**KW, **bad})


def test_cover_slices_overlapping_chunks_and_finds_gaps(tmp_path):
    entry = FeatureCache(tmp_path).entry("k")
    entry.path.mkdir(parents=True)
    for lo, hi in [(0, 4), (2, 8), (10, 12), (11, 20), (12, 13)]:
        entry.chunk_path(lo, hi).write_bytes(b"")
    pieces, gaps = entry.cover(25)
    assert pieces == [(0, 4, 0, 4), (2, 8, 4, 8), (10, 12, 10, 12), (11, 20, 12, 20)]
    assert gaps == [(8, 10), (20, 25)]


def test_legacy_fixed_size_chunks_are_adopted(folder, ckpt, tmp_path):
    opts = dict(cache_dir=tmp_path / "c", batch_size=2, chunk_size=4, **KW)
    full = extract_features(ckpt, folder, **opts)
    entry = FeatureCache(tmp_path / "c").entries()[0]
    # rebuild the layout of transferkit <= 0.1: meta with chunk_size, chunk-000000.npz for positions [0, 4)
    meta = json.loads(entry.meta_path.read_text())
    entry.final_path.unlink()
    arrays = {"indices": full.indices[:4], "labels": full.labels[:4], "features": full.features[:4],
              "probs": full.probs[:4], "skipped": np.zeros(0, np.int64), "skipped_names": np.zeros(0, str),
              "skipped_errors": np.zeros(0, str)}
    atomic_savez(entry.path / "chunk-000000.npz", **arrays)
    entry.meta_path.write_text(json.dumps({**meta, "chunk_size": 4}))
    again = extract_features(ckpt, folder, **opts)
    assert again.metadata["chunks_from_cache"] == 1 and again.metadata["computed_images"] == 8
    assert np.array_equal(again.features, full.features)


def test_atomic_writes_leave_no_partial_file(tmp_path, monkeypatch):
    def broken_savez(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError):
        atomic_savez(tmp_path / "x.npz", a=np.zeros(3))
    assert list(tmp_path.iterdir()) == []


def test_corrupt_images_are_skipped_and_listed(folder, ckpt, tmp_path):
    (folder / "b" / "1.jpg").write_bytes(b"\xff\xd8\xff broken")
    (folder / "c" / "z.png").write_text("text")
    with pytest.warns(CorruptImageWarning, match=r"2 unreadable image\(s\)") as rec:
        fs = extract_features(ckpt, folder, cache_dir=tmp_path / "c", **KW)
    assert "1.jpg" in str(rec[0].message) and "z.png" in str(rec[0].message)
    ds = open_dataset(folder)
    bad = [i for i in range(len(ds)) if ds.item_name(i).endswith(("b/1.jpg", "c/z.png"))]
    assert len(fs) == len(ds) - 2 and sorted(set(range(len(ds))) - set(fs.indices)) == bad
    assert fs.labels.tolist() == ds.targets[fs.indices].tolist()
    assert [s["index"] for s in fs.metadata["skipped"]] == bad
    with pytest.raises(CorruptImageError):  # strict: an error, also when served from the cache
        extract_features(ckpt, folder, cache_dir=tmp_path / "c", strict=True, **KW)
    with pytest.raises(CorruptImageError, match="strict"):
        extract_features(ckpt, folder, cache_dir=tmp_path / "c2", strict=True, **KW)


def test_npz_export_is_what_rank_reads(folder, ckpt, tmp_path):
    fs = extract_features(ckpt, folder, cache_dir=tmp_path / "c", **KW)
    path = fs.save_npz(tmp_path / "out" / "tiny")
    assert path.name == "tiny.npz"
    with np.load(path, allow_pickle=False) as d:
        assert {"X", "y", "P"} <= set(d.files) and d["X"].dtype == np.float32 and d["y"].dtype == np.int64
        assert json.loads(str(d["metadata"]))["cache_key"] == fs.metadata["cache_key"]
    back = FeatureSet.load_npz(path)
    assert np.array_equal(back.features, fs.features) and back.class_names == fs.class_names
    ranking = pytest.importorskip("transferkit.ranking")
    zf = ranking.load_feature_file(path)
    assert zf.name == "tiny" and np.array_equal(zf.X, fs.features) and np.array_equal(zf.P, fs.probs)


def test_extract_zoo_list_and_yaml(folder, ckpt, tmp_path):
    (tmp_path / "zoo.yaml").write_text(
        f"defaults: {{input_size: 32}}\nmodels:\n  - {{name: tiny, model: '{ckpt}'}}\n"
        f"  - {{name: tiny-probe, model: '{ckpt}', layer: layer1, crop_pct: 1.0}}\n")
    sets = extract_zoo(str(tmp_path / "zoo.yaml"), folder, cache_dir=tmp_path / "c", per_class=2,
                       progress=False, num_workers=0)
    assert list(sets) == ["tiny", "tiny-probe"]
    assert len(sets["tiny"]) == 6 and sets["tiny-probe"].dim != sets["tiny"].dim
    assert sets["tiny"].metadata["dataset"]["per_class"] == 2
    listed = extract_zoo([ckpt], folder, cache_dir=tmp_path / "c", per_class=2, progress=False, num_workers=0,
                         input_size=32)
    (name, fs), = listed.items()
    assert fs.metadata["cache_hit"] is True and np.array_equal(fs.features, sets["tiny"].features)
    with pytest.raises(ValueError, match="duplicate"):
        extract_zoo([ckpt, ckpt], folder, cache_dir=tmp_path / "c", progress=False)


def test_module_input_tensor_dataset_and_workers(tmp_path, folder):
    torch.manual_seed(1)
    m = timm.create_model("test_vit", pretrained=False, num_classes=3, img_size=32)
    x = torch.randn(10, 3, 32, 32)
    ds = TensorImageDataset(x, np.arange(10) % 2, preprocessing={"premade": "test"})
    fs = extract_features(m, ds, cache_dir=tmp_path / "c", batch_size=4, progress=False)
    with torch.inference_mode():
        want = m.forward_head(m.forward_features(x), pre_logits=True)
    np.testing.assert_allclose(fs.features, want.numpy(), rtol=1e-4, atol=1e-5)
    assert fs.metadata["preprocessing"] == {"premade": "test"}
    # a DataLoader with worker processes gives the same features as the in-process loader
    torch.manual_seed(0)
    r = timm.create_model("test_resnet", pretrained=False, num_classes=4)
    a = extract_features(r, folder, cache_dir=None, num_workers=2, batch_size=4, progress=False, input_size=32)
    b = extract_features(r, folder, cache_dir=None, num_workers=0, batch_size=5, progress=False, input_size=32)
    np.testing.assert_allclose(a.features, b.features, rtol=1e-5, atol=1e-6)


def test_device_and_precision_choices(folder, ckpt, tmp_path):
    assert select_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert select_device("auto").type in ("cpu", "mps")
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ValueError):
        resolve_precision("int4", torch.device("cpu"))
    f32 = extract_features(ckpt, folder, cache_dir=tmp_path / "c", **KW)
    b16 = extract_features(ckpt, folder, cache_dir=tmp_path / "c", precision="bf16", **KW)
    assert b16.metadata["cache_key"] != f32.metadata["cache_key"] and b16.features.dtype == np.float32
    assert np.corrcoef(b16.features.ravel(), f32.features.ravel())[0, 1] > 0.99


def test_background_output_is_dropped_from_source_probs(tmp_path):
    """Coral ImageNet models: 1001 outputs with background at 0 -> 1000 probabilities over ImageNet classes;
    iNat models: background last."""
    samples = SHARED / "data" / "imagenet_samples" / "imagenet_samples.zip"
    for p in (samples, SHARED / "weights" / "mobilenetv1_025.in1k", SHARED / "weights" / "mobilenetv2_100.inat_bird"):
        if not p.exists():
            pytest.skip(f"shared data not available: {p} is absent")
    ds = open_dataset(samples).subset(np.arange(0, 1000, 100))
    spec = str(SHARED / "weights" / "mobilenetv1_025.in1k")
    fs = extract_features(spec, ds, cache_dir=tmp_path / "c", progress=False, num_workers=0)
    model, dc = load_model(spec)
    x = torch.stack([create_transform(**dc)(ds.load(i)) for i in range(len(ds))])
    with torch.inference_mode():
        logits = model(x)
    assert logits.shape[1] == 1001 and fs.probs.shape == (10, 1000)
    np.testing.assert_allclose(fs.probs, logits[:, 1:].softmax(1).numpy(), rtol=1e-4, atol=1e-6)
    assert fs.metadata["model"]["background_index"] == 0
    kept = extract_features(spec, ds, cache_dir=tmp_path / "c", progress=False, num_workers=0, drop_background=False)
    assert kept.probs.shape == (10, 1001)
    bird = extract_features(str(SHARED / "weights" / "mobilenetv2_100.inat_bird"), ds.subset([0, 1]),
                            cache_dir=tmp_path / "c", progress=False, num_workers=0, input_size=64)
    assert bird.probs.shape == (2, 964) and bird.metadata["model"]["background_index"] == 964
