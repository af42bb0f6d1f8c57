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
*training* split, so validation labels are never used), what ψ is (`psi`) and what L_pc
constrains (`pc_input`). There is no public reference implementation to match; correctness rests
on following the paper and on the properties tested in `tests/estimators/test_itm.py`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._base import TransferabilityEstimator, register_estimator
from ._validation import CheckedInputs

__all__ = ["ITM", "adaptive_eta", "class_dispersion", "standardize", "stratified_split"]

_STANDARDIZE = ("feature", "global", "none")
_DCA_NORM = ("spectral", "sq_norm")
_VAL_EVOLUTION = ("train_step", "none", "self_labels")
_PSI = ("linear", "affine")
_PC_INPUT = ("evolved", "mapped")
_POWER_ITERS = 20  # power iterations for λ_max of a batch Gram matrix
_CHUNK_BYTES = 32 * 2**20  # working-set budget for batched Gram precomputation


# -- preprocessing ----------------------------------------------------------------------------
def standardize(X: np.ndarray, mode: str = "feature") -> np.ndarray:
    """Embedding pre-standardization (§3.4): per feature, one global mean/std, or none.

    Constant features (std 0) are centred and left at 0 rather than divided by 0.
    """
    if mode == "none":
        return np.array(X, dtype=np.float64, copy=True)
    if mode == "feature":
        mu, sd = X.mean(axis=0), X.std(axis=0)
        sd = np.where(sd > 0, sd, 1.0)
    elif mode == "global":
        mu, sd = X.mean(), X.std()
        sd = sd if sd > 0 else 1.0
    else:
        raise ValueError(f"itm: standardize must be one of {_STANDARDIZE}; got {mode!r}")
    return (X - mu) / sd


