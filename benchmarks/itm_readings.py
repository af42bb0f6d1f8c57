"""Score the offline zoo with each reading of ITM (issue 13) and compare with the ground truth.

    nice python benchmarks/itm_readings.py                      # every task with features, seeds 0,1,2
    nice python benchmarks/itm_readings.py --tasks dtd10,eurosat --configs default,lam0
    python benchmarks/itm_readings.py --report-only             # summary from the stored scores

Features come from the offline spec (benchmarks/offline/spec.yaml) through the library's own code path
(`feature_entries` + `extract_zoo`, the content-addressed cache in .transferkit_cache): the estimator sees
the same 40 (or 10) training images per class at 64 px as the fine-tuning. Ground truth: the complete v1
CSV (five 40-shot tasks, 50 test images per class) and every task of the new groundtruth.csv that has all
ten models (read only). Where per-image records exist (new CSV), intervals bootstrap the test images
(`transferkit.benchmark.uncertainty`); elsewhere the spread over seeds is reported.

Resumable: one JSON per (task, configuration, seed) under <out>/scores/, written atomically; a rerun
skips what exists. Each configuration is one ITM fit per model; three score readings come out of the
same fit (the estimator's components): best validation accuracy over the checks (the paper's),
accuracy averaged over the checks, and the best validation log-likelihood (tie-free). They equal what
``score_reading="best_acc" / "mean_acc" / "loglik"`` returns (the reading does not change training).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "benchmarks" / "offline" / "spec.yaml"
GT_V1 = REPO / "benchmarks" / "offline" / "groundtruth_v1_50test.csv"
GT_NEW = REPO / "benchmarks" / "offline" / "groundtruth.csv"
OUT = REPO / "benchmarks" / "results" / "itm_readings"

# one ITM fit per model and seed; "raw_zoo" anchors Eq. 12 on the zoo (filled in per task)
# the readings shipped before issue 13, spelled out so that a change of the library's defaults does
# not change what a configuration means
_BEFORE = {"dispersion_units": "per_sqrt_dim", "dispersion_anchor": 1.0, "eta_anchor": 0.5, "lam": "eta",
           "dca_norm": "spectral", "n_splits": 1, "split": "repeated", "score_reading": "best_acc"}
CONFIGS: dict[str, dict[str, Any]] = {
    "default": dict(_BEFORE),  # the paper's reading, the library default until 2026-12-02 (now split="auto", mean_acc)
    "eta_classsep": {**_BEFORE, "dispersion_units": "class_separation"},
    "eta_raw_zoo": {**_BEFORE, "dispersion_units": "raw"},  # dispersion_anchor = the zoo's median, per task
    "eta_fixed": {**_BEFORE, "adaptive_eta": False},  # η = 0.5 for every model (Table 2's ablation)
    "lam0": {**_BEFORE, "lam": 0.0},
    "classsep_lam0": {**_BEFORE, "dispersion_units": "class_separation", "lam": 0.0},
    "norm_frobenius": {**_BEFORE, "dca_norm": "frobenius"},
    "norm_trace": {**_BEFORE, "dca_norm": "trace"},
    "no_dca": {**_BEFORE, "adaptive_eta": False, "eta_anchor": 0.0, "lam": 0.0},  # η = 0: a bottlenecked probe
    "rep3": {**_BEFORE, "n_splits": 3},  # three repeated 4:1 splits, averaged (the paper's estimator, repeated)
    "kfold5": {**_BEFORE, "split": "kfold", "n_splits": 5},
    "classsep_lam0_rep3": {**_BEFORE, "dispersion_units": "class_separation", "lam": 0.0, "n_splits": 3},
}
READINGS = {"best_acc": "itm_best_val_acc", "mean_acc": "itm_mean_val_acc", "loglik": "itm_val_loglik"}


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def group_of(task: str) -> str:
    """A dataset and its 10-shot variant stay on the same side of a leave-one-dataset-out split."""
    return task.removesuffix("_10shot")


# -- ground truth ----------------------------------------------------------------------------------
def ground_truth(zoo: list[str]) -> dict[str, dict[str, Any]]:
    """{task: {"acc": {model: %}, "source": csv}} for tasks whose ground truth covers the whole zoo."""
    from transferkit.finetune import ground_truth_by_dataset

    out: dict[str, dict[str, Any]] = {}
    for csv in (GT_V1, GT_NEW):
        if not csv.exists():
            continue
        for task, acc in ground_truth_by_dataset(csv).items():
            if all(m in acc for m in zoo):
                out[task] = {"acc": {m: acc[m] for m in zoo}, "source": csv.name}
    return out


# -- features --------------------------------------------------------------------------------------
def load_features(spec: Any, task: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The zoo's features on one task as the bench extracts them (benchmarks/offline_tasks.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from offline_tasks import task_zoo

    return {z.name: (np.asarray(z.X), np.asarray(z.y)) for z in task_zoo(spec, task)}


# -- diagnostics: η per model under each unit, and how much one DCA step closes ---------------------
def diagnostics(feats: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Per model: dispersion and η under each unit; for one training batch (B = min(256, N_train)),
    the fraction of the gap Eq. 7 closes along the top and the median eigen-direction of the batch
    Gram matrix (C's eigenvalues, which are those fractions) under each normalisation."""
    from transferkit.estimators.itm import adaptive_eta, class_dispersion, standardize

    raw = {}
    out: dict[str, Any] = {}
    for name, (X, y) in feats.items():
        yi = np.unique(y, return_inverse=True)[1]
        Xs = standardize(np.asarray(X, dtype=np.float64), "feature")
        c = int(yi.max()) + 1
        d = {u: class_dispersion(Xs, yi, c, u) for u in ("per_sqrt_dim", "class_separation", "raw")}
        raw[name] = d["raw"]
        rng = np.random.default_rng(0)
        b = min(256, int(round(0.8 * len(yi))))
        E = Xs[rng.choice(len(yi), b, replace=False)]
        lam = np.clip(np.linalg.eigvalsh(E @ E.T), 0, None)[::-1]
        top, med = float(lam[0]), float(np.median(lam))
        closes = {}
        for norm, denom in (("spectral", top), ("frobenius", float(np.sqrt((lam**2).sum()))),
                            ("trace", float(lam.sum()))):
            closes[norm] = {"top": top / denom, "median": med / denom}  # per unit η
        out[name] = {"D": int(X.shape[1]), "N": int(len(yi)), "dispersion": d, "batch": b,
                     "closes_per_unit_eta": closes,
                     "eta": {"per_sqrt_dim": adaptive_eta(d["per_sqrt_dim"], 0.5, 1.0),
                             "class_separation": adaptive_eta(d["class_separation"], 0.5, 1.0)}}
    anchor = statistics.median(raw.values())
    for name in out:
        out[name]["eta"]["raw_zoo"] = adaptive_eta(raw[name], 0.5, anchor)
    return {"models": out, "raw_zoo_anchor": anchor}


