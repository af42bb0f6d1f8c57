"""ETran: reference values, zoo combination, properties, bad input."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from shared_data import load_reference_input, reference_cases, shared_path

from transferkit.estimators import get_estimator, score_zoo
from transferkit.estimators.etran import etran_energy_score, etran_lda_score
from transferkit.metrics import weighted_tau_scipy

RTOL = 1e-6


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Small BLAS problems: oversubscribed threads on a shared 2-core machine only slow down."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


@pytest.mark.parametrize(("fname", "expected"), reference_cases("etran"))
def test_reference_values(fname, expected):
    d = load_reference_input(fname)
    est = get_estimator("etran").fit(d["X"], d["y"])
    assert est.score_ == pytest.approx(expected["score"], rel=RTOL)
    assert est.components_["etran_lda"] == pytest.approx(expected["etran_lda"], rel=RTOL)
    if math.isfinite(expected["etran_energy"]):
        assert est.components_["etran_energy"] == pytest.approx(expected["etran_energy"], rel=RTOL)
    else:  # upstream averages int(0.005 N) = 0 samples (NaN) for N < 200: we use the lowest one
        assert d["X"].shape[0] < 200
        lowest = np.min(np.log(np.sum(np.exp(d["X"].astype(np.float64)), axis=1)))
        assert est.components_["etran_energy"] == pytest.approx(lowest, rel=1e-12)


def test_lda_is_nearest_class_mean_softmax():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(90, 7)), rng.integers(0, 4, size=90)
    mu = np.stack([X[y == c].mean(0) for c in range(4)])
    prior = np.bincount(y) / len(y)
    logits = -0.5 * ((X[:, None, :] - mu[None]) ** 2).sum(-1) + np.log(prior)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert etran_lda_score(X, y) == pytest.approx(p[np.arange(90), y].mean(), rel=1e-12)


def test_energy_tail_and_percent():
    X = np.log(np.arange(1, 1001, dtype=float))[:, None]  # energy = log(i), one feature
    e = np.log(np.arange(1, 1001, dtype=float))
    assert etran_energy_score(X, 0.5, "bot") == pytest.approx(e[:5].mean())
    assert etran_energy_score(X, 1.0, "top") == pytest.approx(e[-10:].mean())
    assert etran_energy_score(X[:50], 0.5, "bot") == pytest.approx(e[0])  # >= 1 sample


# -- zoo combination -----------------------------------------------------------------------------
def test_combine_zoo_reproduces_etran_notebook_cifar100():
    with open(shared_path("reference", "published", "etran_notebook_cifar100_scores.csv")) as fh:
        rows = list(csv.DictReader(fh))
    acc = json.loads(shared_path("reference", "published", "finetune_acc_sfda_group1.json").read_text())
    per_model = {r["model"]: {"score": float(r["lda_score"]), "etran_lda": float(r["lda_score"]),
                              "etran_energy": float(r["energy_score"])} for r in rows}
    zoo = get_estimator("etran").combine_zoo(per_model)
    models = sorted(zoo)
    tau = weighted_tau_scipy([zoo[m] for m in models], [acc["cifar100"][m] for m in models])
    assert round(tau, 4) == 0.8998


def test_combine_zoo_weights_are_parameters():
    per_model = {"a": {"etran_lda": 0.2, "etran_energy": 9.0},
                 "b": {"etran_lda": 0.6, "etran_energy": 5.0},
                 "c": {"etran_lda": 0.4, "etran_energy": 7.0}}
    default = get_estimator("etran").combine_zoo(per_model)
    assert default == pytest.approx({"a": 0.15, "b": 0.85, "c": 0.5})
    lda_only = get_estimator("etran", lda_weight=1.0, energy_weight=0.0).combine_zoo(per_model)
    assert lda_only == pytest.approx({"a": 0.0, "b": 1.0, "c": 0.5})


def test_score_zoo_end_to_end():
    files = ["digits_raw.npz", "digits_noisy.npz", "digits_rproj96.npz"]
    data = {f: load_reference_input(f) for f in files}
    y = data[files[0]]["y"]
    zoo = score_zoo({f: d["X"] for f, d in data.items()}, y, method="etran")
    assert set(zoo) == set(files)
    assert all(0.0 <= v <= 1.0 for v in zoo.values())
    assert get_estimator("etran").zoo_level


# -- properties ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return load_reference_input("digits_rproj96.npz")


def test_invariant_to_label_names_and_sample_order(digits):
    X, y = digits["X"], digits["y"]
    ref = get_estimator("etran").fit(X, y).components_
    names = np.array([f"class_{k}" for k in range(10)])[(y * 7 + 3) % 10]
    perm = np.random.default_rng(1).permutation(len(y))
    for Xv, yv in ((X, names), (X[perm], y[perm]), (X[:, ::-1], y)):
        out = get_estimator("etran").fit(Xv, yv).components_
        assert out == pytest.approx(ref, rel=1e-10)


def test_separable_beats_random():
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(5), 40)
    separable = 20.0 * np.eye(5)[y] + rng.normal(size=(200, 5))
    random = rng.normal(size=(200, 5))
    est = get_estimator("etran")
    s_sep, s_rand = est.score(separable, y), est.score(random, y)
    assert s_sep > 0.99 and s_rand < 0.5 and 0.0 < s_rand


# -- bad input -----------------------------------------------------------------------------------
def test_small_inputs_give_finite_components():
    X = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]])
    est = get_estimator("etran").fit(X, [0, 1, 1])  # a class with one sample, N < 200
    assert all(math.isfinite(v) for v in est.components_.values())


@pytest.mark.parametrize(("params", "match"), [({"energy_tail": "middle"}, "energy_tail"),
                                                ({"energy_percent": 0.0}, "energy_percent")])
def test_bad_params(params, match):
    with pytest.raises(ValueError, match=match):
        get_estimator("etran", **params).score(np.eye(4), [0, 0, 1, 1])


def test_bad_features():
    with pytest.raises(ValueError, match="non-finite"):
        get_estimator("etran").score(np.array([[np.nan, 1.0], [1.0, 2.0]]), [0, 1])
    with pytest.raises(TypeError, match="unknown parameter"):
        get_estimator("etran", percent=1.0)
