"""What `transferkit rank` shows and writes: the recommendation first, then one compact models x methods table;
scores.csv / scores.json with the same content and the run's provenance; the picture (rank.png)."""

from __future__ import annotations

import hashlib
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..consensus import AGGREGATIONS
from ..recommendation import Recommendation
from ..reporting import format_table

__all__ = ["render_recommendation", "render_method_table", "render_details", "score_rows", "scores_payload",
           "provenance", "plot_recommendation"]


def _pm(mean: float, std: float) -> str:
    return f"{mean:.4g} ± {std:.2g}" if std > 0 else f"{mean:.4g}"


def render_recommendation(rec: Recommendation) -> str:
    """The answer: recommended model, one-line confidence, the consensus table and what was left out."""
    head = (f"Recommended model: {rec.model}" if rec.model else "No single recommended model")
    used = ", ".join(rec.used) or "none"
    lines = [head, f"  {rec.confidence}",
             f"  consensus: {AGGREGATIONS[rec.aggregation].split(' (')[0]} of {used} "
             f"(chosen leave-one-dataset-out, docs/recommend.md)"]
    for m, why in rec.excluded.items():
        lines.append(f"  left out of the consensus: {m} - {why}")
    rows = rec.table_rows()
    for r in rows:
        r["consensus"] = f"{r['consensus']:.2f}"
    lines += ["", "consensus ranking (first / top3: informative methods that rank the model 1st / in the top 3)",
              format_table(rows, columns=["rank", "model", "consensus", "first", "top3"])]
    return "\n".join(lines)


def render_method_table(rec: Recommendation) -> str:
    """One compact table: models (consensus order) x methods, display ranks ('=2' = tie); notes below."""
    methods = list(rec.methods)
    rows = []
    for r in rec.ranking:
        row: dict[str, Any] = {"model": r.model, "consensus": r.rank}
        for m in methods:
            s = rec.methods[m]
            row[m] = "-" if s.error else s.ranks.get(r.model, "-")
        rows.append(row)
    notes = []
    for m in methods:
        s = rec.methods[m]
        if s.error:
            notes.append(f"{m}: skipped - {s.error}")
        elif s.uninformative:
            notes.append(f"{m}: uninformative here - {s.uninformative}")
    seeds = sorted({tuple(s.seeds) for s in rec.methods.values() if len(s.seeds) > 1})
    head = "ranks by method (1 = best, '=' marks a tie"
    head += f"; stochastic methods averaged over seeds {', '.join(map(str, seeds[0]))})" if seeds else ")"
    return "\n".join([head, format_table(rows), *notes])


def render_details(rec: Recommendation) -> str:
    """--verbose: each method's scores (mean ± std over seeds), ranks and time."""
    out = []
    for m, s in rec.methods.items():
        if s.error:
            out.append(f"\n{m}: skipped - {s.error}")
            continue
        order = sorted(s.scores, key=lambda k: -s.scores[k])
        rows = [{"rank": s.ranks[k], "model": k, "score": _pm(s.scores[k], s.std.get(k, 0.0))} for k in order]
        extra = f", seeds {s.seeds}, rho between seeds {s.seed_rho:.2f}" if s.seed_rho is not None else ""
        out.append(f"\n{m}  ({s.seconds:.2f} s for {len(s.scores)} models{extra})"
                   + (f"  [uninformative here: {s.uninformative}]" if s.uninformative else ""))
        out.append(format_table(rows))
    return "\n".join(out)


def score_rows(rec: Recommendation) -> list[dict[str, Any]]:
    """scores.csv: the consensus rows first, then every method's models in rank order."""
    rows: list[dict[str, Any]] = []
    for r in rec.ranking:
        rows.append({"method": "consensus", "model": r.model, "score": r.consensus, "std": "", "rank": r.rank,
                     "n_first": r.n_first, "n_top3": r.n_top3, "recommended": r.model == rec.model,
                     "seeds": "", "seconds": "", "note": ""})
    for m, s in rec.methods.items():
        if s.error:
            rows.append({"method": m, "model": "", "score": "", "rank": "", "note": f"skipped: {s.error}"})
            continue
        for k in sorted(s.scores, key=lambda k: -s.scores[k]):
            rows.append({"method": m, "model": k, "score": s.scores[k], "std": s.std.get(k, 0.0), "rank": s.ranks[k],
                         "seeds": " ".join(map(str, s.seeds)), "seconds": s.seconds,
                         "note": f"uninformative: {s.uninformative}" if s.uninformative else ""})
    return rows


