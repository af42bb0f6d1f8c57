"""PED (on SFDA and on LogME): dynamics, general features, edge cases.

The reference values of lixiaotong97/PED are reproduced to 1e-6 (in fact ~1e-14) on every
shared input; the dynamics were reconstructed from them (see the module docstring).
"""

from __future__ import annotations

import numpy as np
import pytest
from shared_data import load_reference_input, reference_cases

from transferkit.estimators import get_estimator
from transferkit.estimators.logme import logme_evidence
from transferkit.estimators.ped import ped_features
from transferkit.estimators.sfda import sfda_score


def _blobs(n=200, d=16, c=4, sep=1.0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    X = rng.normal(size=(n, d)) + sep * rng.normal(size=(c, d))[y]
    return X, y


@pytest.mark.shared
@pytest.mark.parametrize("fname,expected", reference_cases("ped"))
def test_reference_values_sfda(fname, expected):
    d = load_reference_input(fname)
    got = get_estimator("ped", general_features=d.get("G")).score(d["X"], d["y"])
    assert got == pytest.approx(expected["ped_sfda"], rel=1e-6)


@pytest.mark.shared
@pytest.mark.parametrize("fname,expected", reference_cases("ped_logme"))
def test_reference_values_logme(fname, expected):
    d = load_reference_input(fname)
    got = get_estimator("ped_logme", general_features=d.get("G")).score(d["X"], d["y"])
    assert got == pytest.approx(expected["ped_logme"], rel=1e-6)


def test_energy_declines_and_classes_separate():
    X, y = _blobs()
    Z0 = ped_features(X, y, exit_ratio=1.0)  # exit at once: the features are not moved
    Z = ped_features(X, y)
    mu0 = np.stack([Z0[y == c].mean(0) for c in range(4)])
    mu = np.stack([Z[y == c].mean(0) for c in range(4)])
    d0 = np.linalg.norm(mu0[:, None] - mu0[None], axis=2)
    d1 = np.linalg.norm(mu[:, None] - mu[None], axis=2)
    iu = np.triu_indices(4, 1)
    assert d1[iu].min() > d0[iu].min() and d1[iu].mean() > d0[iu].mean()
    # within-class offsets are untouched: every sample moves with its class
    np.testing.assert_allclose(Z - mu[y], Z0 - mu0[y], atol=1e-9)


def test_no_overlap_means_no_movement():
    X, y = _blobs(sep=50.0)
    Z = ped_features(X, y)
    np.testing.assert_allclose(Z, X, atol=1e-12)
    assert get_estimator("ped").score(X, y) == pytest.approx(sfda_score(Z, y), rel=1e-12)
    assert get_estimator("ped_logme").fit(X, y).components_["ped_logme"] == pytest.approx(
        logme_evidence(Z, y), rel=1e-12)


def test_general_features_standardise():
    X, y = _blobs()
    G = np.random.default_rng(1).normal(loc=3.0, scale=2.0, size=(300, X.shape[1]))
    a = get_estimator("ped", general_features=G).score(X, y)
    b = get_estimator("ped").score(X, y)
    assert np.isfinite(a) and a != b
    with pytest.raises(ValueError, match="general_features"):
        get_estimator("ped", general_features=G[:, :5]).score(X, y)


def test_invariant_to_label_renaming_and_sample_order():
    X, y = _blobs()
    est = get_estimator("ped_logme")
    base = est.score(X, y)
    perm = np.random.default_rng(2).permutation(len(y))
    assert est.score(X[perm], y[perm]) == pytest.approx(base, rel=1e-9)
    assert est.score(X, np.array([9, 4, 6, 1])[y]) == pytest.approx(base, rel=1e-9)


def test_degenerate_inputs():
    X, y = _blobs(n=40, d=60)  # N < D
    X[:, :3] = 1.0  # constant dimensions
    y = y.copy()
    y[0] = 5  # a single-sample class (zero radius)
    for name in ("ped", "ped_logme"):
        assert np.isfinite(get_estimator(name).score(X, y))


@pytest.mark.parametrize("params", [
    {"time_step": -0.1}, {"time_step": float("nan")}, {"nsigma": 0.0}, {"exit_ratio": 1.5},
    {"exit_ratio": -0.1}, {"max_steps": -1}, {"max_steps": 2.5}, {"nsigma": "0.6"},
    {"min_std": 0.0},
])
def test_bad_parameters_are_clear_value_errors(params):
    X, y = _blobs()
    with pytest.raises(ValueError, match="ped: "):
        get_estimator("ped", **params).score(X, y)


def test_nearly_constant_general_dimensions_are_not_blown_up():
    """A G column that is constant up to rounding (std ~1e-17) gets the 1e-3 std floor too."""
    X, y = _blobs()
    G = np.random.default_rng(1).normal(size=(300, X.shape[1]))
    G_exact, G_round = G.copy(), G.copy()
    G_exact[:, 0] = 0.0
    G_round[:, 0] = 0.1  # 0.1 is not representable: np.std gives ~1e-17, not 0
    a = get_estimator("ped", general_features=G_exact).score(X, y)
    b = get_estimator("ped", general_features=G_round).score(X, y)
    assert b == pytest.approx(a, rel=1e-9)


def test_ped_features_checks_its_inputs():
    X, y = _blobs()
    with pytest.raises(ValueError, match="every class present"):
        ped_features(X, np.where(y == 1, 5, y))  # gapped labels
    with pytest.raises(ValueError, match="general_features"):
        ped_features(X, y, X[:1])  # one row: no spread to standardise with
    with pytest.raises(ValueError, match="general_features"):
        ped_features(X, y, X[:, :3])


def test_std_floor_limits_near_constant_dimensions():
    """Stds below ``min_std`` (upstream: 1e-3) are raised to it before the dynamics."""
    X, y = _blobs()
    X = X.copy()
    X[:, 0] = 0.0
    X[5, 0] = 1e-5  # one outlier in an otherwise constant dimension: std ~7e-7
    floored = get_estimator("ped").score(X, y)
    unfloored = get_estimator("ped", min_std=1e-12).score(X, y)
    assert np.isfinite(floored) and floored != unfloored


@pytest.mark.parametrize("bad", [True, 0.0, -1e-3, float("inf"), 1j])
def test_bad_min_std_is_a_clear_error(bad):
    X, y = _blobs()
    with pytest.raises(ValueError, match="min_std"):
        get_estimator("ped", min_std=bad).score(X, y)
