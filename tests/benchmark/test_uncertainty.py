"""The test-image bootstrap, its vectorized metrics, the analysis tables and the from-records replot."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from transferkit import metrics as scalar
from transferkit.benchmark.analysis import analyse, tie_summary
from transferkit.benchmark.batch_metrics import BATCH_METRICS, batch_metric
from transferkit.benchmark.runner import BenchmarkResult, DatasetResult, MethodOutcome
from transferkit.benchmark.uncertainty import (PairRecords, bootstrap_ground_truth, mean_interval, metric_interval,
                                               metric_intervals, metric_samples, paired_share, random_score_samples)
from transferkit.finetune import records_path


def _records(correct: np.ndarray, n_classes: int = 4, grid: int = 2, epochs: int = 3, seed: int = 0) -> PairRecords:
    """Records whose best (grid point, epoch) gets exactly ``correct`` right; the others get a subset."""
    rng = np.random.default_rng(seed)
    n = correct.shape[0]
    labels = (np.arange(n) % n_classes).astype(np.int16)
    wrong = ((labels + 1) % n_classes).astype(np.int16)
    preds = np.empty((grid, epochs, n), dtype=np.int16)
    for g in range(grid):
        for e in range(epochs):
            ok = correct & (rng.random(n) < 0.8) if (g, e) != (grid - 1, epochs - 1) else correct
            preds[g, e] = np.where(ok, labels, wrong)
    return PairRecords(preds, labels, "fp")


def _nested(n: int = 1000, cuts=(100, 300, 500, 700, 900)) -> dict[str, PairRecords]:
    """Model k gets the first cuts[k] images right: on every resample the accuracy order is the same."""
    idx = np.arange(n)
    return {f"m{k}": _records(idx < c, seed=k) for k, c in enumerate(cuts)}


def test_batch_metrics_equal_the_scalar_metrics_ties_included():
    rng = np.random.default_rng(0)
    for trial in range(60):
        m = int(rng.integers(2, 11))
        S = rng.integers(0, 4, size=(4, m)).astype(float) if trial % 2 else rng.normal(size=(4, m))
        A = rng.integers(0, 5, size=(4, m)).astype(float)
        for name in BATCH_METRICS:
            fn = (lambda s, a: scalar.regret(s, a, relative=True)) if name == "relative_regret" else getattr(scalar, name)
            got = batch_metric(S, A, name)
            for b in range(4):
                try:
                    ref = fn(S[b], A[b])
                except ValueError:
                    ref = np.nan
                assert np.allclose(got[b], ref, equal_nan=True, atol=1e-12), (name, S[b], A[b])
    with pytest.raises(ValueError, match="unknown metric"):
        batch_metric([1, 2], [1, 2], "nope")


def test_point_is_the_ground_truth_and_bootstrap_is_seeded():
    recs = _nested()
    boot = bootstrap_ground_truth({"d": recs}, n_boot=200, seed=3)["d"]
    assert boot.samples.shape == (200, 5) and boot.n_test == 1000
    np.testing.assert_allclose(boot.point, [10, 30, 50, 70, 90])
    np.testing.assert_allclose(boot.point, [r.accuracy for r in recs.values()])
    again = bootstrap_ground_truth({"d": recs}, n_boot=200, seed=3)["d"]
    np.testing.assert_array_equal(boot.samples, again.samples)
    other = bootstrap_ground_truth({"d": recs}, n_boot=200, seed=4)["d"]
    assert not np.array_equal(boot.samples, other.samples)
    # resampling: accuracies vary, around the point (the best-of-grid selection sits inside the bootstrap)
    assert 0.5 < boot.samples[:, 2].std() < 3 and abs(boot.samples[:, 2].mean() - 50) < 1


def test_identical_rankings_give_a_degenerate_interval():
    boot = bootstrap_ground_truth({"d": _nested()}, n_boot=300, seed=0)["d"]
    truth = dict(zip(boot.models, boot.point))
    iv = metric_interval(truth, boot, "weighted_tau_scipy")
    assert (iv.point, iv.low, iv.high) == (1.0, 1.0, 1.0)
    iv = metric_interval(truth, boot, "regret")
    assert (iv.point, iv.low, iv.high) == (0.0, 0.0, 0.0)
    # a method that ranks the zoo upside down: degenerate at -1 with the largest regret
    iv = metric_interval({m: -a for m, a in truth.items()}, boot, "weighted_tau_scipy")
    assert (iv.point, iv.low, iv.high) == (-1.0, -1.0, -1.0)


def test_close_models_give_a_wide_interval():
    rng = np.random.default_rng(5)
    recs = {f"m{k}": _records(rng.random(400) < 0.70 + 0.01 * k, seed=k) for k in range(5)}
    boot = bootstrap_ground_truth({"d": recs}, n_boot=300, seed=0)["d"]
    iv = metric_interval(dict(zip(boot.models, boot.point)), boot, "weighted_tau_scipy")
    assert iv.point == pytest.approx(1.0) and iv.low < 0.5


def test_random_scores_interval_contains_zero():
    boot = bootstrap_ground_truth({"d": _nested()}, n_boot=1000, seed=0)["d"]
    point, samples = random_score_samples(boot, "weighted_tau_scipy", seed=0)
    assert abs(point) < 0.1 and samples.shape == (1000,)
    assert np.percentile(samples, 2.5) < 0 < np.percentile(samples, 97.5)
    point, samples = random_score_samples(boot, "regret", seed=0)
    assert point == pytest.approx(np.mean(90 - boot.point), abs=3)


def test_paired_share_and_mean_interval():
    boot = bootstrap_ground_truth({"a": _nested(), "b": _nested(cuts=(200, 400, 450, 800, 850))}, 400, 1)
    good = {d: metric_samples(dict(zip(b.models, b.point)), b, "weighted_tau_scipy") for d, b in boot.items()}
    bad = {d: metric_samples(dict(zip(b.models, -b.point)), b, "weighted_tau_scipy") for d, b in boot.items()}
    m_good = np.mean(np.stack(list(good.values())), axis=0)
    m_bad = np.mean(np.stack(list(bad.values())), axis=0)
    assert paired_share(m_good, m_good) == 0.5  # a method against itself: all ties
    assert paired_share(m_good, m_bad) == 1.0 and paired_share(m_bad, m_good) == 0.0
    iv = mean_interval(good, {"a": 1.0, "b": 1.0})
    assert (iv.point, iv.low, iv.high) == (1.0, 1.0, 1.0)
    ivs = metric_intervals({d: dict(zip(b.models, b.point)) for d, b in boot.items()}, boot, "regret")
    assert set(ivs) == {"a", "b", "mean"} and all((v.point, v.low, v.high) == (0, 0, 0) for v in ivs.values())
    with pytest.raises(ValueError, match="no bootstrap ground truth"):
        metric_intervals({"zzz": {"m0": 1.0, "m1": 2.0}}, boot, "regret")
    assert np.isnan(paired_share(np.array([np.nan]), np.array([1.0])))


def test_bootstrap_rejects_different_test_sets_and_bad_input():
    a = _records(np.ones(10, bool))
    b = PairRecords(a.predictions, (a.labels + 1) % 4, "fp")
    with pytest.raises(ValueError, match="same images"):
        bootstrap_ground_truth({"d": {"a": a, "b": b}})
    with pytest.raises(ValueError, match="at least 2 models"):
        bootstrap_ground_truth({"d": {"a": a}})
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ground_truth({"d": {"a": a, "b": a}}, n_boot=0)


def test_tie_summary():
    assert tie_summary({"a": 1.0, "b": 1.0, "c": 0.5}) == (2, 2)
    assert tie_summary({"a": 1.0, "b": 0.5, "c": 0.5}) == (2, 1)
    assert tie_summary({"a": 1.0, "b": 0.5}) == (0, 1)


# ------------------------------------------------------------------------------------------------------------
# a synthetic benchmark on disk: ground-truth CSV + records + results.json, no model anywhere
# ------------------------------------------------------------------------------------------------------------
def _write_synthetic(root: Path) -> Path:
    from transferkit.metrics import rank_metrics

    cuts = {"d1": (100, 300, 500, 700, 900), "d2": (150, 250, 600, 650, 950)}
    models = [f"m{k}" for k in range(5)]
    rows = ["model,dataset,accuracy"]
    datasets = []
    for ds, cs in cuts.items():
        recs = _nested(cuts=cs)
        acc = {}
        for m, r in zip(models, recs.values()):
            p = records_path(root / "gt.csv", m, ds)
            p.parent.mkdir(parents=True, exist_ok=True)
            np.savez(p, predictions=r.predictions, labels=r.labels, test_fingerprint=np.array("fp"))
            acc[m] = r.accuracy
            rows.append(f"{m},{ds},{r.accuracy}")
        outs = []
        for name, sc in (("oracle", dict(acc)), ("reverse", {m: -a for m, a in acc.items()}),
                         ("tied", {m: min(a, 60.0) for m, a in acc.items()}),
                         ("random", {m: float(i) for i, m in enumerate(models)})):
            o = MethodOutcome(name, sc, 0.01)
            from transferkit.benchmark.baselines import outcome_metrics

            o.metrics = outcome_metrics(name, sc, acc) if name == "random" else rank_metrics(sc, acc)
            outs.append(o)
        seed_scores = {"tied": {"0": outs[2].scores, "1": dict(acc)}}
        datasets.append(DatasetResult(ds, acc, outs, {}, 1000, seed_scores=seed_scores))
    (root / "gt.csv").write_text("\n".join(rows) + "\n")
    res = BenchmarkResult("synthetic", "weighted_tau_scipy", "gt.csv", ["oracle", "reverse", "tied", "random"],
                          datasets, {"seed": 0})
    res.save(root / "report")
    zoo = "\n".join(f"  - {{name: {m}, model: cifar_resnet20, pretrained: false}}" for m in models)
    (root / "spec.yaml").write_text(f"name: synthetic\nzoo:\n{zoo}\ndatasets:\n  d1: {{data: nowhere}}\n"
                                    "  d2: {data: nowhere}\nground_truth: gt.csv\nmethods: [logme]\n"
                                    "report: report\n")
    return root / "spec.yaml"


def test_analysis_tables(tmp_path: Path):
    _write_synthetic(tmp_path)
    res = BenchmarkResult.load(tmp_path / "report")
    an = analyse(res, tmp_path / "gt.csv", n_boot=200, log=lambda s: None)
    tau = an.mean["weighted_tau_scipy"]
    assert (tau["oracle"].point, tau["oracle"].low, tau["oracle"].high) == (1.0, 1.0, 1.0)
    assert tau["reverse"].high == -1.0 and tau["random"].low < 0 < tau["random"].high
    assert an.mean["regret"]["oracle"].high == 0.0
    assert an.paired["weighted_tau_scipy"]["oracle"]["reverse"] == 1.0
    assert an.paired["regret"]["oracle"]["reverse"] == 1.0  # lower regret counts as better
    assert an.paired["weighted_tau_scipy"]["tied"]["tied"] == 0.5
    assert an.lomo["oracle"] == pytest.approx({"d1": 1.0, "d2": 1.0}) and an.lomo_worst["oracle"] == pytest.approx(1)
    assert an.seed_spread["tied"]["1"] == 1.0 and an.seed_spread["tied"]["0"] < 1.0
    gt = an.ground_truth["d1"]["m2"]
    assert gt.point == 50.0 and gt.low < 50 < gt.high
    assert {r["dataset"] for r in an.rows()} == {"d1", "d2", "mean"}


def test_records_out_of_step_with_the_csv_is_an_error(tmp_path: Path):
    _write_synthetic(tmp_path)
    res = BenchmarkResult.load(tmp_path / "report")
    res.datasets[0].accuracies["m0"] = 12.0
    with pytest.raises(ValueError, match="out of step"):
        analyse(res, tmp_path / "gt.csv", n_boot=10, log=lambda s: None)


def test_from_records_replot_needs_no_model(tmp_path: Path):
    spec = _write_synthetic(tmp_path)
    r = subprocess.run(["transferkit", "bench", str(spec), "--from-records", "--n-boot", "200", "--no-plots"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Headline" in md and "1.00 [1.00, 1.00]" in md and "## Paired comparison" in md
    assert "## Stability: leave one model out" in md and "## Ties" in md and "5 tied" not in md
    assert "2 tied, 2 at the top" in md  # 'tied' caps two models at 60 on d1... and shows it
    rows = (tmp_path / "report" / "intervals.csv").read_text().splitlines()
    assert rows[0].startswith("method,dataset,metric,point,low,high")
    # the metrics follow the CSV: change a ground-truth value and the replot refuses the stale records
    gt = (tmp_path / "gt.csv").read_text().replace("m0,d1,10.0", "m0,d1,11.0")
    (tmp_path / "gt.csv").write_text(gt)
    r = subprocess.run(["transferkit", "bench", str(spec), "--replot", "--no-plots"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0 and "out of step" in r.stderr


def test_replot_without_records_reports_points_only(tmp_path: Path):
    spec = _write_synthetic(tmp_path)
    for p in (tmp_path / "gt_predictions").glob("m1__d2.npz"):
        p.unlink()
    r = subprocess.run(["transferkit", "bench", str(spec), "--replot", "--no-plots"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "report" / "report.md").read_text()
    assert "**No intervals** for d2" in md
    doc = json.loads((tmp_path / "report" / "results.json").read_text())
    assert [d["dataset"] for d in doc["datasets"]] == ["d1", "d2"]
