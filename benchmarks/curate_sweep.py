"""Transfer-set size sweep (knowledge-transfer paper, Fig. 5): curated vs random retrieval-augmented transfer
sets of several sizes, plus the whole gallery, for task-oriented distillation on EuroSAT 10-shot.

Per seed (3 by default):

* queries: EuroSAT, ``--shots`` (10) labeled train images per class, drawn with the seed (the same images
  `transferkit distill --per-class 10 --set seed=S` labels);
* gallery (>= 30,000 images), written by this script as **WebDataset tar shards** (img2dataset layout,
  the original image bytes) so that curate's shard path is the one exercised: every CIFAR-10,
  flower_photos, DTD-10 and ImageNet-samples image (shared by all seeds: ``shards/common/``) and the
  EuroSAT train images other than that seed's queries (a small in-domain minority: ``shards/eurosat_seedS/``);
  no EuroSAT test image is written, and the leakage guard still runs (exact digests + cosine threshold);
* transfer sets of ``--sizes`` images' worth of crops (1k, 2k, 4k images x crops per image), curated
  (query-balanced crop retrieval) and random (same pool, same size), and the whole gallery (every image,
  whole, byte-identical test copies dropped);
* task-oriented distillation with the EuroSAT recipe (``--distill-config``, default
  benchmarks/curate_distill.yaml = benchmarks/distill_eurosat.yaml's settings) with a fixed number of
  optimizer steps per run (``--steps``; the same compute for every size, so size effects are not step effects).

Resumable: shards, embeddings (content-keyed stores), manifests and finished distillation runs
(``results.json``) are kept under ``--out-dir`` and skipped on re-runs. Writes ``sweep.csv`` (one row per run),
``summary.md`` (mean ± std over seeds) and ``sweep.png`` (accuracy vs transfer-set size).

    nice python benchmarks/curate_sweep.py                      # the full experiment (hours; see docs/curate.md)
    nice python benchmarks/curate_sweep.py --quick              # tiny smoke run (minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
EUROSAT = DATA / "eurosat" / "eurosat.zip"
OTHERS = {"cifar10": "cifar10/cifar10.zip", "flower_photos": "flower_photos/flower_photos.zip",
          "dtd10": "dtd10/dtd10.zip", "imagenet_samples": "imagenet_samples/imagenet_samples.zip"}


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _zip_samples(ds, prefix: str):
    """``(key, original bytes, ext, None)`` for every item of a zip-folder dataset (or a subset of one)."""
    from transferkit.curate.manifest import item_ref

    zf = zipfile.ZipFile(ds.source if not hasattr(ds, "base") else ds.base.source)
    for i in range(len(ds)):
        _, _, name = item_ref(ds, i)
        ext = Path(name).suffix.lower().lstrip(".") or "jpg"
        ext = "jpg" if ext == "jpeg" else ext
        yield f"{prefix}{i:07d}", zf.read(name), ext, None


def write_gallery(out: Path, seed: int, shots: int, per_class_cap: int | None, per_shard: int) -> list[str]:
    """The gallery's shard patterns for one seed (written once; a finished set has a ``done`` marker)."""
    from transferkit.curate.shards import write_shards
    from transferkit.data import open_dataset

    common = out / "shards" / "common"
    if not (common / "done").exists():
        def samples():
            for name, rel in OTHERS.items():
                ds = open_dataset(str(DATA / rel), split="all", per_class=None if name == "imagenet_samples"
                                  else per_class_cap, seed=0)
                if name == "imagenet_samples" and per_class_cap:
                    ds = ds.subset(np.arange(min(len(ds), per_class_cap * 10)))
                yield from _zip_samples(ds, f"{name}_")
        paths = write_shards(samples(), common, per_shard=per_shard)
        (common / "done").write_text(json.dumps({"shards": len(paths)}))
    eu = out / "shards" / f"eurosat_seed{seed}"
    if not (eu / "done").exists():
        train = open_dataset(str(EUROSAT), split="train")
        queries = open_dataset(str(EUROSAT), split="train", per_class=shots, seed=seed)
        from transferkit.curate.manifest import item_ref

        qnames = {item_ref(queries, i)[2] for i in range(len(queries))}
        keep = [i for i in range(len(train)) if item_ref(train, i)[2] not in qnames]
        if per_class_cap:
            rng = np.random.default_rng(seed)
            keep = sorted(rng.choice(keep, min(len(keep), per_class_cap * 10), replace=False).tolist())
        paths = write_shards(_zip_samples(train.subset(np.array(keep)), "eurosat_"), eu, per_shard=per_shard)
        (eu / "done").write_text(json.dumps({"shards": len(paths), "images": len(keep)}))
    pats = []
    for d in (common, eu):
        n = json.loads((d / "done").read_text())["shards"]
        pats.append(str(d / f"{{00000..{n - 1:05d}}}.tar") if n > 1 else str(d / "00000.tar"))
    return pats


