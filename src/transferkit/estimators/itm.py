"""ITM: Implicit Transferability Modeling (seed paper, §3.2–3.4, §4.2, Appendix A.3).

A small learnable module ψ (a linear map W: D → K onto the space of one-hot pseudo-cluster
centres, K = C, followed by a linear classification head h: K → C) is trained for a few hundred
AdamW steps on the standardized target features. On every mini-batch (a "subspace" E_j) the mapped
embedding is first evolved by one step of Divide-and-Conquer Adaptation (Eq. 7, n = 1)::

    Z' = (I − C) Z + C Ê,    Z = E_j W,    C = η · E_j E_jᵀ / λ_max(E_j E_jᵀ),    Ê = one-hot(y)

which is exactly the embedding seen through W after one gradient step on ½‖E_j W − Ê‖² (Eqs.
4–6). The step η adapts to the model (Eq. 12): η = 1 − (1 − η_b)·dis_b / dis_φ, with dis_φ the mean
distance of standardized features to their class mean. ψ is trained with L_obj + λ·L_pc
(cross-entropy on h(Z') plus MSE of Z' to its centre, Eq. 8); the score is the best accuracy on a
stratified 1/5 validation split, evaluated every `eval_every` iterations.

The paper leaves several readings open; each is a parameter (see `docs/itm.md`):
the normalisation of C (`dca_norm`: the spectral normalisation reduces to the appendix's
"C = η" when B = 1), the anchor (`eta_anchor`, `dispersion_anchor`, dispersion per √D so that it
is comparable across feature sizes), λ (`lam`: "eta" reads §3.4 "λ ... is controlled by C with
η"), how validation batches are evolved (`val_evolution`: by default with one DCA step on the
*training* split, so validation labels are never used), what ψ is and how it starts (`psi`,
`init`: W = 0 and an identity head by default) and what L_pc constrains (`pc_input`). There is
no public reference implementation to match; correctness rests on following the paper and on the
properties tested in `tests/estimators/test_itm.py`.

Implementation: gradients of Eq. 8 are derived by hand (checked against autograd) and applied by
a single-tensor AdamW (torch's update), batch Gram matrices are built per chunk of steps, and the
small per-step ops run single-threaded by default (`threads`), which is robust on busy machines.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import sparse

from ._base import TransferabilityEstimator, register_estimator
from ._validation import CheckedInputs

__all__ = [
    "ITM",
    "adaptive_eta",
    "class_dispersion",
    "dca_evolve",
    "standardize",
    "stratified_split",
]

def __getattr__(name: str) -> Any:
    """The training loop lives in `_itm_training` (torch): its names load on first access."""
    if not name.startswith("__"):
        from . import _itm_training

        if hasattr(_itm_training, name):
            return getattr(_itm_training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    from . import _itm_training

    return sorted(set(globals()) | set(dir(_itm_training)))


_STANDARDIZE = ("feature", "global", "none")
_DCA_NORM = ("spectral", "frobenius")
_VAL_EVOLUTION = ("train_step", "none", "self_labels")
_PSI = ("linear", "affine")
_PC_INPUT = ("evolved", "mapped")
_INIT = ("prototype", "random")


# -- preprocessing ----------------------------------------------------------------------------
def standardize(X: np.ndarray, mode: str = "feature") -> np.ndarray:
    """Embedding pre-standardization (§3.4): per feature, one global mean/std, or none.

    Constant features (std 0) are centred and left at 0 rather than divided by 0.
    """
    if mode == "none":
        return np.array(X, dtype=np.float64, copy=True)
    if mode == "feature":
        mu = X.mean(axis=0)
        Xs = X - mu
        sd = np.sqrt(np.einsum("ij,ij->j", Xs, Xs) / X.shape[0])
        sd[sd == 0] = 1.0
    elif mode == "global":
        mu = X.mean()
        Xs = X - mu
        sd = float(np.sqrt(np.einsum("ij,ij->", Xs, Xs) / Xs.size)) or 1.0
    else:
        raise ValueError(f"itm: standardize must be one of {_STANDARDIZE}; got {mode!r}")
    Xs /= sd
    return Xs


def class_dispersion(Xs: np.ndarray, y: np.ndarray, n_classes: int, per_sqrt_dim: bool) -> float:
    """dis_φ of Appendix A.3: mean Euclidean distance of each feature to its class mean.

    With `per_sqrt_dim` it is divided by √D (the root mean square per dimension), which puts
    feature-standardized models of any width on one scale: 1 = no class structure at all.
    """
    n = y.size
    counts = np.bincount(y, minlength=n_classes)
    onehot = sparse.csr_matrix((np.ones(n), (y, np.arange(n))), shape=(n_classes, n))
    means = np.asarray(onehot @ Xs) / counts[:, None]
    diff = Xs - means[y]
    dis = float(np.sqrt(np.einsum("ij,ij->i", diff, diff)).mean())
    return dis / math.sqrt(Xs.shape[1]) if per_sqrt_dim else dis


def adaptive_eta(dispersion: float, eta_anchor: float, dispersion_anchor: float) -> float:
    """Eq. 12: η = 1 − (1 − η_b)·dis_b / dis_φ, clipped to [0, 1] (a step, not an extrapolation)."""
    if dispersion <= 0:
        return 0.0
    eta = 1.0 - (1.0 - eta_anchor) * dispersion_anchor / dispersion
    return float(min(max(eta, 0.0), 1.0))


def stratified_split(
    y: np.ndarray, val_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/validation split (§4.2: 4:1); each class keeps ≥ 1 training sample.

    Per class, round(val_fraction · n_c) samples (at most n_c − 1) go to validation, so a class
    with one sample is training-only (warned). If no class would give a validation sample, one
    sample of the largest class is held out; with only singleton classes there is nothing to
    validate on and a `ValueError` is raised.
    """
    counts = np.bincount(y)
    if counts.max() < 2:
        raise ValueError(
            "itm needs at least one class with 2 or more samples to hold out a validation split"
        )
    singles = np.flatnonzero(counts == 1)
    if singles.size:
        warnings.warn(
            f"itm: {singles.size} class(es) have a single sample; they are used for training "
            "only (a stratified split needs at least 2 per class)",
            UserWarning,
            stacklevel=4,
        )
    n_val = np.clip(np.floor(val_fraction * counts + 0.5).astype(np.int64), 0, counts - 1)
    if n_val.sum() == 0:
        n_val[int(np.argmax(counts))] = 1
    # one label-independent shuffle; each class holds out its first n_val members in that order,
    # so renaming the classes selects the same samples
    order = rng.permutation(y.size)
    grouped = order[np.argsort(y[order], kind="stable")]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(y.size, dtype=np.int64)
    rank[grouped] = np.arange(y.size) - np.repeat(starts, counts)
    is_val = rank < n_val[y]
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _batch_schedule(
    n_train: int, batch_size: int, n_iters: int, rng: np.random.Generator
) -> np.ndarray:
    """(n_iters, B) training indices: consecutive slices of a stream of reshuffled epochs.

    Every batch has the same size B = min(batch_size, n_train); with n_train < batch_size each
    batch is the whole (reshuffled) training split.
    """
    b = min(batch_size, n_train)
    n_epochs = -(-n_iters * b // n_train)
    stream = np.concatenate([rng.permutation(n_train) for _ in range(n_epochs)])
    # order within a batch is irrelevant to the (mean) loss; sorted indices gather faster
    return np.sort(stream[: n_iters * b].reshape(n_iters, b), axis=1)


@dataclass(frozen=True)
class _Setup:
    eta: float
    lam: float
    dca_norm: str
    val_evolution: str
    pc_input: str
    init: str
    n_iters: int
    eval_every: int
    lr: float
    weight_decay: float
    threads: int | None


@register_estimator
class ITM(TransferabilityEstimator):
    """Implicit Transferability Modeling: best validation accuracy of a DCA-trained linear map."""

    name = "itm"
    summary = (
        "Implicit Transferability Modeling: best validation accuracy of a linear map + head "
        "trained with Divide-and-Conquer Adaptation and pseudo-cluster constraints"
    )
    reference = (
        "paper: 'Generalizable Transferability Estimation of Foundation Vision Models via "
        "Implicit Learning' (ITM, arXiv 2510.23145), §3.2-3.4, §4.2, App. A.3; no reference code"
    )
    components = (
        "itm_best_val_acc",
        "itm_final_val_acc",
        "itm_eta",
        "itm_dispersion",
        "itm_lambda",
    )
    min_per_class = 1

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {
            "n_iters": 500,  # §4.2
            "batch_size": 256,  # §4.4.1
            "lr": 5e-3,  # §4.2, AdamW
            "weight_decay": 0.01,  # torch's AdamW default (the paper gives none)
            "eval_every": 100,  # §4.2
            "val_fraction": 0.2,  # 4:1 split, §4.2
            "standardize": "feature",  # §3.4 embedding pre-standardization
            "adaptive_eta": True,  # Eq. 12 (False: η = eta_anchor for every model)
            "eta_anchor": 0.5,  # η_b
            "dispersion_anchor": 1.0,  # dis_b, in units of `dispersion_per_sqrt_dim`
            "dispersion_per_sqrt_dim": True,
            "dca_norm": "spectral",  # C = η EEᵀ/λ_max(EEᵀ); "frobenius": η EEᵀ/‖EEᵀ‖_F
            "lam": "eta",  # λ in Eq. 8: "eta" (λ = η) or a number
            "pc_input": "evolved",  # L_pc on the DCA-evolved (or merely mapped) embedding
            "val_evolution": "train_step",  # "train_step" | "none" | "self_labels"
            "psi": "linear",  # "linear" (W, Eq. 4) | "affine" (W and a bias)
            "init": "prototype",  # W = 0, head = I on the centres | "random" (nn.Linear's)
            # intra-op threads for ITM's many small torch ops (None: torch's setting; restored
            # afterwards either way); the large Gram products always use torch's setting
            "threads": 1,
        }

    def _setup(self) -> _Setup:
        """Validated hyper-parameters (η and λ are filled in once the dispersion is known)."""
        p = self.params
        for key in ("n_iters", "batch_size", "eval_every"):
            v = p[key]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"itm: {key} must be a positive integer; got {v!r}")
        if not (0.0 < float(p["val_fraction"]) < 1.0):
            raise ValueError(f"itm: val_fraction must be in (0, 1); got {p['val_fraction']!r}")
        if not float(p["lr"]) > 0 or not float(p["weight_decay"]) >= 0:
            raise ValueError("itm: lr must be > 0 and weight_decay >= 0")
        for key, allowed in (
            ("standardize", _STANDARDIZE),
            ("dca_norm", _DCA_NORM),
            ("val_evolution", _VAL_EVOLUTION),
            ("psi", _PSI),
            ("pc_input", _PC_INPUT),
            ("init", _INIT),
        ):
            if p[key] not in allowed:
                raise ValueError(f"itm: {key} must be one of {allowed}; got {p[key]!r}")
        nt = p["threads"]
        if nt is not None and (
            isinstance(nt, bool) or not isinstance(nt, (int, np.integer)) or nt < 1
        ):
            raise ValueError(f"itm: threads must be None or a positive integer; got {nt!r}")
        lam = p["lam"]
        if lam != "eta" and (
            isinstance(lam, (str, bool)) or not (float(lam) >= 0 and math.isfinite(float(lam)))
        ):
            raise ValueError(f"itm: lam must be 'eta' or a finite number >= 0; got {lam!r}")
        eta_b, dis_b = float(p["eta_anchor"]), float(p["dispersion_anchor"])
        if not (math.isfinite(eta_b) and eta_b <= 1.0) or not (math.isfinite(dis_b) and dis_b > 0):
            raise ValueError(
                f"itm: need eta_anchor <= 1 and dispersion_anchor > 0; got {eta_b!r}, {dis_b!r}"
            )
        return _Setup(
            eta=0.0,
            lam=0.0,
            dca_norm=p["dca_norm"],
            val_evolution=p["val_evolution"],
            pc_input=p["pc_input"],
            init=p["init"],
            n_iters=int(p["n_iters"]),
            eval_every=int(p["eval_every"]),
            lr=float(p["lr"]),
            weight_decay=float(p["weight_decay"]),
            threads=None if p["threads"] is None else int(p["threads"]),
        )

    def _score(self, data: CheckedInputs, random_state: int) -> dict[str, float]:
        p = self.params
        st = self._setup()
        Xs = standardize(data.X, p["standardize"])
        dispersion = class_dispersion(
            Xs, data.y, data.n_classes, bool(p["dispersion_per_sqrt_dim"])
        )
        eta_b = float(p["eta_anchor"])
        if p["adaptive_eta"]:
            eta = adaptive_eta(dispersion, eta_b, float(p["dispersion_anchor"]))
        else:
            eta = min(max(eta_b, 0.0), 1.0)
        st = replace(st, eta=eta, lam=eta if p["lam"] == "eta" else float(p["lam"]))

        rng = np.random.default_rng(random_state)
        tr, va = stratified_split(data.y, float(p["val_fraction"]), rng)
        schedule = _batch_schedule(tr.size, int(p["batch_size"]), st.n_iters, rng)
        seed = int(rng.integers(2**62))
        Xs32 = Xs.astype(np.float32)
        del Xs
        from ._itm_training import train_on_split  # torch is imported only when ITM runs

        accs = train_on_split(Xs32[tr], data.y[tr], Xs32[va], data.y[va], schedule,
                              data.n_classes, p["psi"] == "affine", st, seed)
        best = max(accs)
        return {
            "score": best,
            "itm_best_val_acc": best,
            "itm_final_val_acc": accs[-1],
            "itm_eta": eta,
            "itm_dispersion": dispersion,
            "itm_lambda": st.lam,
        }
