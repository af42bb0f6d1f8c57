"""TransRate: reference values, properties, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from shared_data import load_reference_input, reference_cases

from transferkit.estimators import get_estimator
from transferkit.estimators.transrate import coding_rate


def tllib_transrate(f: np.ndarray, y: np.ndarray, eps: float = 1e-4) -> float:
    """tllib's transrate, verbatim logic (the reference)."""

    def rate(z: np.ndarray) -> float:
        n, d = z.shape
        return 0.5 * np.linalg.slogdet(np.eye(d) + z.T @ z / (n * eps))[1]

    f = f - f.mean(axis=0, keepdims=True)
    return rate(f) - np.mean([rate(f[y == c]) for c in np.unique(y)])


def _data(n: int, d: int, c: int, sep: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    return rng.normal(size=(n, d)) + sep * rng.normal(size=(c, d))[y], y


@pytest.mark.shared
@pytest.mark.parametrize("fname, entry", reference_cases("transrate"))
def test_transrate_reference(fname, entry):
    d = load_reference_input(fname)
    got = get_estimator("transrate").score(d["X"], d["y"])
    assert got == pytest.approx(entry["score"], rel=1e-6)


@pytest.mark.parametrize("shape", [(50, 8), (8, 50), (20, 20)])
def test_coding_rate_both_gram_sides(shape):
    Z = np.random.default_rng(1).normal(size=shape)
    n, d = shape
    expected = 0.5 * np.linalg.slogdet(np.eye(d) + Z.T @ Z / (n * 1e-4))[1]
    assert coding_rate(Z, 1e-4) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("shape", [(90, 12, 3), (40, 60, 4)])
def test_matches_tllib(shape):
    X, y = _data(*shape)
    assert get_estimator("transrate").score(X, y) == pytest.approx(tllib_transrate(X, y), rel=1e-9)
    assert get_estimator("transrate", eps=1e-2).score(X, y) == pytest.approx(
        tllib_transrate(X, y, eps=1e-2), rel=1e-9
    )


def test_invariances_and_components():
    X, y = _data(90, 12, 3)
    est = get_estimator("transrate")
    base = est.score(X, y)
    perm = np.random.default_rng(2).permutation(len(y))
    Q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(12, 12)))
    assert est.score(X[perm], y[perm]) == pytest.approx(base, rel=1e-10)
    assert est.score(X, np.array(["b", "c", "a"])[y]) == pytest.approx(base, rel=1e-10)
    assert est.score(X @ Q + 5.0, y) == pytest.approx(base, rel=1e-8)  # rotation and shift
    est.fit(X, y)
    parts = est.components_
    assert est.score_ == pytest.approx(parts["rate_all"] - parts["rate_class_mean"])


def test_separable_beats_random():
    X, y = _data(120, 10, 4, sep=4.0)
    noise, _ = _data(120, 10, 4, sep=0.0, seed=9)
    est = get_estimator("transrate")
    assert est.score(X, y) > est.score(noise, y)


def test_single_sample_class_and_bad_eps():
    X, y = _data(30, 5, 3)
    y = y.copy()
    y[0] = 3
    assert np.isfinite(get_estimator("transrate").score(X, y))
    with pytest.raises(ValueError, match="eps"):
        get_estimator("transrate", eps=0.0).score(X, y)
