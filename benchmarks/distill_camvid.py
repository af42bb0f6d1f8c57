"""Task-oriented knowledge transfer for semantic segmentation on CamVid (50 labeled images), against the baselines.

    python benchmarks/distill_camvid.py --estimate          # time a few steps here, predict the grid's cost
    python benchmarks/distill_camvid.py --jobs 2            # the real run (resumable: rerun to continue)
    python benchmarks/distill_camvid.py --quick             # end-to-end smoke run on a tiny budget (minutes)
    python benchmarks/distill_camvid.py --table             # rebuild table + picture from finished cells

Grid (``benchmarks/distill_camvid.yaml``): task-oriented transfer with two unlabeled transfer sets (CamVid
train+val images beyond the 50 labeled ones, and as many flower photos: generic, no road scenes),
task-agnostic dense feature distillation (CamVid transfer set), the student's ImageNet weights +
fine-tuning, and training from scratch, over 3 seeds (seed = labeled subset + initialisation + order).

Each (method, transfer set, seed) cell runs ``transferkit.distill.run_distill`` in its own folder under
``out/distill_camvid/runs`` (an interrupted cell resumes from its last checkpoint; teacher outputs are cached
in ``out/distill_camvid/cache``). A finished cell writes ``benchmarks/results/distill_camvid/cells/<cell>.json``
atomically and is skipped on a rerun. ``table.md``, ``results.csv``, ``summary.json`` and
``predictions.png`` (test images | ground truth | adapted teacher | student task-oriented | student
pretrained fine-tune, seed 0) are rebuilt from the cell files at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "benchmarks" / "distill_camvid.yaml"
DEFAULT_RESULTS = REPO / "benchmarks" / "results" / "distill_camvid"
DEFAULT_WORK = REPO / "out" / "distill_camvid"

QUICK = {  # every code path on a tiny budget
    "n_labeled": 6, "transfer_max_items": 8, "views": 2, "test_split": "val", "transfer_split": "train",
    "adapt": {"steps": 3, "batch_size": 4}, "distill": {"steps": 3, "batch_size": 4},
    "finetune": {"steps": 3, "batch_size": 4}, "checkpoint_every": 2, "log_every": 1,
}
GRID_IMAGES = 4  # test images in the picture


# ------------------------------------------------------------------------------------------------
# grid
# ------------------------------------------------------------------------------------------------
def load_grid(path: Path, quick: bool) -> tuple[Any, list[dict[str, Any]]]:
    from transferkit.distill import DistillConfig

    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or "run" not in doc or "grid" not in doc:
        raise SystemExit(f"{path}: expected top-level 'run:' and 'grid:' sections")
    run = dict(doc["run"])
    if quick:
        for k, v in QUICK.items():
            run[k] = {**run.get(k, {}), **v} if isinstance(v, dict) else v
    base = DistillConfig.from_dict(run)
    grid = doc["grid"]
    tsets = grid.get("transfer_sets", {}) or {}
    cells = []
    for method, sets in (grid.get("cells") or {}).items():
        for tname in (sets or [None]):
            if tname is not None and tname not in tsets:
                raise SystemExit(f"{path}: cell {method} uses unknown transfer set {tname!r}")
            for seed in grid.get("seeds", [0]):
                over = dict(tsets.get(tname) or {}) if tname else {}
                if quick and tname:
                    over["transfer_max_items"] = QUICK["transfer_max_items"]
                cfg = base.replace(method=method, seed=int(seed), **over)
                cfg.validate()
                cells.append({"name": f"{method}-{tname or 'none'}-seed{seed}", "method": method,
                              "transfer": tname, "seed": int(seed), "config": cfg})
    return base, cells


def _cell_file(results: Path, cell: dict[str, Any]) -> Path:
    return results / "cells" / f"{cell['name']}.json"


def _finished(results: Path, cell: dict[str, Any]) -> bool:
    p = _cell_file(results, cell)
    if not p.exists():
        return False
    try:
        return json.loads(p.read_text()).get("config_digest") == cell["config"].digest()
    except (json.JSONDecodeError, OSError):
        return False


# ------------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------------
KEEP = ("method", "seed", "student_miou", "student_pixel_accuracy", "student_per_class_iou", "teacher_miou",
        "teacher_accuracy", "n_labeled", "n_test", "student_params", "seg_size", "transfer", "target_cache", "cost",
        "config_digest", "versions")


def _run_cell(cfg_dict: dict[str, Any], name: str, transfer: str | None, results: str) -> dict[str, Any]:
    """One cell in a worker process: run_distill, then the atomic cell file."""
    import torch

    from transferkit.distill import DistillConfig, run_distill
    from transferkit.reporting import write_json

    cfg = DistillConfig.from_dict(cfg_dict)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    t0 = time.perf_counter()
    r = run_distill(cfg)
    keep = {k: r.get(k) for k in KEEP}
    ta = r.get("teacher_adapted") or {}
    keep.update(cell=name, transfer_set=transfer, run_dir=cfg.out_dir, wall_s=round(time.perf_counter() - t0, 1),
                teacher_per_class_iou=ta.get("test_per_class_iou"), teacher_params=ta.get("params"))
    write_json(Path(results) / "cells" / f"{name}.json", keep)
    return keep


def run_cells(cells: list[dict[str, Any]], results: Path, work: Path, jobs: int) -> None:
    todo = [c for c in cells if not _finished(results, c)]
    print(f"{len(cells) - len(todo)} of {len(cells)} cells already finished; running {len(todo)} "
          f"with {jobs} job(s)", flush=True)
    args = [(c["config"].replace(out_dir=str(work / "runs" / c["name"]),
                                 progress=c["config"].progress and jobs == 1).to_dict(),
             c["name"], c["transfer"], str(results)) for c in todo]

    def done(r: dict[str, Any]) -> None:
        print(f"  {r['cell']}: student mIoU {r['student_miou']:.4f}  ({r['wall_s']:.0f} s)", flush=True)

    if jobs <= 1:
        for a in args:
            done(_run_cell(*a))
        return
    import multiprocessing as mp

    # teacher-dependent cells first would race on one cache key only within a seed; cells of one seed share
    # no key except feature_distill's (frozen teacher), whose shards are written atomically by each writer
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as ex:
        futs = {ex.submit(_run_cell, *a): a[1] for a in args}
        for f in as_completed(futs):
            done(f.result())


# ------------------------------------------------------------------------------------------------
# table + picture
# ------------------------------------------------------------------------------------------------
LABELS = {"task_oriented": "task-oriented transfer (ours)", "feature_distill": "task-agnostic dense feature distillation",
          "pretrained": "ImageNet-pretrained student + fine-tune", "scratch": "from scratch + fine-tune"}


def build_table(results: Path, base: Any, cells: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    from transferkit.distill.pipeline import _mean_std, _teacher_seconds
    from transferkit.reporting import atomic_write_text, write_csv, write_json

    recs = [json.loads(_cell_file(results, c).read_text()) for c in cells if _cell_file(results, c).exists()]
    groups: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for r in recs:
        groups.setdefault((r["method"], r.get("transfer_set")), []).append(r)
    rows = []
    teacher = [r for r in recs if r.get("teacher_miou") is not None and r.get("transfer_set") == "camvid"]
    if teacher:
        m, s = _mean_std([r["teacher_miou"] for r in teacher])
        pa, _ = _mean_std([r["teacher_accuracy"] for r in teacher])
        fwd = teacher[0]["cost"]["teacher_forward"].get("adapt", 0)
        spv = teacher[0]["cost"].get("teacher_seconds_per_view") or 0
        rows.append({"model": f"teacher (adapted: {base.teacher_adapt.replace('_', ' ')})", "transfer set": "-",
                     "seeds": len(teacher), "miou": m, "std": s, "pixel acc": pa, "teacher fwd": fwd,
                     "student steps": 0, "student s": 0.0, "teacher s (est.)": fwd * spv,
                     "per_class": _mean_per_class([r.get("teacher_per_class_iou") for r in teacher])})
    order = list(LABELS)
    for (method, tset), rs in sorted(groups.items(), key=lambda kv: (order.index(kv[0][0]), str(kv[0][1]))):
        m, s = _mean_std([r["student_miou"] for r in rs])
        pa, _ = _mean_std([r["student_pixel_accuracy"] for r in rs])
        cost = [r["cost"] for r in rs]
        rows.append({
            "model": f"student: {LABELS[method]}", "transfer set": tset or "-", "seeds": len(rs), "miou": m, "std": s,
            "pixel acc": pa,
            "teacher fwd": round(sum(sum(v for k, v in x["teacher_forward"].items() if k != "test") for x in cost) / len(rs)),
            "student steps": round(sum(sum(x["student_steps"].values()) for x in cost) / len(rs)),
            "student s": sum(sum(v for k, v in x["seconds"].items() if k in ("distill", "finetune")) for x in cost) / len(rs),
            "teacher s (est.)": sum(_teacher_seconds(x) for x in cost) / len(rs),
            "per_class": _mean_per_class([r.get("student_per_class_iou") for r in rs]),
        })
    write_csv(results / "results.csv", [{k: v for k, v in r.items() if k != "per_class"} for r in rows])
    write_json(results / "summary.json", {"rows": rows, "settings": base.to_dict(), "machine": machine,
                                          "cells": len(recs), "cells_planned": len(cells)})
    lines = ["| model | transfer set | seeds | test mIoU % (mean ± std) | pixel acc % | teacher fwd passes "
             "| student steps | student wall s | teacher s (est.) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['transfer set']} | {r['seeds']} | {100 * r['miou']:.1f} ± {100 * r['std']:.1f} "
                     f"| {100 * r['pixel acc']:.1f} | {r['teacher fwd']:,} | {r['student steps']:,} | {r['student s']:.0f} "
                     f"| {r['teacher s (est.)']:.0f} |")
    names = list(base.class_names or [])
    pc = ["| model | transfer set | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for r in rows:
        vals = [r["per_class"].get(n) for n in names]
        pc.append(f"| {r['model']} | {r['transfer set']} | "
                  + " | ".join("-" if v is None else f"{100 * v:.0f}" for v in vals) + " |")
    d, f, a = base.distill, base.finetune, base.adapt
    settings = (
        f"Teacher `{base.teacher.split('/')[-1]}` + FPN decoder ({base.teacher_decoder_channels} ch, "
        f"{base.teacher_adapt.replace('_', ' ')}: {_length(a)}, batch {a.batch_size}, lr {a.lr:g}); student "
        f"`{base.student.split('/')[-1]}` + FPN decoder ({base.decoder_channels} ch). Both at "
        f"{base.seg_size[1]}x{base.seg_size[0]} px; metrics from one confusion matrix over all "
        f"{'test' if base.test_split == 'test' else base.test_split} images at the label resolution (360x480), void "
        f"ignored, mean IoU over the 11 classes. {base.n_labeled} labeled CamVid training images (resampled per seed). "
        f"Transfer sets: CamVid train+val minus the labeled images ({_transfer_n(recs, 'camvid')}); flower_photos train "
        f"subset of the same size ({_transfer_n(recs, 'flowers')}). "
        f"{base.views} views per transfer image (teacher run once per view; its stride-{base.target_stride} logits "
        f"cached as {base.target_dtype}). Distillation: {_length(d)}, batch {d.batch_size}, AdamW lr {d.lr:g}; "
        f"per-pixel KL at T={base.temperature:g}; dense feature distillation: deepest feature map, 1x1 projection, "
        f"cosine per location; students start from {base.student_init} weights. Fine-tuning (every method): "
        f"{_length(f)}, batch {f.batch_size}, AdamW lr {f.lr:g}. Seeds {sorted({c['seed'] for c in cells})}.")
    text = (f"## CamVid, {base.n_labeled} labeled images: task-oriented transfer vs baselines\n\n" + "\n".join(lines)
            + "\n\nIoU per class (%, mean over seeds):\n\n" + "\n".join(pc) + "\n\n" + settings
            + "\n\nteacher fwd = teacher forward passes the method needs (adaptation samples + transfer-set views; "
            "the teacher's own test evaluation excluded); teacher s (est.) = those x the measured teacher seconds "
            "per view; student wall s = distillation + fine-tuning stages. "
            f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, torch {machine.get('torch')}, "
            f"{machine.get('threads_per_job')} thread(s) per job, {machine.get('jobs')} job(s), load average at start "
            f"{machine.get('load_average_at_start')}.\n")
    atomic_write_text(results / "table.md", text)
    return text


def _transfer_n(recs: list[dict[str, Any]], tset: str) -> str:
    ns = sorted({(r.get("transfer") or {}).get("n") for r in recs if r.get("transfer_set") == tset} - {None})
    return "/".join(str(n) for n in ns) or "not run"


def _mean_per_class(dicts: list[dict[str, float | None] | None]) -> dict[str, float | None]:
    import numpy as np

    keys = [k for d in dicts if d for k in d]
    out: dict[str, float | None] = {}
    for k in dict.fromkeys(keys):
        vals = [d[k] for d in dicts if d and d.get(k) is not None]
        out[k] = float(np.mean(vals)) if vals else None
    return out


def _length(stage: Any) -> str:
    return f"{stage.steps} steps" if stage.steps is not None else f"{stage.epochs:g} epochs"


def write_picture(results: Path, work: Path, cells: list[dict[str, Any]], base: Any) -> Path | None:
    """``predictions.png``: test images | ground truth | adapted teacher | student task-oriented | student pretrained."""
    import numpy as np

    from transferkit.distill.segpipeline import load_seg_model, open_seg_data, predict_masks
    from transferkit.distill.segviz import save_prediction_grid

    def run_dir(method: str, tset: str | None) -> Path | None:
        for c in cells:
            if c["method"] == method and c["transfer"] == tset and c["seed"] == min(x["seed"] for x in cells):
                d = work / "runs" / c["name"]
                return d if (d / "student.json").exists() else None
        return None

    to_dir, pre_dir = run_dir("task_oriented", "camvid"), run_dir("pretrained", None)
    if to_dir is None or pre_dir is None or not (to_dir / "teacher.json").exists():
        print("picture: needs the finished task_oriented-camvid and pretrained cells of the first seed", flush=True)
        return None
    _, test = open_seg_data(base, validate=False)
    assert test is not None
    idx = np.linspace(0, len(test) - 1, GRID_IMAGES).round().astype(int).tolist()
    images = [test.load(i) for i in idx]
    truth = [test.load_mask(i) for i in idx]
    cols = [("ground truth", truth)]
    for title, d, name in (("adapted teacher", to_dir, "teacher"), ("student: task-oriented", to_dir, "student"),
                           ("student: pretrained + fine-tune", pre_dir, "student")):
        model, _, renderer = load_seg_model(d, name)
        cols.append((title, predict_masks(model, test, idx, renderer)))
    return save_prediction_grid(results / "predictions.png", images, cols, list(base.class_names or []))


# ------------------------------------------------------------------------------------------------
# estimate
# ------------------------------------------------------------------------------------------------
def estimate(cells: list[dict[str, Any]], jobs: int) -> None:
    """Time teacher forwards, teacher head steps and student steps at the grid's resolution and batch sizes
    here, then extrapolate every cell: wall time at the current load, and CPU time (idle cores, 1 thread/job)."""
    import torch
    import torch.nn.functional as F

    from transferkit.distill.segmodels import build_seg_model

    base = cells[0]["config"]
    threads = base.num_threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    h, w = base.seg_size
    k = int(base.num_classes)

    def per(fn: Any, n: int, reps: int = 2) -> tuple[float, float]:
        fn()
        t, c = time.perf_counter(), time.process_time()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t) / (reps * n), (time.process_time() - c) / (reps * n)

    teacher, _, _ = build_seg_model(base.teacher, k, width=base.teacher_decoder_channels,
                                    freeze_backbone=base.teacher_adapt == "head_only")
    student, _, _ = build_seg_model(base.student, k, width=base.decoder_channels)
    xt = torch.randn(base.teacher_batch_size, 3, h, w)
    with torch.inference_mode():
        t_fwd = per(lambda: teacher.eval().forward_lowres(xt), len(xt))
        x1 = torch.randn(1, 3, h, w)
        lat_s = per(lambda: student.eval()(x1), 1, 5)
        lat_t = per(lambda: teacher.eval()(x1), 1, 3)

    def train_step(model: Any, b: int) -> Any:
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-3)
        x, y = torch.randn(b, 3, h, w), torch.randint(0, k, (b, h, w))

        def step() -> None:
            model.train()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step

    t_adapt = per(train_step(teacher, base.adapt.batch_size), base.adapt.batch_size)
    t_dist = per(train_step(student, base.distill.batch_size), base.distill.batch_size)
    t_ft = per(train_step(student, base.finetune.batch_size), base.finetune.batch_size)
    n_lab, n_tr, n_test = base.n_labeled or 367, 418, 233
    print(f"per image, {threads} thread(s): teacher forward {t_fwd[0]:.3f} s wall / {t_fwd[1]:.3f} s CPU; teacher "
          f"head-only train {t_adapt[0]:.3f} / {t_adapt[1]:.3f}; student train {t_dist[0]:.3f} / {t_dist[1]:.3f} "
          f"(batch {base.distill.batch_size}), {t_ft[0]:.3f} / {t_ft[1]:.3f} (batch {base.finetune.batch_size})")
    print(f"latency, batch 1, {h}x{w}: student {1000 * lat_s[0]:.0f} ms wall / {1000 * lat_s[1]:.0f} ms CPU; "
          f"teacher {1000 * lat_t[0]:.0f} ms / {1000 * lat_t[1]:.0f} ms")
    for which, col in (("at the current load (wall clock)", 0), ("on idle cores (CPU time)", 1)):
        per_cell: dict[str, float] = {}
        total = 0.0
        for c in cells:
            cfg = c["config"]
            sec = cfg.finetune.num_steps(n_lab) * cfg.finetune.batch_size * t_ft[col] + n_test * lat_s[col]
            if cfg.method == "task_oriented":
                sec += cfg.adapt.num_steps(n_lab) * cfg.adapt.batch_size * t_adapt[col]
                sec += (n_tr * cfg.views + n_test) * t_fwd[col]
            if cfg.method == "feature_distill":
                sec += n_tr * cfg.views * t_fwd[col] / len({x["seed"] for x in cells})  # cached across seeds
            if cfg.method in ("task_oriented", "feature_distill"):
                sec += cfg.distill.num_steps(cfg.transfer_max_items or n_tr) * cfg.distill.batch_size * t_dist[col]
            per_cell[f"{c['method']}-{c['transfer'] or 'none'}"] = sec
            total += sec
        print(f"{which}: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in per_cell.items())
              + f"; {len(cells)} cells {total / 60:.0f} min of work -> {total / jobs / 60:.0f} min with {jobs} job(s)")
    print(f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


# ------------------------------------------------------------------------------------------------
def machine_info(jobs: int, threads: int) -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": sys.version.split()[0],
            "jobs": jobs, "threads_per_job": threads, "load_average_at_start": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    ap.add_argument("--jobs", type=int, default=1, help="cells run side by side (each with run.num_threads threads)")
    ap.add_argument("--quick", action="store_true", help="tiny budget, separate output folders")
    ap.add_argument("--estimate", action="store_true", help="time a few steps and extrapolate; runs nothing")
    ap.add_argument("--table", action="store_true", help="only rebuild the table and picture from finished cells")
    ap.add_argument("--only", help="comma-separated cell-name substrings to run (e.g. scratch,seed0)")
    ap.add_argument("--results", type=Path, default=None, help=f"default {DEFAULT_RESULTS.relative_to(REPO)}")
    ap.add_argument("--work", type=Path, default=None, help=f"runs + cache, default {DEFAULT_WORK.relative_to(REPO)}")
    args = ap.parse_args()
    os.chdir(REPO)  # the YAML's relative paths are relative to the repository root
    base, cells = load_grid(args.config, args.quick)
    work = args.work or (DEFAULT_WORK.with_name(DEFAULT_WORK.name + "_quick") if args.quick else DEFAULT_WORK)
    results = args.results or ((work / "results") if args.quick else DEFAULT_RESULTS)
    if args.quick:
        cells = [c for c in cells if c["seed"] == cells[0]["seed"]]
        base = base.replace(cache_dir=str(work / "cache"))
        cells = [{**c, "config": c["config"].replace(cache_dir=str(work / "cache"))} for c in cells]
    if args.only:
        keys = [k.strip() for k in args.only.split(",") if k.strip()]
        cells = [c for c in cells if any(k in c["name"] for k in keys)]
    if not cells:
        raise SystemExit("no cells selected")
    threads = base.num_threads or 1
    if args.estimate:
        estimate(cells, args.jobs)
        return
    machine = machine_info(args.jobs, threads)
    if not args.table:
        t0 = time.perf_counter()
        run_cells(cells, results, work, args.jobs)
        print(f"grid done in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    print(build_table(results, base, cells, machine))
    pic = write_picture(results, work, cells, base)
    if pic:
        print(f"picture: {pic}")


if __name__ == "__main__":
    main()
