"""What `distill` does with wrong or unlucky inputs (found by a review): a ValueError naming the field or the
file, before the work; never a traceback, never exit 0 without doing what was asked."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from transferkit.distill import DistillConfig, run_distill
from transferkit.models import load_checkpoint_state
from distill_fixtures import *  # noqa: F401,F403 - fixtures


@pytest.mark.parametrize("assignment,field", [
    ("distill.steps=abc", "distill.steps"), ("distill.steps=2.5", "distill.steps"), ("views=abc", "views"),
    ("temperature=hot", "temperature"), ("per_class=2.5", "per_class"), ("resume=maybe", "resume"),
    ("export_onnx=maybe", "export_onnx"), ("aug_scale=0.5", "aug_scale"), ("distill=5", "distill"),
    ("probe_l2=[a]", "probe_l2"), ("teacher_input_size=big", "teacher_input_size")])
def test_wrong_value_types_name_the_field(assignment, field):
    with pytest.raises(ValueError, match=rf"^{field.replace('.', '[.]')} must be"):
        DistillConfig(student="s", data="d").override([assignment])


def test_seeds_must_be_non_negative():
    with pytest.raises(ValueError, match="seed must be >= 0"):
        DistillConfig(student="s", data="d", method="pretrained", seed=-1).validate()


def test_unreadable_checkpoints_are_named(tmp_path):
    for name, data in (("empty.pth", b""), ("text.pth", b"hello, I am not a checkpoint"),
                       ("bad.safetensors", b"xx")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=rf"{name}: not a readable checkpoint"):
            load_checkpoint_state(tmp_path / name)


def test_identical_unreadable_transfer_files_are_skipped_not_fatal(tiny_config, tiny_data, tmp_path):
    transfer = tmp_path / "transfer"
    shutil.copytree(tiny_data / "train", transfer)
    for c in ("c0", "c1", "c2"):
        (transfer / c / "empty.png").write_bytes(b"")  # three byte-identical unreadable files: one cache key
    with pytest.warns(Warning, match="unreadable"):
        r = run_distill(tiny_config.replace(transfer=str(transfer), out_dir=str(tmp_path / "r")))
    assert r["student_steps"] if "student_steps" in r else r["cost"]["student_steps"]["distill"] == 4


def test_a_failed_start_does_not_lock_the_run_folder(tiny_config, tmp_path):
    out = tmp_path / "locked"
    with pytest.raises((ValueError, FileNotFoundError)):
        run_distill(tiny_config.replace(teacher="test_resnet@" + str(tmp_path / "missing.pth"), out_dir=str(out)))
    assert (out / "config.yaml").exists()
    r = run_distill(tiny_config.replace(method="pretrained", out_dir=str(out)))  # fixed input: not refused
    assert "student_accuracy" in r


def test_export_onnx_asked_of_a_finished_run_exports_it(tiny_config, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    cfg = tiny_config.replace(method="pretrained", out_dir=str(tmp_path / "e"))
    first = run_distill(cfg)
    assert "onnx" not in first
    again = run_distill(cfg.replace(export_onnx=True))
    assert again["onnx"]["top1_agreement"] == 1.0 and (tmp_path / "e" / "student.onnx").is_file()
    assert json.loads((tmp_path / "e" / "results.json").read_text())["onnx"] == again["onnx"]


def test_cli_one_line_errors(tiny_config, tmp_path):
    cfg_path = tmp_path / "c.yaml"
    tiny_config.to_yaml(cfg_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    cases = [(["--set", "distill.steps=abc"], "distill.steps must be an integer"),
             (["--set", f"cache_dir={tmp_path / 'afile'}"], "cache_dir"),
             (["--teacher", f"test_resnet@{tmp_path / 'text.pth'}"], "not a readable checkpoint"),
             (["--set", "test_split=val"], "val")]
    for extra, msg in cases:
        r = subprocess.run(["transferkit", "distill", "-c", str(cfg_path), "-o", str(tmp_path / "o"), *extra],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode != 0 and msg in r.stderr, (extra, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.count("Error") == 1, (extra, r.stderr)
        assert '"' not in r.stderr.splitlines()[-1][:9], r.stderr  # no quotes from str(KeyError)


def test_unreadable_labeled_images_stop_the_run_before_the_teacher(tiny_config, tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    for i in range(12):  # every train image of c0 (per_class=4 would otherwise avoid a single bad one)
        (data / "train" / "c0" / f"{i}.png").write_bytes(b"junk")
    out = tmp_path / "bad"
    with pytest.raises(ValueError, match="unreadable labeled image"):
        run_distill(tiny_config.replace(data=str(data), out_dir=str(out)))
    assert not (out / "teacher").exists()
