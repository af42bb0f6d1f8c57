"""Scale benchmark of `transferkit curate`: embedding memory with the gallery size, and the IVF-PQ index.

1. ``embed``: a synthetic WebDataset gallery of N tiny images (32x32 PNG noise fields, 1,000 per tar shard,
   one whole-image crop each) embedded with a tiny random-weight timm model (``test_resnet``, 96-d, at
   32 px) through the real path (TarShardDataset -> CropDataset -> embed_dataset: resumable shards written
   into a memory map). Each size runs in a fresh process; the figure is that process's peak RSS
   (``ru_maxrss``), with the images/s. Flat peak RSS across sizes = memory bounded by the shard size, not
   the gallery. (The model is tiny on purpose: the point is the memory that grows with N, not the model's.)
2. ``index``: N synthetic unit vectors of the embedding dimension (``--dim``; clustered Gaussian mixture,
   written to a memory-mapped store), faiss IVF-PQ trained on a ``--train`` sample, vectors added in
   blocks; build seconds, peak RSS of the process, queries/s and recall@k against exact (faiss flat)
   search, save + reload seconds, the same with the inverted lists on disk. Each N in a fresh process.

    nice python benchmarks/curate_scale.py embed --sizes 10000 100000
    nice python benchmarks/curate_scale.py index --sizes 100000 1000000 --dim 256

Timings on a shared machine: the load average is printed with every row. Results (JSON lines) are appended
to ``--out`` (default benchmarks/results/curate_scale/results.jsonl); a finished (part, N, dim) is skipped on
re-runs unless ``--force``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "curate_scale" / "results.jsonl"


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ------------------------------------------------------------------------------------------------
# children
# ------------------------------------------------------------------------------------------------
def child_embed(n: int, work: Path, threads: int) -> dict:
    import timm
    import torch
    from PIL import Image

    from transferkit.curate.crops import CropDataset, CropGrid
    from transferkit.curate.embed import embed_dataset
    from transferkit.curate.shards import TarShardDataset, write_shards

    torch.set_num_threads(threads)
    shards_dir = work / f"shards_{n}"
    t0 = time.perf_counter()
    if not (shards_dir / "done").exists():
        rng = np.random.default_rng(0)

        def samples():
            for i in range(n):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
                yield f"{i:09d}", buf.getvalue(), "png", None

        write_shards(samples(), shards_dir, per_shard=1000)
        (shards_dir / "done").write_text("ok")
    write_s = time.perf_counter() - t0
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=0).eval()
    rss0 = _rss_mib()
    t0 = time.perf_counter()
    total = 0
    for tar in sorted(shards_dir.glob("*.tar")):
        ds = CropDataset(TarShardDataset(tar), CropGrid((1.0,)))
        st = embed_dataset(model, ds, cache_dir=work / "cache", shard_size=8192, batch_size=256, num_workers=0,
                           device="cpu", input_size=(3, 32, 32), progress=False)
        total += st.n
    secs = time.perf_counter() - t0
    return {"part": "embed", "n": n, "crops": total, "write_shards_s": round(write_s, 1),
            "embed_s": round(secs, 1), "images_per_s": round(total / secs, 1), "rss_before_mib": round(rss0, 1),
            "peak_rss_mib": round(_peak_mib(), 1), "model": "test_resnet (random weights, 96-d, 32 px)",
            "torch_threads": threads}


def _recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean share of each query's exact top-k that the approximate search returned."""
    return float(np.mean([len(np.intersect1d(a, e)) / k for a, e in zip(found, exact)]))


