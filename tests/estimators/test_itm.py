"""ITM (Implicit Transferability Modeling): no reference values exist, so these tests pin the
paper's mechanics (DCA step, adaptive η, stratified split) and the score's behaviour."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from shared_data import load_reference_input
from transferkit.estimators import get_estimator, list_estimators
from transferkit.estimators.itm import (
    _AdamW,
    _Psi,
    _dca_scale,
    _full_split_scale,
    adaptive_eta,
    class_dispersion,
    dca_evolve,
    standardize,
    stratified_folds,
    stratified_split,
)

# small, fast settings for most tests (the paper's 500 iterations / batch 256 in one test)
FAST = {"n_iters": 60, "batch_size": 64, "eval_every": 20}


def clusters(n_per: int, n_classes: int, dim: int, sep: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * sep
    y = np.repeat(np.arange(n_classes), n_per)
    X = centres[y] + rng.normal(size=(y.size, dim))
    return X, y


def fit(X, y, random_state: int = 0, **params):
    return get_estimator("itm", **{**FAST, **params}).fit(X, y, random_state=random_state)


# -- registry and parameters -------------------------------------------------------------------
def test_registered_with_documented_parameters():
    assert "itm" in list_estimators()
    params = get_estimator("itm").get_params()
    for key in ("eta_anchor", "dispersion_anchor", "lam", "val_evolution", "dca_norm", "psi",
                "n_iters", "batch_size", "lr", "eval_every", "val_fraction", "standardize"):
        assert key in params
    assert (params["n_iters"], params["batch_size"], params["lr"], params["eval_every"]) == (
        500, 256, 5e-3, 100)
    est = fit(*clusters(20, 3, 8, 2.0))
    assert set(est.components_) == set(type(est).components)


# -- mechanics from the paper ------------------------------------------------------------------
def test_dca_step_is_one_gradient_step_on_W():
    """Eq. 6-7: (I - C) E W + C Ê equals E W' after one GD step on ½‖E W − Ê‖²."""
    g = torch.Generator().manual_seed(0)
    E = torch.randn(12, 5, generator=g, dtype=torch.float64)
    W = torch.randn(5, 3, generator=g, dtype=torch.float64)
    E_hat = torch.nn.functional.one_hot(torch.arange(12) % 3, 3).double()
    s = 0.01
    W_next = W - s * (E.T @ (E @ W - E_hat))
    torch.testing.assert_close(dca_evolve(E @ W, E @ E.T, E_hat, s), E @ W_next)


def test_spectral_scale_puts_top_eigenvalue_of_C_at_eta():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(4, 64, 200, generator=g) + torch.randn(4, 1, 200, generator=g)
    G = X @ X.transpose(1, 2)
    s = _dca_scale(G, 0.5, "spectral", torch.rand(64, generator=g) + 0.5)
    top = torch.linalg.eigvalsh(G)[:, -1]
    torch.testing.assert_close(s * top, torch.full((4,), 0.5), rtol=2e-3, atol=0)
    # B = 1 reduces to the appendix's C = η, for either normalisation
    x = torch.randn(1, 1, 7, generator=g)
    for norm in ("spectral", "frobenius"):
        c = _dca_scale(x @ x.transpose(1, 2), 0.3, norm, torch.ones(1)) * (x * x).sum()
        torch.testing.assert_close(c, torch.tensor([0.3]))
    # the full-split step uses λ_max(Xᵀ X) from the smaller side
    Xf = X[0]
    s_full = _full_split_scale(Xf, 1.0, "spectral", g)
    assert s_full * float(torch.linalg.eigvalsh(Xf @ Xf.T)[-1]) == pytest.approx(1.0, rel=1e-3)
    # a zero Gram matrix gives no step instead of a division by zero
    assert float(_dca_scale(torch.zeros(1, 3, 3), 0.5, "spectral", torch.ones(3))[0]) == 0.0


@pytest.mark.parametrize("affine, pc_evolved, dca", [(False, True, True), (True, False, True),
                                                     (True, True, False)])
