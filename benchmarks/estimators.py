"""Time every estimator on seeded random features and print a table.

    python benchmarks/estimators.py                 # N=5000, D=768, C=100, all threads
    OMP_NUM_THREADS=1 python benchmarks/estimators.py --threads 1
    python benchmarks/estimators.py --n 1000 --methods logme,itm

Reference timings (single thread, first call, same sizes) are those recorded in
../shared/reference/README.md for the authors' implementations.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import numpy as np

REFERENCE_SECONDS = {  # ../shared/reference/README.md, "Reference timings"
    "logme": 0.72, "leep": 0.05, "nce": 0.005, "nleep": 14.7, "sfda": 1.20, "parc": 7.17,
    "etran": 0.93, "pactran": 1.02, "ped": 1.78, "ped_logme": 1.78, "gbc": 8.98, "gbc_diag": 8.98,
    "hscore": 0.55, "hscore_shrinkage": 0.55, "transrate": 1.58, "ncti": 0.52, "knn1": 2.27, "itm": 8.42,
}
TARGET_SPEEDUP = {"nleep": 3.0, "parc": 3.0, "gbc": 3.0, "gbc_diag": 3.0, "ncti": 3.0}


def make_features(n: int, d: int, c: int, n_source: int, seed: int):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(c), -(-n // c))[:n]
    rng.shuffle(y)
    means = rng.normal(size=(c, d))
    X = (means[y] * 0.5 + rng.normal(size=(n, d))).astype(np.float32)
    logits = rng.normal(size=(n, n_source)) + 2.0 * np.eye(n_source)[y % n_source]
    P = np.exp(logits - logits.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    return X, y, P.astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--c", type=int, default=100)
    ap.add_argument("--source-classes", type=int, default=1000)
    ap.add_argument("--methods", default="all")
    ap.add_argument("--repeats", type=int, default=1, help="report the best of this many calls")
    ap.add_argument("--threads", type=int, default=None, help="torch/BLAS threads (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from transferkit.estimators import get_estimator, list_estimators

    if args.threads:
        torch.set_num_threads(args.threads)
    methods = list_estimators() if args.methods == "all" else args.methods.split(",")
    X, y, P = make_features(args.n, args.d, args.c, args.source_classes, args.seed)
    print(f"N={args.n} D={args.d} C={args.c} source classes={args.source_classes}; "
          f"torch threads={torch.get_num_threads()} OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus")
    header = f"{'method':<18}{'seconds':>10}{'reference':>11}{'speed-up':>10}  target"
    print(header)
    print("-" * len(header))
    for name in methods:
        est = get_estimator(name)
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est.score(X, y, source_probs=P if est.needs_source_probs else None, random_state=args.seed)
            best = min(best, time.perf_counter() - t0)
        ref = REFERENCE_SECONDS.get(name)
        speed = f"{ref / best:9.1f}x" if ref else f"{'-':>10}"
        need = TARGET_SPEEDUP.get(name, 1.0)
        if name == "itm":
            target = "< 2 s " + ("ok" if best < 2.0 else "MISSED")
        elif ref:
            target = f">= {need:g}x " + ("ok" if ref / best >= need else "MISSED")
        else:
            target = ""
        print(f"{name:<18}{best:>10.3f}{(f'{ref:.2f}' if ref else '-'):>11}{speed}  {target}")


if __name__ == "__main__":
    main()
