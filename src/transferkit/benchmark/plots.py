"""Benchmark figures (matplotlib, Agg backend; every PNG written atomically).

* :func:`plot_heatmap` — methods × datasets heat map of the primary metric (e.g. weighted τ).
* :func:`plot_time_vs_metric` — mean wall-clock per dataset (log scale) against the mean metric.
* :func:`plot_score_vs_accuracy` — one panel per method: each model's score against its accuracy.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..reporting import temp_file_beside
from .runner import BenchmarkResult, DatasetResult

__all__ = ["METRIC_LABELS", "plot_all", "plot_heatmap", "plot_score_vs_accuracy", "plot_time_vs_metric"]

METRIC_LABELS = {
    "weighted_tau_scipy": "weighted τ (scipy)",
    "weighted_tau_itm": "weighted τ (ITM Eq. 1)",
    "weighted_tau_modelspider": "weighted τ (Model-Spider)",
    "kendall_tau": "Kendall τ",
    "spearman_rho": "Spearman ρ",
    "pearson_r": "Pearson r",
    "top1_relative_accuracy": "top-1 relative accuracy",
}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path, ".png")  # 0o666 & ~umask, not 0600
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=130, bbox_inches="tight", metadata={"Software": None})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        _plt().close(fig)
    return path


def plot_heatmap(result: BenchmarkResult, path: str | Path, metric: str | None = None) -> Path:
    """Methods (rows) × datasets (columns, plus the mean) coloured by ``metric`` in [-1, 1]."""
    plt = _plt()
    metric = metric or result.primary_metric
    table, avg = result.table(metric), result.average(metric)
    methods = sorted(table, key=lambda m: -np.nan_to_num(avg[m], nan=-9))
    dsets = [d.dataset for d in result.datasets]
    vals = np.array([[table[m].get(d, math.nan) for d in dsets] + [avg[m]] for m in methods])
    fig, ax = plt.subplots(figsize=(1.0 + 0.95 * (len(dsets) + 1), 0.8 + 0.45 * len(methods)))
    im = ax.imshow(np.ma.masked_invalid(vals), cmap="RdYlGn", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(dsets) + 1), dsets + ["mean"], rotation=30, ha="right")
    ax.set_yticks(range(len(methods)), methods)
    for i in range(vals.shape[0]):
        for j in range(vals.shape[1]):
            ax.text(j, i, "—" if math.isnan(vals[i, j]) else f"{vals[i, j]:.2f}", ha="center", va="center",
                    fontsize=8, fontweight="bold" if j == vals.shape[1] - 1 else None)
    ax.axvline(len(dsets) - 0.5, color="k", lw=1)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02, label=METRIC_LABELS.get(metric, metric))
    ax.set_title(f"{result.name}: {METRIC_LABELS.get(metric, metric)}")
    return _save(fig, Path(path))


def plot_time_vs_metric(result: BenchmarkResult, path: str | Path, metric: str | None = None) -> Path:
    """Mean wall-clock per dataset (whole zoo, log x) against the mean ``metric`` of every method."""
    plt = _plt()
    metric = metric or result.primary_metric
    avg, secs = result.average(metric), result.average("seconds")
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for m in result.methods:
        if math.isnan(avg.get(m, math.nan)) or math.isnan(secs.get(m, math.nan)):
            continue
        t = max(secs[m], 1e-4)
        ax.scatter(t, avg[m], s=40)
        ax.annotate(m, (t, avg[m]), textcoords="offset points", xytext=(4, 3), fontsize=8)
    ax.set_xscale("log")
    ax.margins(x=0.2, y=0.1)
    ax.set_xlabel("wall-clock per dataset, whole zoo (s, log scale)")
    ax.set_ylabel(f"mean {METRIC_LABELS.get(metric, metric)}")
    ax.axhline(0, color="grey", lw=0.6)
    ax.grid(alpha=0.3)
    ax.set_title(f"{result.name}: accuracy of the ranking vs cost")
    return _save(fig, Path(path))


def plot_score_vs_accuracy(result: BenchmarkResult, dataset: DatasetResult, path: str | Path) -> Path:
    """One panel per method: score (x) against fine-tuned accuracy (y) for every model of the zoo."""
    plt = _plt()
    outs = [o for o in dataset.methods if o.error is None and o.scores]
    n = max(1, len(outs))
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.9 * rows), squeeze=False)
    models = sorted(dataset.accuracies)
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    for ax, o in zip(axes.flat, outs):
        for m, s in o.scores.items():
            ax.scatter(s, dataset.accuracies[m], color=colours[m], s=28, label=m)
        tau = o.metrics.get(result.primary_metric, math.nan)
        ax.set_title(f"{o.method}  ({result.primary_metric.replace('weighted_tau', 'τw')} {tau:+.2f})", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(outs):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("fine-tuned accuracy (%)", fontsize=8)
    handles = [plt.Line2D([], [], marker="o", ls="", color=colours[m], label=m) for m in models]
    fig.legend(handles=handles, loc="lower center", ncol=min(5, len(models)), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, -0.02 - 0.025 * math.ceil(len(models) / 5)))
    fig.suptitle(f"{result.name} / {dataset.dataset}: score vs accuracy", fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_all(result: BenchmarkResult, out_dir: str | Path) -> list[Path]:
    """Every figure of a benchmark into ``out_dir``."""
    out = Path(out_dir)
    paths = [plot_heatmap(result, out / "heatmap.png"), plot_time_vs_metric(result, out / "time_vs_metric.png")]
    for d in result.datasets:
        paths.append(plot_score_vs_accuracy(result, d, out / f"score_vs_accuracy_{d.dataset}.png"))
    return paths
