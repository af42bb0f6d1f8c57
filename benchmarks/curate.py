"""Benchmark of `transferkit curate` (retrieval-augmented transfer sets) on the real data in ../shared.

Prints and writes (``--out-dir``, default ``benchmarks/results/curate``):

1. embedding throughput: gallery images/s and crops/s embedded (cold: a fresh cache; warm: reuse);
2. search throughput and recall@k: queries/s for exact numpy / faiss flat / IVF / IVF-PQ on the real
   gallery embeddings, and on a synthetic memory-mapped gallery (``--synthetic N``) large enough for
   the approximate indexes to matter;
3. composition: for each target (queries = ``--shots`` labeled images per class from its train split),
   a query-balanced crop-retrieval transfer set and a random set of the same size drawn from the same
   pool; the fraction of each set that comes from the target's own source dataset, against that
   source's share of the pool; the leakage guard's counts (the pool holds test images on purpose);
4. with ``--distill`` (needs ``transferkit.distill``): student accuracy on the target test set after
   distillation on the curated set vs the random set.

The pool: every shared dataset (CIFAR-10, flower_photos, DTD-10, EuroSAT, ImageNet samples), train and
test images together, subsampled per class (``--pool-per-class``) to fit a CPU run.

    python benchmarks/curate.py                       # defaults: mobilenetv1_025, 5 shots, 4 targets
    python benchmarks/curate.py --targets eurosat --budget 500 --synthetic 0
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"

# source name -> (zip, per-class cap in the pool, max items)
SOURCES = {
    "cifar10": ("cifar10/cifar10.zip", None, None),
    "flower_photos": ("flower_photos/flower_photos.zip", None, None),
    "dtd10": ("dtd10/dtd10.zip", None, None),
    "eurosat": ("eurosat/eurosat.zip", None, None),
    "imagenet_samples": ("imagenet_samples/imagenet_samples.zip", None, None),
}


THREADS: int | None = None  # faiss threads (set from --faiss-threads)


def _load_avg() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def _table(rows: list[dict], cols: list[str]) -> str:
    from transferkit.reporting import format_table

    return format_table(rows, cols, precision=3)


def pool_sources(per_class: int, imagenet_items: int) -> list:
    from transferkit.curate.pipeline import GallerySource

    out = []
    for name, (rel, _, _) in SOURCES.items():
        if name == "imagenet_samples":
            out.append(GallerySource(str(DATA / rel), split="all", max_items=imagenet_items))
        else:
            out.append(GallerySource(str(DATA / rel), split="all", per_class=per_class))
    return out


# ------------------------------------------------------------------------------------------------
# 1. embedding throughput
# ------------------------------------------------------------------------------------------------
def bench_embedding(args: argparse.Namespace, pool: list, cache_dir: str) -> dict:
    from transferkit.curate.crops import CropDataset, CropGrid
    from transferkit.curate.embed import embed_dataset

    from transferkit.curate.embed import model_identity

    grid = CropGrid.parse(args.scales)
    model_identity(args.model)  # warm-up: imports timm and hashes the weights once, outside the timings
    rows, tot_img, tot_crop, tot_s = [], 0, 0, 0.0
    for g in pool:
        ds = g.open(args.seed)
        crops = CropDataset(ds, grid)
        t0 = time.perf_counter()
        embed_dataset(args.model, crops, cache_dir=cache_dir, batch_size=args.batch_size, progress=not args.quiet,
                      desc=f"embed {Path(g.spec).stem}")
        dt = time.perf_counter() - t0
        t1 = time.perf_counter()
        embed_dataset(args.model, crops, cache_dir=cache_dir, batch_size=args.batch_size, progress=False)
        warm = time.perf_counter() - t1
        rows.append({"source": Path(g.spec).stem, "images": len(ds), "crops": len(crops), "seconds": dt,
                     "images/s": len(ds) / dt, "crops/s": len(crops) / dt, "warm reuse s": warm})
        tot_img += len(ds)
        tot_crop += len(crops)
        tot_s += dt
    rows.append({"source": "TOTAL", "images": tot_img, "crops": tot_crop, "seconds": tot_s,
                 "images/s": tot_img / tot_s, "crops/s": tot_crop / tot_s, "warm reuse s": float("nan")})
    print(f"\n## 1. Embedding throughput ({args.model_name}, crops/image={len(grid)}, "
          f"{os.cpu_count()} CPU cores, load average {_load_avg()})")
    print(_table(rows, ["source", "images", "crops", "seconds", "images/s", "crops/s", "warm reuse s"]))
    return {"rows": rows, "crops_per_image": len(grid), "load_average": _load_avg()}


# ------------------------------------------------------------------------------------------------
# 2. search throughput + recall
# ------------------------------------------------------------------------------------------------
def _search_rows(gallery, queries: np.ndarray, k: int, kinds: list[str], label: str, nlist: int | None) -> list[dict]:
    from transferkit.curate.index import ExactIndex, IndexConfig, build_index, faiss_available, recall_at_k

    exact = ExactIndex(gallery)
    rows = []
    for kind in kinds:
        if kind != "numpy" and not faiss_available():
            rows.append({"gallery": label, "index": kind, "note": "faiss not installed"})
            continue
        cfg = IndexConfig(kind=kind, nlist=nlist, train_size=min(50_000, gallery.n), threads=THREADS)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            index = build_index(gallery, cfg)
        build = time.perf_counter() - t0
        index.search(queries[:8], k)  # warm-up
        t0 = time.perf_counter()
        index.search(queries, k)
        dt = time.perf_counter() - t0
        rec = 1.0 if kind in ("numpy", "flat") else recall_at_k(index, exact, queries, k)
        d = index.describe()
        rows.append({"gallery": label, "n": gallery.n, "index": kind, "build s": build, "queries": len(queries),
                     "queries/s": len(queries) / dt, f"recall@{k}": rec,
                     "params": ", ".join(f"{a}={d[a]}" for a in ("nlist", "nprobe", "m", "rerank") if a in d)})
    return rows


def bench_search(args: argparse.Namespace, gallery, queries: np.ndarray) -> dict:
    rows = _search_rows(gallery, queries, args.k, ["numpy", "flat", "ivf", "ivfpq"], "shared pool", None)
    if args.synthetic:
        from transferkit.curate.embed import EmbeddingStore, GalleryEmbeddings

        tmp = Path(tempfile.mkdtemp(prefix="curate_synth_"))
        try:
            store = synthetic_store(tmp, args.synthetic, 256, args.seed)
            g = GalleryEmbeddings([EmbeddingStore.open(store)])
            rng = np.random.default_rng(args.seed + 1)
            qi = rng.choice(g.n, 500, replace=False)
            q = g.take(np.sort(qi)) + 0.05 * rng.standard_normal((500, 256)).astype(np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            rows += _search_rows(g, q.astype(np.float32), args.k, ["numpy", "flat", "ivf", "ivfpq"],
                                 f"synthetic {args.synthetic}", None)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n## 2. Search throughput and recall@{args.k} vs exact search (load average {_load_avg()})")
    print(_table(rows, ["gallery", "n", "index", "build s", "queries", "queries/s", f"recall@{args.k}", "params"]))
    return {"rows": rows}


def synthetic_store(root: Path, n: int, dim: int, seed: int) -> Path:
    """A memory-mapped store of ``n`` clustered unit vectors (written block by block)."""
    from numpy.lib.format import open_memmap

    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(16, n // 200), dim)).astype(np.float32)
    emb = open_memmap(root / "emb.npy", mode="w+", dtype=np.float32, shape=(n, dim))
    for lo in range(0, n, 50_000):
        m = min(50_000, n - lo)
        x = centers[rng.integers(0, len(centers), m)] + 0.6 * rng.standard_normal((m, dim)).astype(np.float32)
        emb[lo:lo + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    emb.flush()
    np.save(root / "valid.npy", np.ones(n, bool))
    (root / "progress.json").write_text(json.dumps({"done": [0]}))
    (root / "meta.json").write_text(json.dumps({"key": "synthetic", "n": n, "dim": dim, "shard_size": n}))
    return root


# ------------------------------------------------------------------------------------------------
# 3. composition (+ 4. distillation)
# ------------------------------------------------------------------------------------------------
def run_target(args: argparse.Namespace, target: str, pool: list, cache_dir: str, out_dir: Path) -> dict:
    from transferkit.curate.pipeline import CurateConfig, curate

    spec = str(DATA / SOURCES[target][0])
    out_dir.mkdir(parents=True, exist_ok=True)
    res = {}
    for strategy in ("balanced", "random"):
        cfg = CurateConfig(queries=spec, gallery=pool, budget=args.budget, model=args.model,
                           out=str(out_dir / f"{target}_{strategy}.csv"), strategy=strategy,
                           query_split="train", query_per_class=args.shots, test="auto",
                           test_per_class=args.test_per_class, scales=tuple(float(s) for s in args.scales.split(",")),
                           dup_threshold=args.dup_threshold, leak_threshold=args.leak_threshold,
                           batch_size=args.batch_size, cache_dir=cache_dir, seed=args.seed, progress=not args.quiet)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            r = curate(cfg)
        res[strategy] = r
    rep_b, rep_r = res["balanced"].report, res["random"].report
    n_pool = {s["spec"]: s["crops"] for s in rep_b["gallery"]["sources"]}
    total = sum(n_pool.values())
    frac = lambda rep: rep["composition"].get(spec, {}).get("fraction", 0.0)  # noqa: E731
    row = {"target": target, "queries": rep_b["queries"]["n"], "budget": args.budget,
           "selected": rep_b["selection"]["selected"],
           "pool share": n_pool.get(spec, 0) / total, "curated from target": frac(rep_b),
           "random from target": frac(rep_r),
           "mean sim": rep_b["selection"]["mean_similarity"],
           "exact copies": rep_b["leakage_guard"]["exact_copies_images"],
           "leak excl. crops": rep_b["leakage_guard"]["excluded_crops"],
           "leak excl. images": rep_b["leakage_guard"]["excluded_images"],
           "leak in random": rep_r["leakage_guard"]["excluded_crops"],
           "query imgs excl.": rep_b["gallery"]["query_images_excluded"],
           "search q/s": rep_b["search"]["queries_per_second"]}
    comp = {Path(s).stem: v["fraction"] for s, v in rep_b["composition"].items()}
    row["curated composition"] = ", ".join(f"{k}={v:.2f}" for k, v in sorted(comp.items(), key=lambda kv: -kv[1]))
    return {"row": row, "manifests": {k: str(v.manifest) for k, v in res.items()},
            "per_class": rep_b["per_class_composition"]}


def _distill_one(args: argparse.Namespace, target: str, strategy: str, manifest: str, seed: int,
                 out_dir: Path) -> dict:
    """One `transferkit distill` run (a subprocess with its own log) on one transfer-set manifest."""
    import subprocess

    run_dir = out_dir / f"distill_{target}_{strategy}_seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", "from transferkit.cli import main; main()", "distill"]
    if args.distill_config:
        cmd += ["--config", args.distill_config]
    cmd += ["--teacher", args.teacher, "--student", args.student, "--data", str(DATA / SOURCES[target][0]),
            "--per-class", str(args.shots), "--transfer", manifest, "--method", "task_oriented",
            "--out", str(run_dir), "--set", f"seed={seed}", "--no-export-onnx"]
    if args.test_per_class_distill:
        cmd += ["--set", f"test_per_class={args.test_per_class_distill}"]
    cmd += list(args.distill_args)
    print("running:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(run_dir / "log.txt", "a") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    res = run_dir / "results.json"
    d = json.loads(res.read_text()) if res.exists() else {}
    note = ""
    if rc:
        lines = (run_dir / "log.txt").read_text().strip().splitlines()
        note = (lines or [""])[-1][:120]
    return {"target": target, "transfer set": strategy, "seed": seed, "transfer size": args.budget,
            "student acc": d.get("student_accuracy"), "teacher acc": d.get("teacher_accuracy"),
            "seconds": time.perf_counter() - t0, "rc": rc, "note": note}


def run_distill(args: argparse.Namespace, target: str, manifests: dict[int, dict[str, str]],
                out_dir: Path) -> tuple[list[dict], list[dict]]:
    """Student accuracy with the curated vs the random transfer set, per seed, ``--distill-jobs`` at a time.

    ``manifests[seed][strategy]`` is the manifest curated with the labeled set of that seed (the queries
    are the few-shot labeled images the student is distilled for). Returns per-run rows and a mean ± std
    summary per strategy.
    """
    try:
        from transferkit import distill  # noqa: F401
    except ImportError:
        print("\n## 4. Distillation: skipped (transferkit.distill is not installed)")
        return [], []
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(strategy, m, seed) for seed, per in sorted(manifests.items()) for strategy, m in per.items()]
    with ThreadPoolExecutor(max_workers=max(1, args.distill_jobs)) as ex:
        rows = list(ex.map(lambda j: _distill_one(args, target, j[0], j[1], j[2], out_dir), jobs))
    summary = []
    for strategy in dict.fromkeys(r["transfer set"] for r in rows):
        acc = np.array([r["student acc"] for r in rows if r["transfer set"] == strategy
                        and r["student acc"] is not None], dtype=float)
        summary.append({"target": target, "transfer set": strategy, "transfer size": args.budget,
                        "seeds": len(acc), "student acc mean": float(acc.mean()) if len(acc) else None,
                        "student acc std": float(acc.std(ddof=1)) if len(acc) > 1 else None,
                        "per seed": ", ".join(f"{a:.3f}" for a in acc)})
    print("\n## 4. Student accuracy after task-oriented distillation: curated vs random transfer set "
          "(same size, same pool)")
    print(_table(rows, ["target", "transfer set", "seed", "transfer size", "student acc", "teacher acc", "seconds",
                        "rc", "note"]))
    print(_table(summary, ["target", "transfer set", "transfer size", "seeds", "student acc mean", "student acc std",
                           "per seed"]))
    return rows, summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(SHARED / "weights" / "mobilenetv1_025.in1k"))
    ap.add_argument("--targets", default="eurosat,dtd10,flower_photos,cifar10")
    ap.add_argument("--shots", type=int, default=5, help="labeled query images per class")
    ap.add_argument("--budget", type=int, default=250, help="transfer-set size (crops)")
    ap.add_argument("--pool-per-class", type=int, default=30, help="pool images per class of each source")
    ap.add_argument("--imagenet-items", type=int, default=300, help="ImageNet sample images in the pool")
    ap.add_argument("--test-per-class", type=int, default=10, help="target test images per class (leak guard)")
    ap.add_argument("--scales", default="1,0.5", help="gallery crop scales")
    ap.add_argument("--dup-threshold", type=float, default=0.98)
    ap.add_argument("--leak-threshold", type=float, default=0.995)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--k", type=int, default=10, help="k of recall@k")
    ap.add_argument("--synthetic", type=int, default=100_000, help="synthetic gallery size for the index benchmark")
    ap.add_argument("--cache-dir", default=None, help="embedding cache (default: a fresh temporary one = cold)")
    ap.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results" / "curate"))
    ap.add_argument("--distill", action="store_true", help="also distill with curated vs random sets (first target)")
    ap.add_argument("--teacher", default=str(SHARED / "weights" / "tf_efficientnet_lite2.in1k"))
    ap.add_argument("--student", default=str(SHARED / "weights" / "mobilenetv1_025.in1k"))
    ap.add_argument("--distill-seeds", type=lambda v: [int(s) for s in v.split(",")], default=None,
                    help="comma-separated seeds of the curated-vs-random distillation (each seed: its own few-shot "
                    "labeled set = queries, curation and student run; default: --seed)")
    ap.add_argument("--distill-jobs", type=int, default=1, help="distillation runs side by side")
    ap.add_argument("--distill-config", default=None, help="`transferkit distill` YAML config for those runs")
    ap.add_argument("--test-per-class-distill", type=int, default=None,
                    help="target test images per class for the student's accuracy (default: all)")
    ap.add_argument("--distill-args", nargs=argparse.REMAINDER, default=[], help="extra `transferkit distill` args")
    ap.add_argument("--faiss-threads", type=int, default=None, help="faiss OpenMP threads (default: all cores)")
    ap.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if not DATA.exists():
        print(f"skipped: {DATA} is absent")
        return 0
    args.model_name = Path(args.model).name
    global THREADS
    THREADS = args.faiss_threads
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_cache = None
    cache_dir = args.cache_dir
    if cache_dir is None:
        tmp_cache = tempfile.mkdtemp(prefix="curate_bench_cache_")
        cache_dir = tmp_cache
    results: dict = {"args": {k: v for k, v in vars(args).items()}}
    try:
        pool = pool_sources(args.pool_per_class, args.imagenet_items)
        results["embedding"] = bench_embedding(args, pool, cache_dir)
        targets = [t.strip() for t in args.targets.split(",") if t.strip()]
        comp_rows, distill_rows, distill_summary = [], [], []
        for t in targets:
            r = run_target(args, t, pool, cache_dir, out_dir)
            comp_rows.append(r["row"])
            results.setdefault("per_class", {})[t] = r["per_class"]
            if args.distill and t == targets[0]:
                manifests = {}
                for seed in args.distill_seeds or [args.seed]:
                    if seed == args.seed:
                        manifests[seed] = r["manifests"]
                    else:  # curate again with this seed's labeled set as the queries
                        seeded = argparse.Namespace(**{**vars(args), "seed": seed})
                        manifests[seed] = run_target(seeded, t, pool, cache_dir, out_dir / f"seed{seed}")["manifests"]
                distill_rows, distill_summary = run_distill(args, t, manifests, out_dir)
        # search benchmark on the real gallery, with every target's query crops
        from transferkit.curate.crops import CropDataset, CropGrid
        from transferkit.curate.embed import GalleryEmbeddings, embed_dataset
        from transferkit.data import open_dataset

        grid = CropGrid.parse(args.scales)
        stores = [embed_dataset(args.model, CropDataset(g.open(args.seed), grid), cache_dir=cache_dir,
                                progress=False) for g in pool]
        gallery = GalleryEmbeddings(stores)
        qs = [np.asarray(embed_dataset(args.model, CropDataset(open_dataset(str(DATA / SOURCES[t][0]), split="train",
                                                                            per_class=args.shots, seed=args.seed)),
                                       cache_dir=cache_dir, progress=False).emb) for t in targets]
        results["search"] = bench_search(args, gallery, np.concatenate(qs))
        print(f"\n## 3. Composition: {args.shots} shots/class as queries, budget {args.budget} crops, "
              f"pool of {gallery.n} crops ({len(grid)} per image) from {len(pool)} sources")
        print(_table(comp_rows, ["target", "queries", "selected", "pool share", "curated from target",
                                 "random from target", "mean sim", "exact copies", "leak excl. crops",
                                 "leak excl. images",
                                 "leak in random", "query imgs excl."]))
        for r in comp_rows:
            print(f"  {r['target']}: curated composition {r['curated composition']}")
        results["composition"] = comp_rows
        results["distill"] = distill_rows
        results["distill_summary"] = distill_summary
        from transferkit.reporting import write_json

        write_json(out_dir / "results.json", json.loads(json.dumps(results, default=str)))
        print(f"\nwrote {out_dir / 'results.json'}")
    finally:
        if tmp_cache:
            shutil.rmtree(tmp_cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
