"""PARC: reference values (dbolya/parc ``PARC(n_dims=32)``), the fast Spearman, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from shared_data import load_reference_input, reference_cases, reference_error_files

from transferkit.estimators import get_estimator
from transferkit.estimators.parc import parc_score, spearman_vs_grouped


def _blobs(n=150, d=40, c=5, sep=2.0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    X = rng.normal(size=(n, d)) + sep * rng.normal(size=(c, d))[y]
    return X, y


@pytest.mark.shared
@pytest.mark.parametrize("fname,expected", reference_cases("parc"))
def test_reference_values(fname, expected):
    d = load_reference_input(fname)
    got = get_estimator("parc").score(d["X"], d["y"])
    assert got == pytest.approx(expected["parc"], rel=1e-6)


@pytest.mark.shared
@pytest.mark.parametrize("fname", reference_error_files("parc"))
def test_reference_errors_become_warnings(fname):
    d = load_reference_input(fname)  # D = 16 < 32: upstream's PCA raises
    with pytest.warns(UserWarning, match="PCA dimensions"):
        got = get_estimator("parc").score(d["X"], d["y"])
    assert np.isfinite(got)


@pytest.mark.parametrize("seed", [0, 1])
def test_grouped_spearman_equals_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 40, size=3000).astype(float)  # many ties
    group = rng.integers(0, 4, size=3000)
    expected = scipy.stats.spearmanr(values, group)[0]
    assert spearman_vs_grouped(values, group, 4) == pytest.approx(expected, rel=1e-12)


def test_exact_label_ties_close_to_upstream_rounding():
    X, y = _blobs()
    a = parc_score(X, y)
    b = parc_score(X, y, exact_label_ties=True)
    assert b == pytest.approx(a, rel=1e-2)
    # with exact ties the rank correlation is the one of the two-valued label RDM
    iu = np.triu_indices(len(y), 1)
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler
    f = StandardScaler().fit_transform(
        PCA(32, svd_solver="randomized", random_state=1919, iterated_power=1).fit_transform(X))
    ref = scipy.stats.spearmanr((1 - np.corrcoef(f))[iu], (y[iu[0]] != y[iu[1]]))[0] * 100
    assert b == pytest.approx(ref, rel=1e-9)


def test_invariances_with_exact_ties():
    X, y = _blobs()
    est = get_estimator("parc", exact_label_ties=True)
    base = est.score(X, y)
    perm = np.random.default_rng(2).permutation(len(y))
    assert est.score(X[perm], y[perm]) == pytest.approx(base, rel=1e-6)
    assert est.score(X, np.array(list("qwert"))[y]) == pytest.approx(base, rel=1e-12)


def test_separable_beats_random():
    X, y = _blobs(sep=4.0)
    noise = np.random.default_rng(3).normal(size=X.shape)
    assert parc_score(X, y) > 20 > parc_score(noise, y)


@pytest.mark.parametrize("shape", [(100, 8), (20, 64)])
def test_small_d_or_n_warns_and_scores(shape):
    rng = np.random.default_rng(5)
    X = rng.normal(size=shape)
    y = np.arange(shape[0]) % 3
    with pytest.warns(UserWarning, match="PCA dimensions"):
        assert np.isfinite(get_estimator("parc").score(X, y))


@pytest.mark.filterwarnings("ignore:parc. asked for 32 PCA dimensions")
def test_undefined_correlation_is_a_clear_error():
    rng = np.random.default_rng(6)
    with pytest.raises(ValueError, match="parc needs at least 3 samples"):
        get_estimator("parc").score(rng.normal(size=(2, 1)), [0, 1])
    with pytest.raises(ValueError, match="rank correlation is undefined"):
        get_estimator("parc").score(rng.normal(size=(6, 4)), np.arange(6))  # one per class
