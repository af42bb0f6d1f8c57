"""Measurements behind the defaults of `transferkit rank` (docs/recommend.md): seed stability, LogME's small-N
dimension bias, and the time of the default method set.

    nice python benchmarks/recommend_measurements.py seeds --tasks eurosat,dtd10     # cached offline features
    nice python benchmarks/recommend_measurements.py logme
    nice python benchmarks/recommend_measurements.py speed --tasks eurosat

`seeds` and `speed` read the offline zoo's features of the named tasks from the feature cache (extracted by
`transferkit bench benchmarks/offline/spec.yaml`; extraction runs here if they are missing).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def offline_zoo(task: str):
    from transferkit.benchmark import load_spec
    from transferkit.benchmark.runner import feature_entries
    from transferkit.features import extract_zoo
    from transferkit.ranking import ZooFeatures

    spec = load_spec(ROOT / "benchmarks/offline/spec.yaml")
    ds = next(d for d in spec.datasets if d.name == task)
    fo = spec.feature_options(ds)
    sets = extract_zoo(feature_entries(spec, ds, spec.zoo), ds.data, split=fo.split, cache_dir=fo.cache_dir,
                       per_class=fo.per_class, seed=spec.seed, batch_size=fo.batch_size, device=fo.device,
                       progress=False, precision=fo.precision)
    return [ZooFeatures(n, fs.features, fs.labels, fs.probs) for n, fs in sets.items()]


def seeds(tasks: list[str], methods: list[str], n_seeds: int) -> None:
    """Rankings under estimator seeds 0..n-1: mean pairwise Spearman rho, how often the top model changes;
    and whether the other methods are bit-identical across seeds 0 and 1."""
    from transferkit.consensus import seed_stability
    from transferkit.estimators import list_estimators
    from transferkit.ranking import rank_zoo

    for task in tasks:
        zoo = offline_zoo(task)
        print(f"\n{task}: {len(zoo)} models, N={len(zoo[0].y)}")
        for m in methods:
            per_seed = []
            t0 = time.perf_counter()
            for s in range(n_seeds):
                (r,) = rank_zoo(zoo, [m], random_state=s)
                per_seed.append(r.scores)
            tops = [max(p, key=p.get) for p in per_seed]
            print(f"  {m:<10} rho between seeds {seed_stability(per_seed):.3f}; top model per seed: "
                  f"{', '.join(tops)}  ({(time.perf_counter() - t0) / n_seeds:.2f} s per seed)")
        others = [m for m in list_estimators() if m not in methods and m not in ("itm", "consensus")]
        same = []
        for m in others:
            a, b = (rank_zoo(zoo, [m], random_state=s)[0].scores for s in (0, 1))
            same.append(f"{m}={'identical' if a == b else 'DIFFERS'}")
        print("  seed 0 vs 1: " + ", ".join(same))


def logme_bias(n_classes: int = 10, reps: int = 5) -> None:
    """LogME of features that carry NO label information (Gaussian noise), by N and D: any difference
    between dimensions is pure dimension bias. Printed beside the spread of real models' LogME."""
    from transferkit.estimators.logme import logme_evidence

    dims = (64, 256, 512, 1280)
    print("LogME of pure-noise features (mean over reps); N/D of the largest D in brackets")
    print("N      " + "  ".join(f"D={d:<6}" for d in dims) + "  max-min")
    for N in (20, 50, 100, 200, 400, 800, 1600, 3200, 6400):
        vals = []
        for D in dims:
            rng = np.random.default_rng(0)
            v = []
            for _ in range(reps):
                y = np.arange(N) % n_classes
                v.append(logme_evidence(rng.normal(size=(N, D)), y))
            vals.append(float(np.mean(v)))
        print(f"{N:<6} " + "  ".join(f"{x:<8.3f}" for x in vals) + f"  {max(vals) - min(vals):.3f}")


def speed(tasks: list[str], method_sets: dict[str, list[str]]) -> None:
    """Wall-clock of each method set on the whole zoo (extraction excluded)."""
    from transferkit.ranking import rank_zoo

    for task in tasks:
        zoo = offline_zoo(task)
        print(f"\n{task}: {len(zoo)} models, N={len(zoo[0].y)}, D={[z.X.shape[1] for z in zoo]}")
        for name, ms in method_sets.items():
            t0 = time.perf_counter()
            res = rank_zoo(zoo, ms)
            total = time.perf_counter() - t0
            print(f"  {name}: {total:.2f} s  (" + ", ".join(f"{r.method} {r.seconds:.2f}" for r in res) + ")")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["seeds", "logme", "speed"])
    ap.add_argument("--tasks", default="eurosat,dtd10")
    ap.add_argument("--methods", default="nleep,pactran,ncti,itm")
    ap.add_argument("--n-seeds", type=int, default=5)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    tasks = args.tasks.split(",")
    if args.what == "seeds":
        seeds(tasks, args.methods.split(","), args.n_seeds)
    elif args.what == "logme":
        logme_bias()
    else:
        from transferkit.consensus import CONSENSUS_METHODS
        from transferkit.ranking import DEFAULT_METHODS

        speed(tasks, {"default methods": list(DEFAULT_METHODS), "consensus ingredients": list(CONSENSUS_METHODS),
                      "previous default": ["logme", "leep", "nleep", "sfda", "etran", "ncti", "itm"]})


if __name__ == "__main__":
    main()
