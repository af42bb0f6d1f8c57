"""The benchmark report: Markdown tables (headline: mean τw and top-1 regret with 95 % bootstrap intervals,
per-dataset τw and time; paired comparisons; leave-one-model-out; seed spread; ties; other metrics; ground truth
with intervals), CSV/JSON results and the figures, all in one folder.

Intervals need the per-image records of the ground truth (``<csv stem>_predictions/`` next to the CSV, written
by ``transferkit finetune``); without them the report has point values only and says so.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..reporting import atomic_write_text
from .analysis import Analysis, analyse, lower_is_better, tie_summary
from .baselines import BASELINES
from .plots import METRIC_LABELS, plot_all
from .runner import BenchmarkResult
from .uncertainty import Interval

__all__ = ["headline_markdown", "markdown_report", "write_report"]

_SUMMARY_METRICS = ("weighted_tau_scipy", "weighted_tau_itm", "kendall_tau", "spearman_rho",
                    "top1_relative_accuracy", "regret")
# estimator name -> method name in the published tables
_PUBLISHED_NAMES = {"logme": "LogME", "nleep": "NLEEP", "parc": "PARC", "sfda": "SFDA", "etran": "ETran",
                    "ped": "PED", "itm": "ITM", "leep": "LEEP", "gbc": "GBC"}


_NAN = Interval(math.nan, math.nan, math.nan)


def _f(v: float, digits: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _md_table(header: list[str], rows: list[list[str]], left: tuple[str, ...] = ("note",)) -> str:
    aligns = ["---"] + ["---" if h in left else "---:" for h in header[1:]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(aligns) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _bold_best(values: list[float], digits: int = 2) -> list[str]:
    finite = [v for v in values if not math.isnan(v)]
    best = max(finite) if finite else None
    return [("**" + _f(v, digits) + "**") if best is not None and v == best else _f(v, digits) for v in values]


def _label(method: str) -> str:
    return f"*{method}* (baseline)" if method in BASELINES else method


def headline_markdown(result: BenchmarkResult, metric: str | None = None, digits: int = 2,
                      analysis: Analysis | None = None) -> str:
    """The README / headline table. With an :class:`Analysis`: per method the mean τw and mean top-1 regret
    with their 95 % bootstrap intervals, τw per dataset, the datasets where the top score is tied, and the
    time. Without: methods × datasets of ``metric`` with the mean (best in bold). Sorted by the mean."""
    metric = metric or result.primary_metric
    if analysis is not None and metric in analysis.mean:
        return _headline_with_intervals(result, metric, digits, analysis)
    table, avg, secs = result.table(metric), result.average(metric), result.average("seconds")
    dsets = [d.dataset for d in result.datasets]
    methods = sorted(table, key=lambda m: -(avg[m] if not math.isnan(avg[m]) else -9))
    cols = {d: _bold_best([table[m].get(d, math.nan) for m in methods], digits) for d in dsets}
    means = _bold_best([avg[m] for m in methods], digits)
    rows = [[m] + [cols[d][i] for d in dsets] + [means[i], _f(secs[m], 2)] for i, m in enumerate(methods)]
    return _md_table(["method"] + dsets + ["mean", "time / dataset (s)"], rows)


def _sorted_methods(result: BenchmarkResult, metric: str) -> list[str]:
    avg = result.average(metric)
    return sorted(result.methods, key=lambda m: -(avg[m] if not math.isnan(avg.get(m, math.nan)) else -9))


def _headline_with_intervals(result: BenchmarkResult, metric: str, digits: int, an: Analysis) -> str:
    table, secs = result.table(metric), result.average("seconds")
    dsets = [d.dataset for d in result.datasets]
    methods = _sorted_methods(result, metric)
    rows = []
    for m in methods:
        top_ties = []
        for d in result.datasets:
            o = next((o for o in d.methods if o.method == m), None)
            if o is not None and o.error is None and m != "random" and tie_summary(o.scores)[1] > 1:
                top_ties.append(d.dataset)
        iv_regret = an.mean.get("regret", {}).get(m)
        rows.append([_label(m), an.mean[metric][m].format(digits),
                     iv_regret.format(digits) if iv_regret is not None else "—"]
                    + [_f(table[m].get(d, math.nan), digits) for d in dsets]
                    + [str(len(top_ties)) if top_ties else "", _f(secs.get(m, math.nan), 2)])
    label = METRIC_LABELS.get(metric, metric)
    return _md_table(["method", f"mean {label} [95 % CI]", "mean top-1 regret, points [95 % CI]"] + dsets
                     + ["top tied", "time / dataset (s)"], rows)


def _paired(result: BenchmarkResult, an: Analysis, metric: str) -> str:
    shares = an.paired.get(metric, {})
    methods = [m for m in _sorted_methods(result, result.primary_metric) if m in shares]
    if len(methods) < 2:
        return "Not available (needs bootstrap samples of at least two methods)."
    rows = []
    for a in methods:
        cells = []
        for b in methods:
            v = shares[a][b]
            txt = "·" if a == b else _f(v, 2)
            cells.append(f"**{txt}**" if a != b and not math.isnan(v) and (v > 0.975 or v < 0.025) else txt)
        rows.append([a] + cells)
    return _md_table(["A \\ B"] + methods, rows)


def _significant(an: Analysis, metric: str) -> list[str]:
    shares = an.paired.get(metric, {})
    out = []
    for a in shares:
        for b in shares[a]:
            if a < b and not math.isnan(shares[a][b]) and (shares[a][b] > 0.975 or shares[a][b] < 0.025):
                w, l = (a, b) if shares[a][b] > 0.5 else (b, a)
                out.append(f"{w} > {l} ({max(shares[a][b], 1 - shares[a][b]):.3f})")
    return sorted(out)


def _lomo_table(result: BenchmarkResult, an: Analysis) -> str:
    metric = result.primary_metric
    dsets = [d.dataset for d in result.datasets]
    avg = result.average(metric)
    rows = []
    for m in _sorted_methods(result, metric):
        by = an.lomo.get(m)
        if not by:
            continue
        vals = [by.get(d, math.nan) for d in dsets]
        mean = float(np.mean(vals)) if all(np.isfinite(vals)) else math.nan
        rows.append([_label(m), _f(avg.get(m, math.nan), 2), _f(mean, 2), _f(an.lomo_worst.get(m, math.nan), 2)]
                    + [_f(v, 2) for v in vals])
    return _md_table(["method", "mean (all models)", "mean, best model left out", "lowest mean, any one model out"]
                     + dsets, rows)


def _seed_table(result: BenchmarkResult, an: Analysis) -> str:
    if not an.seed_spread:
        return "No stochastic method was run at several seeds (`spread_seeds` in the spec)."
    seeds = sorted({s for v in an.seed_spread.values() for s in v}, key=int)
    rows = []
    for m, by in an.seed_spread.items():
        vals = [by.get(s, math.nan) for s in seeds]
        fin = [v for v in vals if np.isfinite(v)]
        rows.append([m] + [_f(v, 3) for v in vals] + [_f(max(fin) - min(fin) if len(fin) > 1 else math.nan, 3),
                                                      _f(an.seed_spread_datasets.get(m, math.nan), 3)])
    return _md_table(["method"] + [f"seed {s}" for s in seeds] + ["range of the mean", "largest range on a dataset"],
                     rows)


def _ties_table(result: BenchmarkResult) -> str:
    dsets = [d.dataset for d in result.datasets]
    rows = []
    for m in _sorted_methods(result, result.primary_metric):
        if m == "random":
            continue
        cells, any_tie = [], False
        for d in result.datasets:
            o = next((o for o in d.methods if o.method == m), None)
            if o is None or o.error is not None:
                cells.append("—")
                continue
            tied, top = tie_summary(o.scores)
            any_tie |= tied > 0
            cells.append("" if tied == 0 else f"{tied} tied" + (f", {top} at the top" if top > 1 else ""))
        if any_tie:
            rows.append([m] + cells)
    gt = []
    for d in result.datasets:
        tied, top = tie_summary(d.accuracies)
        gt.append("" if tied == 0 else f"{tied} tied" + (f", {top} at the top" if top > 1 else ""))
    rows.append(["*ground truth*"] + gt)
    return _md_table(["method"] + dsets, rows)


def _intervals_per_dataset(result: BenchmarkResult, an: Analysis, metric: str) -> str:
    dsets = [d.dataset for d in result.datasets]
    rows = [[_label(m)] + [an.per_dataset[metric].get(m, {}).get(d, _NAN).format(2) for d in dsets]
            for m in _sorted_methods(result, result.primary_metric)]
    return _md_table(["method"] + dsets, rows)


def _summary(result: BenchmarkResult) -> str:
    avgs = {k: result.average(k) for k in _SUMMARY_METRICS}
    secs = result.average("seconds")
    methods = sorted(result.methods, key=lambda m: -(avgs[result.primary_metric].get(m, math.nan)
                                                     if not math.isnan(avgs[result.primary_metric].get(m, math.nan))
                                                     else -9))
    rows = [[m] + [_f(avgs[k].get(m, math.nan)) for k in _SUMMARY_METRICS] + [_f(secs.get(m, math.nan), 2)]
            for m in methods]
    return _md_table(["method"] + [METRIC_LABELS.get(k, k) for k in _SUMMARY_METRICS] + ["time / dataset (s)"], rows)


def _ground_truth(result: BenchmarkResult, an: Analysis | None = None) -> str:
    dsets = [d.dataset for d in result.datasets]
    models = sorted({m for d in result.datasets for m in d.accuracies})
    rows = []
    for m in models:
        if an is not None:
            rows.append([m] + [an.ground_truth.get(d.dataset, {}).get(m, _NAN).format(1)
                               for d in result.datasets])
        else:
            rows.append([m] + [_f(d.accuracies.get(m, math.nan), 2) for d in result.datasets])
    return _md_table(["model"] + dsets, rows)


def _per_dataset(result: BenchmarkResult) -> str:
    parts = []
    for d in result.datasets:
        ext = [v for v in d.extract_seconds.values() if not math.isnan(v)]
        parts.append(f"### {d.dataset}\n\n{len(d.accuracies)} models, {d.n_images} images; feature extraction "
                     f"{sum(ext):.1f} s for the zoo (as recorded when the features were computed)."
                     + (f" No ground truth (left out): {', '.join(d.missing_ground_truth)}." if d.missing_ground_truth
                        else ""))
        rows = []
        for o in d.methods:
            if o.error:
                rows.append([o.method] + ["—"] * len(_SUMMARY_METRICS) + [_f(o.seconds, 2), "failed: " + o.error])
                continue
            best = max(o.scores, key=o.scores.get)
            tied, top = tie_summary(o.scores)
            note = (f"picks {best}" if top == 1 else f"{top} models tied at the top score") if o.method != "random" \
                else "a random pick"
            if tied and o.method != "random":
                note += f"; {tied} of {len(o.scores)} models share a score"
            if o.note:
                note += f"; {o.note}"
            rows.append([_label(o.method)] + [_f(o.metrics.get(k, math.nan)) for k in _SUMMARY_METRICS]
                        + [_f(o.seconds, 2), note])
        parts.append(_md_table(["method"] + [METRIC_LABELS.get(k, k) for k in _SUMMARY_METRICS]
                               + ["seconds", "note"], rows))
    return "\n\n".join(parts)


def _published(result: BenchmarkResult) -> str | None:
    gt = str(result.ground_truth or "")
    if not gt.startswith("published:"):
        return None
    from .published import published_metrics

    table = gt.split(":", 1)[1]
    try:
        pub = published_metrics(table)
    except KeyError:
        return None
    ours = result.table()
    dsets = [d.dataset for d in result.datasets]
    rows = []
    for m in result.methods:
        name = _PUBLISHED_NAMES.get(m)
        if name is None or name not in pub:
            continue
        rows.append([m] + [f"{_f(ours[m].get(d, math.nan), 2)} / {_f(pub[name].get(d, math.nan), 2)}" for d in dsets])
    if not rows:
        return None
    return ("Each cell: this run / published (same ground truth; the published numbers use their paper's "
            "own features and τ convention, see `published/README.md`).\n\n" + _md_table(["method"] + dsets, rows))


def markdown_report(result: BenchmarkResult, description: str = "", figures: list[str] | None = None,
                    analysis: Analysis | None = None) -> str:
    """The whole report as Markdown."""
    label = METRIC_LABELS.get(result.primary_metric, result.primary_metric)
    info = result.info
    n_models = len({m for d in result.datasets for m in d.accuracies})
    out = [f"# Benchmark `{result.name}`", ""]
    if description:
        out += [description.strip(), ""]
    out += [f"- ground truth: `{result.ground_truth}`",
            f"- zoo: {n_models} models; datasets: {', '.join(d.dataset for d in result.datasets)}",
            f"- methods: {', '.join(result.methods)}",
            f"- primary metric: {label} (`{result.primary_metric}` in `transferkit.metrics`)",
            f"- seed {info.get('seed', 0)}; {info.get('processor', '')} ({info.get('platform', '')}), "
            f"{info.get('torch_threads', '?')} torch threads; total run {info.get('seconds_total', math.nan):.0f} s",
            ""]
    an = analysis
    if an is not None:
        out += _analysis_sections(result, an, label)
    else:
        out += [f"## {label} per dataset", "",
                "Time = wall-clock of the method for the whole zoo on one dataset, features given (mean over "
                "datasets). No intervals: no per-image ground-truth records.", "", headline_markdown(result), ""]
    out += ["## All metrics (mean over datasets)", "", _summary(result), "",
            "## Ground truth (fine-tuned test accuracy, %" + (", [95 % bootstrap interval over test images])"
                                                             if an is not None else ")"),
            "", _ground_truth(result, an), ""]
    pub = _published(result)
    if pub:
        out += ["## Compared with the published numbers", "", pub, ""]
    out += ["## Per dataset", "", _per_dataset(result), ""]
    if figures:
        out += ["## Figures", ""] + [f"![{Path(f).stem}]({Path(f).name})" for f in figures] + [""]
    return "\n".join(out)


def _analysis_sections(result: BenchmarkResult, an: Analysis, label: str) -> list[str]:
    n = len(result.datasets)
    out = [f"## Headline: {label} and top-1 regret with 95 % intervals", "",
           f"Intervals: percentile bootstrap over the test images ({an.n_boot} samples; per dataset the test images "
           "are resampled with replacement and every model's ground truth is recomputed as the best accuracy over "
           "the fine-tuning grid and epochs, so the selection is inside the bootstrap; the method's scores stay "
           "fixed). The mean is over the "
           f"{n} datasets (sample b of every dataset). Top-1 regret: accuracy of the best model minus that of the "
           "model the method ranks first (percentage points; ties at the top score count the worst tied model). "
           "Baselines: *random* (expected value over random rankings; its interval from a fresh random ranking "
           "per sample), *params* (backbone parameters, head excluded), *source_accuracy* (ImageNet top-1 from the "
           "zoo file, only on the models that have one), and the `linear_probe` estimator. `top tied`: datasets on "
           "which several models share the method's top score. Time = wall-clock of the method for the whole zoo "
           "on one dataset, features given (mean over datasets; measured on a shared, loaded machine)."]
    if an.without_records:
        out += ["", f"**No intervals** for {', '.join(an.without_records)}: no per-image records next to the "
                    "ground-truth CSV, so the means have no interval either."]
    out += ["", headline_markdown(result, analysis=an), ""]
    for metric, title in ((result.primary_metric, label), ("regret", "top-1 regret")):
        if metric not in an.paired:
            continue
        sig = _significant(an, metric)
        better = "lower" if lower_is_better(metric) else "higher"
        out += [f"## Paired comparison: {title}", "",
                f"Share of the {an.n_boot} bootstrap samples in which the mean {title} of the row method is "
                f"{better} (better) than the column method's (ties count one half). Bold: > 0.975 or < 0.025 "
                "(a difference the ground-truth noise does not explain). This covers the noise of the test images only: "
                "the comparison is paired (both methods meet the same resampled ground truth), so a small but "
                "consistent difference on a few datasets can be significant here and still not carry over to other "
                "datasets, zoos or estimator seeds (see the stability tables). Sorted by the mean "
                f"{label}.", "", _paired(result, an, metric), "",
                ("Significant differences: " + "; ".join(sig) + ".") if sig else
                "No difference between two methods is significant at this level.", ""]
    out += [f"## {label} per dataset with 95 % intervals", "", _intervals_per_dataset(result, an, result.primary_metric),
            ""]
    if "regret" in an.per_dataset:
        out += ["## Top-1 regret per dataset with 95 % intervals (points)", "",
                _intervals_per_dataset(result, an, "regret"), ""]
    out += ["## Stability: leave one model out", "",
            f"{label} recomputed with the best model of each dataset (by its ground truth) left out, and the lowest "
            "mean over leaving out any one model of the zoo (a method that only finds the one strong model drops).",
            "", _lomo_table(result, an), "",
            "## Stability: estimator seeds", "",
            f"Mean {label} of the stochastic methods at each estimator seed (`random_state`), and the largest range "
            "over seeds on one dataset.", "", _seed_table(result, an), "",
            "## Ties", "",
            "Models that share a score with another model, per method and dataset (accuracy-based scores such as "
            "`knn1` and `linear_probe` saturate on easy few-shot tasks: many models at the same accuracy). Ties at "
            "the top count the worst tied model for regret; the rank correlations treat tied pairs as neither "
            "concordant nor discordant.", "", _ties_table(result), ""]
    return out


def write_report(result: BenchmarkResult, out_dir: str | Path, description: str = "",
                 plots: bool = True, ground_truth_csv: str | Path | None = None, n_boot: int = 1000,
                 log: Any = print) -> dict[str, Any]:
    """Write ``report.md``, ``metrics.csv``, ``scores.csv``, ``results.json``, ``intervals.csv``,
    ``paired.csv`` and the PNG figures. Intervals come from the per-image records next to
    ``ground_truth_csv`` (None: point values only)."""
    from ..reporting import write_csv

    out = Path(out_dir)
    description = description or str(result.info.get("description", ""))
    paths: dict[str, Any] = dict(result.save(out))
    an = analyse(result, ground_truth_csv, n_boot=n_boot, log=log) if ground_truth_csv else None
    figures = [str(p) for p in plot_all(result, out)] if plots else []
    if an is not None:
        from .interval_plots import plot_intervals

        paths["intervals"] = write_csv(out / "intervals.csv", an.rows())
        paths["paired"] = write_csv(out / "paired.csv", [
            {"metric": k, "method_a": a, "method_b": b, "share_a_better": v}
            for k, by in an.paired.items() for a, row in by.items() for b, v in row.items()])
        if plots:
            figures.append(str(plot_intervals(result, an, out / "intervals.png")))
    paths["figures"] = figures
    paths["analysis"] = an
    paths["report"] = atomic_write_text(out / "report.md", markdown_report(result, description, figures, an))
    return paths