def set_path(out: Path, seed: int, strategy: str, size: int) -> Path:
    """Manifest of one transfer set (``size`` -1: the whole gallery)."""
    name = "whole_gallery" if size < 0 else f"{strategy}_{size}"
    return out / "sets" / f"seed{seed}" / f"{name}.csv"


def run_dir(out: Path, seed: int, strategy: str, size: int) -> Path:
    """Folder of one distillation run (``size`` -1: the whole gallery)."""
    return out / "runs" / f"seed{seed}_{strategy}_{size if size > 0 else 'all'}"


def curate_sets(args, seed: int, gallery: list[str], out: Path) -> dict[tuple[str, int], Path]:
    """Curated and random manifests of every size for one seed (kept; reused on re-runs)."""
    from transferkit.curate.crops import CropGrid
    from transferkit.curate.pipeline import CurateConfig, curate

    S = len(CropGrid.parse(args.scales))
    sets = {}
    for size in args.sizes:
        for strategy in ("balanced", "random"):
            man = set_path(out, seed, strategy, size)
            if not man.exists():
                man.parent.mkdir(parents=True, exist_ok=True)
                cfg = CurateConfig(queries=str(EUROSAT), gallery=gallery, budget=size * S, model=args.model,
                                   out=str(man), strategy=strategy, query_split="train", query_per_class=args.shots,
                                   test="auto", test_per_class=args.test_per_class,
                                   scales=tuple(float(s) for s in args.scales.split(",")),
                                   batch_size=args.batch_size, cache_dir=str(out / "cache"), seed=seed,
                                   progress=not args.quiet, index={"kind": args.index, "threads": 1})
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    r = curate(cfg)
                print(f"seed {seed} {strategy} {size}: {len(r.rows)} crops in {time.perf_counter() - t0:.0f} s "
                      f"(leakage guard: {r.report['leakage_guard']}) load {_load()}", flush=True)
            sets[(strategy, size)] = man
    whole = set_path(out, seed, "whole", -1)
    if not whole.exists():
        whole_gallery_manifest(gallery, whole)
    sets[("whole", -1)] = whole
    return sets


def whole_gallery_manifest(gallery: list[str], path: Path) -> Path:
    """Every gallery image, whole, minus byte-identical copies of EuroSAT test images (the leakage guard)."""
    from transferkit.curate.manifest import ManifestRow, write_manifest
    from transferkit.curate.shards import open_shard_gallery
    from transferkit.data import open_dataset

    test = set(open_dataset(str(EUROSAT), split="test").item_digests())
    rows, dropped = [], 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        shards = [ds for pat in gallery for ds in open_shard_gallery(pat)]
    for ds in shards:
        for i, (name, dig) in enumerate(zip(ds.names, ds.item_digests())):
            if dig in test:
                dropped += 1
                continue
            w, h = ds.load(i).size
            rows.append(ManifestRow(ds.source, "", name, 0, 0, w, h))
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_manifest(path, rows, {"strategy": "whole gallery", "n": len(rows), "test_copies_dropped": dropped})


def distill_one(args, seed: int, strategy: str, size: int, manifest: Path, out: Path) -> dict:
    run = run_dir(out, seed, strategy, size)
    res = run / "results.json"
    if not res.exists():
        run.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-c", "from transferkit.cli import main; main()", "distill",
               "--config", args.distill_config, "--data", str(EUROSAT), "--per-class", str(args.shots),
               "--transfer", str(manifest), "--method", "task_oriented", "--out", str(run),
               "--set", f"seed={seed}", "--set", f"distill.steps={args.steps}", "--no-export-onnx",
               "--set", f"cache_dir={out / 'distill_cache'}"] + list(args.distill_args)
        if args.test_per_class:
            cmd += ["--set", f"test_per_class={args.test_per_class}"]
        t0 = time.perf_counter()
        with open(run / "log.txt", "a") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO).returncode
        if rc or not res.exists():
            tail = (run / "log.txt").read_text().strip().splitlines()[-1:] or [""]
            raise SystemExit(f"Error: distillation {run.name} failed (exit {rc}): {tail[0][:200]}")
        (run / "seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}")
    d = json.loads(res.read_text())
    secs = float((run / "seconds.txt").read_text()) if (run / "seconds.txt").exists() else float("nan")
    n = sum(1 for ln in manifest.read_text().splitlines() if ln and not ln.startswith("#")) - 1
    return {"seed": seed, "strategy": strategy, "size_images": size if size > 0 else "all", "crops": n,
            "student_acc": d.get("student_accuracy"), "teacher_acc": d.get("teacher_accuracy"),
            "seconds": secs}


