"""LogME: reference values (thuml/LogME fixed-point), invariances, edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from shared_data import load_reference_input, reference_cases
from transferkit.estimators import get_estimator
from transferkit.estimators.logme import logme_evidence, logme_per_class


def _upstream_loop(f: np.ndarray, y: np.ndarray) -> float:
    """thuml/LogME ``_fit_fixed_point`` written as a per-class loop (N > D path via SVD)."""
    N, D = f.shape
    if N > D:
        _, s2, vh = np.linalg.svd(f.T @ f)
        s = np.sqrt(s2)
        k = int(np.sum(s > 1e-10))
        s, vh = s[:k], vh[:k]
        u = (f @ vh.T) / s
    else:
        u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = (s**2).reshape(-1, 1)
    out = []
    for c in range(int(y.max()) + 1):
        y_ = (y == c).astype(np.float64).reshape(-1, 1)
        x2 = (u.T @ y_) ** 2
        res_x2 = (y_**2).sum() - x2.sum()
        alpha, beta = 1.0, 1.0
        for _ in range(11):
            t = alpha / beta
            gamma = (sigma / (sigma + t)).sum()
            m2 = (sigma * x2 / ((t + sigma) ** 2)).sum()
            res2 = (x2 / ((1 + sigma / t) ** 2)).sum() + res_x2
            alpha = gamma / (m2 + 1e-5)
            beta = (N - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= 1e-3:
                break
        ev = (D / 2.0 * np.log(alpha) + N / 2.0 * np.log(beta)
              - 0.5 * np.sum(np.log(alpha + beta * sigma)) - beta / 2.0 * res2
              - alpha / 2.0 * m2 - N / 2.0 * np.log(2 * np.pi))
        out.append(ev / N)
    return float(np.mean(out))


def _blobs(n=300, d=20, c=5, sep=3.0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    X = rng.normal(size=(n, d)) + sep * rng.normal(size=(c, d))[y]
    return X, y


@pytest.mark.shared
@pytest.mark.parametrize("fname,expected", reference_cases("logme"))
def test_reference_values(fname, expected):
    d = load_reference_input(fname)
    got = get_estimator("logme").score(d["X"], d["y"])
    assert got == pytest.approx(expected["logme"], rel=1e-6)


@pytest.mark.parametrize("shape", [(200, 30), (40, 90)])
def test_matches_per_class_loop(shape):
    rng = np.random.default_rng(1)
    X = rng.normal(size=shape)
    y = rng.integers(0, 4, size=shape[0])
    assert logme_evidence(X, y) == pytest.approx(_upstream_loop(X, y), rel=1e-9)


def test_function_and_estimator_agree():
    X, y = _blobs()
    assert get_estimator("logme").score(X, y) == pytest.approx(logme_evidence(X, y), rel=1e-12)
    assert logme_per_class(X, y).shape == (5,)


def test_invariant_to_label_renaming_and_sample_order():
    X, y = _blobs()
    base = logme_evidence(X, y)
    perm = np.random.default_rng(2).permutation(len(y))
    names = np.array(["e", "a", "d", "b", "c"])[y]  # string labels, another order
    est = get_estimator("logme")
    assert est.score(X[perm], y[perm]) == pytest.approx(base, rel=1e-9)
    assert est.score(X, names) == pytest.approx(base, rel=1e-9)


def test_separable_beats_random():
    X, y = _blobs(sep=4.0)
    noise = np.random.default_rng(3).normal(size=X.shape)
    assert logme_evidence(X, y) > logme_evidence(noise, y)


def test_degenerate_inputs_give_finite_scores():
    X, y = _blobs(n=60, d=100)  # N < D
    X[:, :10] = 0.0  # constant (null) directions
    y = y.copy()
    y[0] = 9  # a class with a single sample
    assert np.isfinite(get_estimator("logme").score(X, y))
    X1 = np.random.default_rng(4).normal(size=(50, 1))  # D = 1
    assert np.isfinite(get_estimator("logme").score(X1, np.arange(50) % 2))
