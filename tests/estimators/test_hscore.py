"""H-score and shrinkage H-score: reference values, properties, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from shared_data import load_reference_input, reference_cases
from sklearn.covariance import LedoitWolf, ledoit_wolf_shrinkage as sk_shrinkage

from transferkit.estimators import get_estimator
from transferkit.estimators.hscore import ledoit_wolf_shrinkage


def tllib_h_score(f: np.ndarray, y: np.ndarray) -> float:
    """tllib's h_score, verbatim logic (the reference)."""
    covf = np.cov(f, rowvar=False)
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(axis=0)
    return float(np.trace(np.linalg.pinv(covf, rcond=1e-15) @ np.cov(g, rowvar=False)))


def tllib_regularized_h_score(f: np.ndarray, y: np.ndarray) -> float:
    f = f - f.mean(axis=0, keepdims=True)
    lw = LedoitWolf(assume_centered=False).fit(f)
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(axis=0)
    covg = np.cov(g, rowvar=False)
    inv = np.linalg.pinv(lw.covariance_, rcond=1e-15)
    return float(np.trace(inv @ ((1 - lw.shrinkage_) * covg)))


def _data(n: int, d: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    X = rng.normal(size=(n, d)) + rng.normal(size=(c, d))[y] + 3.0
    return X, y


@pytest.mark.shared
@pytest.mark.parametrize("fname, entry", reference_cases("hscore"))
def test_hscore_reference(fname, entry):
    d = load_reference_input(fname)
    assert get_estimator("hscore").score(d["X"], d["y"]) == pytest.approx(entry["score"], rel=1e-6)


@pytest.mark.shared
@pytest.mark.parametrize("fname, entry", reference_cases("hscore_reg"))
def test_hscore_shrinkage_reference(fname, entry):
    d = load_reference_input(fname)
    got = get_estimator("hscore_shrinkage").score(d["X"], d["y"])
    assert got == pytest.approx(entry["score"], rel=1e-6)


@pytest.mark.parametrize("shape", [(120, 20, 4), (30, 50, 3), (40, 40, 5)])
def test_matches_tllib_formulas_including_n_below_d(shape):
    X, y = _data(*shape)
    assert get_estimator("hscore").score(X, y) == pytest.approx(tllib_h_score(X, y), rel=1e-8)
    assert get_estimator("hscore_shrinkage").score(X, y) == pytest.approx(
        tllib_regularized_h_score(X, y), rel=1e-8
    )


@pytest.mark.parametrize("shape", [(80, 10), (10, 80), (50, 1)])
def test_ledoit_wolf_shrinkage_matches_sklearn(shape):
    X = np.random.default_rng(3).normal(size=shape) * np.linspace(0.1, 3, shape[1])
    Xc = X - X.mean(axis=0)
    expected = sk_shrinkage(Xc, assume_centered=True)
    assert ledoit_wolf_shrinkage(Xc) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("method", ["hscore", "hscore_shrinkage"])
def test_invariances(method):
    X, y = _data(150, 12, 5)
    est = get_estimator(method)
    base = est.score(X, y)
    perm = np.random.default_rng(1).permutation(len(y))
    assert est.score(X[perm], y[perm]) == pytest.approx(base, rel=1e-10)
    assert est.score(X, np.array(list("vwxyz"))[y]) == pytest.approx(base, rel=1e-10)
    assert est.score(X * 1e3 + 7.0, y) == pytest.approx(base, rel=1e-8)  # scale and shift


def test_hscore_invariant_to_invertible_linear_maps():
    X, y = _data(150, 12, 5)
    A = np.random.default_rng(2).normal(size=(12, 12))
    assert get_estimator("hscore").score(X @ A, y) == pytest.approx(
        get_estimator("hscore").score(X, y), rel=1e-6
    )


def test_separable_beats_random_and_bounds():
    X, y = _data(200, 10, 4)
    noise = np.random.default_rng(5).normal(size=X.shape)
    for method in ("hscore", "hscore_shrinkage"):
        est = get_estimator(method)
        good, bad = est.score(X, y), est.score(noise, y)
        assert good > bad >= 0
        assert good <= 3 + 1e-9  # at most C - 1
    # N < D: features separate any labelling, H-score = C - 1 (reference: 9.0 on dtd10)
    X, y = _data(30, 60, 3)
    assert get_estimator("hscore").score(X, y) == pytest.approx(2.0, rel=1e-8)


def test_small_classes_and_degenerate_features():
    X, y = _data(40, 6, 3)
    y = y.copy()
    y[0] = 3  # a class with a single sample
    X = np.hstack([X, np.ones((40, 2))])  # constant features: singular covariance
    for method in ("hscore", "hscore_shrinkage"):
        assert np.isfinite(get_estimator(method).score(X, y))
    assert get_estimator("hscore").score(X, y) == pytest.approx(tllib_h_score(X, y), rel=1e-8)


def test_shrinkage_component():
    X, y = _data(30, 50, 3)
    est = get_estimator("hscore_shrinkage").fit(X, y)
    assert 0 < est.components_["shrinkage"] <= 1
