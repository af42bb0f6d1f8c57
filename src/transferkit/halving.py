"""Successive halving across a zoo (``transferkit rank --budget fast``, issue 16).

Extraction, not scoring, is the cost of model selection. Round k extracts the surviving models on a
stratified share of the images (default 1/4, then 1/2, then all of each class), scores them with the
same :func:`~transferkit.recommendation.recommend` as a full run, and drops the models that are clearly
worse: a model survives when the consensus puts it in the top half, or when ANY informative method
ranks it in its top 3 (methods disagreeing is the uncertainty we respect; saturated, tied or
seed-unstable methods are already left out of the consensus and of the votes). When no method is
informative on a round, nobody is dropped.

The images of a round are the first ``ceil(share * n_c)`` dataset positions of each class c (the
``--per-class`` subsample is itself a seeded random draw, so this is a random subset of it), and a
round's images include the previous round's. Features are computed into the cache entry of the whole
dataset (``extract_features(positions=...)``), so the next round and any later full run compute only the
images they have not seen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["DEFAULT_SHARES", "MIN_PER_CLASS_TO_DROP", "HalvingRound", "class_prefix_positions",
           "smallest_class_count", "survivors", "successive_halving"]

DEFAULT_SHARES = (0.25, 0.5, 1.0)
MIN_PER_CLASS = 3  # estimators need a few images per class
# A round drops models only when every class has at least this many images in it. Added after the 10-shot
# offline tasks showed that dropping on 3-5 images per class costs tau_w beyond the error bars (the models
# dropped are ordered by a noisy early round); with 10 images per class no round qualifies and a fast run
# is the full run. The value is a judgement, not fitted: it keeps the first round of a 30-per-class run.
MIN_PER_CLASS_TO_DROP = 8


@dataclass
class HalvingRound:
    """One round: its share of each class, the models scored, who survived, images and seconds."""

    index: int
    share: float
    n_images: int
    models: list[str]
    kept: list[str]
    extracted: dict[str, int] = field(default_factory=dict)  # images computed (not from the cache) per model
    seconds: float = 0.0
    order: list[str] = field(default_factory=list)  # the round's consensus order (dropped models rank by it)


def _round_count(n: int, share: float, min_per_class: int) -> int:
    """Images a round takes from a class of ``n``: ``ceil(share * n)``, at least ``min_per_class``, at most n."""
    return min(n, max(min_per_class, math.ceil(share * n)))


def class_prefix_positions(targets: np.ndarray, share: float, min_per_class: int = MIN_PER_CLASS) -> list[tuple[int, int]]:
    """Sorted ``[lo, hi)`` ranges of the first ``ceil(share * n_c)`` positions of each class (runs of
    consecutive positions merged)."""
    targets = np.asarray(targets)
    chosen: list[int] = []
    for c in np.unique(targets):
        pos = np.flatnonzero(targets == c)
        chosen.extend(pos[:_round_count(len(pos), share, min_per_class)].tolist())
    spans: list[tuple[int, int]] = []
    for p in sorted(chosen):
        if spans and spans[-1][1] == p:
            spans[-1] = (spans[-1][0], p + 1)
        else:
            spans.append((p, p + 1))
    return spans


def smallest_class_count(targets: np.ndarray, share: float, min_per_class: int = MIN_PER_CLASS) -> int:
    """Images of the smallest class in a round of this share (as :func:`class_prefix_positions` selects)."""
    _, counts = np.unique(np.asarray(targets), return_counts=True)
    if counts.size == 0:
        return 0
    return min(_round_count(int(n), share, min_per_class) for n in counts)


def survivors(rec: Any) -> list[str]:
    """Models not clearly worse in a :class:`~transferkit.recommendation.Recommendation` (see module doc)."""
    names = [r.model for r in rec.ranking]
    if not rec.used:
        return names
    keep = set(names[:max(1, math.ceil(len(names) / 2))])
    keep |= {r.model for r in rec.ranking if r.n_top3 > 0}
    return [m for m in names if m in keep]


def successive_halving(models: Sequence[str], extract: Callable[[str, list[tuple[int, int]] | None], Any],
                       score: Callable[[list[Any]], Any], targets: np.ndarray,
                       shares: Sequence[float] = DEFAULT_SHARES,
                       on_round: Callable[[int, int, list[str], float], None] | None = None,
                       min_per_class_to_drop: int = MIN_PER_CLASS_TO_DROP,
                       ) -> tuple[list[Any], Any, list[HalvingRound]]:
    """Run the rounds; returns (the last round's zoo features, its recommendation, the rounds).

    A round whose smallest class would have fewer than ``min_per_class_to_drop`` images is skipped (it could
    not drop anyone safely); with none left before the last, this is one full round.

    ``extract(model, positions)``: that model's ZooFeatures on those positions (``None``: all);
    ``score(zoo)``: a Recommendation. ``on_round(k, n_rounds, models_left, share)`` before each round."""
    shares = sorted(set(float(s) for s in shares))
    if not shares or shares[-1] != 1.0 or shares[0] <= 0:
        raise ValueError(f"halving shares must be in (0, 1] and end with 1.0, got {list(shares)}")
    shares = [s for s in shares if s == 1.0 or smallest_class_count(targets, s) >= min_per_class_to_drop]
    alive = list(models)
    rounds: list[HalvingRound] = []
    zoo: list[Any] = []
    rec = None
    for k, share in enumerate(shares):
        if on_round is not None:
            on_round(k + 1, len(shares), alive, share)
        t0 = time.perf_counter()
        positions = None if share == 1.0 else class_prefix_positions(targets, share)
        zoo = [extract(m, positions) for m in alive]
        rec = score(zoo)
        last = k == len(shares) - 1 or len(alive) <= 2
        kept = alive if last else survivors(rec)
        rounds.append(HalvingRound(k + 1, share, len(zoo[0].y) if zoo else 0, list(alive), list(kept),
                                   {z.name: int(z.metadata.get("computed_images", 0)) for z in zoo},
                                   time.perf_counter() - t0, [r.model for r in rec.ranking]))
        if last and share != 1.0:  # two models left: go straight to all images
            positions = None
            zoo = [extract(m, None) for m in alive]
            rec = score(zoo)
            rounds[-1].extracted = {z.name: rounds[-1].extracted.get(z.name, 0)
                                    + int(z.metadata.get("computed_images", 0)) for z in zoo}
            rounds[-1].n_images = len(zoo[0].y) if zoo else 0
            rounds[-1].share = 1.0
            break
        if last:
            break
        alive = kept
    return zoo, rec, rounds
