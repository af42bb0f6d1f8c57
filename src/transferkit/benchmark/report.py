"""The benchmark report: Markdown tables (headline metric per dataset, other metrics, ground truth, timings),
CSV/JSON results and the figures, all in one folder."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..reporting import atomic_write_text
from .plots import METRIC_LABELS, plot_all
from .runner import BenchmarkResult

__all__ = ["headline_markdown", "markdown_report", "write_report"]

_SUMMARY_METRICS = ("weighted_tau_scipy", "weighted_tau_itm", "kendall_tau", "spearman_rho",
                    "top1_relative_accuracy", "regret")
# estimator name -> method name in the published tables
_PUBLISHED_NAMES = {"logme": "LogME", "nleep": "NLEEP", "parc": "PARC", "sfda": "SFDA", "etran": "ETran",
                    "ped": "PED", "itm": "ITM", "leep": "LEEP", "gbc": "GBC"}


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


def headline_markdown(result: BenchmarkResult, metric: str | None = None, digits: int = 2) -> str:
    """Methods × datasets table of ``metric`` with the mean and the mean wall-clock per dataset (best in bold).

    Methods are sorted by their mean; this is the table for the README."""
    metric = metric or result.primary_metric
    table, avg, secs = result.table(metric), result.average(metric), result.average("seconds")
    dsets = [d.dataset for d in result.datasets]
    methods = sorted(table, key=lambda m: -(avg[m] if not math.isnan(avg[m]) else -9))
    cols = {d: _bold_best([table[m].get(d, math.nan) for m in methods], digits) for d in dsets}
    means = _bold_best([avg[m] for m in methods], digits)
    rows = [[m] + [cols[d][i] for d in dsets] + [means[i], _f(secs[m], 2)] for i, m in enumerate(methods)]
    return _md_table(["method"] + dsets + ["mean", "time / dataset (s)"], rows)


def _summary(result: BenchmarkResult) -> str:
    avgs = {k: result.average(k) for k in _SUMMARY_METRICS}
    secs = result.average("seconds")
    methods = sorted(result.methods, key=lambda m: -(avgs[result.primary_metric].get(m, math.nan)
                                                     if not math.isnan(avgs[result.primary_metric].get(m, math.nan))
                                                     else -9))
    rows = [[m] + [_f(avgs[k].get(m, math.nan)) for k in _SUMMARY_METRICS] + [_f(secs.get(m, math.nan), 2)]
            for m in methods]
    return _md_table(["method"] + [METRIC_LABELS.get(k, k) for k in _SUMMARY_METRICS] + ["time / dataset (s)"], rows)


def _ground_truth(result: BenchmarkResult) -> str:
    dsets = [d.dataset for d in result.datasets]
    models = sorted({m for d in result.datasets for m in d.accuracies})
    rows = []
    for m in models:
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
            rows.append([o.method] + [_f(o.metrics.get(k, math.nan)) for k in _SUMMARY_METRICS]
                        + [_f(o.seconds, 2), f"picks {best}"])
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


def markdown_report(result: BenchmarkResult, description: str = "", figures: list[str] | None = None) -> str:
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
            "", f"## {label} per dataset", "",
            "Time = wall-clock of the method for the whole zoo on one dataset, features given (mean over datasets).",
            "", headline_markdown(result), "", "## All metrics (mean over datasets)", "", _summary(result), "",
            "## Ground truth (fine-tuned test accuracy, %)", "", _ground_truth(result), ""]
    pub = _published(result)
    if pub:
        out += ["## Compared with the published numbers", "", pub, ""]
    out += ["## Per dataset", "", _per_dataset(result), ""]
    if figures:
        out += ["## Figures", ""] + [f"![{Path(f).stem}]({Path(f).name})" for f in figures] + [""]
    return "\n".join(out)


def write_report(result: BenchmarkResult, out_dir: str | Path, description: str = "",
                 plots: bool = True) -> dict[str, Any]:
    """Write ``report.md``, ``metrics.csv``, ``scores.csv``, ``results.json`` and the PNG figures."""
    out = Path(out_dir)
    description = description or str(result.info.get("description", ""))
    paths: dict[str, Any] = dict(result.save(out))
    figures = [str(p) for p in plot_all(result, out)] if plots else []
    paths["figures"] = figures
    paths["report"] = atomic_write_text(out / "report.md", markdown_report(result, description, figures))
    return paths
