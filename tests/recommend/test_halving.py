"""Successive halving (`rank --budget fast`, issue 16): it keeps the model a full run ranks first, and its
features are the cache entries a later full run reuses (computing only the missing images)."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from transferkit.halving import class_prefix_positions, successive_halving
from transferkit.ranking import ZooFeatures
from transferkit.recommendation import recommend


def _synthetic_zoo(n_models: int = 8, n_classes: int = 6, per_class: int = 40, seed: int = 0):
    """Model k's features separate the classes with signal 3 / (k + 1): model 0 is the known best."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), per_class)  # class-sorted, like a folder dataset
    means = rng.normal(size=(n_classes, 16))
    feats = {}
    for k in range(n_models):
        X = means[y] * (3.0 / (k + 1)) + rng.normal(size=(len(y), 16))
        logits = X @ rng.normal(size=(16, 10))
        P = np.exp(logits - logits.max(1, keepdims=True))
        feats[f"m{k}"] = (X.astype(np.float32), (P / P.sum(1, keepdims=True)).astype(np.float32))
    return y, feats


def test_halving_keeps_the_model_a_full_run_ranks_first():
    y, feats = _synthetic_zoo()
    full = recommend([ZooFeatures(m, X, y, P) for m, (X, P) in feats.items()])
    assert full.model == "m0"
    calls: list[tuple[str, int]] = []

    def extract(name, positions):
        idx = np.arange(len(y)) if positions is None else np.concatenate([np.arange(a, b) for a, b in positions])
        calls.append((name, len(idx)))
        X, P = feats[name]
        return ZooFeatures(name, X[idx], y[idx], P[idx], {"computed_images": len(idx)})

    rounds_seen = []
    zoo, rec, rounds = successive_halving(list(feats), extract, lambda z: recommend(z), y,
                                          on_round=lambda k, n, alive, share: rounds_seen.append((k, n, len(alive))))
    assert rec.model == full.model == "m0"
    assert "m0" in rounds[-1].kept and len(rounds[-1].models) < len(feats)  # something was dropped
    assert rounds_seen[0] == (1, 3, 8)
    assert rounds[0].n_images == 60 and rounds[-1].n_images == len(y)  # 1/4 of each class, then all
    total = sum(n for _, n in calls)
    assert total < len(feats) * len(y)  # fewer image features than a full run


def test_too_few_images_per_class_to_drop_means_one_full_round():
    """10 per class: rounds of 3 and 5 per class could not drop anyone safely, so the fast run is the full run."""
    y, feats = _synthetic_zoo(per_class=10)
    calls = []

    def extract(name, positions):
        calls.append(positions)
        X, P = feats[name]
        return ZooFeatures(name, X, y, P, {"computed_images": len(y)})

    _, rec, rounds = successive_halving(list(feats), extract, lambda z: recommend(z), y)
    assert len(rounds) == 1 and rounds[0].share == 1.0 and rounds[0].kept == list(feats)
    assert calls == [None] * len(feats)
    assert rec.model == recommend([ZooFeatures(m, X, y, P) for m, (X, P) in feats.items()]).model


def test_class_prefix_positions_are_nested_per_class():
    y = np.repeat(np.arange(3), [10, 4, 7])
    small = class_prefix_positions(y, 0.25)
    big = class_prefix_positions(y, 0.5)
    as_set = lambda spans: {p for a, b in spans for p in range(a, b)}
    assert as_set(small) <= as_set(big)
    assert [int((y[sorted(as_set(small))] == c).sum()) for c in range(3)] == [3, 3, 3]  # at least 3 per class
    assert small == [(0, 3), (10, 13), (14, 17)]


