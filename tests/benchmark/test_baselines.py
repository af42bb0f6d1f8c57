"""Baseline rows (random, params, source_accuracy), zoo imagenet_top1, and specs on image folders and zips."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _bench_toy import make_image_folder

from transferkit.benchmark.baselines import (backbone_parameters, baseline_outcomes, count_backbone_parameters,
                                             random_expected_metrics)
from transferkit.benchmark.runner import run_benchmark
from transferkit.benchmark.spec import load_spec
from transferkit.models import CifarResNet, ModelEntry, zoo_entries


def test_params_counts_the_backbone_without_the_head(tmp_path: Path):
    e = ModelEntry("r20", "cifar_resnet20", {"pretrained": False})
    full = sum(p.numel() for p in CifarResNet(20).parameters())
    assert count_backbone_parameters(e) == full - (64 * 10 + 10)
    counts = backbone_parameters([e], tmp_path)
    assert counts == {"r20": full - 650}
    cache = json.loads((tmp_path / "param_counts.json").read_text())
    assert list(cache.values()) == [full - 650]
    # cached: a wrong number planted in the cache is returned (no model is built)
    (tmp_path / "param_counts.json").write_text(json.dumps({k: 7 for k in cache}))
    assert backbone_parameters([e], tmp_path) == {"r20": 7}


def test_random_baseline_expectation():
    m = random_expected_metrics({"a": 10.0, "b": 20.0, "c": 30.0, "d": 40.0}, seed=0)
    assert abs(m["weighted_tau_scipy"]) < 0.05 and abs(m["kendall_tau"]) < 0.05
    assert m["regret"] == pytest.approx(np.mean([30, 20, 10, 0]), abs=1.0) and m["n_models"] == 4


def test_source_accuracy_on_the_models_that_have_one():
    entries = [ModelEntry("a", "cifar_resnet20", {"pretrained": False}, {"imagenet_top1": 70.0}),
               ModelEntry("b", "cifar_resnet20", {"pretrained": False}, {"imagenet_top1": 60.0}),
               ModelEntry("c", "cifar_resnet20", {"pretrained": False})]
    acc = {"a": 90.0, "b": 80.0, "c": 99.0}
    (o,) = baseline_outcomes(entries, acc, baselines=["source_accuracy"])
    assert o.error is None and o.scores == {"a": 70.0, "b": 60.0} and "2 of 3" in o.note
    assert o.metrics["weighted_tau_scipy"] == 1.0 and o.metrics["regret"] == 0.0
    (o,) = baseline_outcomes(entries[1:], acc, baselines=["source_accuracy"])
    assert o.error is not None and "at least 2" in o.error
    assert baseline_outcomes(entries[2:], acc, baselines=["source_accuracy"]) == []  # none has one: no row
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_outcomes(entries, acc, baselines=["nope"])


def test_zoo_imagenet_top1_is_info_not_an_option(tmp_path: Path):
    (e,) = zoo_entries([{"name": "x", "model": "cifar_resnet20", "imagenet_top1": 71.5}], tmp_path)
    assert e.info == {"imagenet_top1": 71.5} and e.options == {}
    for bad in (101, "high", True):
        with pytest.raises(ValueError, match="imagenet_top1"):
            zoo_entries([{"name": "x", "model": "cifar_resnet20", "imagenet_top1": bad}], tmp_path)


SPEC = """
name: zipped
seed: 0
zoo:
  - {name: r20, model: cifar_resnet20, pretrained: false, imagenet_top1: 60}
  - {name: eff, model: test_efficientnet, pretrained: false, imagenet_top1: 70}
datasets:
  folder: {data: data}
  zipped: {data: data.zip}
ground_truth: gt.csv
methods: [logme]
spread_seeds: []
features: {batch_size: 16, cache_dir: cache, num_workers: 0, img_size: 24, per_class: 4}
report: report
"""


def test_spec_datasets_as_image_folder_and_zip(tmp_path: Path):
    make_image_folder(tmp_path / "data")
    with zipfile.ZipFile(tmp_path / "data.zip", "w") as z:
        for p in sorted((tmp_path / "data").rglob("*.png")):
            z.write(p, p.relative_to(tmp_path / "data").as_posix())
    (tmp_path / "spec.yaml").write_text(SPEC)
    (tmp_path / "gt.csv").write_text("model,dataset,accuracy\nr20,folder,70\neff,folder,80\n"
                                     "r20,zipped,70\neff,zipped,80\n")
    res = run_benchmark(load_spec(tmp_path / "spec.yaml"), progress=False, log=lambda s: None)
    folder, zipped = res.datasets
    assert folder.n_images == zipped.n_images == 12
    assert res.methods == ["logme", "random", "params", "source_accuracy"]
    by = {o.method: o for o in zipped.methods}
    assert by["logme"].error is None and {o.method: o for o in folder.methods}["logme"].error is None
    assert by["source_accuracy"].metrics["weighted_tau_scipy"] == 1.0
    assert by["params"].error is None and by["params"].scores["r20"] > 0
