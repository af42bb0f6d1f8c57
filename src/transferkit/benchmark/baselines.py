"""Static baseline rows of every benchmark report, scored and compared like any method.

* ``random`` — a random ranking of the zoo. Its metrics are the expectation over ``N_RANDOM`` random rankings
  (τ ≈ 0; regret = mean gap to the best model); its bootstrap interval pairs a fresh random ranking with every
  ground-truth sample (:func:`transferkit.benchmark.uncertainty.random_score_samples`). The scores stored for
  it are one seeded permutation (for the score-vs-accuracy plots only).
* ``params`` — the backbone's parameter count, classifier head excluded (bigger = predicted better), counted
  from the built model (timm, local-dir or checkpoint) and cached in ``<cache_dir>/param_counts.json``.
* ``source_accuracy`` — the source (ImageNet) top-1 a zoo entry declares with ``imagenet_top1:``; scored on
  the models that have one (the report says on how many), left out when fewer than two do.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..models import ModelEntry
from .batch_metrics import BATCH_METRICS, batch_metric

__all__ = ["BASELINES", "N_RANDOM", "backbone_parameters", "baseline_outcomes", "outcome_metrics",
           "random_expected_metrics"]

BASELINES = ("random", "params", "source_accuracy")
N_RANDOM = 1000


def random_expected_metrics(accuracies: Mapping[str, float], seed: int = 0, n: int = N_RANDOM) -> dict[str, float]:
    """Every rank metric of a random ranking, averaged over ``n`` seeded random rankings."""
    a = np.array([accuracies[m] for m in sorted(accuracies)], dtype=np.float64)
    rng = np.random.default_rng([int(seed), 7919])
    perms = np.argsort(rng.random((n, a.size)), axis=1).astype(np.float64)
    out = {k: float(np.nanmean(batch_metric(perms, a, k))) for k in BATCH_METRICS}
    out["n_models"] = float(a.size)
    return out


def outcome_metrics(method: str, scores: Mapping[str, float], accuracies: Mapping[str, float],
                    seed: int = 0) -> dict[str, float]:
    """Rank metrics of one method's scores against the ground truth of the models it scored."""
    from ..metrics import rank_metrics

    acc = {m: accuracies[m] for m in scores}
    if method == "random":
        return random_expected_metrics(acc, seed)
    return rank_metrics(scores, acc)


def _param_key(entry: ModelEntry) -> str:
    o = entry.options
    doc = {"spec": entry.spec, "model_args": o.get("model_args", {}), "num_classes": o.get("num_classes"),
           "layer": o.get("layer")}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:20]


def count_backbone_parameters(entry: ModelEntry) -> int:
    """Parameters of the built model minus those of its classifier head (``get_classifier()``)."""
    from ..models import resolve_model

    model = resolve_model(entry).build()
    total = sum(p.numel() for p in model.parameters())
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    head_n = sum(p.numel() for p in head.parameters()) if hasattr(head, "parameters") else 0
    return int(total - head_n)


def backbone_parameters(entries: Sequence[ModelEntry], cache_dir: str | Path | None = None) -> dict[str, int]:
    """``{name: backbone parameter count}``, cached by spec in ``<cache_dir>/param_counts.json``."""
    from ..reporting import write_json

    path = Path(cache_dir) / "param_counts.json" if cache_dir else None
    cache: dict[str, int] = {}
    if path is not None and path.exists():
        try:
            cache = {k: int(v) for k, v in json.loads(path.read_text()).items()}
        except (ValueError, AttributeError):
            cache = {}
    out, dirty = {}, False
    for e in entries:
        key = _param_key(e)
        if key not in cache:
            cache[key] = count_backbone_parameters(e)
            dirty = True
        out[e.name] = cache[key]
    if dirty and path is not None:
        write_json(path, cache)
    return out


def baseline_outcomes(entries: Sequence[ModelEntry], accuracies: Mapping[str, float], *,
                      baselines: Sequence[str] = BASELINES, cache_dir: str | Path | None = None,
                      seed: int = 0) -> list:
    """MethodOutcome rows of the requested baselines for the models of ``entries`` (those with ground truth)."""
    from .runner import MethodOutcome

    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; known: {list(BASELINES)}")
    names = [e.name for e in entries]
    out = []
    for b in baselines:
        if b == "source_accuracy" and not any("imagenet_top1" in e.info for e in entries):
            continue  # the zoo file gives no source accuracy: no row
        t0 = time.perf_counter()
        note, error, scores = "", None, {}
        if b == "random":
            perm = np.random.default_rng(int(seed)).permutation(len(names))
            scores = {m: float(r) for m, r in zip(names, perm)}
            note = f"expected value over {N_RANDOM} random rankings"
        elif b == "params":
            scores = {m: float(v) for m, v in backbone_parameters(entries, cache_dir).items()}
            note = "backbone parameters, head excluded"
        else:
            scores = {e.name: float(e.info["imagenet_top1"]) for e in entries if "imagenet_top1" in e.info}
            note = f"ImageNet top-1 from the zoo file, on {len(scores)} of {len(names)} models"
            if len(scores) < 2:
                error = (f"needs imagenet_top1 in the zoo file for at least 2 models; {len(scores)} of "
                         f"{len(names)} have one")
        o = MethodOutcome(b, scores if error is None else {}, time.perf_counter() - t0, error=error, note=note)
        if error is None:
            o.metrics = outcome_metrics(b, scores, accuracies, seed)
        out.append(o)
    return out


def is_baseline(method: str) -> bool:
    return method in BASELINES


def finite(v: float) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))