def test_hand_derived_gradients_match_autograd(affine, pc_evolved, dca):
    g = torch.Generator().manual_seed(0)
    psi = _Psi(6, 3, affine, "random", g)
    xb = torch.randn(10, 6, generator=g, dtype=torch.float32)
    y = torch.arange(10) % 3
    eb = torch.nn.functional.one_hot(y, 3).float()
    G = xb @ xb.T if dca else None
    psi.loss_grad(xb, eb, G, 0.01, 0.7, pc_evolved)
    theta = psi.theta.clone().requires_grad_(True)
    W, b, Hw, hb = psi._views(theta)
    Z = xb @ W + b if affine else xb @ W
    Zp = dca_evolve(Z, G, eb, 0.01) if dca else Z
    loss = torch.nn.functional.cross_entropy(torch.nn.functional.linear(Zp, Hw, hb), y)
    loss = loss + 0.7 * torch.nn.functional.mse_loss(Zp if pc_evolved else Z, eb)
    loss.backward()
    torch.testing.assert_close(psi.grad, theta.grad, rtol=1e-5, atol=1e-6)


def test_adamw_update_matches_torch():
    g = torch.Generator().manual_seed(0)
    p1 = torch.randn(50, generator=g)
    grad = torch.zeros(50)
    p2 = p1.clone().requires_grad_()
    mine = _AdamW(p1, grad, 5e-3, 0.01)
    ref = torch.optim.AdamW([p2], lr=5e-3, weight_decay=0.01, foreach=False)
    for _ in range(5):
        x = torch.randn(50, generator=g)
        grad.copy_(x * torch.cos(p1 * x))  # d/dp sum(sin(p x))
        mine.step()
        (p2 * x).sin().sum().backward()
        ref.step()
        ref.zero_grad()
    torch.testing.assert_close(p1, p2.detach(), rtol=0, atol=1e-7)


def test_adaptive_eta_follows_eq12():
    assert adaptive_eta(1.0, 0.5, 1.0) == pytest.approx(0.5)  # the anchor
    assert adaptive_eta(0.8, 0.5, 1.0) == pytest.approx(1 - 0.5 / 0.8)
    assert adaptive_eta(0.9, 0.5, 1.0) > adaptive_eta(0.7, 0.5, 1.0)  # more dispersed: bigger step
    assert adaptive_eta(0.2, 0.5, 1.0) == 0.0  # clipped, never negative
    assert adaptive_eta(0.0, 0.5, 1.0) == 0.0
    assert 0.0 <= adaptive_eta(1e9, 2.0, 1.0) <= 1.0


def test_class_dispersion():
    X, y = clusters(30, 4, 16, 3.0)
    Xs = standardize(X)
    d = class_dispersion(Xs, y, 4, "raw")
    assert class_dispersion(Xs, y, 4, "per_sqrt_dim") == pytest.approx(d / 4.0)
    means = np.stack([Xs[y == c].mean(0) for c in range(4)])
    assert d == pytest.approx(np.linalg.norm(Xs - means[y], axis=1).mean())
    sep = np.mean([np.linalg.norm(means[i] - means[j]) for i in range(4) for j in range(i + 1, 4)])
    assert class_dispersion(Xs, y, 4, "class_separation") == pytest.approx(d / sep)
    for units in ("raw", "per_sqrt_dim", "class_separation"):
        assert class_dispersion(np.repeat(np.eye(3), 5, axis=0), np.repeat(np.arange(3), 5), 3,
                                units) == pytest.approx(0.0)
    # per-feature standardization bounds the per-√D dispersion by 1 (no class structure)
    rng = np.random.default_rng(0)
    Xr = standardize(rng.normal(size=(500, 32)))
    assert 0.9 < class_dispersion(Xr, rng.integers(0, 5, 500), 5, "per_sqrt_dim") <= 1.0
    with pytest.raises(ValueError, match="dispersion_units"):
        class_dispersion(Xs, y, 4, "sqrt")


def test_class_separation_units_follow_class_structure_not_scale_or_width():
    """Under "class_separation" η differs between models whose classes are more or less spread
    (the paper's intent), and not between models that differ only in feature width or scale;
    "per_sqrt_dim" gives nearly the same η to all of them."""
    def model(sep, dim, scale, seed):
        X, y = clusters(40, 5, dim, sep, seed=seed)
        return X * scale, y

    tight, loose = model(1.5, 64, 1.0, 0), model(0.5, 64, 1.0, 0)
    wide_scaled = model(1.5, 256, 30.0, 0)
    eta = {}
    for units in ("class_separation", "per_sqrt_dim"):
        eta[units] = [fit(X, y, dispersion_units=units, n_iters=1, eval_every=1)
                      .components_["itm_eta"] for X, y in (tight, loose, wide_scaled)]
    e_tight, e_loose, e_wide = eta["class_separation"]
    assert e_loose > e_tight + 0.2  # a more dispersed model takes a clearly bigger step
    assert e_wide == pytest.approx(e_tight, abs=0.05)  # width and scale alone do not matter
    p_tight, p_loose, _ = eta["per_sqrt_dim"]
    assert abs(p_loose - p_tight) < e_loose - e_tight


