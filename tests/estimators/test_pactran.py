"""PACTran-Gaussian: reference values, seed behaviour, properties, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from shared_data import load_reference_input, reference_cases

from transferkit.estimators import get_estimator


def _data(n: int, d: int, c: int, sep: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    return rng.normal(size=(n, d)) + sep * rng.normal(size=(c, d))[y], y


@pytest.mark.shared
@pytest.mark.parametrize("fname, entry", reference_cases("pactran"))
def test_pactran_reference(fname, entry):
    d = load_reference_input(fname)
    got = get_estimator("pactran").score(d["X"], d["y"], random_state=0)
    # README tolerance is 1e-2 (seed-dependent start); with random_state=0 we reproduce the
    # reference start exactly, so hold it much tighter
    assert got == pytest.approx(entry["score"], rel=1e-6)


def test_deterministic_per_seed_and_close_across_seeds():
    X, y = _data(150, 16, 3, sep=1.0)
    est = get_estimator("pactran")
    a, b = est.score(X, y, random_state=0), est.score(X, y, random_state=0)
    c = est.score(X, y, random_state=1)
    assert a == b
    assert c == pytest.approx(a, rel=2e-2)


def test_separable_beats_random():
    X, y = _data(150, 16, 3, sep=2.0)
    noise, _ = _data(150, 16, 3, sep=0.0, seed=7)
    est = get_estimator("pactran")
    assert est.score(X, y) > est.score(noise, y)


def test_label_names_and_components():
    X, y = _data(90, 8, 3, sep=1.0)
    est = get_estimator("pactran").fit(X, np.array(["a", "b", "c"])[y])
    assert est.score_ == pytest.approx(get_estimator("pactran").score(X, y), rel=1e-12)
    assert est.components_["pac_opt"] > 0  # regularised cross-entropy at the fitted head
    assert -est.score_ > est.components_["pac_opt"]


def test_small_inputs_and_parameters():
    X, y = _data(12, 40, 3, sep=1.0)  # N < D
    y = y.copy()
    y[0] = 3  # a class with one sample
    assert np.isfinite(get_estimator("pactran").score(X, y))
    assert np.isfinite(get_estimator("pactran", lda_factor=10.0, max_iter=50).score(X, y))
    with pytest.raises(ValueError, match="lda_factor"):
        get_estimator("pactran", lda_factor=0.0).score(X, y)
