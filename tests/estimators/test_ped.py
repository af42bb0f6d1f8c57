"""PED (on SFDA and on LogME): dynamics, general features, edge cases.

Our implementation follows lixiaotong97/PED ``metrics.py`` (``PED_Score``, ``One_Step_PED``,
read at commit e5af6e7); it reproduces the shared reference values (~1e-14) and, below, values
computed by running that upstream code on inputs where its exit rule fires (the shared inputs
never stop early).
"""

from __future__ import annotations

import numpy as np
import pytest
from shared_data import load_reference_input, reference_cases

from transferkit.estimators import get_estimator
from transferkit.estimators.logme import logme_evidence
from transferkit.estimators.ped import ped_dynamics, ped_features
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


def _two_classes(half_gap=0.1):
    """Two 2-D classes, radius 1 each, centres 2 * half_gap apart along x; with G = [[1, 1],
    [-1, -1]] (mean 0, std 1) the standardised space is the raw space."""
    offsets = np.array([[-1.0, 0.0], [1.0, 0.0]] * 5)
    X = np.concatenate([offsets + [-half_gap, 0.0], offsets + [half_gap, 0.0]])
    y = np.repeat([0, 1], 10)
    G = np.array([[1.0, 1.0], [-1.0, -1.0]])
    return X, y, G


def _centre_gap(Z, y):
    return Z[y == 1, 0].mean() - Z[y == 0, 0].mean()


def test_step_size_and_step_count_follow_upstream():
    """Overlap o = 0.6 + 0.6 - 0.2 = 1; each class moves by 1/2 o dt^2 = 0.005 o per step, so
    o shrinks by 1 % per step, the position-change ratio 0.99^k never drops to 0.5 and all six
    steps are kept (upstream: ``while number_step < 6``)."""
    X, y, G = _two_classes()
    Z, steps = ped_dynamics(X, y, G)
    assert steps == 6
    assert _centre_gap(Z, y) == pytest.approx(0.2 + 0.01 * sum(0.99**k for k in range(6)),
                                              rel=1e-12)
    # within-class offsets are untouched; y is unchanged
    np.testing.assert_allclose(Z[y == 0] - Z[y == 0].mean(0), X[y == 0] - X[y == 0].mean(0),
                               atol=1e-12)
    assert ped_dynamics(X, y, G, max_steps=3)[1] == 3


def test_exit_compares_position_change_with_the_first_step():
    """force_constant 40: each class moves 0.2 o, so o_k = 0.6^k. Step 2's change is 0.6 of
    step 1's (> 0.5: kept), step 3's is 0.36 (not kept): two steps, gap 0.2 + 0.4 (1 + 0.6).
    (An energy-based exit, 0.6^2 = 0.36 after one step, would stop after the first.)"""
    X, y, G = _two_classes()
    Z, steps = ped_dynamics(X, y, G, force_constant=40.0)
    assert steps == 2
    assert _centre_gap(Z, y) == pytest.approx(0.2 + 0.4 * 1.6, rel=1e-12)


def test_a_step_never_exceeds_the_overlap():
    """Upstream moves each pair by min(1/2 k o dt^2, o): with k = 300 (1.5 o) each class moves by
    exactly o, the balls no longer overlap and the next step (no change) ends the loop."""
    X, y, G = _two_classes()
    Z, steps = ped_dynamics(X, y, G, force_constant=300.0)
    assert steps == 1
    assert _centre_gap(Z, y) == pytest.approx(0.2 + 2.0, rel=1e-12)


def test_coincident_class_centres_exert_no_force():
    """Upstream divides by the zero distance (NaN score); we leave such a pair unmoved."""
    X, y, G = _two_classes(half_gap=0.0)
    Z, steps = ped_dynamics(X, y, G)
    np.testing.assert_array_equal(Z, X)
    assert steps == 0
    assert np.isfinite(get_estimator("ped_logme", general_features=G).score(X, y))


def _many_classes(n, d, c, sep, seed):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    return rng.normal(size=(n, d)) + sep * rng.normal(size=(c, d))[y], y


# Values from running upstream lixiaotong97/PED@e5af6e7 ``PED_Score(X, y, general_X=G or X,
# exit_ratio=0.5, time_step=0.1, type=..., nsigma=0.6)`` (float64) on these inputs; many
# overlapping classes make its exit rule fire after 2 and 4 steps.
_UPSTREAM = [
    ((800, 24, 80, 0.5, 0), False, 2, 0.3325651234177184, 0.7927600897024856),
    ((800, 24, 80, 0.5, 0), True, 2, 0.3311887893393991, 0.7926719960185971),
    ((600, 16, 40, 0.4, 1), False, 4, 0.19022937035820695, 0.45650312992376463),
    ((600, 16, 40, 0.4, 1), True, 4, 0.19029373646436662, 0.4564360345025083),
]


@pytest.mark.parametrize("args,with_g,steps,sfda,logme", _UPSTREAM)
def test_matches_upstream_where_its_exit_fires(args, with_g, steps, sfda, logme):
    X, y = _many_classes(*args)
    G = np.random.default_rng(7).normal(loc=0.5, scale=1.5, size=(300, args[1])) if with_g else None
    assert ped_dynamics(X, y, G)[1] == steps
    assert get_estimator("ped", general_features=G).score(X, y) == pytest.approx(sfda, rel=1e-9)
    assert get_estimator("ped_logme", general_features=G).score(X, y) == pytest.approx(
        logme, rel=1e-9)


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
    {"min_std": 0.0}, {"force_constant": 0.0}, {"force_constant": float("inf")},
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
