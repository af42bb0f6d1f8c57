"""GBC (spherical and diagonal): reference values, PCA, properties, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from shared_data import load_reference_input, reference_cases
from sklearn.decomposition import PCA

from transferkit.estimators import get_estimator
from transferkit.estimators.gbc import pca_scores

METHODS = ["gbc", "gbc_diag"]


def loop_gbc(X: np.ndarray, y: np.ndarray, spherical: bool) -> float:
    """google-research gbc.py's pairwise loop (float64), without PCA."""
    stats = {}
    for c in np.unique(y):
        stats[c] = (X[y == c].mean(axis=0), np.maximum(X[y == c].var(axis=0), 1e-4))
    total = 0.0
    for c1 in stats:
        for c2 in stats:
            if c1 == c2:
                continue
            (m1, v1), (m2, v2) = stats[c1], stats[c2]
            if spherical:
                v1, v2 = v1.mean(), v2.mean()
            avg = (v1 + v2) / 2
            first = np.sum((m1 - m2) ** 2 / avg) / 8
            second = np.sum(np.log(avg)) - 0.5 * np.sum(np.log(v1)) - 0.5 * np.sum(np.log(v2))
            total += np.exp(-(first + 0.5 * second))
    return -total


def _data(n: int, d: int, c: int, sep: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    scales = np.linspace(0.5, 2.0, d)
    return rng.normal(size=(n, d)) * scales + sep * rng.normal(size=(c, d))[y], y


@pytest.mark.shared
@pytest.mark.parametrize("fname, entry", reference_cases("gbc"))
def test_gbc_reference(fname, entry):
    d = load_reference_input(fname)
    assert get_estimator("gbc").score(d["X"], d["y"]) == pytest.approx(entry["score"], rel=1e-4)


@pytest.mark.shared
@pytest.mark.parametrize("fname, entry", reference_cases("gbc_diag"))
def test_gbc_diag_reference(fname, entry):
    d = load_reference_input(fname)
    got = get_estimator("gbc_diag").score(d["X"], d["y"])
    assert got == pytest.approx(entry["score"], rel=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_vectorised_pairs_match_the_loop(method, monkeypatch):
    import transferkit.estimators.gbc as gbc

    X, y = _data(140, 20, 7)
    expected = loop_gbc(X, y, spherical=method == "gbc")
    assert get_estimator(method).score(X, y) == pytest.approx(expected, rel=1e-10)
    monkeypatch.setattr(gbc, "_BLOCK_ENTRIES", 3 * 7 * 20)  # 3 class rows per block
    assert get_estimator(method).score(X, y) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("shape", [(200, 90), (50, 120)])
def test_pca_scores_match_sklearn_full_svd(shape):
    X, _ = _data(*shape, c=3)
    ours = pca_scores(X, 40)
    ref = PCA(n_components=40, svd_solver="full").fit_transform(X)
    signs = np.sign(np.sum(ours * ref, axis=0))
    np.testing.assert_allclose(ours * signs, ref, rtol=1e-6, atol=1e-8 * np.abs(ref).max())


@pytest.mark.parametrize("method", METHODS)
def test_pca_applied_only_above_64_dims(method):
    X, y = _data(300, 100, 4)
    reduced = PCA(n_components=64, svd_solver="full").fit_transform(X)
    expected = loop_gbc(reduced, y, spherical=method == "gbc")
    assert get_estimator(method).score(X, y) == pytest.approx(expected, rel=1e-6)
    X64 = X[:, :64]
    assert get_estimator(method).score(X64, y) == pytest.approx(
        loop_gbc(X64, y, spherical=method == "gbc"), rel=1e-10
    )


@pytest.mark.parametrize("method", METHODS)
def test_invariances_and_known_cases(method):
    X, y = _data(120, 10, 4, sep=1.0)
    est = get_estimator(method)
    base = est.score(X, y)
    perm = np.random.default_rng(1).permutation(len(y))
    names = np.array(["d", "c", "b", "a"])[y]
    assert est.score(X[perm], names[perm]) == pytest.approx(base, rel=1e-10)
    assert est.score(X + 1e3, y) == pytest.approx(base, rel=1e-8)
    far, _ = _data(120, 10, 4, sep=50.0)
    same, _ = _data(120, 10, 4, sep=0.0)
    assert -1e-6 < est.score(far, y) <= 0  # separated classes: no overlap
    assert est.score(same, y) < base < 0
    assert est.score(same, y) >= -4 * 3  # at most C (C - 1) coefficients of 1


def test_spherical_is_rotation_invariant():
    X, y = _data(120, 10, 4)
    Q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(10, 10)))
    est = get_estimator("gbc")
    assert est.score(X @ Q, y) == pytest.approx(est.score(X, y), rel=1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_small_n_large_d_warns_and_single_sample_class(method):
    X, y = _data(40, 100, 4)  # N < 64 < D: PCA clipped to N dims with a warning
    with pytest.warns(UserWarning, match="64 PCA dimensions"):
        assert np.isfinite(get_estimator(method).score(X, y))
    y = y.copy()
    y[0] = 4  # one sample: zero variance, floored at 1e-4 as upstream
    with pytest.warns(UserWarning):
        assert np.isfinite(get_estimator(method).score(X, y))


def test_n_components_parameter():
    X, y = _data(200, 40, 3)
    reduced = PCA(n_components=8, svd_solver="full").fit_transform(X)
    assert get_estimator("gbc_diag", n_components=8).score(X, y) == pytest.approx(
        loop_gbc(reduced, y, spherical=False), rel=1e-6
    )
