"""`transferkit rank` through the installed console script: recommendation first, provenance, the picture."""

from __future__ import annotations

import csv
import json
import subprocess

import numpy as np


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
