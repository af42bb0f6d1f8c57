"""Wall-clock of the benchmark's uncertainty analysis at the offline benchmark's full size (synthetic records).

    python benchmarks/bootstrap_speed.py [--datasets 10] [--models 10] [--methods 24] [--n-test 2000] [--n-boot 1000]

Writes synthetic per-image records (6 grid points x 8 evaluations per pair) to a temporary folder, then times
``transferkit.benchmark.analysis.analyse``: the bootstrap of the ground truth, every method's intervals for τw and
top-1 regret, the paired comparisons, leave-one-model-out and the tie counts. Prints seconds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", type=int, default=10)
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--methods", type=int, default=24)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()

    from transferkit.benchmark.analysis import analyse
    from transferkit.benchmark.runner import BenchmarkResult, DatasetResult, MethodOutcome
    from transferkit.benchmark.uncertainty import PairRecords
    from transferkit.finetune import records_path
    from transferkit.metrics import rank_metrics

    rng = np.random.default_rng(0)
    root = Path(tempfile.mkdtemp(prefix="bootstrap_speed_"))
    models = [f"m{k}" for k in range(args.models)]
    rows, dsets = ["model,dataset,accuracy"], []
    for d in range(args.datasets):
        ds, n = f"d{d}", args.n_test
        labels = (np.arange(n) % 10).astype(np.int16)
        acc = {}
        for k, m in enumerate(models):
            p = 0.6 + 0.03 * k + rng.normal(0, 0.02)
            preds = np.where(rng.random((6, 8, n)) < p, labels, (labels + 1) % 10).astype(np.int16)
            acc[m] = PairRecords(preds, labels).accuracy
            rows.append(f"{m},{ds},{acc[m]}")
            f = records_path(root / "gt.csv", m, ds)
            f.parent.mkdir(parents=True, exist_ok=True)
            np.savez(f, predictions=preds, labels=labels)
        outs = []
        for j in range(args.methods):
            sc = {m: acc[m] + rng.normal(0, 0.6 * j) for m in models}
            outs.append(MethodOutcome(f"method{j}", sc, 0.0, rank_metrics(sc, acc)))
        dsets.append(DatasetResult(ds, acc, outs, {}, n))
    (root / "gt.csv").write_text("\n".join(rows) + "\n")
    res = BenchmarkResult("speed", "weighted_tau_scipy", "gt.csv", [f"method{j}" for j in range(args.methods)],
                          dsets, {"seed": 0})
    t0 = time.perf_counter()
    analyse(res, root / "gt.csv", n_boot=args.n_boot, log=print)
    print(f"analyse: {args.datasets} datasets x {args.models} models x {args.methods} methods, {args.n_test} test "
          f"images, {args.n_boot} bootstrap samples: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
