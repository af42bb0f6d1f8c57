"""Does `rank --budget fast` (successive halving) lose anything on the offline benchmark? (issue 16)

    nice python benchmarks/halving_offline.py [--n-boot 1000]

For each task of benchmarks/offline/spec.yaml whose ground truth is complete, the zoo's features are those
`transferkit bench` extracts (the spec's train selection at 64 px, from the cache), and the default
recommendation runs on all images (the full run) and under successive halving (transferkit.halving, default
shares and survival rule) by selecting rows of the same features: a row's features do not depend on the other
rows, so this is what the extraction rounds would give (up to float noise of batch cuts). Per task: tau_w
(scipy weighted tau against the fine-tuned accuracies), top-1 regret, images extracted per model. The fast
run's ranking is the survivors by their final consensus, then the dropped models by the round they left in.
The mean paired difference (fast - full) gets two 95 % intervals: over tasks (bootstrap of the task mean)
and over test images (bootstrap of the ground truth from the per-image records, all tasks at once). Nothing
is chosen from this benchmark (shares and rule are fixed a priori), so no leave-one-dataset-out is needed.
Results: benchmarks/results/halving_offline/results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offline_tasks import complete_tasks, offline_spec, task_bootstrap, task_zoo  # noqa: E402

from transferkit.benchmark.uncertainty import _percentiles, metric_samples  # noqa: E402
from transferkit.halving import successive_halving  # noqa: E402
from transferkit.lodo import bootstrap_mean_interval  # noqa: E402
from transferkit.metrics import rank_metrics  # noqa: E402
from transferkit.ranking import ZooFeatures  # noqa: E402
from transferkit.recommendation import recommend  # noqa: E402
from transferkit.reporting import atomic_write_text  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "halving_offline"


def run_task(zoo: list[ZooFeatures]) -> dict:
    """Full and fast recommendation on one task; the fast run's pseudo-scores rank every model."""
    by = {z.name: z for z in zoo}
    names = sorted(by)
    y = by[names[0]].y
    full = recommend([by[m] for m in names])
    extracted = {m: 0 for m in names}

    def extract(m, positions):
        idx = np.arange(len(y)) if positions is None else np.concatenate([np.arange(a, b) for a, b in positions])
        z = by[m]
        extracted[m] = len(idx)  # rows of a nested selection: the largest is what was extracted
        return ZooFeatures(m, z.X[idx], z.y[idx], None if z.P is None else z.P[idx], {})

    _, fast, rounds = successive_halving(names, extract, lambda z: recommend(z), y)
    order = [r.model for r in fast.ranking]
    for rd in reversed(rounds):
        order += [m for m in rd.order if m not in rd.kept and m not in order]
    return {"full": {r.model: float(r.consensus) for r in full.ranking},
            "fast": {m: float(len(order) - i) for i, m in enumerate(order)},
            "full_pick": full.model, "fast_pick": fast.model, "images_full": len(names) * len(y),
            "images_fast": sum(extracted.values()), "rounds": " -> ".join(str(len(r.models)) for r in rounds)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--gt", type=Path, default=None,
                    help="another ground-truth CSV, e.g. benchmarks/offline/groundtruth_v1_50test.csv (the v1 "
                         "40-shot table: no per-image records, so intervals over tasks only)")
    args = ap.parse_args(argv)
    spec = offline_spec()
    tasks = complete_tasks(spec, args.gt)
    if not tasks:
        print("no offline task has a complete ground truth yet (bash benchmarks/run_offline_groundtruth.sh)")
        return 1
    boot = task_bootstrap(spec, tasks, n_boot=args.n_boot) if args.gt is None else None
    rows, diff_samples = [], {"tau_w": [], "regret": []}
    for task, acc in tasks.items():
        r = run_task(task_zoo(spec, task))
        best = max(acc.values())
        row = {"task": task, "full_pick": r["full_pick"], "fast_pick": r["fast_pick"],
               "regret_full": best - acc[r["full_pick"]] if r["full_pick"] else float("nan"),
               "regret_fast": best - acc[r["fast_pick"]] if r["fast_pick"] else float("nan"),
               "images_full": r["images_full"], "images_fast": r["images_fast"], "rounds": r["rounds"]}
        for k in ("full", "fast"):
            row[f"tau_w_{k}"] = rank_metrics(r[k], acc)["weighted_tau_scipy"]
        rows.append(row)
        for key, metric in (("tau_w", "weighted_tau_scipy"), ("regret", "regret")):
            if boot is None:
                continue
            diff_samples[key].append(metric_samples(r["fast"], boot[task], metric)
                                     - metric_samples(r["full"], boot[task], metric))
    print(f"{'task':22s} {'full pick':24s} {'fast pick':24s} {'tau_w full':>10s} {'tau_w fast':>10s} "
          f"{'regret full':>11s} {'regret fast':>11s} {'images full/fast':>17s} models/round")
    for r in rows:
        print(f"{r['task']:22s} {str(r['full_pick']):24s} {str(r['fast_pick']):24s} {r['tau_w_full']:10.3f} "
              f"{r['tau_w_fast']:10.3f} {r['regret_full']:11.2f} {r['regret_fast']:11.2f} "
              f"{r['images_full']:>8d}/{r['images_fast']:<8d} {r['rounds']}")
    summary = {}
    for key in ("tau_w", "regret"):
        d = np.array([r[f"{key}_fast"] - r[f"{key}_full"] for r in rows])
        lo, hi = bootstrap_mean_interval(d) if len(d) > 1 else (float("nan"), float("nan"))
        ilo, ihi = _percentiles(np.mean(diff_samples[key], axis=0), 0.95) if diff_samples[key] else (np.nan, np.nan)
        summary[key] = {"mean_change": float(d.mean()), "over_tasks_95": [lo, hi], "over_test_images_95": [ilo, ihi]}
        print(f"mean {key} fast - full: {d.mean():+.3f}  95 %: over {len(d)} tasks [{lo:+.3f}, {hi:+.3f}], "
              f"over test images [{ilo:+.3f}, {ihi:+.3f}]")
    same = sum(r["full_pick"] == r["fast_pick"] for r in rows)
    imgs = (sum(r["images_full"] for r in rows), sum(r["images_fast"] for r in rows))
    print(f"same pick on {same}/{len(rows)} tasks; images extracted: full {imgs[0]}, fast {imgs[1]} "
          f"({1 - imgs[1] / imgs[0]:.0%} fewer)")
    OUT.mkdir(parents=True, exist_ok=True)
    name = "results.json" if args.gt is None else f"results_{args.gt.stem}.json"
    atomic_write_text(OUT / name, json.dumps({"tasks": rows, "summary": summary, "same_pick": same,
                                                        "images": imgs, "n_boot": args.n_boot}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
