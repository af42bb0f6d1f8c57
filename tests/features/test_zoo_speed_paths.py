"""Issue 16's fast extraction paths give the features of the plain path: images decoded once for a zoo
(DecodedImages), loading in-process, and the raised glibc allocation thresholds."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import transferkit.features.extract as extract_mod
from transferkit.data import open_dataset
from transferkit.features import extract_features, extract_zoo
from transferkit.features.allocator import keep_allocations_in_heap


def _jpeg(seed: int, size: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture()
def folder(tmp_path) -> Path:
    root = tmp_path / "imgs"
    for c, n in {"a": 5, "b": 4, "c": 3}.items():
        (root / c).mkdir(parents=True)
        for i in range(n):
            (root / c / f"{i}.jpg").write_bytes(_jpeg(10 * ord(c) + i, 30 + 7 * i))
    (root / "c" / "broken.jpg").write_bytes(b"not an image")
    return root


@pytest.fixture()
def zoo(tmp_path) -> list[str]:
    """Two tiny checkpoints (different weights); the plain path also runs them at two input sizes."""
    specs = []
    for k, size in enumerate((32, 48)):
        torch.manual_seed(k)
        m = timm.create_model("test_resnet", pretrained=False, num_classes=6)
        p = tmp_path / f"tiny{k}.safetensors"
        save_file({n: v.contiguous() for n, v in m.state_dict().items()}, str(p))
        specs.append((f"test_resnet@{p}", size))
    return specs


def test_zoo_with_shared_decode_equals_one_model_at_a_time(folder, zoo, tmp_path, monkeypatch):
    decoded = []
    orig = extract_mod.DecodedImages.load

    def spy(self, ds, i):
        decoded.append(i)
        return orig(self, ds, i)

    monkeypatch.setattr(extract_mod.DecodedImages, "load", spy)
    ds = open_dataset(folder)
    plain = {}
    for spec, size in zoo:  # the old path: one model at a time, a worker process, no shared decode
        with pytest.warns(Warning):
            plain[spec] = extract_features(spec, ds, cache_dir=tmp_path / "c_plain", progress=False,
                                           num_workers=1, input_size=size, batch_size=4)
    assert not decoded
    loads = []
    real_load = type(ds).load

    def count(self, i):
        loads.append(i)
        return real_load(self, i)

    monkeypatch.setattr(type(ds), "load", count)
    with pytest.warns(Warning):
        fast = extract_zoo([zoo[0][0], zoo[1][0]], ds, cache_dir=tmp_path / "c_fast", progress=False,
                           batch_size=4)
    # every image (the broken one included) decoded once for the two models
    assert sorted(loads) == list(range(len(ds)))
    assert len(decoded) == 2 * len(ds)
    for (spec, _), name in zip(zoo, fast):
        ref = extract_features(spec, ds, cache_dir=tmp_path / "c_ref", progress=False, num_workers=1,
                               batch_size=4)
        np.testing.assert_array_equal(fast[name].features, ref.features)
        np.testing.assert_array_equal(fast[name].probs, ref.probs)
        np.testing.assert_array_equal(fast[name].labels, ref.labels)
        assert fast[name].metadata["cache_key"] == ref.metadata["cache_key"]  # keys unchanged by the fast path
    assert plain[zoo[0][0]].metadata["cache_key"] != plain[zoo[1][0]].metadata["cache_key"]


def test_decode_budget_zero_turns_sharing_off(folder, zoo, tmp_path, monkeypatch):
    ds = open_dataset(folder)
    seen = []
    monkeypatch.setattr(extract_mod, "DecodedImages", lambda *a, **k: seen.append(1) or None)
    with pytest.warns(Warning):
        extract_zoo([zoo[0][0], zoo[1][0]], ds, cache_dir=tmp_path / "c", progress=False, batch_size=4,
                    num_workers=0, decode_budget_bytes=0)
    assert not seen and not hasattr(ds, "_decoded_images")


def test_allocator_thresholds_keep_features_identical(folder, zoo, tmp_path):
    keep_allocations_in_heap()  # idempotent, process-wide; features must not depend on the allocator
    ds = open_dataset(folder)
    a = extract_features(zoo[0][0], ds, cache_dir=None, progress=False, num_workers=0, batch_size=4)
    b = extract_features(zoo[0][0], ds, cache_dir=None, progress=False, num_workers=0, batch_size=4)
    np.testing.assert_array_equal(a.features, b.features)