def _mean_std(d) -> str:
    return f"{d.mean():+.1f}" + (f" ± {d.std():.1f}" if len(d) > 1 else "")


def _t_interval(d, level: float = 0.95) -> str:
    """Student-t interval of the mean over seeds (few seeds: wide, as it should be)."""
    from scipy import stats

    if len(d) < 2:
        return "–"
    half = stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std() / len(d) ** 0.5
    return f"[{d.mean() - half:+.1f}, {d.mean() + half:+.1f}]"


def summarise(rows: list[dict], out: Path) -> str:
    import pandas as pd

    df = pd.DataFrame(rows)
    df.to_csv(out / "sweep.csv", index=False)
    g = df.groupby(["strategy", "size_images"], sort=False)["student_acc"]
    summ = g.agg(["mean", "std", "count"]).reset_index()
    lines = ["| transfer set | images' worth | crops | student acc (mean ± std) | seeds |", "|---|---|---|---|---|"]
    crops = df.groupby(["strategy", "size_images"], sort=False)["crops"].mean()
    for _, r in summ.iterrows():
        spread = f" ± {100 * r['std']:.1f}" if r["count"] > 1 else " (one seed)"
        lines.append(f"| {r['strategy']} | {r['size_images']} | {crops[(r['strategy'], r['size_images'])]:.0f} | "
                     f"{100 * r['mean']:.1f}{spread} | {int(r['count'])} |")
    # the experiment's question, paired by seed: curated minus random at each size (same gallery, same teacher)
    wide = df[df["strategy"].isin(["balanced", "random"])].pivot_table(
        index=["size_images", "seed"], columns="strategy", values="student_acc")
    if {"balanced", "random"} <= set(wide.columns):
        diff = (100 * (wide["balanced"] - wide["random"])).dropna()
        lines += ["", "| images' worth | curated − random, points, per seed | mean ± std | 95 % CI (t, seeds) | seeds |",
                  "|---|---|---|---|---|"]
        for size, d in diff.groupby(level="size_images"):
            per_seed = ", ".join(f"{v:+.1f} (seed {k[1]})" for k, v in d.items())
            lines.append(f"| {size} | {per_seed} | {_mean_std(d)} | {_t_interval(d)} | {len(d)} |")
        # all sizes: the seed is the unit (sizes of one seed share its queries and test split), so average the
        # sizes within each seed first, over the seeds that have every size
        per_seed = diff.unstack("size_images").dropna()
        if len(per_seed) and per_seed.shape[1] > 1:
            avg = per_seed.mean(axis=1)
            shown = ", ".join(f"{v:+.1f} (seed {k})" for k, v in avg.items())
            lines.append(f"| all sizes, averaged per seed | {shown} | {_mean_std(avg)} | {_t_interval(avg)} | "
                         f"{len(avg)} |")
    table = "\n".join(lines)
    (out / "summary.md").write_text(table + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for strat, mark in (("balanced", "o-"), ("random", "s--")):
        s = summ[summ["strategy"] == strat]
        if len(s):
            ax.errorbar(s["size_images"].astype(int), 100 * s["mean"], yerr=100 * s["std"].fillna(0), fmt=mark,
                        capsize=3, label="curated (query-balanced)" if strat == "balanced" else "random, same size")
    w = summ[summ["strategy"] == "whole"]
    if len(w):
        mid, sd = 100 * w["mean"].iloc[0], 100 * (w["std"].fillna(0).iloc[0])
        ax.axhline(mid, color="gray", ls=":", label=f"whole gallery ({crops[('whole', 'all')]:,.0f} images)")
        if sd:
            ax.axhspan(mid - sd, mid + sd, color="gray", alpha=0.12, lw=0)
    ax.set_xscale("log", base=2)
    sizes = sorted(int(v) for v in summ["size_images"] if str(v).isdigit())
    ax.set_xticks(sizes, [f"{v:,}" for v in sizes])
    ax.minorticks_off()
    ax.set_title(f"mean ± std over {df['seed'].nunique()} seed(s)", fontsize=9)
    ax.set_xlabel("transfer-set size (images' worth of crops)")
    ax.set_ylabel("EuroSAT test accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=130)
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results" / "curate_sweep"))
    ap.add_argument("--seeds", type=lambda v: [int(s) for s in v.split(",")], default=[0, 1, 2])
    ap.add_argument("--sizes", type=lambda v: [int(s) for s in v.split(",")], default=[1000, 2000, 4000],
                    help="transfer-set sizes in images' worth of crops (budget = size x crops per image)")
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--scales", default="1,0.5", help="gallery crop scales (1,0.5: 5 crops per image)")
    ap.add_argument("--model", default=f"local-dir:{REPO.parent / 'shared' / 'weights' / 'mobilenetv1_025.in1k'}",
                    help="embedding model of the retrieval")
    ap.add_argument("--index", default="auto")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2000, help="distillation optimizer steps per run (all sizes)")
    ap.add_argument("--distill-config", default=str(REPO / "benchmarks" / "curate_distill.yaml"))
    ap.add_argument("--per-class-cap", type=int, default=None, help="gallery images per class per source (smoke)")
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--test-per-class", type=int, default=None,
                    help="leakage guard and evaluation on this many test images per class (default: all 1,000)")
    ap.add_argument("--no-distill", action="store_true", help="stop after the transfer sets")
    ap.add_argument("--summary-only", action="store_true", help="table and plot of the runs finished so far")
    ap.add_argument("--jobs", type=int, default=1, help="distillation runs at a time (one process each; 2 on 2 cores)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 seed, 20 images/class/source, sizes 20,40, 2 shots, 20 steps, "
                         "20 test images/class")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch intra-op threads of the embedding (1 on a shared CPU: more is many times slower)")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--distill-args", nargs=argparse.REMAINDER, default=[])
    a = ap.parse_args(argv)
    if not EUROSAT.exists():
        print(f"Error: {EUROSAT} not found (the sweep needs ../shared/data)", file=sys.stderr)
        return 1
    if a.quick:
        a.seeds, a.sizes, a.shots, a.per_class_cap, a.steps, a.per_shard = [0], [20, 40], 2, 20, 20, 200
        a.test_per_class = 20
        a.distill_args = ["--set", "finetune.epochs=1", "--set", "views=1",
                          "--set", "probe_folds=2"] + list(a.distill_args)
        if a.out_dir == str(REPO / "benchmarks" / "results" / "curate_sweep"):
            a.out_dir += "_quick"
    import torch

    torch.set_num_threads(a.torch_threads)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    rows = []
    t_all = time.perf_counter()
    runs = []
    if a.summary_only:  # the table and plot of the finished runs (e.g. part-way through the experiment)
        for seed in a.seeds:
            keys = [(st, size) for size in a.sizes for st in ("balanced", "random")] + [("whole", -1)]
            runs += [(seed, st, size, set_path(out, seed, st, size)) for st, size in keys]
        rows = [distill_one(a, *r, out) for r in runs if (run_dir(out, *r[:3]) / "results.json").exists()]
        if not rows:
            print("no finished run yet", file=sys.stderr)
            return 1
        print(summarise(rows, out))
        return 0
    for seed in a.seeds:  # the transfer sets of every seed first (embedding + search: one process)
        t0 = time.perf_counter()
        gallery = write_gallery(out, seed, a.shots, a.per_class_cap, a.per_shard)
        timings[f"seed{seed}_shards"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        sets = curate_sets(a, seed, gallery, out)
        timings[f"seed{seed}_curate"] = time.perf_counter() - t0
        print(f"seed {seed}: gallery {gallery}; transfer sets ready ({timings[f'seed{seed}_curate']:.0f} s)",
              flush=True)
        runs += [(seed, strategy, size, man) for (strategy, size), man in sets.items()]
    if not a.no_distill:
        # then the distillation runs, --jobs at a time (each one process, one thread): seed by seed, and
        # curated next to random of the same size, so concurrent runs rarely compute the same teacher views
        from concurrent.futures import ThreadPoolExecutor

        def one(r: tuple) -> dict:
            t0 = time.perf_counter()
            row = distill_one(a, *r, out)
            print(f"seed {r[0]} {r[1]} {r[2]}: student acc {row['student_acc']} "
                  f"({time.perf_counter() - t0:.0f} s, load {_load()})", flush=True)
            return row

        with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
            rows = list(pool.map(one, runs))
    timings["total"] = time.perf_counter() - t_all
    (out / "timings.json").write_text(json.dumps({**timings, "load_average_end": _load()}, indent=1))
    if rows:
        print(summarise(rows, out))
        print(f"wrote {out / 'sweep.csv'}, {out / 'summary.md'}, {out / 'sweep.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