# -- scoring ---------------------------------------------------------------------------------------
def score_task(task: str, feats: dict, config: str, seed: int, raw_anchor: float) -> dict[str, Any]:
    import torch

    from transferkit.estimators import get_estimator

    params = dict(CONFIGS[config])
    if config == "eta_raw_zoo":
        params["dispersion_anchor"] = raw_anchor
    models: dict[str, Any] = {}
    total = 0.0
    for name, (X, y) in feats.items():
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = get_estimator("itm", **params).fit(X, y, random_state=seed)
        dt = time.perf_counter() - t0
        total += dt
        models[name] = {"score": est.score_, **est.components_, "seconds": dt}
    return {"task": task, "config": config, "seed": seed, "params": params, "models": models,
            "seconds": total, "torch_threads": torch.get_num_threads(), "load": os.getloadavg()[0]}


def run(tasks: list[str], configs: list[str], seeds: list[int], out: Path) -> None:
    from transferkit.benchmark import load_spec

    spec = load_spec(SPEC)
    names = [d.name for d in spec.datasets]
    for task in tasks:
        if task not in names:
            sys.exit(f"itm_readings: unknown task {task!r} (spec has {names})")
    for task in tasks:
        todo = [(c, s) for c in configs for s in seeds if not (out / "scores" / f"{task}__{c}__{s}.json").exists()]
        diag_path = out / "diagnostics" / f"{task}.json"
        if not todo and diag_path.exists():
            print(f"{task}: done", flush=True)
            continue
        t0 = time.perf_counter()
        feats = load_features(spec, task)
        print(f"{task}: features of {len(feats)} models ({time.perf_counter() - t0:.0f} s)", flush=True)
        if not diag_path.exists():
            atomic_write(diag_path, json.dumps(diagnostics(feats), indent=1))
        anchor = json.loads(diag_path.read_text())["raw_zoo_anchor"]
        for i, (c, s) in enumerate(todo):
            res = score_task(task, feats, c, s, anchor)
            atomic_write(out / "scores" / f"{task}__{c}__{s}.json", json.dumps(res, indent=1))
            print(f"  [{i + 1}/{len(todo)}] {task} {c} seed {s}: {res['seconds']:.1f} s "
                  f"(load {res['load']:.1f})", flush=True)


