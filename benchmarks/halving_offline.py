"""Does `rank --budget fast` (successive halving) lose anything on the offline benchmark? (issue 16)

    nice python benchmarks/halving_offline.py [--cache .transferkit_cache] [--gt benchmarks/offline/groundtruth_v1_50test.csv]

For each offline task whose 10 models' features are in the cache (the 40-per-class train selections of
`transferkit bench --spec benchmarks/offline/spec.yaml`; 64 px, the spec's cap), it runs the default
recommendation on all images (the full run) and successive halving (transferkit.halving, default shares
and survival rule) by selecting rows of the same features: a row's features do not depend on the other
rows, so this is what the extraction rounds would give (up to float noise of batch cuts). Prints per task
tau_w (scipy weighted tau of the consensus against the fine-tuned accuracies), top-1 regret, images
extracted per model, and the mean paired difference with a 95 % percentile-bootstrap interval over the
tasks. Nothing is chosen from this benchmark (shares and rule are fixed a priori), so no
leave-one-dataset-out is needed.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
from pathlib import Path

import numpy as np

from transferkit.halving import successive_halving
from transferkit.lodo import bootstrap_mean_interval
from transferkit.metrics import rank_metrics
from transferkit.ranking import ZooFeatures
from transferkit.recommendation import recommend

DATASETS = {"eurosat.zip": "eurosat", "dtd10.zip": "dtd10", "flower_photos.zip": "flower_photos",
            "cifar10.zip": "cifar10", "fashion-mnist": "fashion_mnist"}


def load_tasks(cache: Path) -> dict[str, dict[str, ZooFeatures]]:
    tasks: dict[str, dict[str, ZooFeatures]] = {}
    for f in sorted(glob.glob(str(cache / "features" / "*" / "features.npz"))):
        with np.load(f, allow_pickle=False) as d:
            meta = json.loads(str(d["metadata"]))
            src = DATASETS.get(str(meta["dataset"].get("source", "")).split("/")[-1])
            n_cls = int(meta["dataset"].get("num_classes") or len(np.unique(d["y"])))
            if src is None or len(d["y"]) != 40 * n_cls:
                continue
            tasks.setdefault(src, {})[meta["model"]["name"]] = ZooFeatures(
                meta["model"]["name"], d["X"], d["y"], d["P"] if "P" in d.files else None, meta)
    return {t: z for t, z in tasks.items() if len(z) >= 10}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, default=Path(".transferkit_cache"))
    ap.add_argument("--gt", type=Path, default=Path("benchmarks/offline/groundtruth_v1_50test.csv"))
    args = ap.parse_args()
    gt: dict[str, dict[str, float]] = {}
    for r in csv.DictReader(args.gt.open()):
        gt.setdefault(r["dataset"], {})[r["model"]] = float(r["accuracy"])
    rows = []
    for task, zoo in sorted(load_tasks(args.cache).items()):
        names = sorted(zoo)
        y = zoo[names[0]].y
        full = recommend([zoo[m] for m in names])
        extracted = {m: 0 for m in names}

        def extract(m, positions, zoo=zoo, y=y, extracted=extracted):
            idx = np.arange(len(y)) if positions is None else \
                np.concatenate([np.arange(a, b) for a, b in positions])
            z = zoo[m]
            extracted[m] = len(idx)  # rows of a nested selection: the largest is what was extracted
            return ZooFeatures(m, z.X[idx], z.y[idx], None if z.P is None else z.P[idx], {})

        _, fast, rounds = successive_halving(names, extract, lambda z: recommend(z), y)
        g = gt[task]
        mf = rank_metrics({r.model: r.consensus for r in full.ranking}, {m: g[m] for m in names})
        # the fast run's ranking: survivors by their final consensus, then the dropped ones by the round they
        # left in (later = higher), within a round by that round's consensus
        order = [r.model for r in fast.ranking]
        for rd in reversed(rounds):
            order += [m for m in rd.order if m not in rd.kept and m not in order]
        pseudo = {m: float(len(order) - i) for i, m in enumerate(order)}
        ms = rank_metrics(pseudo, {m: g[m] for m in names})
        rows.append({"task": task, "full_pick": full.model, "fast_pick": fast.model,
                     "tau_w_full": mf["weighted_tau_scipy"], "tau_w_fast": ms["weighted_tau_scipy"],
                     "regret_full": max(g.values()) - g[full.model] if full.model else float("nan"),
                     "regret_fast": max(g.values()) - g[fast.model] if fast.model else float("nan"),
                     "images_full": len(names) * len(y), "images_fast": sum(extracted.values()),
                     "rounds": " -> ".join(str(len(r.models)) for r in rounds)})
    print(f"{'task':15s} {'full pick':24s} {'fast pick':24s} {'tau_w full':>10s} {'tau_w fast':>10s} "
          f"{'regret full':>11s} {'regret fast':>11s} {'images full/fast':>17s} models/round")
    for r in rows:
        print(f"{r['task']:15s} {str(r['full_pick']):24s} {str(r['fast_pick']):24s} {r['tau_w_full']:10.3f} "
              f"{r['tau_w_fast']:10.3f} {r['regret_full']:11.2f} {r['regret_fast']:11.2f} "
              f"{r['images_full']:>8d}/{r['images_fast']:<8d} {r['rounds']}")
    for key in ("tau_w", "regret"):
        d = np.array([r[f"{key}_fast"] - r[f"{key}_full"] for r in rows])
        lo, hi = bootstrap_mean_interval(d)
        print(f"mean {key} fast - full: {d.mean():+.3f}  95% bootstrap over {len(d)} tasks [{lo:+.3f}, {hi:+.3f}]")
    print(f"images extracted: full {sum(r['images_full'] for r in rows)}, fast {sum(r['images_fast'] for r in rows)}")


if __name__ == "__main__":
    main()
