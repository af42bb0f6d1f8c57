"""End-to-end runs on a tiny dataset with tiny timm models: every method, cache reuse, resume, manifests,
the CLI, and ONNX export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from transferkit.distill import load_student, open_transfer, run_comparison, run_distill, summarize
from distill_fixtures import *  # noqa: F401,F403 - fixtures


def test_task_oriented_run_and_teacher_cache_across_seeds(tiny_config, tmp_path):
    r = run_distill(tiny_config)
    c = r["cost"]
    # 12 labeled images (4/class) x 2 views, 12 test images, 24 transfer images (36 train - 12 labeled) x 2 views
    assert r["n_labeled"] == 12 and r["transfer"]["n"] == 24 and r["transfer"]["excluded_labeled"] == 12
    assert c["teacher_forward"] == {"adapt": 24, "test": 12, "transfer": 48}
    assert c["teacher_forward_computed"] == 24 + 12 + 48  # each (image, view) exactly once
    assert c["student_steps"] == {"distill": 4, "finetune": 3}
    assert 0.0 <= r["student_accuracy"] <= 1.0 and 0.0 <= r["teacher_accuracy"] <= 1.0
    assert r["teacher_adapted"]["adapt"] == "linear_probe" and r["teacher_adapted"]["l2"] in tiny_config.probe_l2
    out = tmp_path / "run"
    for f in ("config.yaml", "results.json", "student.pt", "student.json", "distill/metrics.jsonl",
              "distill/metrics.csv", "distill/final.pt", "finetune/result.json", "teacher/head.pt"):
        assert (out / f).exists(), f
    assert not (out / "distill" / "checkpoint.pt").exists()  # removed once the stage is final
    # another seed: a new labeled subset, but every image/view was seen already -> no teacher forward pass
    r1 = run_distill(tiny_config.replace(seed=1, out_dir=str(tmp_path / "run1")))
    assert r1["cost"]["teacher_forward_computed"] == 0 and r1["cost"]["teacher_forward"]["transfer"] == 48
    # rerunning a finished run does nothing and returns the same results
    again = run_distill(tiny_config)
    assert again == r
    # the saved student reloads and predicts like the run's evaluation
    model, meta = load_student(out)
    assert meta["classes"] == ["c0", "c1", "c2"] and meta["method"] == "task_oriented"
    # a different config in the same folder is refused unless resume=False
    with pytest.raises(ValueError, match="different configuration"):
        run_distill(tiny_config.replace(temperature=3.0))
    r3 = run_distill(tiny_config.replace(temperature=3.0, resume=False))
    assert r3["config_digest"] != r["config_digest"]


def test_baselines_and_summary(tiny_config, tmp_path):
    results = run_comparison(tiny_config, ["feature_distill", "pretrained", "scratch"], [0], tmp_path / "cmp")
    by = {r["method"]: r for r in results}
    fd = by["feature_distill"]
    assert fd["cost"]["teacher_forward"] == {"transfer": 48} and fd["cost"]["student_steps"]["distill"] == 4
    assert "cos" in fd["distill_last"]
    for m in ("pretrained", "scratch"):
        assert by[m]["cost"]["teacher_forward"] == {} and by[m]["cost"]["student_steps"] == {"finetune": 3}
        assert by[m]["teacher"] is None
    assert by["scratch"]["student_init"] == "scratch"
    rows = summarize(results)
    assert [r["method"] for r in rows] == ["feature_distill", "pretrained", "scratch"]
    assert rows[0]["teacher_fwd"] == 48 and rows[1]["teacher_fwd"] == 0


def test_transfer_from_a_curated_manifest_and_full_finetune_teacher(tiny_config, tiny_data, tmp_path):
    from transferkit.curate.manifest import write_manifest
    from transferkit.data import open_dataset

    src = open_dataset(tiny_data, "train")
    rows = [{"source": str(tiny_data), "split": "train", "item": src.paths[i], "x0": 2, "y0": 2, "x1": 18, "y1": 18}
            for i in range(0, len(src), 3)]
    man = write_manifest(tmp_path / "transfer.csv", rows, meta={"test": True})
    cfg = tiny_config.replace(transfer=str(man), teacher_adapt="finetune", adapt={"steps": 2, "batch_size": 6},
                              out_dir=str(tmp_path / "man"))
    ds, info = open_transfer(cfg)
    assert info["kind"] == "manifest" and len(ds) == len(rows)
    r = run_distill(cfg)
    assert r["transfer"]["kind"] == "manifest" and r["cost"]["teacher_forward"]["transfer"] == 2 * len(rows)
    assert r["teacher_adapted"]["adapt"] == "finetune" and r["teacher_adapted"]["steps"] == 2
    assert (tmp_path / "man" / "teacher" / "final.pt").exists()


def test_cli_comparison_and_errors(tiny_config, tmp_path):
    from transferkit.cli import main

    cfg_path = tmp_path / "run.yaml"
    tiny_config.to_yaml(cfg_path)
    runner = CliRunner()
    res = runner.invoke(main, ["distill", "-c", str(cfg_path), "--methods", "pretrained,scratch", "--seeds", "0,1",
                               "--out", str(tmp_path / "cli"), "--set", "finetune.steps=2"])
    assert res.exit_code == 0, res.output
    assert "pretrained" in res.output and (tmp_path / "cli" / "summary.csv").exists()
    runs = json.loads((tmp_path / "cli" / "summary.json").read_text())["runs"]
    assert len(runs) == 4 and {r["cost"]["student_steps"]["finetune"] for r in runs} == {2}
    res = runner.invoke(main, ["distill", "-c", str(cfg_path), "--methods", "magic"])
    assert res.exit_code != 0 and "unknown method" in res.output
    res = runner.invoke(main, ["distill", "-c", str(cfg_path), "--set", "views=0"])
    assert res.exit_code != 0 and "views must be >= 1" in res.output
    res = runner.invoke(main, ["distill", "-c", str(cfg_path), "--print-config", "--per-class", "7"])
    assert res.exit_code == 0 and "per_class: 7" in res.output
    res = runner.invoke(main, ["distill", "--method", "pretrained", "--student", "resnet18", "--data",
                               str(tmp_path / "missing"), "--out", str(tmp_path / "m")])
    assert res.exit_code != 0 and "not found" in res.output


def test_onnx_export_gives_the_same_predictions(tiny_config, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from transferkit.distill import export_onnx, onnx_predict, verify_onnx

    r = run_distill(tiny_config.replace(method="pretrained", export_onnx=True, out_dir=str(tmp_path / "onnx")))
    assert r["onnx"]["top1_agreement"] == 1.0 and r["onnx"]["max_abs_diff"] < 1e-4
    model, _ = load_student(tmp_path / "onnx")
    x = torch.randn(5, 3, 32, 32)  # another batch size than at export: the batch axis is dynamic
    got = onnx_predict(tmp_path / "onnx" / "student.onnx", x)
    with torch.no_grad():
        ref = model(x).numpy()
    assert got.shape == (5, 3) and np.abs(got - ref).max() < 1e-4 and (got.argmax(1) == ref.argmax(1)).all()
    # the standalone API agrees
    path = export_onnx(model, tmp_path / "again.onnx", (32, 32))
    assert verify_onnx(path, model, x)["top1_agreement"] == 1.0
