"""The front door (issue 11): every command a new user types works, every bad input gets one clear line.

These tests run the *installed* console script (and ``python -m transferkit``) in a fresh interpreter, so
an import that only works because pytest imported something first (the ``importlib.util`` bug) fails
here. No network: hub tests point the hub at a closed local port or set ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SUBCOMMANDS = ["estimators", "rank", "extract", "finetune", "bench", "distill", "curate"]


def _console_script() -> str:
    here = Path(sys.executable).parent / "transferkit"
    found = str(here) if here.exists() else shutil.which("transferkit")
    if not found:
        pytest.fail("the `transferkit` console script is not installed (pip install -e .)")
    return found


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in {"HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"}}
    env.update({"HF_ENDPOINT": "http://127.0.0.1:9", "PYTHONWARNINGS": "default"}, **extra)
    return env


def tk(*args: str, cwd: Path | None = None, module: bool = False, env: dict[str, str] | None = None,
       timeout: float = 300) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "transferkit", *args] if module else [_console_script(), *args]
    return subprocess.run(cmd, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Non-zero exit, no traceback, and the reason on one `Error:` line holding every needle."""
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "Traceback" not in out, out
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, out
    for needle in needles:
        assert needle in errors[0], out
    return errors[0]


@pytest.fixture()
def zoo(tmp_path: Path) -> Path:
    """Three tiny feature files (with source probabilities) of the same 60 images, and bad variants."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)

    def probs() -> np.ndarray:
        p = np.exp(rng.normal(size=(60, 4)))
        return p / p.sum(1, keepdims=True)

    for i, name in enumerate(["good", "ok", "weak"]):
        np.savez(tmp_path / f"{name}.npz", X=rng.normal(size=(60, 6)) + (2 - i) * np.eye(6)[y], y=y, P=probs())
    X = rng.normal(size=(60, 6))
    X[[3, 7]] = np.nan
    np.savez(tmp_path / "nanrows.npz", X=X, y=y, P=probs())
    np.savez(tmp_path / "short.npz", X=rng.normal(size=(60, 6)), y=y[:50])
    np.savez(tmp_path / "inf.npz", X=np.full((60, 6), np.inf), y=y)
    p = probs()
    p[0, 0] = np.nan
    np.savez(tmp_path / "nanp.npz", X=rng.normal(size=(60, 6)), y=y, P=p)
    np.savez(tmp_path / "oneclass.npz", X=rng.normal(size=(60, 6)), y=np.zeros(60, int))
    (tmp_path / "gt.csv").write_text("model,accuracy\ngood,0.9\nok,0.7\nweak,0.5\n")
    return tmp_path


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "train" / c / f"{i}.png")
    return root


# -- 1. help everywhere ---------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [[], ["-h"], ["--help"]])
def test_top_level_help_exits_zero(args):
    res = tk(*args)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    for name in SUBCOMMANDS:
        assert name in res.stdout
    assert "Examples:" in res.stdout


def test_python_dash_m_works():
    res = tk("--help", module=True)
    assert res.returncode == 0, res.stderr
    assert "Usage: transferkit" in res.stdout
    res = tk("rank", "--help", module=True)
    assert res.returncode == 0 and "Examples:" in res.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_help_has_examples(name):
    res = tk(name, "--help")
    assert res.returncode == 0, res.stderr
    examples = res.stdout.split("Examples:", 1)
    assert len(examples) == 2, res.stdout
    assert f"transferkit {name}" in examples[1]
    assert "--quiet" in res.stdout and "--verbose" in res.stdout


def test_every_option_has_a_description():
    """In-process over the click objects: no option without help text (issue 11 listed a dozen)."""
    import click

    from transferkit.cli import SUBCOMMANDS as MODULES
    from transferkit.cli import main

    ctx = click.Context(main)
    for name in MODULES:
        cmd = main.get_command(ctx, name)
        for p in cmd.params:
            if isinstance(p, click.Option):
                assert p.help and p.help.strip(), f"transferkit {name} {p.opts[0]} has no description"


def test_distill_help_says_where_config_keys_are():
    res = tk("distill", "--help")
    assert "--print-config" in res.stdout and "docs/distill.md" in res.stdout


def test_estimators_fit_100_columns():
    env = _env()
    env.pop("COLUMNS", None)
    res = tk("estimators", env=env)
    assert res.returncode == 0, res.stderr
    widths = [len(line) for line in res.stdout.splitlines()]
    assert max(widths) <= 100, max(widths)
    assert "logme" in res.stdout and "ncti" in res.stdout


# -- 2. errors are one line and come before the work ----------------------------------------------------
def test_unwritable_output_folder_fails_before_scoring(zoo):
    if not Path("/proc/self").exists():
        pytest.skip("needs a Linux /proc (a folder that cannot be created)")
    res = tk("rank", str(zoo / "good.npz"), str(zoo / "ok.npz"), "--methods", "logme", "--out", "/proc/x")
    assert_one_line_error(res, "/proc/x", "--out")
    assert "scoring" not in res.stderr


def test_unwritable_output_folder_fails_before_extraction(images, tmp_path):
    if not Path("/proc/self").exists():
        pytest.skip("needs a Linux /proc (a folder that cannot be created)")
    cache = tmp_path / "cache"
    res = tk("extract", "-m", "resnet18", "-d", str(images), "--cache", str(cache), "--out", "/proc/x/feats")
    assert_one_line_error(res, "/proc/x/feats")
    assert not cache.exists()  # nothing was extracted


def test_read_only_output_folder(zoo, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        try:
            (ro / "probe").write_text("x")
        except OSError:
            pass
        else:
            pytest.skip("chmod 555 does not stop writes here (e.g. running as root)")
        res = tk("rank", str(zoo / "good.npz"), str(zoo / "ok.npz"), "--methods", "logme", "--out", str(ro / "out"))
        assert_one_line_error(res, str(ro / "out"))
    finally:
        ro.chmod(0o755)


def test_local_dir_without_weights(tmp_path, images):
    folder = tmp_path / "noweights"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 1000,
                                                    "pretrained_cfg": {"input_size": [3, 224, 224]}}))
    res = tk("extract", "-m", f"local-dir:{folder}", "-d", str(images), "--cache", str(tmp_path / "c"))
    assert_one_line_error(res, str(folder), "no weights file")
    res = tk("rank", "-m", f"local-dir:{folder}", "-d", str(images), "--methods", "logme",
             "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o"))
    assert_one_line_error(res, "no weights file")


def test_rank_missing_split(images, tmp_path):
    res = tk("rank", "-m", "resnet18", "-d", str(images), "--split", "validation", "--methods", "logme",
             "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o"))
    assert_one_line_error(res, "split 'validation' not found", "train")


@pytest.mark.parametrize("content,needles", [
    ("model,accuracy\ngood,90\nok,0.8\nweak,70\n", ["mix percent and fraction", "good=90", "ok=0.8"]),
    ("model,accuracy\ngood,0.9\nok,0.8\n", ["no accuracy for model(s) weak"]),
    ("name,acc1\ngood,0.9\nok,0.8\nweak,0.5\n", ["needs columns 'model' and 'accuracy'"]),
    ("model,accuracy\ngood,0.9\nok,nan\nweak,0.5\n", ["'ok'", "[0, 100]"]),
])
def test_ground_truth_is_validated_before_work(zoo, content, needles):
    gt = zoo / "bad_gt.csv"
    gt.write_text(content)
    res = tk("rank", *(str(zoo / f"{m}.npz") for m in ("good", "ok", "weak")), "--methods", "logme",
             "--gt", str(gt), "--out", str(zoo / "o"))
    assert_one_line_error(res, str(gt), *needles)
    assert not (zoo / "o" / "scores.csv").exists()


def test_ground_truth_is_checked_before_extraction_and_lists_accept_commas(images, tmp_path):
    gt = tmp_path / "gt.csv"
    gt.write_text("model,accuracy\nresnet18,0.9\n")
    # the hub is unreachable (HF_ENDPOINT): had extraction started, the error would be about the network
    res = tk("rank", "--models", "resnet18,resnet34", "-m", "mobilenetv2_100", "-d", str(images), "--gt", str(gt),
             "--methods", "logme", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o"))
    assert_one_line_error(res, "no accuracy for model(s) resnet34, mobilenetv2_100")


# -- 3. nothing scored is not a success; one bad file is named, the rest still scored --------------------
@pytest.mark.parametrize("name,needle", [
    ("oneclass", "at least 2 classes"),
    ("short", "X has 60 rows but y has 50"),
    ("inf", "non-finite values (inf)"),
])
def test_nothing_scored_exits_non_zero(zoo, name, needle):
    res = tk("rank", str(zoo / f"{name}.npz"), "--methods", "logme,sfda", "--out", str(zoo / "o"))
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "Traceback" not in out, out
    assert needle in out
    assert not (zoo / "o" / "scores.csv").exists()


def test_nan_source_probs_alone_exit_non_zero(zoo):
    res = tk("rank", str(zoo / "nanp.npz"), "--methods", "leep", "--out", str(zoo / "o"))
    assert_one_line_error(res, "nothing was scored", "source_probs contain non-finite values")


def test_one_bad_file_is_named_and_the_others_still_scored(zoo):
    out = zoo / "o"
    res = tk("rank", *(str(zoo / f"{m}.npz") for m in ("good", "nanrows", "ok", "weak")),
             "--methods", "logme,etran", "--out", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    line = [ln for ln in res.stderr.splitlines() if "left out model 'nanrows'" in ln]
    assert line and "nanrows.npz" in line[0] and "NaN" in line[0] and line[0].startswith("logme, etran")
    scores = json.loads((out / "scores.json").read_text())["methods"]
    for method in ("logme", "etran"):
        assert set(scores[method]["scores"]) == {"good", "ok", "weak"}
        assert "nanrows" in scores[method]["left_out"]


def test_score_zoo_error_names_the_model():
    from transferkit.estimators import score_zoo

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)
    bad = rng.normal(size=(30, 4))
    bad[2] = np.nan
    with pytest.raises(ValueError, match="model 'broken'"):
        score_zoo({"fine": rng.normal(size=(30, 4)), "broken": bad}, y, method="logme")
    left_out: dict[str, str] = {}
    scores = score_zoo({"fine": rng.normal(size=(30, 4)), "broken": bad}, y, method="logme",
                       on_error=lambda m, e: left_out.__setitem__(m, str(e)))
    assert set(scores) == {"fine"} and "NaN" in left_out["broken"]


# -- 4/8/9. options, warnings, next steps ---------------------------------------------------------------
def test_old_dash_m_for_methods_still_works_with_a_note(zoo):
    res = tk("rank", str(zoo / "good.npz"), str(zoo / "ok.npz"), "-m", "logme", "--out", str(zoo / "o"))
    assert res.returncode == 0, res.stderr
    assert "note:" in res.stderr and "--methods" in res.stderr
    scores = json.loads((zoo / "o" / "scores.json").read_text())["methods"]
    assert set(scores["logme"]["scores"]) == {"good", "ok"}


def test_seed_and_sample_seed_are_separate_options():
    res = tk("rank", "--help")
    assert "--sample-seed" in res.stdout and "random_state" in res.stdout
    for opt in ("--batch-size", "--workers", "--strict", "--no-progress", "--chunk-size"):
        assert opt in res.stdout


def test_estimator_warnings_are_one_line(zoo):
    # NCTI asks for more PCA dimensions than 6-D features allow: a UserWarning inside the estimator
    res = tk("rank", *(str(zoo / f"{m}.npz") for m in ("good", "ok", "weak")), "--methods", "ncti",
             "--no-progress", "--out", str(zoo / "o"))
    assert res.returncode == 0, res.stderr
    assert "UserWarning" not in res.stderr and ".py:" not in res.stderr, res.stderr
    assert any(line.startswith("ncti: ") for line in res.stderr.splitlines()), res.stderr


def test_demo_says_what_to_run_next(tmp_path):
    res = tk("rank", "--demo", "--methods", "logme", "--out", str(tmp_path / "o"))
    assert res.returncode == 0, res.stderr
    assert "next, on your own data" in res.stdout
    assert "transferkit extract" in res.stdout


# -- 5. hub names without network ----------------------------------------------------------------------
def test_hub_name_without_network_fails_fast_with_hint(images, tmp_path):
    """The hub is a closed local port: one probe, no retries, one line with the local-dir/offline hint."""
    res = tk("extract", "-m", "resnet18", "-d", str(images), "--cache", str(tmp_path / "c"),
             env=_env(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="0"), timeout=240)
    assert_one_line_error(res, "resnet18", "not reachable", "local-dir:", "HF_HUB_OFFLINE=1")
    assert "Retry" not in res.stderr


def test_hub_name_with_hf_hub_offline(images, tmp_path):
    res = tk("extract", "-m", "resnet18", "-d", str(images), "--cache", str(tmp_path / "c"),
             env=_env(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1"), timeout=240)
    assert_one_line_error(res, "HF_HUB_OFFLINE", "local-dir:")


def test_unknown_pretrained_tag_lists_the_tags(images, tmp_path):
    res = tk("extract", "-m", "mobilenetv2_100.in1k", "-d", str(images), "--cache", str(tmp_path / "c"))
    assert_one_line_error(res, "'in1k'", "mobilenetv2_100.ra_in1k", "local-dir:")


def test_hub_errors_raised_inside_timm_become_one_line():
    """A hub that answers but cannot serve the file (proxy, 404) is also one line with the hint; a model
    error (e.g. a size mismatch) is not mistaken for a network problem."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    from transferkit.hub_access import download_failure

    try:
        try:
            raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub. Check it.")
        except LocalEntryNotFoundError as inner:
            raise RuntimeError("load failed") from inner
    except RuntimeError as exc:
        err = download_failure("resnet18", exc)
    assert err is not None and "resnet18" in str(err) and "local-dir:" in str(err)
    assert download_failure("resnet18", RuntimeError("size mismatch for fc.weight")) is None