def class_dispersion(Xs: np.ndarray, y: np.ndarray, n_classes: int, per_sqrt_dim: bool) -> float:
    """dis_φ of Appendix A.3: mean Euclidean distance of each feature to its class mean.

    With `per_sqrt_dim` it is divided by √D (the root mean square per dimension), which puts
    feature-standardized models of any width on one scale: 1 = no class structure at all.
    """
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    sums = np.zeros((n_classes, Xs.shape[1]))
    np.add.at(sums, y, Xs)
    means = sums / counts[:, None]
    dis = float(np.linalg.norm(Xs - means[y], axis=1).mean())
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
    train, val = [], []
    for c in range(counts.size):
        members = rng.permutation(np.flatnonzero(y == c))
        val.append(members[: n_val[c]])
        train.append(members[n_val[c] :])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _batch_schedule(n_train: int, batch_size: int, n_iters: int, rng: np.random.Generator) -> np.ndarray:
    """(n_iters, B) training indices: consecutive slices of a stream of reshuffled epochs.

    Every batch has the same size B = min(batch_size, n_train); with n_train < batch_size each
    batch is the whole (reshuffled) training split.
    """
    b = min(batch_size, n_train)
    n_epochs = -(-n_iters * b // n_train)
    stream = np.concatenate([rng.permutation(n_train) for _ in range(n_epochs)])
    return stream[: n_iters * b].reshape(n_iters, b)


# -- the DCA operator -------------------------------------------------------------------------
def _top_eigenvalue(G: torch.Tensor, v0: torch.Tensor) -> torch.Tensor:
    """λ_max of (a batch of) symmetric PSD Gram matrices by power iteration from a fixed start."""
    v = v0.expand(*G.shape[:-1]).unsqueeze(-1).clone()
    for _ in range(_POWER_ITERS):
        v = G @ v
        v = v / v.norm(dim=-2, keepdim=True).clamp_min(1e-30)
    return (v * (G @ v)).sum(dim=(-2, -1))


def _dca_scale(G: torch.Tensor, eta: float, norm: str, v0: torch.Tensor) -> torch.Tensor:
    """s such that C = s·G: η/λ_max(G) ("spectral") or η/mean diag(G) ("sq_norm")."""
    if norm == "spectral":
        denom = _top_eigenvalue(G, v0)
    else:
        denom = torch.diagonal(G, dim1=-2, dim2=-1).mean(dim=-1)
    tiny = torch.finfo(G.dtype).tiny
    return torch.where(denom > tiny, eta / denom.clamp_min(tiny), torch.zeros_like(denom))


def _full_split_scale(X: torch.Tensor, st: _Setup, gen: torch.Generator) -> float:
    """s of the DCA step on the whole training split (for `val_evolution="train_step"`)."""
    if st.eta <= 0:
        return 0.0
    if st.dca_norm == "sq_norm":
        denom = float((X * X).sum(dim=1).mean())
    else:  # λ_max(X Xᵀ) = λ_max(Xᵀ X) by power iteration on Xᵀ X without forming it
        v = torch.rand(X.shape[1], generator=gen, dtype=torch.float32) + 0.5
        for _ in range(_POWER_ITERS):
            v = X.T @ (X @ v)
            v = v / v.norm().clamp_min(1e-30)
        denom = float((X @ v).square().sum())
    return st.eta / denom if denom > torch.finfo(torch.float32).tiny else 0.0


@dataclass
class _Psi:
    """ψ = linear map W (D → K) [+ bias] followed by the classification head h (K → C)."""

    W: torch.Tensor
    b: torch.Tensor | None
    Hw: torch.Tensor
    hb: torch.Tensor

    @classmethod
    def init(cls, d: int, k: int, c: int, affine: bool, gen: torch.Generator) -> _Psi:
        # nn.Linear's default initialisation U(−1/√fan_in, 1/√fan_in), from a local generator
        def u(*shape: int, fan_in: int) -> torch.Tensor:
            t = (torch.rand(*shape, generator=gen, dtype=torch.float32) * 2 - 1) / math.sqrt(fan_in)
            return t.requires_grad_(True)

        return cls(
            W=u(d, k, fan_in=d),
            b=u(k, fan_in=d) if affine else None,
            Hw=u(c, k, fan_in=k),
            hb=u(c, fan_in=k),
        )

    def params(self) -> list[torch.Tensor]:
        return [p for p in (self.W, self.b, self.Hw, self.hb) if p is not None]

    def map(self, X: torch.Tensor) -> torch.Tensor:
        Z = X @ self.W
        return Z if self.b is None else Z + self.b

    def head(self, Z: torch.Tensor) -> torch.Tensor:
        return F.linear(Z, self.Hw, self.hb)


@dataclass(frozen=True)
class _Setup:
    eta: float
    lam: float
    dca_norm: str
    val_evolution: str
    pc_input: str
    n_iters: int
    eval_every: int
    lr: float
    weight_decay: float


def _evaluate(
    psi: _Psi,
    Xtr: torch.Tensor,
    Etr: torch.Tensor,
    s_full: float,
    Xval: torch.Tensor,
    Eval: torch.Tensor,
    yval: torch.Tensor,
    batch: int,
    st: _Setup,
    v0: torch.Tensor,
) -> float:
    """Validation accuracy of h(evolved validation embedding)."""
    Zv = psi.map(Xval)
    if st.val_evolution == "train_step":
        # the validation points seen through W after one DCA step on the training split
        R = Etr - psi.map(Xtr)
        Zv = Zv + s_full * (Xval @ (Xtr.T @ R))
    elif st.val_evolution == "self_labels":
        # literal batch-wise Eq. 7 with the validation labels (leaks them; see docs)
        parts = []
        for lo in range(0, Xval.shape[0], batch):
            xb, zb, eb = Xval[lo : lo + batch], Zv[lo : lo + batch], Eval[lo : lo + batch]
            G = xb @ xb.T
            s = _dca_scale(G, st.eta, st.dca_norm, v0[: xb.shape[0]])
            parts.append(zb + s * (G @ (eb - zb)))
        Zv = torch.cat(parts)
    pred = psi.head(Zv).argmax(dim=1)
    return float((pred == yval).to(torch.float64).mean())


def _train_and_validate(
    Xtr: torch.Tensor,
    ytr: torch.Tensor,
    Xval: torch.Tensor,
    yval: torch.Tensor,
    schedule: torch.Tensor,
    n_classes: int,
    affine: bool,
    st: _Setup,
    gen: torch.Generator,
) -> list[float]:
    """Train ψ with DCA + PCO (Eq. 8) and return the validation accuracy at each check."""
    n_train, d = Xtr.shape
    b = schedule.shape[1]
    Etr = F.one_hot(ytr, n_classes).to(torch.float32)
    Eval = F.one_hot(yval, n_classes).to(torch.float32)
    psi = _Psi.init(d, n_classes, n_classes, affine, gen)
    v0 = torch.rand(b, generator=gen, dtype=torch.float32) + 0.5
    v0 = v0 / v0.norm()
    s_full = _full_split_scale(Xtr, st, gen) if st.val_evolution == "train_step" else 0.0
    opt = torch.optim.AdamW(psi.params(), lr=st.lr, weight_decay=st.weight_decay)
    use_dca = st.eta > 0
    chunk = max(1, min(st.n_iters, _CHUNK_BYTES // max(1, 4 * b * (d + b))))
    accs: list[float] = []
    for lo in range(0, st.n_iters, chunk):
        idx = schedule[lo : lo + chunk]
        Xc = Xtr[idx]  # (chunk, B, D), gathered once for `chunk` steps
        Ec, yc = Etr[idx], ytr[idx]
        if use_dca:
            Gc = Xc @ Xc.transpose(1, 2)  # the batch Gram matrices E_j E_jᵀ
            Sc = _dca_scale(Gc, st.eta, st.dca_norm, v0).tolist()
        for j in range(idx.shape[0]):
            xb, eb, yb = Xc[j], Ec[j], yc[j]
            Z = psi.map(xb)
            Zp = Z + Sc[j] * (Gc[j] @ (eb - Z)) if use_dca else Z  # Eq. 7, n = 1
            loss = F.cross_entropy(psi.head(Zp), yb)
            if st.lam > 0:
                loss = loss + st.lam * F.mse_loss(Zp if st.pc_input == "evolved" else Z, eb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            t = lo + j + 1
            if t % st.eval_every == 0 or t == st.n_iters:
                with torch.no_grad():
                    accs.append(_evaluate(psi, Xtr, Etr, s_full, Xval, Eval, yval, b, st, v0))
    return accs


@register_estimator
class ITM(TransferabilityEstimator):
    """Implicit Transferability Modeling: best validation accuracy of a DCA-evolved linear module."""

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
            "dca_norm": "spectral",  # C = η EEᵀ/λ_max(EEᵀ); "sq_norm": η EEᵀ/mean‖e‖²
            "lam": "eta",  # λ in Eq. 8: "eta" (λ = η) or a number
            "pc_input": "evolved",  # L_pc on the DCA-evolved (or merely mapped) embedding
            "val_evolution": "train_step",  # "train_step" | "none" | "self_labels"
            "psi": "linear",  # "linear" (W, Eq. 4) | "affine" (W and a bias)
        }

    def _setup(self, eta: float) -> _Setup:
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
        ):
            if p[key] not in allowed:
                raise ValueError(f"itm: {key} must be one of {allowed}; got {p[key]!r}")
        lam = p["lam"]
        if isinstance(lam, str):
            if lam != "eta":
                raise ValueError(f"itm: lam must be 'eta' or a number >= 0; got {lam!r}")
            lam_v = eta
        else:
            lam_v = float(lam)
            if not (lam_v >= 0 and math.isfinite(lam_v)):
                raise ValueError(f"itm: lam must be 'eta' or a number >= 0; got {lam!r}")
        return _Setup(
            eta=eta,
            lam=lam_v,
            dca_norm=p["dca_norm"],
            val_evolution=p["val_evolution"],
            pc_input=p["pc_input"],
            n_iters=int(p["n_iters"]),
            eval_every=int(p["eval_every"]),
            lr=float(p["lr"]),
            weight_decay=float(p["weight_decay"]),
        )

    def _eta(self, dispersion: float) -> float:
        p = self.params
        eta_b, dis_b = float(p["eta_anchor"]), float(p["dispersion_anchor"])
        if not (math.isfinite(eta_b) and eta_b <= 1.0) or not (math.isfinite(dis_b) and dis_b > 0):
            raise ValueError(
                f"itm: need eta_anchor <= 1 and dispersion_anchor > 0; got {eta_b!r}, {dis_b!r}"
            )
        if not p["adaptive_eta"]:
            return min(max(eta_b, 0.0), 1.0)
        return adaptive_eta(dispersion, eta_b, dis_b)

    def _score(self, data: CheckedInputs, random_state: int) -> dict[str, float]:
        p = self.params
        if p["standardize"] not in _STANDARDIZE:
            raise ValueError(f"itm: standardize must be one of {_STANDARDIZE}; got {p['standardize']!r}")
        Xs = standardize(data.X, p["standardize"])
        dispersion = class_dispersion(Xs, data.y, data.n_classes, bool(p["dispersion_per_sqrt_dim"]))
        eta = self._eta(dispersion)
        st = self._setup(eta)

        rng = np.random.default_rng(random_state)
        tr, va = stratified_split(data.y, float(p["val_fraction"]), rng)
        schedule = _batch_schedule(tr.size, int(p["batch_size"]), st.n_iters, rng)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))

        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        with torch.enable_grad():
            accs = _train_and_validate(
                as_t(Xs[tr].astype(np.float32)),
                as_t(data.y[tr]),
                as_t(Xs[va].astype(np.float32)),
                as_t(data.y[va]),
                as_t(schedule),
                data.n_classes,
                p["psi"] == "affine",
                st,
                gen,
            )
        best = max(accs)
        return {
            "score": best,
            "itm_best_val_acc": best,
            "itm_final_val_acc": accs[-1],
            "itm_eta": eta,
            "itm_dispersion": dispersion,
            "itm_lambda": st.lam,
        }