# -- summary ---------------------------------------------------------------------------------------
def _metrics(scores: dict[str, float], acc: dict[str, float]) -> tuple[float, float]:
    from transferkit.metrics import regret, weighted_tau_scipy

    names = sorted(scores)
    s, a = [scores[m] for m in names], [acc[m] for m in names]
    return weighted_tau_scipy(s, a), regret(s, a)


def summarize(out: Path, seeds: list[int]) -> dict[str, Any]:
    from transferkit.benchmark.uncertainty import _percentiles, bootstrap_ground_truth, load_records, metric_samples
    from transferkit.metrics import kendall_tau

    files = sorted((out / "scores").glob("*.json"))
    if not files:
        sys.exit(f"itm_readings: no scores under {out / 'scores'}; run without --report-only first")
    runs: dict[tuple[str, str, int], dict] = {}
    for f in files:
        r = json.loads(f.read_text())
        runs[(r["task"], r["config"], r["seed"])] = r
    zoo = sorted(next(iter(runs.values()))["models"])
    gt = ground_truth(zoo)
    tasks = sorted({t for t, _, _ in runs})
    configs = [c for c in CONFIGS if any(k[1] == c for k in runs)]

    boot = {}
    for t in tasks:
        if t in gt and gt[t]["source"] == GT_NEW.name:
            try:
                boot[t] = bootstrap_ground_truth({t: load_records(GT_NEW, t, zoo)}, n_boot=1000, seed=0)[t]
            except (FileNotFoundError, ValueError) as exc:
                print(f"  {t}: no bootstrap ({exc})")

    rows: dict[str, dict[str, Any]] = {}
    samples: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}  # (reading, task) -> bootstrap draws
    for c in configs:
        for reading, key in READINGS.items():
            name = f"{c}/{reading}"
            per_task: dict[str, Any] = {}
            for t in tasks:
                got = [runs[(t, c, s)] for s in seeds if (t, c, s) in runs]
                if len(got) < len(seeds):
                    continue
                vecs = [{m: r["models"][m][key] for m in zoo} for r in got]
                entry: dict[str, Any] = {
                    "seconds": statistics.mean(r["seconds"] for r in got),
                    "distinct": statistics.mean(len(set(v.values())) for v in vecs),
                    "saturated": statistics.mean(sum(r["models"][m]["itm_saturated"] for m in zoo) for r in got),
                    "seed_kendall": statistics.mean([kendall_tau([a[m] for m in zoo], [b[m] for m in zoo])
                                                     for a, b in combinations(vecs, 2)] or [math.nan]),
                }
                if t in gt:
                    # the seeds are independent 4:1 splits, so their average is a draw of the
                    # repeated-split estimator with len(seeds) splits (one draw: no spread)
                    avg = {m: statistics.mean(v[m] for v in vecs) for m in zoo}
                    entry["tau_w_avg"], entry["regret_avg"] = _metrics(avg, gt[t]["acc"])
                    mt = [_metrics(v, gt[t]["acc"]) for v in vecs]
                    entry["tau_w"] = statistics.mean(x for x, _ in mt)
                    entry["tau_w_sd"] = statistics.stdev(x for x, _ in mt) if len(mt) > 1 else 0.0
                    entry["regret"] = statistics.mean(x for _, x in mt)
                    entry["regret_sd"] = statistics.stdev(x for _, x in mt) if len(mt) > 1 else 0.0
                    if t in boot:
                        tw = np.mean([metric_samples(v, boot[t], "weighted_tau_scipy") for v in vecs], axis=0)
                        rg = np.mean([metric_samples(v, boot[t], "regret") for v in vecs], axis=0)
                        samples[(name, t)] = (tw, rg)
                        entry["tau_w_ci"] = list(_percentiles(tw, 0.95))
                        entry["regret_ci"] = list(_percentiles(rg, 0.95))
                per_task[t] = entry
            rows[name] = per_task

    base = rows.get("default/best_acc", {})
    gt_tasks = [t for t in tasks if t in gt and t in base]
    complete = [n for n in rows if all(t in rows[n] for t in gt_tasks)]
    summary: dict[str, Any] = {"tasks_with_ground_truth": gt_tasks, "seeds": seeds,
                               "ground_truth": {t: gt[t]["source"] for t in gt_tasks}, "readings": {},
                               "incomplete": {n: sorted(rows[n]) for n in rows if n not in complete}}
    for name in complete:
        per_task = rows[name]
        s = {"per_task": per_task}
        if gt_tasks:
            s["mean_tau_w"] = statistics.mean(per_task[t]["tau_w"] for t in gt_tasks)
            s["mean_regret"] = statistics.mean(per_task[t]["regret"] for t in gt_tasks)
            s["mean_tau_w_avg"] = statistics.mean(per_task[t]["tau_w_avg"] for t in gt_tasks)
            s["mean_regret_avg"] = statistics.mean(per_task[t]["regret_avg"] for t in gt_tasks)
            # spread over seeds of the task-mean (seed s of every task)
            by_seed = []
            for i, sd in enumerate(seeds):
                vals = []
                for t in gt_tasks:
                    r = runs[(t, name.split("/")[0], sd)]
                    v = {m: r["models"][m][READINGS[name.split("/")[1]]] for m in zoo}
                    vals.append(_metrics(v, gt[t]["acc"]))
                by_seed.append((statistics.mean(x for x, _ in vals), statistics.mean(x for _, x in vals)))
            if all((name, t) in samples for t in gt_tasks):  # interval of the task-mean over test images
                tw = np.mean([samples[(name, t)][0] for t in gt_tasks], axis=0)
                rg = np.mean([samples[(name, t)][1] for t in gt_tasks], axis=0)
                s["mean_tau_w_ci"] = list(_percentiles(tw, 0.95))
                s["mean_regret_ci"] = list(_percentiles(rg, 0.95))
            s["mean_tau_w_by_seed"] = [x for x, _ in by_seed]
            s["mean_regret_by_seed"] = [x for _, x in by_seed]
        s["mean_seconds"] = statistics.mean(e["seconds"] for e in per_task.values()) if per_task else math.nan
        s["mean_seed_kendall"] = statistics.mean(e["seed_kendall"] for e in per_task.values()) if per_task else math.nan
        summary["readings"][name] = s

    # leave one dataset (and its 10-shot variant) out: pick the reading with the best mean τw on the
    # other tasks, report it on the held-out one
    groups = sorted({group_of(t) for t in gt_tasks})
    lodo = {}
    names = complete
    for g in groups:
        train = [t for t in gt_tasks if group_of(t) != g]
        test = [t for t in gt_tasks if group_of(t) == g]
        if not train:
            continue
        pick = max(names, key=lambda n: statistics.mean(rows[n][t]["tau_w"] for t in train))
        lodo[g] = {"picked": pick, "held_out": {t: {"tau_w": rows[pick][t]["tau_w"], "regret": rows[pick][t]["regret"],
                                                    "default_tau_w": rows["default/best_acc"][t]["tau_w"],
                                                    "default_regret": rows["default/best_acc"][t]["regret"]}
                                                for t in test}}
    summary["lodo"] = lodo
    summary["all_tasks"] = rows  # every task with scores, with or without ground truth
    agreement: dict[str, dict[str, float]] = {}
    for c in configs:
        if c == "default":
            continue
        for t in tasks:
            pairs = [(runs[(t, c, sd)], runs[(t, "default", sd)]) for sd in seeds
                     if (t, c, sd) in runs and (t, "default", sd) in runs]
            if pairs:
                agreement.setdefault(c, {})[t] = statistics.mean(
                    kendall_tau([a["models"][m]["itm_best_val_acc"] for m in zoo],
                                [b["models"][m]["itm_best_val_acc"] for m in zoo]) for a, b in pairs)
    summary["agreement_with_default"] = agreement
    # paired with the default on every (task, seed) both have: robust to runs that are not complete
    paired: dict[str, Any] = {}
    for c in configs:
        for reading, key in READINGS.items():
            diffs = []
            for (t, cc, sd), r in runs.items():
                if cc != c or t not in gt or (t, "default", sd) not in runs:
                    continue
                mine = _metrics({m: r["models"][m][key] for m in zoo}, gt[t]["acc"])
                base_r = runs[(t, "default", sd)]
                ref = _metrics({m: base_r["models"][m]["itm_best_val_acc"] for m in zoo}, gt[t]["acc"])
                diffs.append((t, sd, mine[0], ref[0], mine[1], ref[1]))
            if diffs:
                n_tasks = len({d[0] for d in diffs})
                paired[f"{c}/{reading}"] = {
                    "pairs": len(diffs), "tasks": n_tasks,
                    "tau_w": statistics.mean(d[2] for d in diffs),
                    "default_tau_w": statistics.mean(d[3] for d in diffs),
                    "d_tau_w": statistics.mean(d[2] - d[3] for d in diffs),
                    "d_tau_w_sd": statistics.stdev(d[2] - d[3] for d in diffs) if len(diffs) > 1 else math.nan,
                    "d_regret": statistics.mean(d[4] - d[5] for d in diffs),
                    "d_regret_sd": statistics.stdev(d[4] - d[5] for d in diffs) if len(diffs) > 1 else math.nan,
                }
    summary["paired_with_default"] = paired
    if lodo:
        held = [v for g in lodo.values() for v in g["held_out"].values()]
        summary["lodo_mean"] = {k: statistics.mean(h[k] for h in held)
                                for k in ("tau_w", "regret", "default_tau_w", "default_regret")}
    return summary


