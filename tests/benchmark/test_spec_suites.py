"""Benchmark specs (parsing, validation, derived configs), the ground-truth plan and the itm10 suite."""

from __future__ import annotations

from pathlib import Path

import pytest
from _bench_toy import toy_spec  # noqa: F401  (fixture)

from transferkit.benchmark.groundtruth import claim, compute_ground_truth, plan_ground_truth
from transferkit.benchmark.spec import load_spec, spec_from_dict
from transferkit.benchmark.suites import ITM10_DATASETS, ITM10_MODELS, itm10_spec
from transferkit.finetune import ground_truth_pairs

REPO = Path(__file__).resolve().parents[2]


def test_spec_paths_budget_and_feature_defaults(toy_spec: Path) -> None:  # noqa: F811
    spec = load_spec(toy_spec)
    base = toy_spec.parent
    assert [e.name for e in spec.zoo] == ["r20", "eff", "res"] and spec.method_list() == ["logme", "sfda"]
    toy, toy2 = spec.datasets
    assert toy.data == str(base / "data")
    cfg = spec.finetune_config(spec.zoo[0], toy2)
    assert cfg.epochs == 2 and cfg.img_size == 24 and cfg.model_options == {"pretrained": False}
    assert cfg.work_dir == str(base / "work") and cfg.output == str(base / "gt.csv")
    assert (cfg.model_name, cfg.dataset_name) == ("r20", "toy2")
    fo = spec.feature_options(toy)  # unset feature options follow the fine-tuning budget
    assert (fo.split, fo.per_class, fo.img_size, fo.cache_dir) == ("train", None, 24, str(base / "cache"))
    assert spec.feature_options(toy2).per_class == 6
    assert spec.load_ground_truth()["toy"] == {"r20": 70.0, "eff": 80.0, "res": 60.0}
    sub = spec.select(["eff"], ["toy2"])
    assert [e.name for e in sub.zoo] == ["eff"] and [d.name for d in sub.datasets] == ["toy2"]
    with pytest.raises(ValueError, match="unknown model"):
        spec.select(["nope"])


@pytest.mark.parametrize("doc, match", [
    ({"datasets": {"a": {"data": "x"}}}, "'zoo' is required"),
    ({"zoo": ["resnet18"], "datasets": {"a": {"data": "x"}}, "colour": 1}, r"unknown key\(s\) \['colour'\]"),
    ({"zoo": ["resnet18"], "datasets": {"a": {}}}, "dataset 'a' has no 'data'"),
    ({"zoo": ["resnet18"], "datasets": {"a": "x"}, "finetune": {"epoch": 2}}, r"unknown option\(s\) \['epoch'\]"),
    ({"zoo": ["resnet18"], "datasets": {"a": "x"}, "finetune": {"epochs": 0}}, "epochs must be >= 1"),
    ({"zoo": ["resnet18"], "datasets": {"a": "x"}, "primary_metric": "auc"}, "primary_metric must be one of"),
    ({"zoo": [{"model": "resnet18", "colour": 2}], "datasets": {"a": "x"}}, r"unknown option\(s\) \['colour'\]"),
])
def test_bad_specs_are_named(doc: dict, match: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=match):
        spec_from_dict(doc, tmp_path, "s.yaml")


def test_missing_ground_truth_file_says_how_to_make_it(tmp_path: Path) -> None:
    spec = spec_from_dict({"zoo": ["resnet18"], "datasets": {"a": "x"}, "ground_truth": "gt.csv"}, tmp_path, "s.yaml")
    with pytest.raises(FileNotFoundError, match="transferkit finetune --spec"):
        spec.load_ground_truth()


