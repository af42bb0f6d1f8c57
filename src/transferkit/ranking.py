"""Rank a model zoo on one dataset with several estimators: the engine behind `transferkit rank`.

Data flow: feature files (or extracted features) -> scores per method -> ranked table ->
optional rank metrics against ground-truth accuracies.
"""

from __future__ import annotations

import csv
import math
import time
import zipfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .estimators import get_estimator, score_zoo

__all__ = ["ZooFeatures", "MethodResult", "RankResults", "check_accuracies", "load_feature_file", "rank_zoo",
           "read_ground_truth", "DEFAULT_METHODS"]

#: The consensus ingredients (PARC, LEEP, ETran) plus the two single methods with the best mean tau_w on the
#: 10-task offline benchmark (linear_probe, also the best on top-1 regret, and hscore_shrinkage;
#: docs/recommend.md): about 6 s together for 10 models at N=400. Left out: NLEEP (3 s, tau_w 0.42), LogME and
#: SFDA (weak here; SFDA saturates; LogME is dimension-biased when N < D) and ITM (15-60 s at small N: 5 folds).
DEFAULT_METHODS = ("parc", "leep", "etran", "linear_probe", "hscore_shrinkage")


@dataclass
class ZooFeatures:
    """Features of one model on the target data (labels shared by the whole zoo)."""

    name: str
    X: np.ndarray
    y: np.ndarray
    P: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # extraction metadata (model, weights hash, data)


