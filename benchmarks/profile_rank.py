"""Profile `transferkit rank --zoo ... --data ...` from a cold cache (issue 16).

    nice python benchmarks/profile_rank.py                     # end-to-end CLI run + per-model breakdown
    nice python benchmarks/profile_rank.py --skip-breakdown    # only the end-to-end run
    python benchmarks/profile_rank.py --rank-args "--workers 0" # extra options for `transferkit rank`

Data: a 17-class image folder built here from ../shared/data zips, 30 train images per class, written as
<tmp>/train/<class>/*.jpg (original bytes, native resolution): the first 10 EuroSAT classes (64 px), the 5
flower_photos classes (~240-500 px) and the first 2 DTD-10 classes (300-640 px); 510 images. Zoo:
benchmarks/offline/zoo.yaml (the 10 models of ../shared/weights), each at its OWN native resolution (the
offline ground-truth spec's 64 px cap is not used here). Methods: the rank default.

Prints (a) the end-to-end figures of the `transferkit rank` subprocess from a fresh temporary cache: wall,
user and system CPU seconds, peak RSS, minor/major page faults (``resource.getrusage(RUSAGE_CHILDREN)``)
and the load average before/after, machine cores; (b) per model, in this process: decode (bytes -> RGB),
preprocess (the model's timm eval transform), forward (batched, inference_mode) and write (npz) seconds.
Wall time means something only when the load average is well under the core count: say so when quoting.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ZOO = REPO / "benchmarks" / "offline" / "zoo.yaml"
SOURCES = (("eurosat", 10), ("flower_photos", 5), ("dtd10", 2))  # (dataset, classes taken)


def build_folder(root: Path, per_class: int = 30) -> int:
    """Write <root>/train/<class>/*.jpg from the shared zips (first classes, first images by name)."""
    n = 0
    for name, k in SOURCES:
        with zipfile.ZipFile(SHARED / "data" / name / f"{name}.zip") as z:
            by_class: dict[str, list[str]] = {}
            for f in sorted(z.namelist()):
                parts = f.split("/")
                if len(parts) == 3 and parts[0] == "train" and parts[2]:
                    by_class.setdefault(parts[1], []).append(f)
            for cls in sorted(by_class)[:k]:
                out = root / "train" / f"{name}_{cls}"
                out.mkdir(parents=True, exist_ok=True)
                for f in by_class[cls][:per_class]:
                    (out / Path(f).name).write_bytes(z.read(f))
                    n += 1
    return n


def end_to_end(data: Path, cache: Path, extra: list[str]) -> dict:
    cmd = ["transferkit", "rank", "--zoo", str(ZOO), "--data", str(data), "--split", "train", "--per-class", "30",
           "--cache", str(cache), "--out", str(cache / "out"), "--no-plot", "--no-progress", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"rank failed ({proc.returncode}): {proc.stderr[-2000:]}")
    top = next((ln for ln in proc.stdout.splitlines() if ln.strip()), "")
    methods = json.loads((cache / "out" / "scores.json").read_text()).get("methods", {})
    scoring = {m: round(float(v.get("seconds") or 0.0), 2) for m, v in methods.items()}
    return {"command": " ".join(shlex.quote(c) for c in cmd), "wall_s": round(wall, 1),
            "user_s": round(after.ru_utime - before.ru_utime, 1), "sys_s": round(after.ru_stime - before.ru_stime, 1),
            "peak_rss_mb": round(after.ru_maxrss / 1024, 0), "minor_faults": after.ru_minflt - before.ru_minflt,
            "major_faults": after.ru_majflt - before.ru_majflt, "load_before": [round(x, 2) for x in load0],
            "load_after": [round(x, 2) for x in os.getloadavg()], "cores": os.cpu_count(), "first_line": top,
            "scoring_s": scoring, "stdout_tail": proc.stdout[-1500:]}


def breakdown(data: Path, batch_size: int = 64) -> list[dict]:
    """Per model: decode / preprocess / forward / write seconds, each stage over all images, one thread of work."""
    import numpy as np
    import torch
    from timm.data import create_transform

    from transferkit.data import open_dataset
    from transferkit.features.allocator import keep_allocations_in_heap
    from transferkit.features.extract import _Prepared
    from transferkit.models import make_feature_fn, read_zoo

    keep_allocations_in_heap()  # as extraction does (TRANSFERKIT_MALLOPT=0: the allocator's default behaviour)
    ds = open_dataset(str(data), "train", per_class=30, seed=0)
    rows = []
    for e in read_zoo(ZOO):
        prep = _Prepared(e, ds, dict(e.options))
        tf = create_transform(**prep.data_config, is_training=False)
        t0 = time.perf_counter()
        imgs = [ds.load(i) for i in range(len(ds))]
        t1 = time.perf_counter()
        xs = [tf(im) for im in imgs]
        t2 = time.perf_counter()
        model = prep.build().eval().to(memory_format=torch.channels_last)
        fn = make_feature_fn(model, None, with_logits=True)
        feats = []
        t3 = time.perf_counter()
        with torch.inference_mode():
            for a in range(0, len(xs), batch_size):
                x = torch.stack(xs[a:a + batch_size]).contiguous(memory_format=torch.channels_last)
                f, lg = fn(x)
                feats.append((f.float(), torch.softmax(lg.float(), 1) if lg is not None else None))
        t4 = time.perf_counter()
        buf = io.BytesIO()
        np.savez(buf, X=torch.cat([f for f, _ in feats]).numpy(),
                 P=torch.cat([p for _, p in feats]).numpy() if feats[0][1] is not None else np.zeros(0))
        t5 = time.perf_counter()
        rows.append({"model": e.name, "input": "x".join(map(str, prep.data_config["input_size"][1:])),
                     "interp": prep.data_config.get("interpolation"), "decode_s": t1 - t0, "preprocess_s": t2 - t1,
                     "forward_s": t4 - t3, "write_s": t5 - t4})
    return rows


def print_end_to_end(e2e: dict) -> None:
    print(f"\n$ {e2e['command']}")
    print(f"cold cache end to end: wall {e2e['wall_s']} s | user {e2e['user_s']} s + sys {e2e['sys_s']} s CPU | "
          f"peak RSS {e2e['peak_rss_mb']:.0f} MB | minor faults {e2e['minor_faults']:,} | "
          f"major faults {e2e['major_faults']} | load avg before {e2e['load_before']} after {e2e['load_after']} "
          f"on {e2e['cores']} cores")
    print(f"of which scoring: {sum(e2e['scoring_s'].values()):.1f} s ({', '.join(f'{m} {s}' for m, s in e2e['scoring_s'].items())})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rank-args", default="", help="extra options for `transferkit rank` (quoted)")
    ap.add_argument("--skip-breakdown", action="store_true")
    ap.add_argument("--skip-end-to-end", action="store_true", help="only the per-model breakdown")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if not (SHARED / "data").is_dir():
        sys.exit(f"{SHARED / 'data'} not found: this benchmark needs ../shared")
    with tempfile.TemporaryDirectory(prefix="profile_rank_") as tmp:
        root = Path(tmp) / "data17"
        n = build_folder(root)
        print(f"data: {root} ({n} images, 17 classes: 10 EuroSAT + 5 flower_photos + 2 DTD-10, 30 train each)")
        e2e = None if args.skip_end_to_end else end_to_end(root, Path(tmp) / "cache", shlex.split(args.rank_args))
        if e2e is not None:
            print_end_to_end(e2e)
        rows = [] if args.skip_breakdown else breakdown(root)
        if rows:
            print("\nper model (in-process, one pass per stage, seconds):")
            print(f"{'model':26s} {'input':>8s} {'interp':>8s} {'decode':>7s} {'prep':>7s} {'forward':>8s} {'write':>6s}")
            for r in rows:
                print(f"{r['model']:26s} {r['input']:>8s} {str(r['interp']):>8s} {r['decode_s']:7.2f} "
                      f"{r['preprocess_s']:7.2f} {r['forward_s']:8.2f} {r['write_s']:6.2f}")
            tot = {k: sum(r[k] for r in rows) for k in ("decode_s", "preprocess_s", "forward_s", "write_s")}
            print(f"{'total':44s} {tot['decode_s']:7.2f} {tot['preprocess_s']:7.2f} {tot['forward_s']:8.2f} "
                  f"{tot['write_s']:6.2f}")
            ru = resource.getrusage(resource.RUSAGE_SELF)
            print(f"breakdown process: user {ru.ru_utime:.1f} s + sys {ru.ru_stime:.1f} s, "
                  f"peak RSS {ru.ru_maxrss / 1024:.0f} MB, minor faults {ru.ru_minflt:,}")
        if args.json:
            args.json.write_text(json.dumps({"end_to_end": e2e, "per_model": rows}, indent=1))


if __name__ == "__main__":
    main()
