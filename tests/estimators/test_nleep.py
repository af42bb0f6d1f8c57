"""N-LEEP: reference values (TencentARC/SFDA ``NLEEP``), the fast EM vs scikit-learn, edge cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from shared_data import load_reference_input, reference_cases
from sklearn.mixture import GaussianMixture

from transferkit.estimators import get_estimator
from transferkit.estimators.nleep import gmm_posteriors, nleep_score, pca_keep_variance


def _blobs(n=200, d=30, c=4, sep=2.0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    X = rng.normal(size=(n, d)) + sep * rng.normal(size=(c, d))[y]
    return X, y


@pytest.mark.shared
@pytest.mark.parametrize("fname,expected", reference_cases("nleep"))
def test_reference_values(fname, expected):
    d = load_reference_input(fname)
    got = get_estimator("nleep").score(d["X"], d["y"])
    assert got == pytest.approx(expected["nleep"], rel=1e-6)


@pytest.mark.shared
@pytest.mark.parametrize("fname,expected", reference_cases("nleep"))
def test_gram_route_equals_direct_route(fname, expected):
    """The Gram-fed E-steps give the same posteriors as the direct products."""
    d = load_reference_input(fname)
    Z = pca_keep_variance(np.asarray(d["X"], dtype=float), 0.8)
    k = 5 * (int(d["y"].max()) + 1)
    np.testing.assert_allclose(gmm_posteriors(Z, k, 0, gram=True),
                               gmm_posteriors(Z, k, 0, gram=False), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("gram", [False, True])
@pytest.mark.parametrize(
    "n,d,k",
    [(120, 40, 20),  # few samples per component in many dims: low-rank components
     (300, 4, 6)],  # broad responsibilities: dense components
)
def test_em_matches_sklearn(n, d, k, gram):
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(n, d)) + 3 * rng.normal(size=(k // 2, d))[np.arange(n) % (k // 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = GaussianMixture(n_components=k, random_state=0).fit(Z).predict_proba(Z)
        got = gmm_posteriors(Z, k, 0, gram=gram)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9)


def test_parameters_and_seed():
    X, y = _blobs()
    est = get_estimator("nleep", components_per_class=2, variance=0.9)
    a = est.score(X, y, random_state=3)
    assert a == est.score(X, y, random_state=3)  # deterministic for a seed
    assert a == pytest.approx(nleep_score(X, y, variance=0.9, components_per_class=2,
                                          random_state=3), rel=1e-12)
    fixed = get_estimator("nleep", random_state=0)
    assert fixed.score(X, y, random_state=5) == fixed.score(X, y, random_state=6)


def test_invariant_to_label_renaming():
    X, y = _blobs()
    base = nleep_score(X, y)
    assert get_estimator("nleep").score(X, np.array(list("zyxw"))[y]) == pytest.approx(base)


def test_separable_beats_random():
    X, y = _blobs(sep=4.0)
    noise = np.random.default_rng(3).normal(size=X.shape)
    assert nleep_score(X, y) > 0.9 > nleep_score(noise, y)


def test_too_few_samples_for_the_mixture():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(12, 5))
    y = np.arange(12) % 3  # 15 components > 12 samples
    with pytest.raises(ValueError, match="mixture components"):
        get_estimator("nleep").score(X, y)


def test_single_sample_class_and_small_n():
    X, y = _blobs(n=60, d=80)  # N < D
    y = y.copy()
    y[0] = 7
    assert 0.0 < get_estimator("nleep").score(X, y) <= 1.0


def test_bad_parameters():
    X, y = _blobs(n=60)
    with pytest.raises(ValueError, match="variance"):
        get_estimator("nleep", variance=1.5).score(X, y)
    with pytest.raises(ValueError, match="components_per_class"):
        get_estimator("nleep", components_per_class=0).score(X, y)