def test_ground_truth_plan_skips_done_pairs_and_shards(toy_spec: Path) -> None:  # noqa: F811
    spec = load_spec(toy_spec)
    plan = plan_ground_truth(spec)
    assert plan.todo == [("res", "toy2")] and len(plan.done) == 5
    assert len(plan_ground_truth(spec, force=True).todo) == 6
    shards = [plan_ground_truth(spec, shard=(i, 2), force=True).todo for i in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(plan_ground_truth(spec, force=True).todo)
    assert not set(shards[0]) & set(shards[1])
    with pytest.raises(ValueError, match="shard"):
        plan_ground_truth(spec, shard=(2, 2))


def test_compute_ground_truth_fills_only_the_missing_pair(toy_spec: Path) -> None:  # noqa: F811
    spec = load_spec(toy_spec)
    logs: list[str] = []
    claims = Path(spec.finetune_config(spec.zoo[2], spec.datasets[1]).work_dir) / "claims"
    with claim(claims, "res", "toy2") as held:  # another worker holds the pair: skip it
        assert held
        with claim(claims, "res", "toy2") as again:
            assert not again
        assert compute_ground_truth(spec, log=logs.append) == []
    assert any("another process" in line for line in logs)
    res = compute_ground_truth(spec, log=logs.append)
    assert [(r.model, r.dataset) for r in res] == [("res", "toy2")]
    assert res[0].n_train == 24 and len(res[0].histories[0]["history"]) == 2
    assert ("res", "toy2") in ground_truth_pairs(spec.ground_truth_csv())
    assert compute_ground_truth(spec, log=logs.append) == []  # nothing left
    assert any("1 to do" in line for line in logs) and any("0 to do" in line for line in logs)


def test_itm10_suite(tmp_path: Path) -> None:
    for name in ITM10_DATASETS:
        (tmp_path / name).mkdir()
    with pytest.raises(ValueError, match="--checkpoint MoCov3-B16=PATH --checkpoint SimMIM-B16=PATH"):
        itm10_spec(tmp_path)
    ck = tmp_path / "moco.pth"
    ck.write_bytes(b"")
    with pytest.warns(UserWarning, match="SimMIM-B16"):
        spec = itm10_spec(tmp_path, {"MoCov3-B16": str(ck)}, skip_missing=True)
    names = [e.name for e in spec.zoo]
    assert len(names) == 9 and "SimMIM-B16" not in names
    assert dict((e.name, e.spec) for e in spec.zoo)["MoCov3-B16"] == f"vit_base_patch16_224@{ck}"
    assert spec.ground_truth == "published:itm10" and spec.primary_metric == "weighted_tau_itm"
    gt = spec.load_ground_truth()
    assert all(e.name in gt["cifar10"] for e in spec.zoo) and [d.name for d in spec.datasets] == ITM10_DATASETS
    with pytest.raises(ValueError, match="unknown model"):
        itm10_spec(tmp_path, {"MoCo": str(ck)})
    (tmp_path / "sun397").rmdir()
    with pytest.raises(FileNotFoundError, match="sun397"):
        itm10_spec(tmp_path, {"MoCov3-B16": str(ck), "SimMIM-B16": str(ck)})


def test_spec_files_load_and_match_the_suite() -> None:
    offline = load_spec(REPO / "benchmarks" / "offline" / "spec.yaml")
    five = ["eurosat", "dtd10", "flower_photos", "cifar10", "fashion_mnist"]
    assert len(offline.zoo) == 10 and [d.name for d in offline.datasets] == [f"{n}_10shot" for n in five] + five
    assert offline.baselines == ["random", "params", "source_accuracy"] and offline.spread_seeds == [0, 1, 2]
    assert sum("imagenet_top1" in e.info for e in offline.zoo) == 6
    itm = load_spec(REPO / "benchmarks" / "specs" / "itm10.yaml")
    timm_names = {m[0]: m[1] for m in ITM10_MODELS}
    assert [e.name for e in itm.zoo] == [m[0] for m in ITM10_MODELS]
    assert all(e.spec == timm_names[e.name] for e in itm.zoo if timm_names[e.name])
    assert [d.name for d in itm.datasets] == ITM10_DATASETS and itm.ground_truth == "published:itm10"
