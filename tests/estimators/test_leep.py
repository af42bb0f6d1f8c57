"""LEEP and NCE: reference values, properties, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from shared_data import load_reference_input, reference_cases, reference_error_files

from transferkit.estimators import get_estimator


def _probs(rng: np.random.Generator, n: int, n_src: int) -> np.ndarray:
    logits = rng.normal(size=(n, n_src)) * 2
    P = np.exp(logits - logits.max(axis=1, keepdims=True))
    return P / P.sum(axis=1, keepdims=True)


@pytest.fixture
def toy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=200)
    return y, _probs(rng, 200, 7)


@pytest.mark.shared
@pytest.mark.parametrize("fname, entry", reference_cases("leep"))
def test_leep_reference(fname, entry):
    d = load_reference_input(fname)
    got = get_estimator("leep").score(None, d["y"], source_probs=d["P"])
    assert got == pytest.approx(entry["score"], rel=1e-9)


@pytest.mark.shared
@pytest.mark.parametrize("fname, entry", reference_cases("nce"))
def test_nce_reference(fname, entry):
    d = load_reference_input(fname)
    got = get_estimator("nce").score(d["X"], d["y"], source_probs=d["P"])
    assert got == pytest.approx(entry["score"], rel=1e-9)


@pytest.mark.shared
@pytest.mark.parametrize("fname, entry", reference_cases("nce_parc"))
def test_nce_parc_variant_reference(fname, entry):
    d = load_reference_input(fname)
    got = get_estimator("nce", variant="parc").score(None, d["y"], source_probs=d["P"])
    assert got == pytest.approx(entry["score"], rel=1e-9)


@pytest.mark.shared
@pytest.mark.parametrize("method", ["leep", "nce"])
def test_missing_source_probs_is_a_clear_error(method):
    for fname in reference_error_files(method):
        d = load_reference_input(fname)
        with pytest.raises(ValueError, match="source_probs"):
            get_estimator(method).score(d["X"], d["y"])


@pytest.mark.parametrize("method", ["leep", "nce"])
def test_invariant_to_permutations_and_label_names(method, toy):
    y, P = toy
    est = get_estimator(method)
    base = est.score(None, y, source_probs=P)
    rng = np.random.default_rng(1)
    perm = rng.permutation(len(y))
    cols = rng.permutation(P.shape[1])
    names = np.array(["d", "a", "c", "b"])
    assert est.score(None, y[perm], source_probs=P[perm]) == pytest.approx(base, rel=1e-12)
    assert est.score(None, names[y], source_probs=P[:, cols]) == pytest.approx(base, rel=1e-12)


def test_known_values():
    y = np.repeat(np.arange(4), 25)
    onehot = np.eye(4)[y]
    uninformative = np.full((100, 3), 1 / 3)
    # source predictions that identify the target label exactly: log 1 = 0 / no entropy left
    for method in ("leep", "nce"):
        est = get_estimator(method)
        assert est.score(None, y, source_probs=onehot) == pytest.approx(0.0, abs=1e-12)
        # identical predictions for every sample: the label prior, -log 4 for balanced classes
        assert est.score(None, y, source_probs=uninformative) == pytest.approx(-np.log(4))


def test_leep_unused_source_class_gives_finite_score(toy):
    y, P = toy
    P0 = np.hstack([P, np.zeros((len(y), 1))])  # upstream: 0/0 in P(y|z) -> NaN score
    assert get_estimator("leep").score(None, y, source_probs=P0) == pytest.approx(
        get_estimator("leep").score(None, y, source_probs=P), rel=1e-12
    )


def test_nce_parc_variant_is_close_to_but_not_the_default(toy):
    y, P = toy
    canonical = get_estimator("nce").score(None, y, source_probs=P)
    parc = get_estimator("nce", variant="parc").score(None, y, source_probs=P)
    assert parc < canonical
    assert parc == pytest.approx(canonical, abs=0.05)


def test_bad_inputs(toy):
    y, P = toy
    with pytest.raises(ValueError, match="variant"):
        get_estimator("nce", variant="tllib").score(None, y, source_probs=P)
    with pytest.raises(ValueError, match="rows must sum to 1"):
        get_estimator("leep").score(None, y, source_probs=P * 2)
    with pytest.raises(ValueError, match="rows"):
        get_estimator("leep").score(None, y, source_probs=P[:-1])
    with pytest.raises(TypeError):
        get_estimator("leep", variant="parc")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("order", ["C", "F"])
def test_valid_probabilities_in_any_float_dtype_and_layout_are_accepted(dtype, order):
    """Row sums of float16 or column-major probabilities are checked in float64."""
    rng = np.random.default_rng(0)
    n, k = 200, 2000
    logits = rng.normal(size=(n, k))
    P = np.exp(logits - logits.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    P = np.array(P.astype(dtype), order=order)
    y = np.arange(n) % 4
    X = rng.normal(size=(n, 3))
    for name in ("leep", "nce"):
        assert np.isfinite(get_estimator(name).score(X, y, source_probs=P))