def _jpeg(seed: int, size: int = 36, tint: int = 0) -> bytes:
    """Noise around a class colour: the classes are separable, so the methods agree on who is worse."""
    rng = np.random.default_rng(seed)
    base = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]][tint % 4], dtype=np.int16)
    img = np.clip(base + rng.normal(0, 60, (size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture()
def tiny_zoo(tmp_path) -> tuple[Path, Path]:
    root = tmp_path / "data"
    for c in range(4):
        (root / "train" / f"c{c}").mkdir(parents=True)
        for i in range(16):  # 1/4 (4 per class) is too few to drop models; 1/2 (8, MIN_PER_CLASS_TO_DROP) is not
            (root / "train" / f"c{c}" / f"{i:02d}.jpg").write_bytes(_jpeg(100 * c + i, tint=c))
    lines = ["models:"]
    for k in range(8):  # 8 models: the top half and the methods' top 3 leave some out
        torch.manual_seed(k)
        m = timm.create_model("test_resnet", pretrained=False, num_classes=5)
        p = tmp_path / f"w{k}.safetensors"
        save_file({n: v.contiguous() for n, v in m.state_dict().items()}, str(p))
        lines += [f"  - name: tiny{k}", f"    model: test_resnet@{p}", "    input_size: [3, 32, 32]"]
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text("\n".join(lines) + "\n")
    return root, zoo


def _rank(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["transferkit", "rank", *args, "--no-plot", "--no-progress", "--workers", "0",
                           "--methods", "leep,parc,etran,knn1"], capture_output=True, text=True, cwd=cwd)


def test_a_full_run_after_a_fast_run_extracts_only_the_missing_images(tiny_zoo, tmp_path):
    data, zoo = tiny_zoo
    cache = tmp_path / "cache"
    fast = _rank(["--zoo", str(zoo), "--data", str(data), "--split", "train", "--cache", str(cache),
                  "--budget", "fast", "--out", str(tmp_path / "fast")], tmp_path)
    assert fast.returncode == 0, fast.stderr
    halving = json.loads((tmp_path / "fast" / "scores.json").read_text())["halving"]
    assert halving[0]["images"] == 32 and len(halving[0]["models"]) == 8
    done = {}
    for r in halving:
        for m, k in r["computed_images"].items():
            done[m] = done.get(m, 0) + k
    assert sum(done.values()) < 8 * 64  # the fast run did not extract every model on every image
    finished_fast = set(_entries(cache))  # survivors of the last round: complete entries already
    full = _rank(["--zoo", str(zoo), "--data", str(data), "--split", "train", "--cache", str(cache),
                  "--budget", "full", "--out", str(tmp_path / "full")], tmp_path)
    assert full.returncode == 0, full.stderr
    entries = _entries(cache)
    assert len(entries) == 8
    for name, meta in entries.items():
        if name in finished_fast:
            assert done[name] == 64  # extracted on every image by the fast run: a cache hit now
        else:  # the full run computed exactly the images the fast run had not
            assert 0 < done[name] < 64 and meta["computed_images"] == 64 - done[name]
    dropped = sorted(set(entries) - finished_fast)
    assert dropped
    # the rows computed in pieces equal a fresh one-pass extraction (float tolerance: batches are cut differently)
    from transferkit.features import extract_features

    spec = [ln.split("model: ")[1] for ln in zoo.read_text().splitlines() if "model:" in ln][int(dropped[0][-1])]
    ref = extract_features(spec, str(data), split="train", cache_dir=tmp_path / "c2", progress=False,
                           num_workers=0, input_size=[3, 32, 32])
    with np.load(entries[dropped[0]]["path"], allow_pickle=False) as d:
        np.testing.assert_allclose(d["X"], ref.features, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(d["y"], ref.labels)


def _entries(cache: Path) -> dict[str, dict]:
    """{model name: metadata (+ path)} of the finished cache entries."""
    out = {}
    for f in sorted((cache / "features").glob("*/features.npz")):
        with np.load(f, allow_pickle=False) as d:
            meta = json.loads(str(d["metadata"]))
        out[meta["model"]["name"]] = dict(meta, path=f)
    return out


def test_auto_budget_halves_with_data_and_four_models_unless_ground_truth(tiny_zoo, tmp_path):
    data, zoo = tiny_zoo
    common = ["--zoo", str(zoo), "--data", str(data), "--split", "train", "--cache", str(tmp_path / "cache")]
    auto = _rank([*common, "--out", str(tmp_path / "auto")], tmp_path)
    assert auto.returncode == 0, auto.stderr
    assert "halving" in json.loads((tmp_path / "auto" / "scores.json").read_text())
    assert "dropped early as clearly worse" in auto.stdout
    gt = tmp_path / "gt.csv"
    gt.write_text("model,accuracy\n" + "".join(f"tiny{k},{50 + k}\n" for k in range(8)))
    with_gt = _rank([*common, "--gt", str(gt), "--out", str(tmp_path / "gt")], tmp_path)
    assert with_gt.returncode == 0, with_gt.stderr
    assert "halving" not in json.loads((tmp_path / "gt" / "scores.json").read_text())