def scores_payload(rec: Recommendation, left_out: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, Any]:
    """scores.json body: recommendation, consensus table, every method (mean/std/ranks/seeds/reason)."""
    return {
        "recommendation": {"model": rec.model, "confidence": rec.confidence, "aggregation": rec.aggregation,
                           "consensus_methods": rec.consensus_methods, "used": rec.used, "excluded": rec.excluded,
                           "margin": rec.margin, "spread": rec.spread, "n_informative": rec.n_informative},
        "consensus": rec.table_rows(),
        "methods": {m: {"scores": s.scores, "std": s.std, "ranks": s.ranks, "seeds": s.seeds,
                        "per_seed": s.per_seed, "seed_rho": s.seed_rho, "seconds": s.seconds, "error": s.error,
                        "uninformative": s.uninformative, "left_out": dict((left_out or {}).get(m, {}))}
                    for m, s in rec.methods.items()},
    }


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("transferkit", "numpy", "scipy", "scikit-learn", "torch", "timm"):
        if pkg in ("torch", "timm") and pkg not in sys.modules:
            continue  # not used by this run (feature files in): do not import torch just to name it
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def provenance(zoo: Sequence[Any], sources: Mapping[str, str], *, data: str | None, split: str | None,
               per_class: int | None, sample_seed: int, rec: Recommendation, demo: bool = False,
               method_params: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Where the numbers come from: data source + fingerprint, split, per-class, sample seed, estimator
    seeds, methods with their parameters, model specs with weight hashes, library versions."""
    from ..estimators import get_estimator

    y = np.ascontiguousarray(np.asarray(zoo[0].y))
    models: dict[str, Any] = {}
    datasets = []
    for z in zoo:
        meta = dict(getattr(z, "metadata", None) or {})
        src = sources.get(z.name, z.name)
        entry: dict[str, Any] = {"source": src, "n": int(len(z.y)), "dim": int(np.asarray(z.X).shape[1])}
        if Path(src).suffix == ".npz" and Path(src).exists():
            entry["file_sha256"] = _sha256(src)
        if "model" in meta:
            mm = meta["model"]
            entry.update(spec=mm.get("spec"), arch=mm.get("arch"), weights_sha256=mm.get("weights_sha256"),
                         preprocessing=meta.get("preprocessing"))
        if "dataset" in meta:
            datasets.append(meta["dataset"])
        models[z.name] = entry
    ds0 = datasets[0] if datasets else {}
    data_info = {
        "source": ds0.get("source") or data or ("transferkit demo zoo (scikit-learn digits)" if demo else
                                                "feature files (see models.*.source)"),
        "fingerprint": ds0.get("fingerprint"),
        "labels_sha256": hashlib.sha256(y.tobytes()).hexdigest(),
        "n_images": int(len(y)), "n_classes": int(len(np.unique(y))),
        "split": ds0.get("split", split), "per_class": per_class if data else ds0.get("per_class"),
        "selection": ds0.get("selection"), "sample_seed": sample_seed if (data or demo) else ds0.get("seed"),
    }
    methods = {}
    for m in rec.methods:
        try:
            methods[m] = get_estimator(m, **dict((method_params or {}).get(m, {}))).get_params()
        except (ValueError, TypeError):
            methods[m] = {}
    return {"data": data_info, "estimator_seeds": {m: s.seeds for m, s in rec.methods.items()},
            "methods": methods, "consensus": {"methods": rec.consensus_methods, "aggregation": rec.aggregation},
            "models": models, "versions": _versions()}


def plot_recommendation(rec: Recommendation, path: str | Path) -> Path:
    """PNG: models (consensus order) on the x axis, the consensus score (bars, min-max normalised) and each
    informative method's min-max normalised score (points); the recommended model highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..estimators import minmax
    from ..reporting import atomic_write

    models = [r.model for r in rec.ranking]
    cons = minmax({r.model: r.consensus for r in rec.ranking})
    x = np.arange(len(models))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(models) + 2.5), 4.2))
    colors = ["tab:orange" if m == rec.model else "lightgray" for m in models]
    ax.bar(x, [cons[m] for m in models], color=colors, edgecolor="black", linewidth=0.6, label="consensus")
    markers = "osD^v<>pP*Xh"
    shown = [m for m, s in rec.methods.items() if s.error is None and s.scores]
    for i, m in enumerate(shown):
        s = rec.methods[m]
        norm = minmax(s.scores)
        off = (i - (len(shown) - 1) / 2) * 0.6 / max(len(shown), 1)
        hollow = s.uninformative is not None
        ax.scatter(x + off, [norm.get(k, np.nan) for k in models], marker=markers[i % len(markers)], s=28, zorder=3,
                   facecolors="none" if hollow else None, edgecolors="gray" if hollow else None,
                   label=f"{m}{' (uninformative)' if hollow else ''}")
    ax.set_xticks(x, models, rotation=30, ha="right")
    ax.set_ylabel("score, min-max normalised over models")
    ax.set_ylim(-0.05, 1.1)
    ax.set_title(f"recommended: {rec.model}" if rec.model else "no single recommended model")
    ax.legend(fontsize=7, ncol=2, loc="upper right", framealpha=0.8)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=120))
    finally:
        plt.close(fig)


def render_dropped(rounds: Sequence[Any]) -> str:
    """The models successive halving dropped, by round (in that round's consensus order): they are not in the
    tables above, which rank the models scored on every image."""
    lines = []
    for r in rounds:
        gone = [m for m in r.order if m in r.models and m not in r.kept]
        if gone:
            lines.append(f"  round {r.index} of {len(rounds)} ({r.n_images} images): {', '.join(gone)}")
    if not lines:
        return ""
    return ("dropped early as clearly worse (successive halving; `--budget full` ranks every model on every "
            "image):\n" + "\n".join(lines))
