"""linear_probe: cross-validated logistic-regression accuracy on known cases, seeding, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.estimators import get_estimator, list_estimators


def _blobs(n_per_class: int, n_classes: int = 3, sep: float = 10.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    return rng.normal(size=(len(y), 6)) + sep * np.eye(n_classes, 6)[y], y


def test_registered():
    assert "linear_probe" in list_estimators()


def test_separable_data_scores_one_and_reports_folds():
    X, y = _blobs(20)
    est = get_estimator("linear_probe").fit(X, y)
    assert est.score_ == 1.0
    assert est.components_ == {"folds": 5.0, "n_correct": 60.0}


def test_random_labels_score_near_chance():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(800, 10)), rng.integers(0, 4, 800)
    assert abs(get_estimator("linear_probe").score(X, y) - 0.25) < 0.06


def test_fewer_samples_per_class_than_folds_uses_fewer_folds():
    X, y = _blobs(3)
    est = get_estimator("linear_probe", folds=5).fit(X, y)
    assert est.components_["folds"] == 3.0 and est.score_ == 1.0


def test_seeded_and_seed_dependent():
    X, y = _blobs(30, sep=0.7, seed=2)
    est = get_estimator("linear_probe")
    assert est.score(X, y, random_state=0) == est.score(X, y, random_state=0)
    assert len({est.score(X, y, random_state=s) for s in range(5)}) > 1  # fold assignment depends on the seed


def test_scale_invariant_features():
    X, y = _blobs(15, sep=1.0, seed=3)
    est = get_estimator("linear_probe")
    assert est.score(X * 1e4, y) == est.score(X, y)  # standardized inside each fold


@pytest.mark.parametrize("params, match", [({"folds": 1}, "folds"), ({"folds": 2.5}, "folds"), ({"C": 0}, "C"),
                                           ({"C": float("nan")}, "C"), ({"max_iter": 0}, "max_iter")])
def test_bad_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        get_estimator("linear_probe", **params)


def test_bad_inputs():
    est = get_estimator("linear_probe")
    with pytest.raises(ValueError, match="at least 2 samples per class"):
        est.score(np.zeros((3, 2)), [0, 0, 1])
    with pytest.raises(ValueError, match="at least 2 classes"):
        est.score(np.zeros((4, 2)), [0, 0, 0, 0])
    with pytest.raises(ValueError, match="non-finite"):
        est.score(np.array([[0.0], [np.nan], [1.0], [2.0]]), [0, 0, 1, 1])
    with pytest.raises(ValueError, match="labels"):
        est.score(np.zeros((4, 2)), [0, 1])
