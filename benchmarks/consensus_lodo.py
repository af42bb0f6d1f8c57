"""Choose the consensus leave-one-dataset-out on the offline benchmark and compare it with every single method.

Input: bench result files (``results.json`` of ``transferkit bench``: every method's scores of the zoo and the
fine-tuned accuracies per task). For each held-out dataset (with its ``_10shot`` variant) the rule (a single
method; any aggregation of 2-3 methods from the pool; or an aggregation of the k best single methods of the
training datasets, k in 2..5) is chosen on the other datasets by mean tau_w (ties: lower mean top-1 regret) and
scored on the held-out one. The rule the top-k family picks on all datasets is the default consensus. Intervals: percentile bootstrap of the mean over the
held-out tasks; with --records and per-image records for every task, also over the test images
(transferkit.benchmark.uncertainty). The v1 tasks have no per-image records.

    nice python benchmarks/consensus_lodo.py                  # offline report (v1 ground truth, 5 tasks)
    python benchmarks/consensus_lodo.py --results a.json --results b.json --out benchmarks/results/consensus_lodo

Prints the comparison table (Markdown) and writes it with the per-task choices to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from transferkit.benchmark import BenchmarkResult
from transferkit.benchmark.baselines import BASELINES
from transferkit.benchmark.uncertainty import mean_interval, metric_samples
from transferkit.consensus import CONSENSUS_AGGREGATION, CONSENSUS_METHODS
from transferkit.lodo import (Rule, Task, bootstrap_mean_interval, candidate_rules, evaluate_rules,
                             leave_one_dataset_out)
from transferkit.reporting import atomic_write_text, write_csv

ROOT = Path(__file__).resolve().parents[1]
#: ITM is left out of the pool: 6 s per task (the default must stay within seconds) and seed-dependent.
#: The report's baselines (random, params, source_accuracy) are not candidates either: rank has no such method,
#: and source_accuracy does not score every model. params is shown as a fixed row for comparison.
EXCLUDED_FROM_POOL = ("itm", "consensus", *BASELINES)


def load_tasks(paths: list[Path]) -> list[Task]:
    tasks: dict[str, Task] = {}
    for p in paths:
        res = BenchmarkResult.load(p)
        for d in res.datasets:
            ms = {o.method: dict(o.scores) for o in d.methods if o.error is None and o.scores}
            if d.dataset in tasks:
                print(f"note: task {d.dataset} of {p} replaces an earlier one", file=sys.stderr)
            tasks[d.dataset] = Task(d.dataset, ms, dict(d.accuracies))
    return list(tasks.values())


def image_bootstrap(tasks: list[Task], ground_truth_csv: Path) -> dict:
    """Bootstrap ground truth of every task from its per-image records; {} unless every task has them."""
    from transferkit.benchmark.uncertainty import bootstrap_ground_truth, load_records

    recs = {}
    for t in tasks:
        try:
            recs[t.name] = load_records(ground_truth_csv, t.name, sorted(t.accuracies))
        except (FileNotFoundError, ValueError) as exc:
            print(f"note: {exc}; intervals over tasks only", file=sys.stderr)
            return {}
    return bootstrap_ground_truth(recs, n_boot=1000, seed=0)


def fmt(mean: float, lo: float, hi: float, digits: int = 2) -> str:
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", action="append", type=Path,
                    help="bench results.json (repeatable); default: benchmarks/offline/report/results.json")
    ap.add_argument("--sizes", default="2,3", help="consensus set sizes (default 2,3)")
    ap.add_argument("--records", type=Path, default=None,
                    help="ground-truth CSV whose <stem>_predictions/ hold per-image records: when every task has "
                         "them, intervals also come from resampling the test images (benchmark.uncertainty)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/consensus_lodo")
    args = ap.parse_args(argv)
    paths = args.results or [ROOT / "benchmarks/offline/report/results.json"]
    tasks = load_tasks(paths)
    common = set.intersection(*(set(t.method_scores) for t in tasks))
    pool = sorted(common - set(EXCLUDED_FROM_POOL))
    sizes = [int(s) for s in args.sizes.split(",")]
    rules = candidate_rules(pool, sizes=sizes)
    print(f"{len(tasks)} tasks ({', '.join(t.name for t in tasks)}); {len(pool)} methods in the pool; "
          f"{len(rules)} candidate rules", file=sys.stderr)
    out = leave_one_dataset_out(rules, tasks)
    boots = image_bootstrap(tasks, args.records) if args.records else {}

    rows = []

    def add(label: str, kind: str, per_task: list[dict[str, float]], chosen: str,
            rules_by_task: dict[str, Rule] | None = None) -> None:
        tau = [v["weighted_tau_scipy"] for v in per_task]
        reg = [v["regret"] for v in per_task]
        extra = {}
        if boots and rules_by_task:
            for metric, key in (("weighted_tau_scipy", "tau_w_ci_images"), ("regret", "regret_ci_images")):
                samples = {t.name: metric_samples(rules_by_task[t.name].scores(t.method_scores), boots[t.name], metric)
                           for t in tasks_order}
                points = {t.name: v[metric] for t, v in zip(tasks_order, per_task)}
                iv = mean_interval(samples, points)
                extra[key] = (iv.low, iv.high)
        rows.append({**extra, "rule": label, "kind": kind, "tau_w": float(np.mean(tau)),
                     "tau_w_ci": bootstrap_mean_interval(tau), "regret": float(np.mean(reg)),
                     "regret_ci": bootstrap_mean_interval(reg), "chosen": chosen,
                     "per_task_tau": {t.name: v["weighted_tau_scipy"] for t, v in zip(tasks_order, per_task)},
                     "per_task_regret": {t.name: v["regret"] for t, v in zip(tasks_order, per_task)}})

    for fam, label in [("any", "LODO: best rule (single or consensus)"), ("consensus", "LODO: best subset consensus"),
                       ("top_k", "LODO: consensus of the k best methods"), ("single", "LODO: best single method")]:
        if fam not in out.held_out:
            continue
        held = out.held_out[fam]
        by_task = {h.task: h for h in held}
        tasks_order = [t for t in tasks if t.name in by_task]
        add(label, "selected out of sample", [by_task[t.name].metrics for t in tasks_order],
            "; ".join(f"{h.task}: {h.rule.name}" for h in held), {t: h.rule for t, h in by_task.items()})
    tasks_order = list(tasks)
    for m in pool:
        add(m, "fixed single method", [out.table[Rule((m,))][t.name] for t in tasks], "",
            {t.name: Rule((m,)) for t in tasks})
    fixed = {  # outside the pool, shown for comparison: the shipped default as rank computes it, and a baseline
        "consensus": (f"consensus: the current default, {CONSENSUS_AGGREGATION}({'+'.join(CONSENSUS_METHODS)}) "
                      "as rank computes it", "fixed (chosen earlier)"),
        "params": ("params (static baseline: backbone size)", "fixed baseline"),
    }
    for name, (label, kind) in fixed.items():
        if name in common:
            rule = Rule((name,))
            per_task = evaluate_rules([rule], tasks)[rule]
            add(label, kind, [per_task[t.name] for t in tasks], "", {t.name: rule for t in tasks})
    seen = set()
    for fam in ("top_k", "consensus", "single"):
        r = out.chosen_on_all.get(fam)
        if r is None or r in seen:
            continue
        seen.add(r)
        is_default = r == Rule(tuple(sorted(CONSENSUS_METHODS)), CONSENSUS_AGGREGATION)
        label = f"{r.name} (chosen on all tasks, {fam} family{'; = the default consensus' if is_default else ''})"
        add(label, "in-sample (optimistic)", [out.table[r][t.name] for t in tasks], "", {t.name: r for t in tasks})

    if boots:
        lines = ["| rule | kind | mean tau_w [95% CI: tasks] [test images] | mean top-1 regret, points "
                 "[tasks] [test images] |", "|---|---|---:|---:|"]
        for r in rows:
            ti, ri = r.get("tau_w_ci_images", (np.nan, np.nan)), r.get("regret_ci_images", (np.nan, np.nan))
            lines.append(f"| {r['rule']} | {r['kind']} | {fmt(r['tau_w'], *r['tau_w_ci'])} [{ti[0]:.2f}, {ti[1]:.2f}] | "
                         f"{fmt(r['regret'], *r['regret_ci'], digits=1)} [{ri[0]:.1f}, {ri[1]:.1f}] |")
    else:
        lines = ["| rule | kind | mean tau_w [95% CI] | mean top-1 regret, points [95% CI] |", "|---|---|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['rule']} | {r['kind']} | {fmt(r['tau_w'], *r['tau_w_ci'])} | "
                         f"{fmt(r['regret'], *r['regret_ci'], digits=1)} |")
    lines.append("")
    lines.append("Intervals: 95 % percentile bootstrap of the mean over the held-out tasks"
                 + ("; and over the test images of every task (records of the fine-tuning)" if boots else
                    " (no per-image records for these tasks, so the test images are not resampled)") + ".")
    lines.append("")
    lines.append("Per held-out task, the rule chosen on the other datasets:")
    for fam in out.held_out:
        lines.append(f"- {fam}: " + "; ".join(f"{h.task} -> {h.rule.name} (tau_w {h.metrics['weighted_tau_scipy']:.2f}, "
                                             f"regret {h.metrics['regret']:.1f})" for h in out.held_out[fam]))
    lines.append(f"- chosen on all {len(tasks)} tasks: " + "; ".join(f"{f}: {r.name}" for f, r in out.chosen_on_all.items()))
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "comparison.md", table + "\n")
    write_csv(args.out / "comparison.csv", [{k: (json.dumps(v) if isinstance(v, (dict, tuple)) else v)
                                             for k, v in r.items()} for r in rows])
    print(f"wrote {args.out / 'comparison.md'} and comparison.csv", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
