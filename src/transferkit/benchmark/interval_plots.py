"""Figures with bootstrap error bars: mean τw and mean top-1 regret of every method with their 95 % intervals
(``intervals.png``), baselines in grey. The other figures are in :mod:`.plots`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .analysis import Analysis
from .baselines import BASELINES
from .plots import METRIC_LABELS, _plt, _save
from .runner import BenchmarkResult

__all__ = ["plot_intervals"]


def plot_intervals(result: BenchmarkResult, analysis: Analysis, path: str | Path) -> Path:
    """Two panels (primary metric, top-1 regret): point and 95 % bootstrap interval of the mean per method."""
    plt = _plt()
    metrics = [m for m in (result.primary_metric, "regret") if m in analysis.mean]
    prim = analysis.mean[result.primary_metric]
    methods = sorted(result.methods, key=lambda m: np.nan_to_num(prim.get(m).point if prim.get(m) else math.nan,
                                                                 nan=-9))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 0.8 + 0.32 * len(methods)),
                             squeeze=False, sharey=True)
    y = np.arange(len(methods))
    for ax, metric in zip(axes[0], metrics):
        ivs = [analysis.mean[metric].get(m) for m in methods]
        for k, (m, iv) in enumerate(zip(methods, ivs)):
            if iv is None or math.isnan(iv.point):
                continue
            colour = "0.55" if m in BASELINES else "C0"
            if not math.isnan(iv.low):
                ax.errorbar(iv.point, k, xerr=[[max(iv.point - iv.low, 0)], [max(iv.high - iv.point, 0)]],
                            fmt="o", color=colour, ms=4, capsize=2, lw=1)
            else:
                ax.plot(iv.point, k, "o", color=colour, ms=4)
        if metric != "regret":
            ax.axvline(0, color="grey", lw=0.6)
        ax.set_xlabel(f"mean {METRIC_LABELS.get(metric, 'top-1 regret (points)' if metric == 'regret' else metric)}")
        ax.grid(alpha=0.3, axis="x")
    axes[0][0].set_yticks(y, methods, fontsize=8)
    fig.suptitle(f"{result.name}: mean over {len(result.datasets)} datasets, 95 % bootstrap intervals over test "
                 f"images ({analysis.n_boot} samples)", fontsize=9)
    fig.tight_layout()
    return _save(fig, Path(path))