@dataclass
class MethodResult:
    method: str
    scores: dict[str, float]
    seconds: float
    error: str | None = None
    components: dict[str, dict[str, float]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # model -> why this method left it out

    def ranking(self) -> list[tuple[str, float]]:
        return sorted(self.scores.items(), key=lambda kv: -kv[1])


class RankResults(list):
    """The per-method results of :func:`rank_zoo` (a list of :class:`MethodResult`) with the answer on top:
    ``.recommendation`` is the consensus recommendation built from these scores (one seed)."""

    consensus_methods: tuple[str, ...] = ()

    @property
    def recommendation(self) -> Any:
        from .consensus import CONSENSUS_AGGREGATION, CONSENSUS_METHODS
        from .recommendation import _recommendation, summarize

        summaries = {r.method: summarize(r.method, [r.scores] if r.scores else [], [self.seed], r.seconds, r.error,
                                         models=self.models) for r in self}
        names = list(self.models)
        ingredients = [m for m in (self.consensus_methods or CONSENSUS_METHODS)]
        missing = [m for m in ingredients if m not in summaries]
        for m in missing:
            summaries[m] = summarize(m, [], [self.seed], 0.0, "not run (add it to methods)")
        rec = _recommendation(names, summaries, ingredients, CONSENSUS_AGGREGATION)
        rec.results = list(self)
        return rec

    seed: int = 0
    models: tuple[str, ...] = ()


def load_feature_file(path: str | Path, name: str | None = None) -> ZooFeatures:
    """Read a `.npz` with keys X (N x D), y (N), optional P (N x C_s)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"feature file not found: {path}")
    with path.open("rb") as fh:
        if fh.read(2) != b"PK":  # numpy calls any other bytes "pickled data"
            raise ValueError(f"{path}: not a readable .npz file (expected the zip archive that "
                             "numpy.savez writes, with keys X, y and optionally P)")
    try:
        with np.load(path, allow_pickle=False) as d:
            missing = {"X", "y"} - set(d.files)
            if missing:
                raise ValueError(f"{path}: missing key(s) {sorted(missing)}; a feature file has "
                                 f"X (N x D), y (N) and optionally P; found {d.files}")
            X, y = d["X"], d["y"]
            P = d["P"] if "P" in d.files else None
            meta = _metadata(d["metadata"]) if "metadata" in d.files else {}
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from exc
    except ValueError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: {exc}") from exc
    return ZooFeatures(name or path.stem, X, y, P, meta)


def _metadata(value: np.ndarray) -> dict[str, Any]:
    """The JSON metadata string that `transferkit extract` stores (provenance of rank's scores.json)."""
    import json

    try:
        meta = json.loads(str(value))
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _check_same_labels(zoo: Sequence[ZooFeatures]) -> None:
    ref = zoo[0]
    for z in zoo[1:]:
        if len(z.y) != len(ref.y) or not np.array_equal(np.asarray(z.y), np.asarray(ref.y)):
            raise ValueError(
                f"models {ref.name!r} and {z.name!r} have different labels: every feature file must "
                "come from the same images of the same target dataset, in the same order"
            )


def rank_zoo(
    zoo: Sequence[ZooFeatures],
    methods: Sequence[str] = DEFAULT_METHODS,
    *,
    random_state: int = 0,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    on_method: Callable[[str], None] | None = None,
) -> RankResults:
    """Score every model with every method. Methods that cannot run (e.g. LEEP without source
    probabilities) are reported with their error instead of stopping the others.

    The result is a list of :class:`MethodResult`; its ``.recommendation`` is the consensus answer
    (:func:`transferkit.recommendation.recommend` does the same with several seeds)."""
    if not zoo:
        raise ValueError("no models to rank")
    names = [z.name for z in zoo]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate model names: {names}")
    _check_same_labels(zoo)
    out = RankResults()
    out.seed, out.models = random_state, tuple(names)
    for method in methods:
        est = get_estimator(method, **dict((method_params or {}).get(method, {})))
        if on_method:
            on_method(method)
        if est.needs_source_probs and any(z.P is None for z in zoo):
            lacking = [z.name for z in zoo if z.P is None]
            out.append(MethodResult(method, {}, 0.0, error=f"needs source probabilities (key P); "
                                                            f"missing for {', '.join(lacking)}"))
            continue
        t0 = time.perf_counter()
        failed: dict[str, str] = {}  # one bad model must not lose the method for the others
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                scores = score_zoo(
                    {z.name: z.X for z in zoo}, zoo[0].y, method=est,
                    # only methods that read P see it: a bad P must not fail LogME & co.
                    source_probs={z.name: z.P for z in zoo} if est.needs_source_probs else None,
                    random_state=random_state,
                    on_error=lambda model, exc: failed.__setitem__(model, str(exc)),
                )
        except (ValueError, ArithmeticError) as exc:  # one method failing must not lose the others
            out.append(MethodResult(method, {}, time.perf_counter() - t0, error=str(exc), failed=failed))
            continue
        error = None
        if not scores:  # every model failed: one reason if they share it
            reasons = sorted(set(failed.values()))
            error = reasons[0] if len(reasons) == 1 else "; ".join(f"{m}: {r}" for m, r in failed.items())
        out.append(MethodResult(method, scores, time.perf_counter() - t0, error=error, failed=failed))
    return out


def check_accuracies(gt: dict[str, float], where: str) -> None:
    """Reject accuracies that cannot be right: not finite, negative, above 100, or a mix of percent
    (above 1) and fraction (at most 1) values in one table (90 and 0.8 would give a regret of 89.2)."""
    bad = {m: a for m, a in gt.items() if not math.isfinite(a) or a < 0 or a > 100}
    if bad:
        m, a = next(iter(bad.items()))
        raise ValueError(f"{where}: accuracy {a:g} of model {m!r} is not a number in [0, 100]")
    percent = {m: a for m, a in gt.items() if a > 1}
    fraction = {m: a for m, a in gt.items() if a <= 1}
    if percent and fraction:
        (mp, ap), (mf, af) = max(percent.items(), key=lambda kv: kv[1]), min(fraction.items(), key=lambda kv: kv[1])
        raise ValueError(f"{where}: accuracies mix percent and fraction scales ({mp}={ap:g} but {mf}={af:g}); "
                         "write all of them as percent (0-100) or all as fractions (0-1)")


def read_ground_truth(path: str | Path, dataset: str | None = None) -> dict[str, float]:
    """Read a ground-truth CSV with columns model, accuracy (and optionally dataset)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"ground-truth file not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: Excel's "CSV UTF-8" starts with a BOM
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{path}: empty ground-truth file")
    cols = {c.lower(): c for c in rows[0]}
    mcol = cols.get("model")
    acol = cols.get("accuracy") or cols.get("acc") or cols.get("top1")
    if mcol is None or acol is None:
        raise ValueError(f"{path}: needs columns 'model' and 'accuracy'; found {list(rows[0])}")
    dcol = cols.get("dataset")
    if dataset is not None and dcol is None:
        raise ValueError(f"{path}: has no 'dataset' column, so dataset {dataset!r} cannot be selected")
    if dataset is None and dcol is not None:
        names = sorted({r[dcol] for r in rows})
        if len(names) > 1:
            raise ValueError(f"{path}: holds several datasets ({', '.join(names)}); choose one "
                             "(--gt-dataset NAME)")
    gt: dict[str, float] = {}
    for r in rows:
        if dataset is not None and r[dcol] != dataset:
            continue
        if r[mcol] in gt:
            raise ValueError(f"{path}: model {r[mcol]!r} appears twice"
                             + (f" for dataset {dataset!r}" if dataset else ""))
        try:
            gt[r[mcol]] = float(r[acol])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: accuracy {r[acol]!r} of model {r[mcol]!r} is not a number") from exc
    if not gt:
        raise ValueError(f"{path}: no rows" + (f" for dataset {dataset!r}" if dataset else ""))
    return gt
