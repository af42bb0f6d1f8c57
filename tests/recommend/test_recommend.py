"""recommend(): seeds, the recommendation itself, rank_zoo(...).recommendation, LogME's small-N warning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from transferkit.estimators import get_estimator, list_estimators
from transferkit.ranking import ZooFeatures, rank_zoo
from transferkit.recommendation import STOCHASTIC_METHODS, recommend


def _zoo(n_per_class: int = 20, d: int = 8, seed: int = 0) -> list[ZooFeatures]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per_class)
    zoo = []
    for name, sep in [("best", 3.0), ("mid", 1.5), ("worst", 0.3)]:
        X = rng.normal(size=(len(y), d)) + sep * np.eye(d)[y]
        P = np.exp(rng.normal(size=(len(y), 5)) + sep * np.eye(5)[y])
        zoo.append(ZooFeatures(name, X, y, P / P.sum(1, keepdims=True)))
    return zoo


def test_recommend_picks_the_separable_model_and_aggregates_seeds():
    rec = recommend(_zoo(), methods=["logme", "nleep"], seeds=[0, 1, 2])
    assert rec.model == "best" and rec.ranking[0].rank == "1"
    assert rec.used == ["leep", "parc", "etran"]
    assert rec.methods["nleep"].seeds == [0, 1, 2] and len(rec.methods["nleep"].per_seed) == 3
    assert rec.methods["logme"].seeds == [0] and set(rec.methods["logme"].std.values()) == {0.0}
    nleep = rec.methods["nleep"]
    for m in nleep.scores:
        vals = [s[m] for s in nleep.per_seed]
        assert nleep.scores[m] == pytest.approx(np.mean(vals)) and nleep.std[m] == pytest.approx(np.std(vals))
    assert rec.confidence.split(":")[0] in {"confident", "fairly confident", "not confident"}
    assert rec.ranking[0].n_first >= 1 and rec.n_informative == 5
    assert "results" not in rec.to_dict()


def test_rank_zoo_carries_the_recommendation():
    res = rank_zoo(_zoo(), ["leep", "parc", "etran", "logme"])
    rec = res.recommendation
    assert rec.model == "best" and [r.model for r in rec.ranking] == ["best", "mid", "worst"]


def test_saturated_ingredient_is_left_out_and_named():
    zoo = _zoo()
    for z in zoo:  # identical source probabilities: LEEP gives every model the same score
        z.P = zoo[0].P
    rec = recommend(zoo, methods=["leep"])
    assert "leep" in rec.excluded and "saturated" in rec.excluded["leep"]
    assert rec.used == ["parc", "etran"] and rec.model == "best"


def test_no_recommendation_when_nothing_is_informative():
    zoo = _zoo()
    for z in zoo:
        z.X, z.P = zoo[0].X, zoo[0].P  # three copies of one model
    rec = recommend(zoo, methods=["leep"])
    assert rec.model is None and rec.confidence.startswith("no recommendation")


@pytest.mark.parametrize("method", sorted(set(list_estimators()) - STOCHASTIC_METHODS))
def test_methods_not_listed_as_stochastic_ignore_the_seed(method):
    z = _zoo(n_per_class=12)[0]
    est = get_estimator(method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = est.fit(z.X, z.y, source_probs=z.P, random_state=0).score_
        b = est.fit(z.X, z.y, source_probs=z.P, random_state=7).score_
    assert a == b


def test_logme_warns_when_n_is_below_the_feature_dimension():
    rng = np.random.default_rng(0)
    y = np.arange(40) % 4
    with pytest.warns(UserWarning, match="N=40 images < D=64"):
        get_estimator("logme").score(rng.normal(size=(40, 64)), y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_estimator("logme").score(rng.normal(size=(64, 64)), np.arange(64) % 4)


def test_ped_logme_warns_like_logme_and_ped_sfda_does_not():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 64)), np.arange(40) % 4
    with pytest.warns(UserWarning, match="ped_logme: N=40 images < D=64"):
        get_estimator("ped_logme").score(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_estimator("ped").score(X, y)