def child_index(n: int, dim: int, work: Path, train: int, nq: int, k: int, nprobe: int, m: int,
                threads: int, sweep: list[int] | None = None) -> dict:
    import faiss
    from numpy.lib.format import open_memmap

    from transferkit.curate.embed import EmbeddingStore, GalleryEmbeddings
    from transferkit.curate.index import FaissIndex, IndexConfig, build_index

    faiss.omp_set_num_threads(threads)
    store = work / f"store_{n}_{dim}"
    if not (store / "progress.json").exists():
        store.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        centers = rng.standard_normal((1000, dim)).astype(np.float32)
        emb = open_memmap(store / "emb.npy", mode="w+", dtype=np.float32, shape=(n, dim))
        for lo in range(0, n, 100_000):
            hi = min(n, lo + 100_000)
            x = centers[rng.integers(0, 1000, hi - lo)] + 0.7 * rng.standard_normal((hi - lo, dim)).astype(np.float32)
            emb[lo:hi] = x / np.linalg.norm(x, axis=1, keepdims=True)
        emb.flush()
        del emb
        np.save(store / "valid.npy", np.ones(n, bool))
        (store / "meta.json").write_text(json.dumps({"key": f"synthetic-{n}-{dim}", "n": n, "dim": dim,
                                                    "shard_size": n}))
        (store / "progress.json").write_text(json.dumps({"done": [0]}))
    g = GalleryEmbeddings([EmbeddingStore.open(store)])
    rng = np.random.default_rng(1)
    q = g.take(rng.choice(n, nq, replace=False)) + 0.05 * rng.standard_normal((nq, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    out: dict = {"part": "index", "n": n, "dim": dim, "train": train, "nq": nq, "k": k, "nprobe": nprobe, "m": m,
                 "faiss_threads": threads}
    rss0 = _rss_mib()
    t0 = time.perf_counter()
    exact = build_index(g, IndexConfig(kind="flat", threads=threads, gpu="false"))
    t1 = time.perf_counter()
    _, ie = exact.search(q, k)
    out["exact_qps"] = round(nq / (time.perf_counter() - t1), 1)
    out["exact_build_s"] = round(t1 - t0, 1)
    del exact
    for ondisk in (False, True):
        tag = "ondisk" if ondisk else "ram"
        path = work / f"index_{n}_{dim}_{tag}"
        cfg = IndexConfig(kind="ivfpq", nprobe=nprobe, m=m, train_size=train, threads=threads, gpu="false",
                          path=str(path), ondisk=ondisk, ondisk_part=250_000)
        for f in (path / "index.json",):
            f.unlink(missing_ok=True)  # measure a fresh build
        r0 = _rss_mib()
        t0 = time.perf_counter()
        idx = FaissIndex(g, "ivfpq", cfg)
        build = time.perf_counter() - t0
        r1 = _rss_mib()
        t0 = time.perf_counter()
        idx.save(path)
        save = time.perf_counter() - t0
        del idx
        t0 = time.perf_counter()
        idx = FaissIndex.load(path, g, cfg)
        load = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, ia = idx.search(q, k)
        qs = time.perf_counter() - t0
        rec = _recall(ia, ie, k)
        size = sum(f.stat().st_size for f in path.iterdir()) / 2**20
        out[tag] = {"build_s": round(build, 1), "rss_growth_build_mib": round(r1 - r0, 1), "save_s": round(save, 2),
                    "load_s": round(load, 2), "qps": round(nq / qs, 1), f"recall@{k}": round(rec, 4),
                    "nlist": idx.nlist, "files_mib": round(size, 1), "rerank": cfg.rerank}
        if sweep and not ondisk:  # recall / speed trade-off of the reloaded index: the knob users turn
            out["sweep"] = []
            points = [(p, cfg.rerank) for p in sweep] + [(nprobe, r) for r in (1, 10, 25) if r != cfg.rerank]
            for p, r in points:
                faiss.extract_index_ivf(idx.index).nprobe = min(p, idx.nlist)
                idx.cfg = replace(cfg, rerank=r)
                t0 = time.perf_counter()
                _, ia = idx.search(q, k)
                qs = time.perf_counter() - t0
                rec = _recall(ia, ie, k)
                out["sweep"].append({"nprobe": p, "rerank": r, "qps": round(nq / qs, 1),
                                     f"recall@{k}": round(rec, 4), "recall@1": round(float(np.mean(ia[:, 0] == ie[:, 0])), 4)})
            idx.cfg = cfg
        del idx
    out["rss_before_mib"] = round(rss0, 1)
    out["peak_rss_mib"] = round(_peak_mib(), 1)
    out["gallery_f32_mib"] = round(n * dim * 4 / 2**20, 1)
    return out


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------
def _done(out: Path) -> list[dict]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["embed", "index"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    ap.add_argument("--dim", type=int, default=256, help="index: vector dimension (mobilenetv1_025: 256)")
    ap.add_argument("--train", type=int, default=50_000, help="index: training sample size")
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--m", type=int, default=32)
    ap.add_argument("--nprobe-sweep", type=lambda v: [int(x) for x in v.split(",")], default=None,
                    help="index: also search the reloaded index with these nprobe values (e.g. 16,32,64,128,256)")
    ap.add_argument("--threads", type=int, default=1, help="torch / faiss threads (1 on a shared CPU)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        work = Path(a.work)
        n = a.sizes[0]
        res = child_embed(n, work, a.threads) if a.part == "embed" else \
            child_index(n, a.dim, work, a.train, a.nq, a.k, a.nprobe, a.m, a.threads, a.nprobe_sweep)
        print("RESULT " + json.dumps(res))
        return 0
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _done(out)
    tmp = None
    work = Path(a.work) if a.work else Path(tmp := tempfile.mkdtemp(prefix="curate_scale_"))
    for n in a.sizes:
        if not a.force and any(r["part"] == a.part and r["n"] == n and r.get("dim", a.dim) == a.dim
                               for r in done if a.part == "index" or r["part"] == "embed"):
            print(f"{a.part} n={n}: done already (see {out}; --force to redo)")
            continue
        cmd = [sys.executable, __file__, a.part, "--child", "--sizes", str(n), "--work", str(work),
               "--dim", str(a.dim), "--train", str(a.train), "--nq", str(a.nq), "--k", str(a.k),
               "--nprobe", str(a.nprobe), "--m", str(a.m), "--threads", str(a.threads)]
        if a.nprobe_sweep:
            cmd += ["--nprobe-sweep", ",".join(map(str, a.nprobe_sweep))]
        load0 = _load()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS=str(a.threads)))
        if proc.returncode != 0:
            print(proc.stdout[-2000:] + proc.stderr[-4000:], file=sys.stderr)
            print(f"Error: {a.part} n={n} failed (exit {proc.returncode})", file=sys.stderr)
            return 1
        res = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
        res.update(wall_s=round(time.perf_counter() - t0, 1), load_avg_start=load0, load_avg_end=_load(),
                   date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        with open(out, "a") as f:
            f.write(json.dumps(res) + "\n")
        print(json.dumps(res, indent=1))
    if tmp:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
