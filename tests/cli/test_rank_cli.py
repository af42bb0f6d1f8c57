"""End-to-end tests of `transferkit rank` and `transferkit estimators` through click."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from transferkit.cli import main


@pytest.fixture()
def zoo_files(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 30)
    paths = {}
    for name, sep in [("good", 3.0), ("ok", 1.0), ("bad", 0.0)]:
        X = rng.normal(size=(120, 16)) + sep * np.eye(16)[y]
        P = np.exp(rng.normal(size=(120, 6)) + sep * np.eye(6)[y])
        P /= P.sum(1, keepdims=True)
        p = tmp_path / f"{name}.npz"
        np.savez(p, X=X.astype(np.float32), y=y, P=P)
        paths[name] = p
    gt = tmp_path / "gt.csv"
    gt.write_text("model,accuracy\ngood,0.9\nok,0.7\nbad,0.3\n")
    return paths, gt


def test_estimators_lists_all():
    res = CliRunner().invoke(main, ["estimators"])
    assert res.exit_code == 0, res.output
    for name in ("logme", "leep", "itm", "etran", "ncti"):
        assert name in res.output


def test_rank_writes_table_files_and_metrics(zoo_files, tmp_path):
    paths, gt = zoo_files
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["rank", *map(str, paths.values()), "--methods", "logme,leep,etran",
                                    "--gt", str(gt), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "logme" in res.output and "weighted" in res.output.lower() or "tau" in res.output.lower()
    rows = list(csv.DictReader((out / "scores.csv").open()))
    logme = [r for r in rows if r["method"] == "logme"]
    assert [r["model"] for r in logme] == ["good", "ok", "bad"]
    metrics = list(csv.DictReader((out / "metrics.csv").open()))
    # the consensus ingredients (leep, parc, etran) join the asked methods; the consensus has its own row
    assert {m["method"] for m in metrics} == {"consensus", "logme", "leep", "etran", "parc"}
    payload = json.loads((out / "scores.json").read_text())
    assert set(payload["methods"]["etran"]["scores"]) == {"good", "ok", "bad"}


def test_rank_skips_leep_without_probs(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    for name in ("a", "b"):
        np.savez(tmp_path / f"{name}.npz", X=rng.normal(size=(60, 5)), y=y)
    res = CliRunner().invoke(main, ["rank", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"),
                                    "--methods", "leep,logme", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "leep: skipped" in res.output


@pytest.mark.parametrize("problem,needle", [
    ("missing", "not found"),
    ("badkey", "missing key"),
    ("labels", "different labels"),
])
def test_rank_bad_files_give_clear_errors(tmp_path, problem, needle):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    a = tmp_path / "a.npz"
    np.savez(a, X=rng.normal(size=(60, 5)), y=y)
    b = tmp_path / "b.npz"
    if problem == "badkey":
        np.savez(b, feats=rng.normal(size=(60, 5)), y=y)
    elif problem == "labels":
        np.savez(b, X=rng.normal(size=(60, 5)), y=y[::-1])
    res = CliRunner().invoke(main, ["rank", str(a), str(b), "--methods", "logme", "--out", str(tmp_path / "o")])
    assert res.exit_code != 0
    assert needle in res.output
    assert "Traceback" not in res.output


def test_rank_unknown_method(zoo_files):
    paths, _ = zoo_files
    res = CliRunner().invoke(main, ["rank", str(paths["good"]), "--methods", "nonsense"])
    assert res.exit_code != 0 and "unknown method" in res.output


def test_rank_demo_runs_offline(tmp_path):
    res = CliRunner().invoke(main, ["rank", "--demo", "--methods", "logme,leep,sfda", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "metrics.csv").exists()


def test_bad_source_probs_fail_only_the_methods_that_read_them(zoo_files, tmp_path):
    paths, _ = zoo_files
    d = dict(np.load(paths["ok"]))
    d["P"] = d["P"] * 3.0  # rows no longer sum to 1
    np.savez(paths["ok"], **d)
    res = CliRunner().invoke(main, ["rank", *map(str, paths.values()), "--methods", "logme,leep", "--verbose",
                                    "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    # the bad file is named, and LEEP still scores the two good models
    assert "leep: left out model 'ok'" in res.output and "sum to 1" in res.output
    assert "leep  (" in res.output and "logme  (" in res.output
    payload = json.loads((tmp_path / "o" / "scores.json").read_text())
    assert set(payload["methods"]["leep"]["scores"]) == {"good", "bad"}
    assert set(payload["methods"]["logme"]["scores"]) == {"good", "ok", "bad"}


def test_ground_truth_with_several_datasets_needs_a_choice(zoo_files, tmp_path):
    paths, _ = zoo_files
    gt = tmp_path / "gt2.csv"
    gt.write_text("model,dataset,accuracy\ngood,a,0.9\nok,a,0.7\nbad,a,0.3\ngood,b,0.1\nok,b,0.5\nbad,b,0.9\n")
    args = ["rank", *map(str, paths.values()), "--methods", "logme", "--gt", str(gt), "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code != 0 and "several datasets" in res.output
    res = CliRunner().invoke(main, [*args, "--gt-dataset", "b"])
    assert res.exit_code == 0, res.output
    metrics = list(csv.DictReader((tmp_path / "o" / "metrics.csv").open()))
    assert float(metrics[0]["top1_relative_accuracy"]) < 1.0  # dataset b reverses the order


def test_corrupt_npz_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip at all")
    res = CliRunner().invoke(main, ["rank", str(bad), "--methods", "logme"])
    assert res.exit_code != 0 and "not a readable .npz" in res.output
    assert "Traceback" not in res.output