# -- 9. more bad inputs (found by a review of the front door) --------------------------------------------
def test_rank_label_shapes(zoo: Path):
    y = np.repeat(np.arange(3), 20)
    np.savez(zoo / "yscalar.npz", X=np.zeros((60, 6)), y=np.array(3))
    assert_one_line_error(tk("rank", str(zoo / "good.npz"), str(zoo / "yscalar.npz"), "-o", str(zoo / "o")),
                          "y must be 1-D")
    with np.load(zoo / "ok.npz") as d:
        np.savez(zoo / "ycol.npz", X=d["X"], y=y[:, None], P=d["P"])  # a column of the same labels: accepted
    res = tk("rank", str(zoo / "good.npz"), str(zoo / "ycol.npz"), "--methods", "logme", "-o", str(zoo / "o2"))
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("args,needle", [
    (["--seed", "-5"], "--seed"), (["--sample-seed", "-1"], "--sample-seed")])
def test_rank_seeds_are_checked_first(zoo: Path, args, needle):
    assert_one_line_error(tk("rank", str(zoo / "good.npz"), str(zoo / "ok.npz"), *args, "-o", str(zoo / "o")),
                          needle)


def test_a_result_name_taken_by_a_folder(zoo: Path):
    out = zoo / "o"
    (out / "scores.csv").mkdir(parents=True)
    assert_one_line_error(tk("rank", str(zoo / "good.npz"), str(zoo / "ok.npz"), "--methods", "logme", "-o", str(out)),
                          "scores.csv", "is a directory")


