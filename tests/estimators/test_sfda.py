"""SFDA: reference values (TencentARC/SFDA ``SFDA_Score``), invariances, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from shared_data import load_reference_input, reference_cases
from scipy import linalg

from transferkit.estimators import get_estimator
from transferkit.estimators.sfda import sfda_score


def _blobs(n=300, d=20, c=5, sep=3.0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    X = rng.normal(size=(n, d)) + sep * rng.normal(size=(c, d))[y]
    return X, y


@pytest.mark.shared
@pytest.mark.parametrize("fname,expected", reference_cases("sfda"))
def test_reference_values(fname, expected):
    d = load_reference_input(fname)
    got = get_estimator("sfda").score(d["X"], d["y"])
    assert got == pytest.approx(expected["sfda"], rel=1e-6)


def test_cholesky_solve_equals_upstream_eigen_route():
    """means @ V V^T (V: generalised eigenvectors of (S_b, S_w)) is means @ S_w^-1."""
    rng = np.random.default_rng(1)
    A = rng.normal(size=(30, 12))
    Sw = A.T @ A / 30 + 0.1 * np.eye(12)
    St = Sw + np.cov(rng.normal(size=(12, 50)), bias=True)
    means = rng.normal(size=(4, 12))
    _, V = linalg.eigh(St - Sw, Sw)
    np.testing.assert_allclose(means @ V @ V.T, linalg.solve(Sw, means.T).T, rtol=1e-9)


def test_invariant_to_label_renaming_and_sample_order():
    X, y = _blobs(sep=1.0)
    base = sfda_score(X, y)
    perm = np.random.default_rng(2).permutation(len(y))
    est = get_estimator("sfda")
    assert est.score(X[perm], y[perm]) == pytest.approx(base, rel=1e-9)
    assert est.score(X, np.array([7, 3, 11, 5, 0])[y]) == pytest.approx(base, rel=1e-9)


def test_does_not_modify_input():
    X, y = _blobs()
    X0 = X.copy()
    sfda_score(X, y)
    np.testing.assert_array_equal(X, X0)


def test_separable_beats_random():
    X, y = _blobs(sep=4.0)
    noise = np.random.default_rng(3).normal(size=X.shape)
    s_sep, s_noise = sfda_score(X, y), sfda_score(noise, y)
    assert s_sep > 0.9 and s_sep > s_noise
    assert 0.0 < s_noise < 1.0


def test_degenerate_inputs_give_finite_scores():
    X, y = _blobs(n=60, d=100)  # N < D: singular within-class scatter, shrinkage floor
    X[:, :5] = 0.0
    y = y.copy()
    y[0] = 9  # a class with a single sample
    assert 0.0 <= get_estimator("sfda").score(X, y) <= 1.0
    X1 = np.random.default_rng(4).normal(size=(50, 1))  # D = 1
    assert 0.0 <= get_estimator("sfda").score(X1, np.arange(50) % 2) <= 1.0


def test_zero_within_class_scatter():
    # one sample per class: upstream's power iteration divides 0 by 0
    X = np.array([[0.1], [-0.2], [0.4]])
    assert get_estimator("sfda").score(X, [0, 1, 2]) == pytest.approx(1 / 3)