def test_stratified_split():
    y = np.repeat(np.arange(5), [50, 20, 10, 5, 2])
    tr, va = stratified_split(y, 0.2, np.random.default_rng(0))
    assert np.intersect1d(tr, va).size == 0 and tr.size + va.size == y.size
    assert np.bincount(y[va], minlength=5).tolist() == [10, 4, 2, 1, 0]  # round(0.4) = 0
    # label renaming selects the same samples
    tr2, va2 = stratified_split(np.array([3, 0, 4, 1, 2])[y], 0.2, np.random.default_rng(0))
    assert np.array_equal(va, va2)
    with pytest.warns(UserWarning, match="single sample"):
        tr, va = stratified_split(np.array([0, 0, 0, 1]), 0.2, np.random.default_rng(0))
    assert 3 in tr and va.size == 1
    with pytest.raises(ValueError, match="2 or more"):
        stratified_split(np.array([0, 1, 2]), 0.2, np.random.default_rng(0))


# -- determinism and global state --------------------------------------------------------------
def test_deterministic_for_a_random_state():
    X, y = clusters(25, 4, 12, 0.7)
    a, b = fit(X, y, random_state=3), fit(X, y, random_state=3)
    assert a.score_ == b.score_ and a.components_ == b.components_
    c = fit(X, y, random_state=4)
    assert 0.0 <= c.score_ <= 1.0


def test_leaves_torch_global_state_alone():
    X, y = clusters(20, 3, 6, 1.0)
    threads = torch.get_num_threads()
    rng_state = torch.random.get_rng_state().clone()
    first = torch.rand(3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        s_nograd = fit(X, y).score_
        assert not torch.is_grad_enabled()
    with torch.inference_mode():
        s_inf = fit(X, y).score_
    assert s_nograd == s_inf == fit(X, y).score_
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    assert torch.equal(first, torch.rand(3, generator=torch.Generator().manual_seed(0)))


# -- behaviour -------------------------------------------------------------------------------
def test_well_separated_clusters_score_near_one():
    X, y = clusters(40, 5, 16, 4.0)
    est = fit(X, y)
    assert est.score_ >= 0.95
    assert 0.0 <= est.components_["itm_eta"] <= 0.5


def test_random_labels_score_near_chance():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(1200, 32)), rng.integers(0, 4, 1200)
    scores = [fit(X, y, random_state=r).score_ for r in range(2)]
    assert all(0.15 < s < 0.37 for s in scores) and np.mean(scores) < 0.33  # chance 0.25


def test_default_validation_uses_no_validation_labels():
    """Evolving validation batches with their own labels (the literal reading) leaks them:
    random labels score well above chance; the default train-split step does not."""
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(800, 32)), rng.integers(0, 4, 800)
    default = fit(X, y).score_
    leaky = fit(X, y, val_evolution="self_labels").score_
    assert leaky > default + 0.08


def test_more_separable_features_score_higher():
    scores = [fit(*clusters(30, 6, 16, sep, seed=1)).score_ for sep in (0.15, 0.5, 2.0)]
    assert scores[0] < scores[1] < scores[2]


def test_invariant_to_label_renaming():
    X, y = clusters(30, 5, 10, 0.6, seed=2)
    rename = np.array([30, 7, 12, 99, 1])[y]  # non-contiguous ids, new order
    a, b = fit(X, y), fit(X, rename)
    assert b.score_ == pytest.approx(a.score_, abs=1.5 / 30)  # at most one validation sample
    assert b.components_["itm_eta"] == pytest.approx(a.components_["itm_eta"])


