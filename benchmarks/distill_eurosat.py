"""Task-oriented knowledge transfer on EuroSAT (10 labeled images per class), against the baselines.

    python benchmarks/distill_eurosat.py --estimate          # how long the full grid will take here
    python benchmarks/distill_eurosat.py --jobs 2            # the real run (resumable: rerun to continue)
    python benchmarks/distill_eurosat.py --quick             # end-to-end check on a tiny budget (minutes)

Grid (``benchmarks/distill_eurosat.yaml``): task-oriented transfer and task-agnostic feature distillation,
each with two unlabeled transfer sets (the EuroSAT training images beyond the labeled ones, and as many
CIFAR-10 training images with labels dropped), the student's pretrained weights + fine-tuning, and training
from scratch, over 3 seeds (seed = few-shot subsample + initialisation + data order).

1. The frozen teacher runs once over everything the grid needs (labeled views, test set, both transfer sets)
   and its pooled features are cached on disk (``out/distill_eurosat/cache``).
2. Each (method, transfer set, seed) cell runs ``transferkit.distill.run_distill`` in its own folder under
   ``out/distill_eurosat/runs`` (interrupted cells resume from their last checkpoint), ``--jobs`` at a time.
3. A finished cell writes ``benchmarks/results/distill_eurosat/cells/<cell>.json`` atomically; finished
   cells are skipped on a rerun. The table (``table.md``, ``results.csv``, ``summary.json``) is rebuilt from
   the cell files at the end (or alone with ``--table``).

Costs per cell: teacher forward passes the method needs on its own (adaptation + transfer set views; the
cache shares them between cells here), student optimizer steps, wall time of the student stages, and the
teacher time those forward passes take at the measured seconds per view.
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
DEFAULT_CONFIG = REPO / "benchmarks" / "distill_eurosat.yaml"
DEFAULT_RESULTS = REPO / "benchmarks" / "results" / "distill_eurosat"
DEFAULT_WORK = REPO / "out" / "distill_eurosat"

LOOP_OVERHEAD = 1.15  # real run / this microbenchmark, measured on one EuroSAT cell (CPU time 183 s vs 163 s)

QUICK = {  # tiny budget: every code path, a few minutes on 2 cores
    "per_class": 2, "test_per_class": 3, "transfer_max_items": 24, "views": 2, "probe_folds": 2,
    "distill": {"steps": 3, "batch_size": 8}, "finetune": {"steps": 3, "batch_size": 5},
    "checkpoint_every": 2, "log_every": 1,
}


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
def _run_cell(cfg_dict: dict[str, Any], name: str, method: str, transfer: str | None, results: str) -> dict[str, Any]:
    """One cell in a worker process: run_distill, then the atomic cell file."""
    import torch

    from transferkit.distill import DistillConfig, run_distill
    from transferkit.reporting import write_json

    cfg = DistillConfig.from_dict(cfg_dict)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    t0 = time.perf_counter()
    r = run_distill(cfg)
    keep = {k: r.get(k) for k in ("method", "seed", "student_accuracy", "teacher_accuracy", "n_labeled", "n_test",
                                  "student_params", "student_input_size", "transfer", "cost", "config_digest",
                                  "versions")}
    keep.update(cell=name, transfer_set=transfer, run_dir=cfg.out_dir, wall_s=round(time.perf_counter() - t0, 1),
                teacher_probe=(r.get("teacher_adapted") or {}).get("l2"))
    write_json(Path(results) / "cells" / f"{name}.json", keep)
    return keep


def prepare_teacher(cells: list[dict[str, Any]], threads: int) -> None:
    """Phase 1: the frozen teacher over every image/view any cell needs (cached; nothing if already done)."""
    import torch

    from transferkit.distill import prepare_teacher_cache

    torch.set_num_threads(threads)
    seen = set()
    for c in cells:
        cfg = c["config"]
        if cfg.method not in ("task_oriented", "feature_distill"):
            continue
        key = (c["transfer"], cfg.seed, cfg.method == "task_oriented")
        if key in seen:
            continue
        seen.add(key)
        info = prepare_teacher_cache(cfg.replace(num_threads=threads))
        if info["teacher_forward_computed"]:
            print(f"teacher: {info['teacher_forward_computed']} views in {info['seconds']:.0f} s "
                  f"({c['transfer']}, seed {cfg.seed})", flush=True)


def run_cells(cells: list[dict[str, Any]], results: Path, work: Path, jobs: int) -> None:
    todo = [c for c in cells if not _finished(results, c)]
    print(f"{len(cells) - len(todo)} of {len(cells)} cells already finished; running {len(todo)} "
          f"with {jobs} job(s)", flush=True)
    args = [(c["config"].replace(out_dir=str(work / "runs" / c["name"]),
                                 progress=c["config"].progress and jobs == 1).to_dict(),
             c["name"], c["method"], c["transfer"], str(results)) for c in todo]
    if jobs <= 1:
        for a in args:
            r = _run_cell(*a)
            print(f"  {r['cell']}: student {r['student_accuracy']:.4f}  ({r['wall_s']:.0f} s)", flush=True)
        return
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as ex:
        futs = {ex.submit(_run_cell, *a): a[1] for a in args}
        for f in as_completed(futs):
            r = f.result()
            print(f"  {r['cell']}: student {r['student_accuracy']:.4f}  ({r['wall_s']:.0f} s)", flush=True)


# ------------------------------------------------------------------------------------------------
# table
# ------------------------------------------------------------------------------------------------
LABELS = {"task_oriented": "task-oriented transfer (ours)", "feature_distill": "task-agnostic feature distillation",
          "pretrained": "pretrained student + fine-tune", "scratch": "from scratch + fine-tune"}


def build_table(results: Path, base: Any, cells: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    from transferkit.distill.pipeline import _mean_std, _teacher_seconds
    from transferkit.reporting import atomic_write_text, write_csv, write_json

    recs = []
    for c in cells:
        p = _cell_file(results, c)
        if p.exists():
            recs.append(json.loads(p.read_text()))
    groups: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for r in recs:
        groups.setdefault((r["method"], r.get("transfer_set")), []).append(r)
    rows = []
    teacher = [r for r in recs if r.get("teacher_accuracy") is not None]
    if teacher:
        m, s = _mean_std([r["teacher_accuracy"] for r in teacher if r.get("transfer_set") == teacher[0].get("transfer_set")])
        fwd = teacher[0]["cost"]["teacher_forward"].get("adapt", 0)
        rows.append({"model": "teacher (adapted: linear probe)", "transfer set": "-", "seeds": len({r["seed"] for r in teacher}),
                     "test acc": m, "std": s, "teacher fwd": fwd, "student steps": 0, "student s": 0.0,
                     "teacher s (est.)": fwd * (teacher[0]["cost"].get("teacher_seconds_per_view") or 0)})
    order = list(LABELS)
    for (method, tset), rs in sorted(groups.items(), key=lambda kv: (order.index(kv[0][0]), str(kv[0][1]))):
        m, s = _mean_std([r["student_accuracy"] for r in rs])
        cost = [r["cost"] for r in rs]
        rows.append({
            "model": f"student: {LABELS[method]}", "transfer set": tset or "-", "seeds": len(rs),
            "test acc": m, "std": s,
            "teacher fwd": round(sum(sum(v for k, v in x["teacher_forward"].items() if k != "test") for x in cost) / len(rs)),
            "student steps": round(sum(sum(x["student_steps"].values()) for x in cost) / len(rs)),
            "student s": sum(sum(v for k, v in x["seconds"].items() if k in ("distill", "finetune")) for x in cost) / len(rs),
            "teacher s (est.)": sum(_teacher_seconds(x) for x in cost) / len(rs),
        })
    write_csv(results / "results.csv", rows)
    write_json(results / "summary.json", {"rows": rows, "settings": base.to_dict(), "machine": machine,
                                          "cells": len(recs), "cells_planned": len(cells)})
    lines = ["| model | transfer set | seeds | test acc (mean ± std) | teacher fwd passes | student steps "
             "| student wall s | teacher s (est.) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['transfer set']} | {r['seeds']} | {100 * r['test acc']:.1f} ± "
                     f"{100 * r['std']:.1f} | {r['teacher fwd']:,} | {r['student steps']:,} | {r['student s']:.0f} "
                     f"| {r['teacher s (est.)']:.0f} |")
    d, f = base.distill, base.finetune
    settings = (
        f"Teacher `{base.teacher.split('/')[-1]}` at {base.teacher_input_size or 'its own'} px "
        f"({base.teacher_adapt.replace('_', ' ')}, L2 by {base.probe_folds}-fold CV), student "
        f"`{base.student.split('/')[-1]}` at {base.student_input_size or 'its own'} px. "
        f"EuroSAT, {base.per_class} labeled images per class (resampled per seed), test = "
        f"{'all' if base.test_per_class is None else base.test_per_class} test images per class. "
        f"Transfer sets: EuroSAT train minus the labeled images; CIFAR-10 train subset of the same size (labels dropped). "
        f"{base.views} views per transfer image (teacher run once per view, cached). "
        f"Distillation: {_length(d)}, batch {d.batch_size}, AdamW lr {d.lr:g}, wd {d.weight_decay:g}, cosine; "
        f"KL at T={base.temperature:g} (soft {base.soft_weight:g}, hard {base.hard_weight:g}); feature distillation: "
        f"{base.feature_loss} loss through a linear projection; students start from "
        f"{base.student_init} weights. Fine-tuning (every method): {_length(f)}, batch {f.batch_size}, "
        f"AdamW lr {f.lr:g}, wd {f.weight_decay:g}. Seeds {sorted({c['seed'] for c in cells})}.")
    text = (f"## EuroSAT, {base.per_class} labels per class: task-oriented transfer vs baselines\n\n" + "\n".join(lines) + "\n\n"
            + settings + "\n\nteacher fwd = teacher forward passes the method needs (adaptation + transfer-set views; "
            "test-set evaluation of the teacher excluded); teacher s (est.) = those x the measured teacher seconds "
            "per view on this machine; student wall s = distillation + fine-tuning stages. "
            f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, torch {machine.get('torch')}, "
            f"{machine.get('threads_per_job')} thread(s) per job, {machine.get('jobs')} job(s).\n")
    atomic_write_text(results / "table.md", text)
    return text


def _length(stage: Any) -> str:
    return f"{stage.steps} steps" if stage.steps is not None else f"{stage.epochs:g} epochs"


# ------------------------------------------------------------------------------------------------
# estimate
# ------------------------------------------------------------------------------------------------
def estimate(cells: list[dict[str, Any]], jobs: int) -> None:
    """Time a few teacher batches and student steps here and extrapolate the grid's wall time.

    Two figures: wall time at the machine's current load, and CPU time (what the same work takes on cores
    nobody else uses, with one thread per job).
    """
    import torch

    from transferkit.distill.data import ViewDataset
    from transferkit.distill.models import build_model
    from transferkit.distill.pipeline import _all_views, _open_labeled, _TeacherSide, open_transfer
    from transferkit.distill.targets import item_keys
    from transferkit.distill.views import AugRecipe
    from transferkit.features.distributed import DistContext

    base = cells[0]["config"]
    threads = base.num_threads or torch.get_num_threads()
    torch.set_num_threads(threads)

    def per_item(fn: Any, n_items: int, reps: int = 3) -> tuple[float, float]:
        fn()
        w, c = time.perf_counter(), time.process_time()
        for _ in range(reps):
            fn()
        return ((time.perf_counter() - w) / (reps * n_items), (time.process_time() - c) / (reps * n_items))

    tm, tdc, _ = build_model(base.teacher, 0, input_size=base.teacher_input_size)
    s = tdc["input_size"][1]
    xt = torch.randn(base.teacher_batch_size, 3, s, s)
    with torch.inference_mode():
        t_view = per_item(lambda: tm(xt), len(xt))
    sm, sdc, _ = build_model(base.student, 10, input_size=base.student_input_size)
    s = sdc["input_size"][1]
    opt = torch.optim.AdamW(sm.parameters(), 1e-3)

    def step(b: int) -> None:
        x, y = torch.randn(b, 3, s, s), torch.randint(0, 10, (b,))
        loss = torch.nn.functional.cross_entropy(sm.train()(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    t_d = per_item(lambda: step(base.distill.batch_size), 1)
    t_f = per_item(lambda: step(base.finetune.batch_size), 1)
    xe = torch.randn(base.eval_batch_size, 3, s, s)
    with torch.inference_mode():
        t_e = per_item(lambda: sm.eval()(xe), len(xe))
    # teacher views still missing from the cache
    missing, needed, seen, n_test = 0, 0, set(), 0
    for c in cells:
        cfg = c["config"]
        labeled, test = _open_labeled(cfg)
        n_test = len(test) if test is not None else 0
        if cfg.method not in ("task_oriented", "feature_distill"):
            continue
        recipe = AugRecipe(tuple(cfg.aug_scale), tuple(cfg.aug_ratio), cfg.aug_hflip, cfg.aug_vflip)
        side = _TeacherSide(cfg, torch.device("cpu"), "fp32", DistContext(), 0, recipe)
        transfer, _ = open_transfer(cfg, labeled)
        parts = [(transfer, _all_views(len(transfer), cfg.views))]
        if cfg.method == "task_oriented":
            parts += [(labeled, _all_views(len(labeled), cfg.views)), (test, [(i, 0) for i in range(n_test)])]
        for ds, items in parts:
            vds = ViewDataset(ds, side.renderer, cfg.transfer_seed, recipe)
            for k in item_keys(vds, items):
                if k not in seen:
                    seen.add(k)
                    needed += 1
                    missing += k not in side.store
    for which, col in (("at the current load (wall clock)", 0), ("on idle cores (CPU time)", 1)):
        cell_s = []
        for c in cells:
            cfg = c["config"]
            n_lab = cfg.per_class * 10 if cfg.per_class else 4000
            sec = cfg.finetune.num_steps(n_lab) * t_f[col] + n_test * t_e[col]
            if cfg.method in ("task_oriented", "feature_distill"):
                sec += cfg.distill.num_steps(cfg.transfer_max_items or (4000 - n_lab)) * t_d[col]
            cell_s.append(sec)
        teacher_s = missing * t_view[col] / max(1, jobs)  # the teacher phase uses jobs x threads
        total = teacher_s + sum(cell_s) / jobs
        print(f"{which}, {threads} thread(s)/job, {jobs} job(s): teacher {1 / t_view[col]:.1f} views/s per job, "
              f"student step {t_d[col]:.2f} s (batch {base.distill.batch_size}) / {t_f[col]:.2f} s "
              f"(batch {base.finetune.batch_size}), eval {1 / t_e[col]:.0f} img/s")
        print(f"  teacher views needed {needed:,}, missing {missing:,}: {teacher_s / 60:.1f} min; {len(cells)} cells: "
              f"{sum(cell_s) / 60:.1f} min of student work -> {sum(cell_s) / jobs / 60:.1f} min; "
              f"total {total / 60:.1f} min (x{LOOP_OVERHEAD:g} for the real loop: {LOOP_OVERHEAD * total / 60:.0f} min)")
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
    ap.add_argument("--table", action="store_true", help="only rebuild the table from finished cells")
    ap.add_argument("--only", help="comma-separated cell-name substrings to run (e.g. scratch,seed0)")
    ap.add_argument("--results", type=Path, default=None, help=f"default {DEFAULT_RESULTS.relative_to(REPO)}")
    ap.add_argument("--work", type=Path, default=None, help=f"runs + cache, default {DEFAULT_WORK.relative_to(REPO)}")
    args = ap.parse_args()
    os.chdir(REPO)  # the YAML's relative paths are relative to the repository root
    base, cells = load_grid(args.config, args.quick)
    work = args.work or (DEFAULT_WORK.with_name(DEFAULT_WORK.name + "_quick") if args.quick else DEFAULT_WORK)
    results = args.results or ((work / "results") if args.quick else DEFAULT_RESULTS)
    if args.only:
        keys = [k.strip() for k in args.only.split(",") if k.strip()]
        cells = [c for c in cells if any(k in c["name"] for k in keys)]
    threads = base.num_threads or 1
    if args.estimate:
        estimate(cells, args.jobs)
        return
    machine = machine_info(args.jobs, threads)
    if not args.table:
        t0 = time.perf_counter()
        prepare_teacher([c for c in cells if not _finished(results, c)], threads * max(1, args.jobs))
        run_cells(cells, results, work, args.jobs)
        print(f"grid done in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    print(build_table(results, base, cells, machine))


if __name__ == "__main__":
    main()
