"""The benchmark runner, report and figures, end to end on the toy benchmark, and the bench CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from _bench_toy import build_toy, toy_spec  # noqa: F401  (fixture)
from click.testing import CliRunner

from transferkit.benchmark.report import headline_markdown, write_report
from transferkit.benchmark.runner import BenchmarkResult, feature_entries, run_benchmark
from transferkit.benchmark.spec import load_spec
from transferkit.metrics import rank_metrics

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def toy_result(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    spec = load_spec(build_toy(tmp_path_factory.mktemp("toy"))).select(None, ["toy"])
    logs: list[str] = []
    return spec, run_benchmark(spec, progress=False, log=logs.append), logs


def test_runner_scores_metrics_and_timings(toy_result: tuple) -> None:
    spec, res, logs = toy_result
    (d,) = res.datasets
    assert d.dataset == "toy" and d.n_images == 24 and d.accuracies == {"r20": 70.0, "eff": 80.0, "res": 60.0}
    assert [o.method for o in d.methods] == ["logme", "sfda", "random", "params"]  # + baselines
    assert res.methods == ["logme", "sfda", "random", "params"]
    for o in d.methods[:2]:
        assert o.error is None and set(o.scores) == {"r20", "eff", "res"} and o.seconds >= 0
        assert o.metrics == pytest.approx(rank_metrics(o.scores, d.accuracies), nan_ok=True)
    assert res.table()["logme"]["toy"] == d.methods[0].metrics["weighted_tau_scipy"]
    assert res.average("seconds")["sfda"] == pytest.approx(d.methods[1].seconds)
    assert any("logme" in line and "weighted_tau_scipy=" in line for line in logs)


def test_feature_entries_apply_the_resolution_budget(toy_spec: Path) -> None:  # noqa: F811
    spec = load_spec(toy_spec)
    entries = feature_entries(spec, spec.datasets[0], spec.zoo)
    assert all(e.options["input_size"] == 24 and e.options["crop_pct"] == 1.0 for e in entries)


def test_report_files_and_round_trip(toy_result: tuple, tmp_path: Path) -> None:
    spec, res, _ = toy_result
    paths = write_report(res, tmp_path / "rep", "A toy benchmark.")
    names = sorted(p.name for p in (tmp_path / "rep").iterdir())
    assert names == ["heatmap.png", "metrics.csv", "report.md", "results.json", "score_vs_accuracy_toy.png",
                     "scores.csv", "time_vs_metric.png"]
    assert all(Path(f).read_bytes()[:8] == PNG for f in paths["figures"])
    md = Path(paths["report"]).read_text()
    assert "A toy benchmark." in md and "| logme |" in md and "![heatmap](heatmap.png)" in md
    back = BenchmarkResult.load(tmp_path / "rep")
    assert json.dumps(back.table()) == json.dumps(res.table())
    assert back.datasets[0].accuracies == res.datasets[0].accuracies
    head = headline_markdown(res)
    assert head.splitlines()[0] == "| method | toy | mean | time / dataset (s) |" and head.count("\n") == 5  # 2 methods + 2 baselines


def test_failed_method_is_reported_not_fatal(toy_spec: Path) -> None:  # noqa: F811
    spec = load_spec(toy_spec).select(["r20", "eff"], ["toy"])
    spec.methods = ["logme", "leep"] if "leep" in spec.method_list() + ["leep"] else ["logme"]
    from transferkit.estimators import list_estimators

    if "leep" not in list_estimators():
        pytest.skip("leep is not registered")
    res = run_benchmark(spec, progress=False, log=lambda s: None)
    by = {o.method: o for o in res.datasets[0].methods}
    assert by["logme"].error is None
    if by["leep"].error is not None:  # random-weight CIFAR ResNets have a 10-way head: LEEP may run
        assert math.isnan(res.average()["leep"])


def test_missing_ground_truth_dataset_is_an_error(toy_spec: Path) -> None:  # noqa: F811
    (toy_spec.parent / "gt.csv").write_text("model,dataset,accuracy\nr20,other,10\neff,other,20\n")
    with pytest.raises(ValueError, match="no dataset 'toy'"):
        run_benchmark(load_spec(toy_spec), progress=False, log=lambda s: None)


def test_bench_cli_and_replot(toy_spec: Path) -> None:  # noqa: F811
    from transferkit.cli import main

    out = toy_spec.parent / "rep"
    r = CliRunner().invoke(main, ["bench", str(toy_spec), "--datasets", "toy", "--methods", "logme",
                                  "--out", str(out), "--quiet", "--no-plots"])
    assert r.exit_code == 0, r.output
    assert "| logme |" in r.output and (out / "report.md").exists() and not (out / "heatmap.png").exists()
    r = CliRunner().invoke(main, ["bench", str(toy_spec), "--out", str(out), "--replot"])
    assert r.exit_code == 0, r.output
    assert (out / "heatmap.png").read_bytes()[:8] == PNG
    r = CliRunner().invoke(main, ["bench", "itm10"])
    assert r.exit_code != 0 and "--data-root" in r.output
    r = CliRunner().invoke(main, ["bench", str(toy_spec.parent / "nope.yaml")])
    assert r.exit_code != 0 and "not found" in r.output
