"""NCTI: reference values, zoo combination, PCA equivalence, properties, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from shared_data import load_reference_input, reference_cases, reference_error_files

from transferkit.estimators import get_estimator, score_zoo
from transferkit.estimators.ncti import pca_transform

RTOL = 1e-6


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Small BLAS problems: oversubscribed threads on a shared 2-core machine only slow down."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield
KEYS = ("ncti_seli", "ncti_ncc", "ncti_vc")

# The shrinkage that upstream's rule (BUserName/NCTI metrics.py line 537:
# max(exp(-pca.explained_variance_[:32].sum()), 1e-10)) gives on the digits inputs.
UPSTREAM_SHRINKAGE = {
    "digits_raw.npz": 0.010695923682336746,
    "digits_rproj96.npz": 0.0010376605206696672,
    "digits_rrelu256.npz": 0.0013470077399745932,
    "digits_blurrelu128.npz": 0.0016438125358133357,
    "digits_noisy.npz": 3.309053850342123e-08,
}


def _components(X, y, **params):
    est = get_estimator("ncti", **params).fit(X, y)
    return {"ncti_seli": est.score_, **est.components_}


@pytest.mark.filterwarnings("ignore:ncti. within-class scatter is singular")
@pytest.mark.parametrize(("fname", "expected"), reference_cases("ncti"))
def test_reference_values(fname, expected):
    d = load_reference_input(fname)
    out = _components(d["X"], d["y"])
    assert out["ncti_seli"] == pytest.approx(expected["score"], rel=RTOL)
    for k in KEYS:
        assert out[k] == pytest.approx(expected[k], rel=RTOL), k


@pytest.mark.filterwarnings("ignore:ncti. within-class scatter is singular")
@pytest.mark.parametrize("fname", sorted(UPSTREAM_SHRINKAGE))
def test_upstream_shrinkage_rule(fname):
    d = load_reference_input(fname)
    est = get_estimator("ncti").fit(d["X"], d["y"])
    assert est.components_["ncti_shrinkage"] == pytest.approx(UPSTREAM_SHRINKAGE[fname], rel=1e-8)


@pytest.mark.parametrize("fname", ["dtd10__mnv1_025.npz", "synthetic.npz"])
def test_rule_at_its_floor_uses_the_unshrunk_svd_solver(fname):
    """Real features: exp(-sum) < 1e-10, so upstream (line 542) uses solver='svd', no shrinkage."""
    d = load_reference_input(fname)
    assert get_estimator("ncti").fit(d["X"], d["y"]).components_["ncti_shrinkage"] == 0.0


def _upstream_ncti(X, y):
    """BUserName/NCTI ``NCTI_Score`` restated with scikit-learn (PCA seeded as the reference)."""
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    pca = PCA(n_components=64, random_state=0)
    Xp = pca.fit_transform(X)
    s = max(np.exp(-pca.explained_variance_[:32].sum()), 1e-10)
    lda = (LinearDiscriminantAnalysis(solver="svd") if s == 1e-10
           else LinearDiscriminantAnalysis(solver="eigen", shrinkage=float(s)))
    low = lda.fit_transform(Xp, y)
    P = lda.predict_proba(Xp)
    nuc = sum(np.linalg.norm(P[y == c], ord="nuc") for c in np.unique(y))
    return {"ncti_seli": np.linalg.norm(low - low.mean(0), ord="nuc"),
            "ncti_ncc": P[np.arange(len(y)), y].mean(), "ncti_vc": np.log(nuc)}


def test_singular_scatter_at_the_floor_drops_null_directions_as_upstream():
    """7 per class: within-class rank 60 < 64 PCA dims. Upstream's svd solver drops the null
    directions (a tiny eigen-solver shrinkage instead was 2-24 % off on real features)."""
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(10), 7)
    X = 3.0 * rng.normal(size=(70, 150)) + 4.0 * rng.normal(size=(10, 150))[y]
    with pytest.warns(UserWarning, match="null directions"):
        out = _components(X, y)
    assert out["ncti_shrinkage"] == 0.0
    want = _upstream_ncti(X, y)
    for k in KEYS:
        assert out[k] == pytest.approx(want[k], rel=1e-9), k


def test_fixed_shrinkage_overrides_the_rule():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(300, 80)), np.arange(300) % 3
    a = get_estimator("ncti", shrinkage=0.0).fit(X, y)
    b = get_estimator("ncti", shrinkage=0.2).fit(X, y)
    assert a.components_["ncti_shrinkage"] == 0.0 and b.components_["ncti_shrinkage"] == 0.2
    assert a.score_ != b.score_


@pytest.mark.parametrize("fname", reference_error_files("ncti"))
def test_reference_error_inputs_warn_and_give_a_result(fname):
    d = load_reference_input(fname)
    with pytest.warns(UserWarning, match="asked for 64 PCA dimensions"):
        out = _components(d["X"], d["y"])
    assert all(math.isfinite(v) for v in out.values())


# -- PCA: equal to scikit-learn's PCA(64, random_state).fit_transform up to column signs ---------
@pytest.mark.parametrize(
    ("n", "d"),
    [(300, 700), (700, 200), (1300, 120), (400, 300), (900, 850)],
    ids=["randomized-transposed", "randomized", "covariance_eigh", "full", "randomized-q4"],
)
def test_pca_transform_matches_sklearn(n, d):
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(n)
    X = rng.normal(size=(n, d)) * np.linspace(3.0, 0.1, d) + 2.0
    ours = pca_transform(X, 64, random_state=0)
    ref = PCA(64, random_state=0).fit_transform(X)
    assert ours.shape == ref.shape
    signs = np.sign(np.sum(ours * ref, axis=0))
    np.testing.assert_allclose(ours * signs, ref, atol=1e-9 * np.abs(ref).max())


# -- zoo combination -----------------------------------------------------------------------------
def test_combine_zoo():
    per_model = {"a": {"ncti_seli": 100.0, "ncti_ncc": 0.9, "ncti_vc": 5.0},
                 "b": {"ncti_seli": 300.0, "ncti_ncc": 0.5, "ncti_vc": 4.0},
                 "c": {"ncti_seli": 200.0, "ncti_ncc": 0.7, "ncti_vc": 6.0}}
    zoo = get_estimator("ncti").combine_zoo(per_model)
    # minmax(ncc) + minmax(seli) - minmax(vc)
    assert zoo == pytest.approx({"a": 1.0 + 0.0 - 0.5, "b": 0.0 + 1.0 - 0.0, "c": 0.5 + 0.5 - 1.0})


def test_score_zoo_end_to_end():
    files = ["digits_noisy.npz", "digits_rrelu256.npz"]
    data = {f: load_reference_input(f) for f in files}
    zoo = score_zoo({f: d["X"] for f, d in data.items()}, data[files[0]]["y"], method="ncti")
    assert zoo["digits_rrelu256.npz"] > zoo["digits_noisy.npz"]  # separable beats noisy


# -- properties ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic():
    return load_reference_input("synthetic.npz")


def test_invariant_to_label_names_and_sample_order(synthetic):
    X, y = synthetic["X"], synthetic["y"]
    ref = _components(X, y)
    names = np.array(list("abcdefghij"))[(y * 3 + 1) % 10]
    perm = np.random.default_rng(0).permutation(len(y))  # N >= D: the sketch lives in feature space
    for Xv, yv in ((X, names), (X[perm], y[perm])):
        assert _components(Xv, yv) == pytest.approx(ref, rel=1e-9)


def test_deterministic_and_seeded(synthetic):
    X, y = synthetic["X"], synthetic["y"]
    a, b = _components(X, y), _components(X, y)
    assert a == b
    other = get_estimator("ncti").fit(X, y, random_state=1)
    assert other.score_ != a["ncti_seli"]  # the randomized PCA draw depends on the seed


def test_separable_beats_random():
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(4), 50)
    separable = rng.normal(size=(200, 20)) + 8.0 * np.eye(20)[y]
    random = rng.normal(size=(200, 20))
    with pytest.warns(UserWarning, match="PCA dimensions"):
        sep, rnd = _components(separable, y, n_components=64), _components(random, y)
    assert sep["ncti_ncc"] > 0.99 > rnd["ncti_ncc"]
    assert sep["ncti_seli"] > rnd["ncti_seli"]


# -- bad input -----------------------------------------------------------------------------------
def test_singular_within_class_scatter_warns_and_is_finite():
    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(3), 30)
    X = np.c_[rng.normal(size=(90, 5)), np.zeros((90, 70))]  # rank 5 features, D = 75 >= 64
    with pytest.warns(UserWarning, match="singular"):
        out = _components(X, y, shrinkage=0.0)  # unshrunk: LDA restricted to the range
    assert all(math.isfinite(v) for v in out.values())
    with pytest.warns(UserWarning, match="shrinkage"):
        out = _components(X, y)  # upstream's rule shrinks (about exp(-5) here)
    assert all(math.isfinite(v) for v in out.values()) and out["ncti_shrinkage"] > 1e-3


def test_single_sample_class_and_n_below_d():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(40, 100))
    y = np.r_[np.zeros(20, int), np.ones(19, int), 2]
    with pytest.warns(UserWarning):
        out = _components(X, y)
    assert all(math.isfinite(v) for v in out.values())


def test_bad_params():
    with pytest.raises(ValueError, match="shrinkage"):
        get_estimator("ncti", shrinkage=1.5).score(np.eye(4), [0, 0, 1, 1])
    with pytest.raises(TypeError, match="unknown parameter"):
        get_estimator("ncti", n_dims=32)


def test_singular_scatter_with_the_shrinkage_rule_warns():
    """Few-shot data: the rule regularises a singular scatter, and the user is told."""
    rng = np.random.default_rng(7)
    y = np.repeat(np.arange(40), 2)  # 2 samples per class: within-class rank 40 < 64
    X = rng.normal(size=(80, 120)) * 0.4
    with pytest.warns(UserWarning, match="singular.*shrinkage"):
        out = _components(X, y)
    assert all(math.isfinite(v) for v in out.values())


@pytest.mark.parametrize("bad", [True, "auto", float("nan"), -0.1, 1.5])
def test_bad_shrinkage_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="shrinkage"):
        get_estimator("ncti", shrinkage=bad).score(np.random.default_rng(0).normal(size=(40, 70)),
                                                   np.arange(40) % 2)