@pytest.mark.parametrize(
    "params",
    [
        {"val_evolution": "none"},
        {"val_evolution": "self_labels"},
        {"dca_norm": "frobenius"},
        {"psi": "affine", "init": "random"},
        {"pc_input": "mapped", "lam": 1.0},
        {"adaptive_eta": False, "eta_anchor": 0.0},
        {"standardize": "global"},
        {"standardize": "none", "dispersion_units": "raw", "dispersion_anchor": 5.0},
        {"dispersion_units": "per_sqrt_dim"},
        {"dca_norm": "trace"},
        {"lam": 0.0},
        {"n_splits": 3},
        {"split": "kfold", "n_splits": 5},
        {"split": "auto"},
        {"score_reading": "mean_acc"},
    ],
)
def test_open_readings_all_run(params):
    X, y = clusters(25, 4, 12, 1.5)
    est = fit(X, y, **params)
    assert 0.5 < est.score_ <= 1.0


def test_fixed_eta_and_lambda():
    X, y = clusters(25, 3, 8, 1.0)
    est = fit(X, y, adaptive_eta=False, eta_anchor=0.3, lam=2.0)
    assert est.components_["itm_eta"] == pytest.approx(0.3)
    assert est.components_["itm_lambda"] == pytest.approx(2.0)
    est = fit(X, y)
    assert est.components_["itm_lambda"] == est.components_["itm_eta"]  # λ = η by default


def test_lambda_zero_drops_the_explicit_pc_term():
    """λ = 0: L_pc acts only through Eq. 7's step; the gradient has no MSE part."""
    g = torch.Generator().manual_seed(0)
    psi = _Psi(6, 3, False, "random", g)
    xb = torch.randn(10, 6, generator=g)
    eb = torch.nn.functional.one_hot(torch.arange(10) % 3, 3).float()
    psi.loss_grad(xb, eb, xb @ xb.T, 0.01, 0.0, True)
    g0 = psi.grad.clone()
    psi.loss_grad(xb, eb, xb @ xb.T, 0.01, 0.5, True)
    assert not torch.allclose(g0, psi.grad)
    X, y = clusters(25, 3, 8, 1.0)
    est = fit(X, y, lam=0.0)
    assert est.components_["itm_lambda"] == 0.0 and est.components_["itm_eta"] > 0


def test_repeated_splits_average_single_splits():
    X, y = clusters(30, 4, 10, 0.5, seed=3)
    paper = {"split": "repeated", "score_reading": "best_acc"}
    one = fit(X, y, random_state=5, **paper)
    three = fit(X, y, random_state=5, n_splits=3, **paper)
    # the first of the repeated splits is the single split: same random stream
    assert three.components_["itm_n_val"] == one.components_["itm_n_val"] == 24
    assert 0.0 <= three.score_ <= 1.0
    assert three.score_ == pytest.approx(three.components_["itm_best_val_acc"])
    folds = fit(X, y, split="kfold", n_splits=4)
    assert folds.components_["itm_n_val"] == pytest.approx(30.0)  # 120 samples / 4 folds
    ll = fit(X, y, score_reading="loglik")
    assert ll.score_ == ll.components_["itm_val_loglik"] < 0
    mean = fit(X, y, score_reading="mean_acc")
    assert mean.score_ == mean.components_["itm_mean_val_acc"] <= mean.components_[
        "itm_best_val_acc"]


def test_auto_split_uses_folds_only_when_validation_is_small():
    """split='auto': 5 folds while the 4:1 split would validate on < kfold_below_n_val samples."""
    X, y = clusters(30, 4, 10, 0.5, seed=3)  # 120 samples: a 4:1 split validates on 24
    auto = fit(X, y, random_state=5)  # the default
    folds = fit(X, y, random_state=5, split="kfold", n_splits=5)
    assert auto.components_["itm_n_splits"] == 5 and auto.components_["itm_n_val"] == pytest.approx(24.0)
    assert auto.score_ == folds.score_
    big = fit(X, y, random_state=5, split="auto", kfold_below_n_val=24)  # 24 is not below 24
    one = fit(X, y, random_state=5, split="repeated")
    assert big.components_["itm_n_splits"] == 1 and big.score_ == one.score_
    est = get_estimator("itm")
    assert est.split_plan(5000) == ("repeated", 1) and est.split_plan(2495) == ("kfold", 5)
    with pytest.raises(ValueError, match="kfold_below_n_val"):
        fit(X, y, kfold_below_n_val=-1)


