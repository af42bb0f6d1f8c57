"""What does `rank --img-size` (a resolution cap) cost in ranking quality? (issue 16)

    nice python benchmarks/img_size_cap.py [--caps 48,32] [--n-boot 1000]

On every offline task whose ground truth is complete (benchmarks/offline/spec.yaml, fine-tuned at 64 px), the
zoo's features are extracted as the bench does at the spec's 64 px and again at each cap (each model at
min(cap, its native size), same images), the default recommendation is run on each, and the consensus and the
default methods are scored against the fine-tuned accuracies: tau_w (scipy weighted tau) and top-1 regret,
and the paired change (cap - 64 px) per task and on the mean over tasks, with 95 % intervals from the
bootstrap over test images (the ground-truth noise; the features are fixed). The caps are fixed a priori:
nothing is chosen from this benchmark. Results: benchmarks/results/img_size_cap/results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offline_tasks import complete_tasks, offline_spec, task_bootstrap, task_zoo  # noqa: E402

from transferkit.benchmark.uncertainty import _percentiles, metric_samples  # noqa: E402
from transferkit.metrics import rank_metrics  # noqa: E402
from transferkit.ranking import DEFAULT_METHODS  # noqa: E402
from transferkit.recommendation import recommend  # noqa: E402
from transferkit.reporting import atomic_write_text  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "img_size_cap"
METRICS = ("weighted_tau_scipy", "regret")


def scores_at(spec, task: str, size: int) -> dict[str, dict[str, float]]:
    """{'consensus' | method: {model: score}} of the default recommendation at ``size`` px."""
    rec = recommend(task_zoo(spec, task, img_size=size), methods=list(DEFAULT_METHODS))
    out = {"consensus": {r.model: float(r.consensus) for r in rec.ranking}}
    for m, s in rec.methods.items():
        if s.error is None and s.scores:
            out[m] = dict(s.scores)
    return out


def interval(samples: np.ndarray) -> list[float]:
    lo, hi = _percentiles(samples, 0.95)
    return [float(lo), float(hi)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--caps", default="48,32", help="comma-separated caps in px (the baseline is the spec's)")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args(argv)
    spec = offline_spec()
    base = int(spec.features.img_size or spec.finetune["img_size"])
    caps = [int(c) for c in args.caps.split(",")]
    tasks = list(complete_tasks(spec))
    if not tasks:
        print("no offline task has a complete ground truth yet (bash benchmarks/run_offline_groundtruth.sh)")
        return 1
    boot = task_bootstrap(spec, tasks, n_boot=args.n_boot)
    scores: dict[int, dict[str, dict]] = {}
    seconds: dict[int, float] = {}
    for size in [base, *caps]:
        t0 = time.perf_counter()
        scores[size] = {t: scores_at(spec, t, size) for t in tasks}
        seconds[size] = time.perf_counter() - t0
        print(f"{size} px: {len(tasks)} tasks scored in {seconds[size]:.0f} s (extraction included unless cached)")
    rows, doc = [], {"tasks": tasks, "base_px": base, "caps": caps, "n_boot": args.n_boot, "per_task": {},
                     "mean": {}}
    methods = [m for m in ["consensus", *DEFAULT_METHODS] if all(m in scores[s][t] for s in scores for t in tasks)]
    for metric in METRICS:
        for m in methods:
            samp = {s: {t: metric_samples(scores[s][t][m], boot[t], metric) for t in tasks} for s in scores}
            point = {s: {t: rank_metrics(scores[s][t][m], {k: v for k, v in zip(boot[t].models, boot[t].point)})[metric]
                         for t in tasks} for s in scores}
            for s in caps:
                diff_mean = np.mean([samp[s][t] - samp[base][t] for t in tasks], axis=0)
                row = {"metric": metric, "method": m, "cap_px": s,
                       f"mean_{base}px": float(np.mean(list(point[base].values()))),
                       "mean_cap": float(np.mean(list(point[s].values()))),
                       "change": float(np.mean([point[s][t] - point[base][t] for t in tasks])),
                       "change_95": interval(diff_mean),
                       "tasks_worse": sum(point[s][t] < point[base][t] - 1e-12 for t in tasks),
                       "tasks_better": sum(point[s][t] > point[base][t] + 1e-12 for t in tasks)}
                if metric == "regret":  # lower is better
                    row["tasks_worse"], row["tasks_better"] = row["tasks_better"], row["tasks_worse"]
                rows.append(row)
                doc["per_task"].setdefault(f"{metric}/{m}/{s}", {t: [point[base][t], point[s][t]] for t in tasks})
    doc["rows"] = rows
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT / "results.json", json.dumps(doc, indent=1))
    print(f"\n{len(tasks)} tasks: {', '.join(tasks)}; baseline {base} px; 95 % intervals: bootstrap over test images")
    print(f"{'metric':<19}{'method':<11}{'cap':>5}{base:>8}px{'cap':>8}{'change [95 %]':>28}  worse/better tasks")
    for r in rows:
        lo, hi = r["change_95"]
        print(f"{r['metric']:<19}{r['method']:<11}{r['cap_px']:>5}{r[f'mean_{base}px']:>10.3f}{r['mean_cap']:>8.3f}"
              f"{r['change']:>+12.3f} [{lo:+.3f}, {hi:+.3f}]  {r['tasks_worse']}/{r['tasks_better']}")
    print(f"-> {OUT / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
