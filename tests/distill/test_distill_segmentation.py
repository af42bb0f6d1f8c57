"""Segmentation distillation: metrics, cached per-pixel teacher targets, resume, ONNX, the CLI end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from distill_fixtures import *  # noqa: E402,F403
from seg_fixtures import *  # noqa: E402,F403

from transferkit.distill import DistillConfig, load_student, run_distill  # noqa: E402
from transferkit.distill.segmetrics import confusion_matrix, segmentation_scores  # noqa: E402


def test_miou_against_a_hand_computed_confusion_matrix():
    target = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    cm = confusion_matrix(pred, target, 4, ignore_index=255)
    # (true, pred): (0,0) (0,1) (1,1) (1,1) (2,0); the ignored pixel is not counted
    expected = np.array([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert np.array_equal(cm, expected)
    s = segmentation_scores(cm, ["a", "b", "c", "d"])
    # IoU_a = 1 / (2 + 2 - 1), IoU_b = 2 / (2 + 3 - 2), IoU_c = 0 / (1 + 0 - 0); d in neither: no IoU
    assert s["per_class_iou"] == pytest.approx({"a": 1 / 3, "b": 2 / 3, "c": 0.0, "d": None})
    assert s["miou"] == pytest.approx(1 / 3) and s["pixel_accuracy"] == pytest.approx(3 / 5) and s["pixels"] == 5
    # accumulating two halves equals one pass over the whole
    halves = confusion_matrix(pred[:1], target[:1], 4, 255) + confusion_matrix(pred[1:], target[1:], 4, 255)
    assert np.array_equal(halves, cm)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([5]), np.array([0]), 4)


def test_config_checks_for_segmentation(seg_config):
    seg_config.validate()
    with pytest.raises(ValueError, match="needs num_classes"):
        seg_config.replace(num_classes=None).validate()
    with pytest.raises(ValueError, match="ignore_index 1 is a class label"):
        seg_config.replace(ignore_index=1).validate()
    with pytest.raises(ValueError, match="teacher_adapt must be 'head_only'"):
        seg_config.replace(teacher_adapt="linear_probe").validate()
    with pytest.raises(ValueError, match="use n_labeled"):
        seg_config.replace(per_class=3).validate()
    with pytest.raises(ValueError, match="look like a segmentation dataset; set task: segmentation"):
        run_distill(seg_config.replace(task="classification", teacher_adapt="linear_probe", n_labeled=None,
                                       method="pretrained"))
    with pytest.raises(ValueError, match="'head_only' is for segmentation"):
        DistillConfig(student="x", data="y", method="pretrained", teacher_adapt="head_only").validate()
    # a classification config's digest does not see the segmentation fields at their defaults
    c = DistillConfig(student="x", data="y", method="pretrained")
    assert "seg_size" not in json.dumps(c.digest()) and c.digest() == c.replace(target_stride=4).digest()
    assert c.digest() != c.replace(target_stride=8).digest()


def _crash_in_distill(monkeypatch, after: int) -> None:
    from transferkit.distill import segmodels

    orig = segmodels.SegKDModule.forward
    calls = {"n": 0}

    def forward(self, *a):
        calls["n"] += 1
        if calls["n"] > after:
            raise KeyboardInterrupt("simulated crash")
        return orig(self, *a)

    monkeypatch.setattr(segmodels.SegKDModule, "forward", forward)


def test_cached_teacher_targets_and_resume(seg_config, tmp_path, monkeypatch):
    ref = run_distill(seg_config.replace(out_dir=str(tmp_path / "ref")))
    assert ref["task"] == "segmentation" and ref["n_labeled"] == 6 and ref["n_test"] == 4
    # transfer set: train+val (14) minus the 6 labeled images, 2 views each, stored as float16 stride-4 maps
    assert ref["transfer"]["n"] == 8 and ref["transfer"]["excluded_labeled"] == 6
    assert ref["cost"]["teacher_forward"]["transfer"] == 16 and ref["cost"]["teacher_forward_computed"] == 16
    assert ref["target_cache"]["shape"] == [3, 8, 10] and ref["target_cache"]["dtype"] == "float16"
    shards = list(Path(seg_config.cache_dir).rglob("shard-*.values.npy"))
    assert shards and {np.load(p).dtype for p in shards} == {np.dtype("float16")}
    assert np.load(shards[0]).shape[1] == 3 * 8 * 10
    for key in ("student_miou", "student_pixel_accuracy", "teacher_miou"):
        assert 0.0 <= ref[key] <= 1.0
    assert set(ref["student_per_class_iou"]) == {"red", "green", "blue"}
    assert np.array(ref["student_confusion"]).sum() == 4 * (32 * 40 - 40)  # every non-void pixel at label resolution

    # crash in the middle of distillation (checkpoint at step 2), then rerun the same command
    cfg = seg_config.replace(out_dir=str(tmp_path / "crash"))
    _crash_in_distill(monkeypatch, after=2)
    with pytest.raises(KeyboardInterrupt):
        run_distill(cfg)
    assert (tmp_path / "crash" / "teacher" / "result.json").exists()
    assert torch.load(tmp_path / "crash" / "distill" / "checkpoint.pt", weights_only=True)["step"] == 2
    monkeypatch.undo()
    res = run_distill(cfg)
    assert res["cost"]["teacher_forward_computed"] == 0  # the adapted teacher is the same: targets from the cache
    assert res["student_sha256"] == ref["student_sha256"]  # identical to the uninterrupted run
    assert res["student_miou"] == ref["student_miou"]
    steps = [json.loads(x)["step"] for x in (tmp_path / "crash" / "distill" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    # a finished run folder answers from results.json
    assert run_distill(cfg)["student_sha256"] == ref["student_sha256"]


def test_baselines_run_and_the_student_reloads(seg_config, tmp_path):
    fd = run_distill(seg_config.replace(method="feature_distill", out_dir=str(tmp_path / "fd")))
    assert fd["cost"]["teacher_forward"] == {"transfer": 16} and "cos" in fd["distill_last"]
    assert fd["target_cache"]["what"] == "deepest feature map"
    sc = run_distill(seg_config.replace(method="scratch", teacher_adapt="finetune", out_dir=str(tmp_path / "sc")))
    assert sc["cost"]["student_steps"] == {"finetune": 2} and sc["teacher"] is None
    model, meta = load_student(tmp_path / "sc")
    assert meta["task"] == "segmentation" and meta["classes"] == ["red", "green", "blue"]
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 40)).shape == (2, 3, 32, 40)
    ft = run_distill(seg_config.replace(teacher_adapt="finetune", out_dir=str(tmp_path / "ft")))
    assert ft["teacher_adapted"]["adapt"] == "finetune" and ft["cost"]["teacher_forward"]["adapt"] == 8


def test_onnx_export_argmax_agreement(tmp_path, tiny_models):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from transferkit.distill import export_onnx, onnx_predict, verify_onnx
    from transferkit.distill.segmodels import build_seg_model

    torch.manual_seed(0)
    model, _, _ = build_seg_model(tiny_models["student"], 5, pretrained=True, width=8)
    model.eval()
    path = export_onnx(model, tmp_path / "seg.onnx", (32, 40))
    x = torch.randn(3, 3, 32, 40)
    got = onnx_predict(path, x)
    with torch.no_grad():
        ref = model(x).numpy()
    assert got.shape == (3, 5, 32, 40)
    assert (got.argmax(1) == ref.argmax(1)).mean() == 1.0 and np.abs(got - ref).max() < 1e-4
    assert verify_onnx(path, model, x)["top1_agreement"] == 1.0  # arg-max over classes, per pixel


def test_cli_end_to_end_from_a_config(seg_config, tmp_path):
    cfg_path = tmp_path / "seg.yaml"
    seg_config.replace(export_onnx=True, out_dir=str(tmp_path / "cli")).to_yaml(cfg_path)
    proc = subprocess.run(["transferkit", "distill", "--config", str(cfg_path)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert r["task"] == "segmentation" and 0 <= r["student_miou"] <= 1
    assert "student_miou" in proc.stdout and "student_acc " not in proc.stdout  # mIoU is the headline
    assert (tmp_path / "cli" / "student.onnx").exists() and (tmp_path / "cli" / "teacher.json").exists()
    import importlib.util

    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        assert r["onnx"]["pixel_argmax_agreement"] == 1.0
    # a mask with labels out of range fails before training, in one line, with a non-zero exit
    bad = tmp_path / "bad.yaml"
    seg_config.replace(num_classes=2, class_names=None, ignore_index=3, out_dir=str(tmp_path / "bad")).to_yaml(bad)
    proc = subprocess.run(["transferkit", "distill", "--config", str(bad)], capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "label values 2 are outside [0, 2)" in proc.stderr and "Traceback" not in proc.stderr


def test_prediction_grid_png(tmp_path):
    from PIL import Image

    from transferkit.distill.segviz import CAMVID_CLASSES, colorize, save_prediction_grid

    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (36, 48, 3), dtype=np.uint8)) for _ in range(2)]
    maps = [rng.integers(0, 12, (36, 48)) for _ in range(2)]
    p = save_prediction_grid(tmp_path / "grid.png", imgs, [("ground truth", maps), ("student", maps)],
                             CAMVID_CLASSES, cell_width=96)
    out = Image.open(p)
    assert out.size[0] == 3 * 100 + 4 and out.size[1] > 2 * 72
    assert colorize(np.array([[3, 11]]), 11).getpixel((0, 0)) == (128, 64, 128)  # road
    assert colorize(np.array([[3, 11]]), 11).getpixel((1, 0)) == (0, 0, 0)  # void


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: dict, tmp: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        r = run_distill(DistillConfig.from_dict(cfg_dict))
        (Path(tmp) / f"seg_rank{rank}.json").write_text(json.dumps({"sha": r["student_sha256"]}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_whole_segmentation_run(seg_config, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = seg_config.replace(out_dir=str(tmp_path / "ddp"), cache_dir=str(tmp_path / "ddp_cache"))
    mp.spawn(_ddp_worker, args=(2, port, cfg.to_dict(), str(tmp_path)), nprocs=2, join=True)
    j0, j1 = (json.loads((tmp_path / f"seg_rank{r}.json").read_text()) for r in (0, 1))
    assert j0["sha"] == j1["sha"]  # identical students on both ranks (BatchNorm statistics included)
    res = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert res["student_sha256"] == j0["sha"] and res["cost"]["teacher_forward"]["transfer"] == 16
    assert res["cost"]["student_steps"] == {"distill": 3, "finetune": 2} and 0 <= res["student_miou"] <= 1