@pytest.mark.parametrize("args,needle", [
    (["--input-size", "0"], "--input-size"), (["--crop-pct", "0"], "--crop-pct"), (["--crop-pct", "5"], "--crop-pct"),
    (["--mean", "0.5,0.5"], "3 numbers"), (["--std", "0,0,0"], "std must be > 0")])
def test_extract_preprocessing_options_are_checked(images: Path, args, needle):
    assert_one_line_error(tk("extract", "-m", "resnet18", "-d", str(images), *args), needle)


def test_extract_with_no_readable_image_is_an_error(tmp_path: Path):
    import timm
    import torch

    bad = tmp_path / "bad"
    for c in ("a", "b"):
        (bad / c).mkdir(parents=True)
        (bad / c / "0.png").write_bytes(b"not a png")
    torch.save(timm.create_model("test_resnet", num_classes=3).state_dict(), tmp_path / "w.pth")
    res = tk("extract", "-m", f"test_resnet@{tmp_path / 'w.pth'}", "-d", str(bad), "--input-size", "32",
             "--cache", str(tmp_path / "cache"), "-o", str(tmp_path / "o"), "--no-progress")
    assert_one_line_error(res, "none of its 2 image(s) could be read")
    assert not list((tmp_path / "o").glob("*.npz"))
    res = tk("extract", "-m", f"test_resnet@{tmp_path / 'w.pth'}", "-d", str(bad), "--input-size", "32",
             "--cache", str(tmp_path / "cache2"), "--no-progress", "--strict")
    line = assert_one_line_error(res, "0.png", "--strict stops on unreadable images")
    assert "BytesIO" not in line and "skipped" not in line


def test_bench_spec_problems(tmp_path: Path):
    (tmp_path / "folder").mkdir()
    assert_one_line_error(tk("bench", str(tmp_path / "folder")), "not a folder")
    (tmp_path / "m.yaml").write_text("zoo: [resnet18]\ndatasets: {d: imgs}\nmethods: 5\n")
    assert_one_line_error(tk("bench", str(tmp_path / "m.yaml")), "'methods' must be")


def test_ground_truth_csv_with_a_byte_order_mark(zoo: Path):
    (zoo / "bom.csv").write_text("\ufeffmodel,accuracy\ngood,0.9\nok,0.7\nweak,0.5\n", encoding="utf-8")
    res = tk("rank", *(str(zoo / f"{n}.npz") for n in ("good", "ok", "weak")), "--methods", "logme",
             "--gt", str(zoo / "bom.csv"), "-o", str(zoo / "o"))
    assert res.returncode == 0, res.stderr