def eta_tables(out: Path) -> list[str]:
    """Markdown: η per model and task under each unit of dis_φ, and how much one DCA step closes."""
    diags = {p.stem: json.loads(p.read_text()) for p in sorted((out / "diagnostics").glob("*.json"))}
    if not diags:
        return []
    tasks = list(diags)
    models = list(next(iter(diags.values()))["models"])
    lines = ["", "## η per model (Eq. 12 with η_b = 0.5)", "",
             "per √D: dis_b = 1 (the default); class separation: dis_b = 1; raw: "
             "dis_b = the zoo's median raw dispersion on the task (an anchor model of the zoo, as the paper "
             "anchors). Cells: per √D / class separation / raw.", "",
             "| model (D) | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for m in models:
        d = next(iter(diags.values()))["models"][m]["D"]
        cells = []
        for t in tasks:
            e = diags[t]["models"][m]["eta"]
            cells.append(f"{e['per_sqrt_dim']:.2f} / {e['class_separation']:.2f} / {e['raw_zoo']:.2f}")
        lines.append(f"| {m} ({d}) | " + " | ".join(cells) + " |")
    spread = {u: [max(v["models"][m]["eta"][u] for m in models) - min(v["models"][m]["eta"][u] for m in models)
                  for v in diags.values()] for u in ("per_sqrt_dim", "class_separation", "raw_zoo")}
    lines += ["", "Range of η over the zoo (max − min), mean over tasks: "
              + ", ".join(f"{u} {statistics.mean(v):.2f}" for u, v in spread.items()) + "."]
    lines += ["", "## How much one DCA step closes (one training batch per model, default η)", "",
              "Fraction of the gap Ê − Z that Eq. 7 closes along the top and the median eigen-direction of the "
              "batch Gram matrix E_j E_jᵀ (= C's eigenvalues), median over the zoo [range]. With B > D the "
              "Gram matrix has rank D < B, so the median direction of the 64-d CIFAR ResNets is in its null "
              "space (0).", "",
              "| task | B | spectral top | spectral median | frobenius top | frobenius median | trace top | "
              "trace median |", "|---|---|---|---|---|---|---|---|"]
    for t, v in diags.items():
        cells = []
        for norm in ("spectral", "frobenius", "trace"):
            for which in ("top", "median"):
                xs = [v["models"][m]["closes_per_unit_eta"][norm][which] * v["models"][m]["eta"]["per_sqrt_dim"]
                      for m in models]
                cells.append(f"{100 * statistics.median(xs):.2g} % [{100 * min(xs):.2g}–{100 * max(xs):.2g}]")
        b = v["models"][models[0]]["batch"]
        lines.append(f"| {t} | {b} | " + " | ".join(cells) + " |")
    return lines


def write_report(summary: dict[str, Any], out: Path) -> None:
    atomic_write(out / "summary.json", json.dumps(summary, indent=1))
    gt_tasks = summary["tasks_with_ground_truth"]
    sources = ", ".join(f"{t} ({summary['ground_truth'][t]})" for t in gt_tasks)
    lines = ["# ITM readings on the offline zoo", "",
             f"Tasks with ground truth: {sources}; "
             f"seeds {summary['seeds']}. τw = weighted_tau_scipy, regret in accuracy points (ties at the top "
             "count pessimistically). ± = sd over seeds of the task-mean. seconds = one zoo (10 models) per "
             "task, averaged over tasks, on the loaded 2-core machine.", "",
             "Columns 'avg' score each model by its score averaged over the seeds (= the repeated 4:1 split "
             "estimator with that many splits; one draw, so no spread).", "",
             "Intervals [..]: 95 % bootstrap over the test images of every task (the fine-tuning's per-image "
             "records), of the task-mean of the seed-averaged metric.", "",
             "| reading | mean τw | ± | [95 % CI] | mean regret | ± | [95 % CI] | τw avg | regret avg | seed-to-seed Kendall τ | "
             "s / zoo | " + " | ".join(f"{t} τw / regret" for t in gt_tasks) + " |",
             "|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(gt_tasks)]
    for name, s in sorted(summary["readings"].items(), key=lambda kv: -kv[1].get("mean_tau_w", -9)):
        if "mean_tau_w" not in s:
            continue
        cells = [f"{s['per_task'][t]['tau_w']:+.2f} / {s['per_task'][t]['regret']:.1f}" for t in gt_tasks]
        tci, rci = s.get("mean_tau_w_ci", [math.nan] * 2), s.get("mean_regret_ci", [math.nan] * 2)
        lines.append(f"| {name} | {s['mean_tau_w']:+.3f} | {statistics.pstdev(s['mean_tau_w_by_seed']):.3f} | "
                     f"[{tci[0]:+.2f}, {tci[1]:+.2f}] | "
                     f"{s['mean_regret']:.2f} | {statistics.pstdev(s['mean_regret_by_seed']):.2f} | "
                     f"[{rci[0]:.2f}, {rci[1]:.2f}] | "
                     f"{s['mean_tau_w_avg']:+.3f} | {s['mean_regret_avg']:.2f} | "
                     f"{s['mean_seed_kendall']:.2f} | {s['mean_seconds']:.1f} | " + " | ".join(cells) + " |")
    if summary.get("lodo"):
        lines += ["", "## Leave one dataset out (pick the best mean τw on the other tasks)", "",
                  "| held out | picked | held-out τw | default τw | held-out regret | default regret |",
                  "|---|---|---|---|---|---|"]
        for g, v in summary["lodo"].items():
            for t, h in v["held_out"].items():
                lines.append(f"| {t} | {v['picked']} | {h['tau_w']:+.3f} | {h['default_tau_w']:+.3f} | "
                             f"{h['regret']:.1f} | {h['default_regret']:.1f} |")
        m = summary["lodo_mean"]
        lines.append(f"| mean | | {m['tau_w']:+.3f} | {m['default_tau_w']:+.3f} | {m['regret']:.2f} | "
                     f"{m['default_regret']:.2f} |")
    if summary.get("paired_with_default"):
        lines += ["", "## Paired with the default reading (every task with ground truth and seed both have)", "",
                  "Δ = reading − default/best_acc on the same (task, seed); sd over the pairs. Includes "
                  "configurations that did not finish every task.", "",
                  "| reading | pairs | tasks | τw | default τw | Δτw | sd | Δregret | sd |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, v in sorted(summary["paired_with_default"].items(), key=lambda kv: -kv[1]["d_tau_w"]):
            lines.append(f"| {name} | {v['pairs']} | {v['tasks']} | {v['tau_w']:+.3f} | {v['default_tau_w']:+.3f} | "
                         f"{v['d_tau_w']:+.3f} | {v['d_tau_w_sd']:.3f} | {v['d_regret']:+.2f} | "
                         f"{v['d_regret_sd']:.2f} |")
    lines += eta_tables(out)
    agree = summary.get("agreement_with_default", {})
    if agree:
        tasks = sorted({t for v in agree.values() for t in v})
        lines += ["", "## Ranking agreement with the default reading (same seed, best_acc)", "",
                  "Kendall τ between the zoo ranking of a configuration and the default's, mean over the seeds "
                  "both have (1 = the same ranking).", "",
                  "| configuration | " + " | ".join(tasks) + " | mean |", "|---|" + "---|" * (len(tasks) + 1)]
        for c, v in agree.items():
            cells = [f"{v[t]:+.2f}" if t in v else "" for t in tasks]
            lines.append(f"| {c} | " + " | ".join(cells) + f" | {statistics.mean(v.values()):+.2f} |")
    all_tasks = sorted({t for per in summary["all_tasks"].values() for t in per})
    lines += ["", "## Ties, saturation and seed-to-seed agreement, every task scored",
              "", "distinct = distinct score values over the 10 models (mean over seeds); saturated = models "
              "whose validation accuracy is 1.0 on every split (mean over seeds); κ = mean Kendall τ between "
              "the rankings of two seeds.", "",
              "| reading | " + " | ".join(all_tasks) + " |", "|---|" + "---|" * len(all_tasks)]
    for name, per in summary["all_tasks"].items():
        cells = [f"{per[t]['distinct']:.1f} / {per[t]['saturated']:.1f} / κ {per[t]['seed_kendall']:.2f}"
                 if t in per else "" for t in all_tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    atomic_write(out / "summary.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def timing(configs: list[str], repeats: int) -> None:
    """Wall time of one ITM call per configuration at N=5000, D=768, C=100 (benchmarks/estimators.py's
    seeded features), interleaved so that every configuration sees the same machine load."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from estimators import make_features  # benchmarks/estimators.py

    from transferkit.estimators import get_estimator

    X, y, _ = make_features(5000, 768, 100, 1000, 0)
    best: dict[str, list[float]] = {c: [] for c in configs}
    for r in range(repeats):
        for c in configs:
            params = {} if c == "library_default" else dict(CONFIGS[c])
            if c == "eta_raw_zoo":
                params["dispersion_anchor"] = 27.7  # any anchor: the cost does not depend on it
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                get_estimator("itm", **params).score(X, y, random_state=0)
            best[c].append(time.perf_counter() - t0)
            print(f"  repeat {r + 1} {c}: {best[c][-1]:.2f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    for c, ts in best.items():
        print(f"{c:<22} min {min(ts):.2f} s  median {statistics.median(ts):.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="all", help="comma list of spec datasets (default: all)")
    ap.add_argument("--configs", default="all", help=f"comma list of {', '.join(CONFIGS)} "
                    "(--timing also takes library_default: the library's current defaults)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--timing", action="store_true",
                    help="time one call per configuration at N=5000, D=768, C=100 instead")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        sys.exit(f"itm_readings: --seeds must be a comma list of integers; got {args.seeds!r}")
    configs = list(CONFIGS) if args.configs == "all" else args.configs.split(",")
    bad = [c for c in configs if c not in CONFIGS and not (args.timing and c == "library_default")]
    if bad:
        sys.exit(f"itm_readings: unknown configuration(s) {bad}; choose from {list(CONFIGS)}")
    if args.timing:
        timing(configs, args.repeats)
        return
    if not args.report_only:
        from transferkit.benchmark import load_spec

        tasks = [d.name for d in load_spec(SPEC).datasets] if args.tasks == "all" else args.tasks.split(",")
        run(tasks, configs, seeds, args.out)
    write_report(summarize(args.out, seeds), args.out)


if __name__ == "__main__":
    main()
