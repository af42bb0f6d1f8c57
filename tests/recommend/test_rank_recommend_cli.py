"""`transferkit rank` through the installed console script: recommendation first, provenance, the picture."""

from __future__ import annotations

import csv
import json
import subprocess

import numpy as np
import pytest


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["transferkit", "rank", *args], capture_output=True, text=True, timeout=600)


def test_rank_demo_starts_with_the_recommendation(tmp_path):
    res = _run("--demo", "--methods", "logme,leep", "--no-progress", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert lines[0].startswith("Recommended model: ") or lines[0].startswith("No single recommended model")
    assert "consensus ranking" in res.stdout and "ranks by method" in res.stdout
    assert (tmp_path / "rank.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    payload = json.loads((tmp_path / "scores.json").read_text())
    assert payload["recommendation"]["model"] == lines[0].split(": ")[1].strip()
    prov = payload["provenance"]
    assert {"data", "estimator_seeds", "methods", "models", "versions", "consensus"} <= set(prov)
    assert {"source", "fingerprint", "split", "per_class", "sample_seed", "labels_sha256"} <= set(prov["data"])
    assert "numpy" in prov["versions"] and prov["estimator_seeds"]["logme"] == [0]


def test_the_consensus_is_one_row_whatever_the_method_list(tmp_path):
    """The consensus estimator is not run as a method by rank (the recommendation computes it): one row."""
    res = _run("--demo", "--methods", "consensus,logme", "--no-progress", "--no-plot", "--out", str(tmp_path / "a"))
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(open(tmp_path / "a" / "metrics.csv")))
    assert [r["method"] for r in rows].count("consensus") == 1 and "logme" in [r["method"] for r in rows]
    res = _run("--demo", "--methods", "consensus", "--no-progress", "--no-plot", "--out", str(tmp_path / "b"))
    assert res.returncode == 0, res.stderr  # asking for the consensus alone runs its ingredients
    assert [r["method"] for r in csv.DictReader(open(tmp_path / "b" / "metrics.csv"))].count("consensus") == 1


def test_rank_feature_files_with_seeds_ties_and_verbose(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    P0 = np.full((60, 4), 0.25)
    paths = []
    for name, sep in [("good", 3.0), ("ok", 1.2), ("bad", 0.2)]:
        X = rng.normal(size=(60, 6)) + sep * np.eye(6)[y]
        p = tmp_path / f"{name}.npz"
        np.savez(p, X=X, y=y, P=P0)  # identical P: LEEP and NCE saturate
        paths.append(str(p))
    out = tmp_path / "out"
    res = _run(*paths, "--methods", "logme,nce,nleep", "--seeds", "0,1", "--no-plot", "--verbose", "--no-progress",
               "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert res.stdout.lstrip().startswith("Recommended model: good")
    assert "nce: uninformative here - all 3 scores equal (saturated)" in res.stdout
    assert "left out of the consensus: leep - all 3 scores equal (saturated)" in res.stdout
    assert "seeds [0, 1]" in res.stdout  # --verbose: per-method detail with the seeds
    assert not (out / "rank.png").exists()
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert rows[0]["method"] == "consensus" and rows[0]["recommended"] == "True"
    assert {r["rank"] for r in rows if r["method"] == "nce"} == {"=1"}
    payload = json.loads((out / "scores.json").read_text())
    assert payload["methods"]["nleep"]["seeds"] == [0, 1] and payload["methods"]["logme"]["seeds"] == [0]
    assert payload["provenance"]["models"]["good"]["file_sha256"]


@pytest.mark.slow  # extracts two models (about a minute on two loaded cores)
def test_rank_models_and_data_start_with_the_recommendation_and_record_weight_hashes(tmp_path):
    """The extraction route, on two small shared models and a few images per class."""
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    from shared_data import shared_path

    w1 = shared_path("weights", "mobilenetv1_025.in1k")
    w2 = shared_path("weights", "mobilenetv1_050.in1k")
    data = shared_path("data", "flower_photos", "flower_photos.zip")
    res = _run("--models", f"local-dir:{w1},local-dir:{w2}", "--data", str(data), "--split", "train",
               "--per-class", "6", "--methods", "leep,etran", "--no-progress", "--no-plot",
               "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    first = next(ln for ln in res.stdout.splitlines() if ln.strip())
    assert first.startswith(("Recommended model: ", "No single recommended model"))
    prov = json.loads((tmp_path / "out" / "scores.json").read_text())["provenance"]
    assert prov["data"]["fingerprint"] and prov["data"]["per_class"] == 6 and prov["data"]["split"] == "train"
    assert all(len(m["weights_sha256"]) == 64 for m in prov["models"].values())