def test_stratified_folds_cover_each_sample_once():
    y = np.repeat(np.arange(4), [20, 9, 3, 1])
    with pytest.warns(UserWarning, match="single sample"):
        fold = stratified_folds(y, 5, np.random.default_rng(0))
    assert fold[y == 3].tolist() == [-1]  # a singleton is never validated
    for c, n in enumerate([20, 9, 3]):
        counts = np.bincount(fold[y == c], minlength=5)
        assert counts.sum() == n and counts.max() - counts.min() <= 1
    with pytest.warns(UserWarning, match="single sample"):
        fold2 = stratified_folds(np.array([2, 0, 3, 1])[y], 5, np.random.default_rng(0))
    assert np.array_equal(fold, fold2)  # renaming the classes keeps the folds


def test_saturated_score_is_reported():
    X, y = clusters(40, 4, 16, 6.0)  # every model-split reaches validation accuracy 1.0
    with pytest.warns(UserWarning, match="saturated"):
        est = fit(X, y, n_splits=2)
    assert est.score_ == 1.0 and est.components_["itm_saturated"] == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the tie-free reading is not saturated: no warning
        ll = fit(X, y, score_reading="loglik")
    assert ll.components_["itm_saturated"] == 1.0 and ll.score_ < 0
    # below the ceiling nothing is reported
    X2, y2 = clusters(30, 4, 10, 0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fit(X2, y2).components_["itm_saturated"] == 0.0


@pytest.mark.shared
def test_paper_defaults_on_reference_synthetic():
    d = load_reference_input("synthetic.npz")
    est = get_estimator("itm").fit(d["X"], d["y"], random_state=0)
    assert 0.6 < est.score_ <= 1.0
    assert est.components_["itm_final_val_acc"] <= est.score_


# -- bad input and small data -------------------------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        {"n_iters": 0},
        {"batch_size": 2.5},
        {"eval_every": True},
        {"val_fraction": 1.0},
        {"lr": 0.0},
        {"lam": "auto"},
        {"lam": -1.0},
        {"eta_anchor": 1.5},
        {"dispersion_anchor": 0.0},
        {"val_evolution": "labels"},
        {"dca_norm": "power"},
        {"standardize": "minmax"},
        {"psi": "mlp"},
        {"threads": 0},
        {"n_splits": 0},
        {"split": "kfold", "n_splits": 1},
        {"split": "loo"},
        {"score_reading": "auc"},
        {"dispersion_units": "sqrt"},
    ],
)
def test_bad_parameters_raise_value_error(params):
    X, y = clusters(10, 2, 4, 1.0)
    with pytest.raises(ValueError, match="itm"):
        fit(X, y, **params)


def test_bad_input():
    X, y = clusters(10, 2, 4, 1.0)
    with pytest.raises(TypeError):
        get_estimator("itm", eta=0.5)
    X_nan = X.copy()
    X_nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        fit(X_nan, y)
    with pytest.raises(ValueError, match="2 classes"):
        fit(X, np.zeros(len(y)))
    with pytest.raises(ValueError, match="2 or more"):
        fit(X[:3], [0, 1, 2])


def test_small_data():
    rng = np.random.default_rng(0)
    # N below the batch size: every batch is the whole training split
    X, y = clusters(8, 3, 5, 3.0)
    assert 0.0 <= get_estimator("itm", n_iters=30, eval_every=10).score(X, y) <= 1.0
    # D = 1
    X1 = np.r_[rng.normal(-3, 1, 20), rng.normal(3, 1, 20)][:, None]
    assert fit(X1, np.repeat([0, 1], 20)).score_ >= 0.8
    # a singleton class: warned, trained on, never validated
    Xs, ys = clusters(6, 3, 4, 2.0)
    Xs, ys = np.r_[Xs, rng.normal(size=(1, 4))], np.r_[ys, 3]
    with pytest.warns(UserWarning, match="single sample"):
        assert np.isfinite(fit(Xs, ys).score_)
    # three samples, two classes; constant features
    with pytest.warns(UserWarning):
        assert np.isfinite(fit(rng.normal(size=(3, 2)), [0, 0, 1]).score_)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = fit(np.ones((12, 3)), np.repeat([0, 1], 6))
    assert est.components_["itm_eta"] == 0.0 and 0.0 <= est.score_ <= 1.0


def test_registry_import_leaves_torch_and_sklearn_unloaded():
    """torch (ITM) and scikit-learn (NLEEP, PARC) load when those methods run, not on import."""
    import subprocess
    import sys

    code = ("import sys; from transferkit.estimators import get_estimator, list_estimators; "
            "list_estimators(); get_estimator('logme'); "
            "print(sorted(m for m in ('torch', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
