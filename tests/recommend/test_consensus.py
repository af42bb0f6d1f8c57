"""Ties, saturation and seed instability in the consensus (transferkit.consensus) and its estimator."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.consensus import (aggregate, competition_ranks, informative_reason, seed_stability, tie_groups,
                                   tied_ranks)
from transferkit.estimators import get_estimator, score_zoo


def test_tied_scores_get_tied_ranks():
    s = {"a": 1.0, "b": 0.5, "c": 0.5 + 1e-9, "d": 0.1}
    assert tie_groups(s) == [["a"], ["c", "b"], ["d"]] or tie_groups(s) == [["a"], ["b", "c"]] + [["d"]]
    assert tied_ranks(s) == {"a": 1.0, "b": 2.5, "c": 2.5, "d": 4.0}
    assert competition_ranks(s) == {"a": "1", "b": "=2", "c": "=2", "d": "4"}
    # a real difference is not a tie
    assert competition_ranks({"a": 1.0, "b": 0.999}) == {"a": "1", "b": "2"}


def test_saturated_and_mostly_tied_methods_are_flagged():
    assert "saturated" in informative_reason({"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0})
    assert "3 of 4 models tied" in informative_reason({"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.2})
    assert informative_reason({"a": 1.0, "b": 1.0, "c": 0.5, "d": 0.2}) is None


def test_seed_instability_is_flagged():
    stable = [{"a": 3.0, "b": 2.0, "c": 1.0}, {"a": 3.1, "b": 2.1, "c": 0.9}]
    unstable = [{"a": 3.0, "b": 2.0, "c": 1.0}, {"a": 1.0, "b": 2.0, "c": 3.0}]
    assert seed_stability(stable) == pytest.approx(1.0)
    assert seed_stability(unstable) == pytest.approx(-1.0)
    mean = {"a": 2.0, "b": 2.0 + 1e-3, "c": 2.0 - 1e-3}
    assert "unstable across seeds" in informative_reason(mean, unstable)
    assert informative_reason(mean, stable) is None


def test_aggregate_leaves_out_the_uninformative():
    scores = {"good": {"a": 3.0, "b": 2.0, "c": 1.0},
              "also": {"a": 0.9, "b": 0.5, "c": 0.7},
              "flat": {"a": 1.0, "b": 1.0, "c": 1.0}}
    agg = aggregate(scores, "rank_mean")
    assert agg.used == ["good", "also"] and "saturated" in agg.excluded["flat"]
    assert agg.scores == {"a": 2.0, "b": 0.5, "c": 0.5}
    z = aggregate(scores, "zscore_mean")
    assert max(z.scores, key=z.scores.get) == "a"
    none = aggregate({"flat": scores["flat"]})
    assert none.used == [] and set(none.scores.values()) == {0.0}
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(scores, "nonsense")


def test_consensus_estimator_is_registered_and_matches_aggregate():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    feats = {f"m{k}": rng.normal(size=(60, 8)) + k * np.eye(8)[y] for k in range(3)}
    est = get_estimator("consensus", methods="logme,hscore", aggregation="rank_mean")
    assert not est.needs_source_probs and est.params["methods"] == ("logme", "hscore")
    got = score_zoo(feats, y, method=est)
    parts = {m: score_zoo(feats, y, method=m) for m in ("logme", "hscore")}
    assert got == aggregate(parts, "rank_mean").scores
    assert max(got, key=got.get) == "m2"
    with pytest.raises(ValueError, match="other estimators"):
        get_estimator("consensus", methods="consensus")
