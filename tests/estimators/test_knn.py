"""Leave-one-out 1-NN accuracy: reference values, exact tie handling, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from shared_data import load_reference_input, reference_cases

from transferkit.estimators import get_estimator
from transferkit.estimators.knn import nearest_neighbours


def brute_force_nn(X: np.ndarray) -> np.ndarray:
    """Exact squared distances (use with integer-valued X), self excluded, ties -> lowest index."""
    d = ((X[:, None, :] - X[None, :, :]) ** 2).sum(axis=-1).astype(np.float64)
    np.fill_diagonal(d, np.inf)
    return d.argmin(axis=1)


@pytest.mark.shared
@pytest.mark.parametrize("fname, entry", reference_cases("knn1_parc"))
def test_knn1_reference(fname, entry):
    d = load_reference_input(fname)
    assert get_estimator("knn1").score(d["X"], d["y"]) == entry["score"]


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_ties_go_to_lowest_index(seed):
    # tiny integer grid: many duplicates and equidistant neighbours
    X = np.random.default_rng(seed).integers(0, 3, size=(400, 3)).astype(np.float64)
    np.testing.assert_array_equal(nearest_neighbours(X), brute_force_nn(X))


def test_matches_brute_force_on_float_data_and_any_scale():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 20)) + 100.0  # large offset: cancellation-prone
    expected = brute_force_nn(X)
    np.testing.assert_array_equal(nearest_neighbours(X), expected)
    np.testing.assert_array_equal(nearest_neighbours(X * 1e30), expected)
    np.testing.assert_array_equal(nearest_neighbours(X * 1e-30), expected)


def test_blocks_cover_all_rows(monkeypatch):
    import transferkit.estimators.knn as knn

    X = np.random.default_rng(3).normal(size=(257, 5))
    monkeypatch.setattr(knn, "_BLOCK_ENTRIES", 257 * 10)  # 10 rows per block
    np.testing.assert_array_equal(knn.nearest_neighbours(X), brute_force_nn(X))


def test_known_cases_and_invariances():
    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(3), 20)
    separable = rng.normal(size=(60, 4)) * 0.01 + np.eye(3, 4)[y] * 10
    est = get_estimator("knn1")
    assert est.score(separable, y) == 100.0
    perm = rng.permutation(60)
    assert est.score(separable[perm], np.array(["x", "y", "z"])[y][perm]) == 100.0
    # duplicates with different labels: the sample itself never counts as its own neighbour
    X = np.array([[0.0], [0.0], [5.0]])
    assert est.score(X, [0, 1, 1]) == 0.0


def test_single_sample_class():
    X = np.array([[0.0], [0.1], [3.0], [3.1], [10.0]])
    # the lone class-2 sample cannot be classified correctly; the other four can
    assert get_estimator("knn1").score(X, [0, 0, 1, 1, 2]) == pytest.approx(80.0)


def test_constant_features():
    # all points identical: every neighbour ties, the lowest other index wins
    X = np.ones((6, 3))
    np.testing.assert_array_equal(nearest_neighbours(X), [1, 0, 0, 0, 0, 0])
