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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
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

_STANDARDIZE = ("feature", "global", "none")
_DCA_NORM = ("spectral", "frobenius")
_VAL_EVOLUTION = ("train_step", "none", "self_labels")
_PSI = ("linear", "affine")
_PC_INPUT = ("evolved", "mapped")
_INIT = ("prototype", "random")
_LANCZOS_STEPS = 10  # Krylov steps for λ_max of a batch Gram matrix
_CHUNK_BYTES = 32 * 2**20  # working-set budget for batched Gram precomputation
_FULL_GRAM_MAX = 4096  # largest training split whose Gram matrix (64 MiB) is precomputed
_GATHER_COST = 260  # one gathered Gram entry costs about as much as this many multiply-adds


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


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run with `n` intra-op threads, restoring torch's setting afterwards (None: leave it)."""
    prev = torch.get_num_threads()
    if n is None or n == prev:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


# -- the DCA operator -------------------------------------------------------------------------
def _lanczos_top(
    apply: Callable[[torch.Tensor], torch.Tensor], v0: torch.Tensor, k: int = _LANCZOS_STEPS
) -> torch.Tensor:
    """Largest eigenvalue of a symmetric PSD operator A (or a batch of them) by k-step Lanczos.

    `apply(V)` returns V·A for row vectors V of shape (..., m, n); `v0` has shape (..., n).
    Full re-orthogonalisation (twice) and a Rayleigh-Ritz step on the Krylov basis make it
    robust in float32; the Ritz value never exceeds λ_max and is within a few per cent of it
    after 10 steps on real and isotropic features (power iteration needs ~20 steps for that).
    """
    n = v0.shape[-1]
    k = max(1, min(k, n))
    q = v0 / v0.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    Q = v0.new_zeros(*v0.shape[:-1], k, n)
    for j in range(k):
        Q[..., j, :] = q
        if j == k - 1:
            break
        w = apply(q.unsqueeze(-2)).squeeze(-2)
        Qj = Q[..., : j + 1, :]
        for _ in range(2):
            w = w - ((Qj @ w.unsqueeze(-1)).transpose(-2, -1) @ Qj).squeeze(-2)
        q = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-30)  # breakdown: q = 0, harmless
    T = Q @ apply(Q).transpose(-2, -1)
    return torch.linalg.eigvalsh(0.5 * (T + T.transpose(-2, -1)))[..., -1].clamp_min(0.0)


def _dca_scale(G: torch.Tensor, eta: float, norm: str, v0: torch.Tensor) -> torch.Tensor:
    """s with C = s·G for (a batch of) Gram matrices G = E_j E_jᵀ.

    "spectral": s = η / λ_max(G), so C's largest eigenvalue is η: Eq. 7 moves the embedding a
    fraction η of the way to the centres along the dominant direction and less elsewhere, and
    with B = 1 it is exactly Appendix A.3's C = η. "frobenius": s = η / ‖G‖_F (cheaper, the same
    for B = 1, smaller steps when the batch spectrum is flat).
    """
    if norm == "spectral":
        denom = _lanczos_top(lambda V: V @ G, v0.expand(*G.shape[:-1]))
    else:
        denom = torch.linalg.matrix_norm(G)
    tiny = torch.finfo(G.dtype).tiny
    return torch.where(denom > tiny, eta / denom.clamp_min(tiny), torch.zeros_like(denom))


def dca_evolve(
    Z: torch.Tensor, G: torch.Tensor, E_hat: torch.Tensor, s: float | torch.Tensor
) -> torch.Tensor:
    """Eq. 7 with n = 1: Z' = (I − C) Z + C Ê, C = s·G.

    With Z = E_j W and G = E_j E_jᵀ this is E_j W' for W' = W − s·∂/∂W ½‖E_j W − Ê‖² (Eqs. 4–6).
    """
    return Z + s * (G @ (E_hat - Z))


def _full_split_scale(X: torch.Tensor, eta: float, norm: str, gen: torch.Generator) -> float:
    """s of one DCA step on the whole training split (for `val_evolution="train_step"`)."""
    if eta <= 0:
        return 0.0
    n, d = X.shape
    if norm == "spectral":  # λ_max(X Xᵀ) = λ_max(Xᵀ X): Lanczos on the smaller side, no Gram
        if d <= n:
            mv: Callable[[torch.Tensor], torch.Tensor] = lambda V: (V @ X.T) @ X  # noqa: E731
        else:
            mv = lambda V: (V @ X) @ X.T  # noqa: E731
        v0 = torch.rand(min(n, d), generator=gen, dtype=X.dtype) + 0.5
        denom = float(_lanczos_top(mv, v0, 2 * _LANCZOS_STEPS))
    else:  # ‖X Xᵀ‖_F = ‖Xᵀ X‖_F
        denom = float(torch.linalg.matrix_norm(X.T @ X if d <= n else X @ X.T))
    return eta / denom if denom > torch.finfo(X.dtype).tiny else 0.0


class _Psi:
    """ψ = linear map W (D → K) [+ bias b] followed by the classification head h (K → C).

    The parameters and their gradients are views of two flat tensors, so that a training step
    writes its hand-derived gradients in place and the optimizer updates one tensor: no
    autograd graph and no allocation of parameter-sized tensors inside the 500-step loop.
    """

    def __init__(self, d: int, c: int, affine: bool, how: str, gen: torch.Generator) -> None:
        self.shapes = [(d, c), (c,) if affine else (0,), (c, c), (c,)]
        size = sum(math.prod(sh) for sh in self.shapes)
        self.theta = torch.zeros(size, dtype=torch.float32)
        self.grad = torch.zeros(size, dtype=torch.float32)
        self.W, self.b, self.Hw, self.hb = self._views(self.theta)
        self.gW, self.gb, self.gHw, self.ghb = self._views(self.grad)
        self.affine = affine
        if how == "prototype":
            # W = 0 and h = identity on the one-hot centres: deterministic, and equivariant to
            # renaming the classes
            self.Hw.copy_(torch.eye(c))
        else:  # nn.Linear's U(±1/√fan_in), from the local generator
            for t, fan_in in ((self.W, d), (self.b, d), (self.Hw, c), (self.hb, c)):
                t.copy_((torch.rand(t.shape, generator=gen) * 2 - 1) / math.sqrt(fan_in))

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        out, offset = [], 0
        for shape in self.shapes:
            n = math.prod(shape)
            out.append(flat[offset : offset + n].view(shape))
            offset += n
        return out

    def map(self, X: torch.Tensor) -> torch.Tensor:
        return X @ self.W + self.b if self.affine else X @ self.W

    def head(self, Z: torch.Tensor) -> torch.Tensor:
        return F.linear(Z, self.Hw, self.hb)

    def loss_grad(
        self,
        xb: torch.Tensor,
        eb: torch.Tensor,
        G: torch.Tensor | None,
        s: float,
        lam: float,
        pc_evolved: bool,
    ) -> None:
        """Gradient of CE(h(Z'), y) + λ·MSE(Z' or Z, Ê) with Z' = dca_evolve(xb W, G, Ê, s),
        written into `self.grad` (checked against autograd in the tests)."""
        n, k = eb.shape
        Z = self.map(xb)
        Zp = dca_evolve(Z, G, eb, s) if G is not None else Z
        dlogits = torch.softmax(self.head(Zp), dim=1).sub_(eb).div_(n)  # Ê = one-hot(y), K = C
        torch.mm(dlogits.T, Zp, out=self.gHw)
        torch.sum(dlogits, dim=0, out=self.ghb)
        dZ = dlogits @ self.Hw
        mse = 2.0 * lam / (n * k)
        if lam > 0 and pc_evolved:
            dZ.add_(Zp - eb, alpha=mse)
        if G is not None:  # Z' = (I − sG) Z + sG Ê
            dZ.sub_(G.T @ dZ, alpha=s)
        if lam > 0 and not pc_evolved:
            dZ.add_(Z - eb, alpha=mse)
        torch.mm(xb.T, dZ, out=self.gW)
        if self.affine:
            torch.sum(dZ, dim=0, out=self.gb)


class _AdamW:
    """torch.optim.AdamW's update (decoupled weight decay, β = (0.9, 0.999), ε = 1e-8) for one
    flat tensor and its gradient, without the optimizer framework's per-step overhead."""

    def __init__(self, param: torch.Tensor, grad: torch.Tensor, lr: float, wd: float) -> None:
        self.param, self.grad, self.lr, self.wd = param, grad, lr, wd
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        self.t = 0

    def step(self) -> None:
        p, g = self.param, self.grad
        b1, b2 = 0.9, 0.999
        self.t += 1
        p.mul_(1.0 - self.lr * self.wd)
        self.m.lerp_(g, 1.0 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
        denom = (self.v.sqrt() / math.sqrt(1.0 - b2**self.t)).add_(1e-8)
        p.addcdiv_(self.m, denom, value=-self.lr / (1.0 - b1**self.t))


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
    if st.val_evolution == "train_step" and s_full > 0:
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
            parts.append(dca_evolve(zb, G, eb, s))
        Zv = torch.cat(parts)
    logits = psi.head(Zv)
    if not bool(torch.isfinite(logits).all()):
        raise FloatingPointError(
            "itm: training diverged (non-finite validation logits); try a smaller lr or eta_anchor"
        )
    pred = logits.argmax(dim=1)
    return float((pred == yval).to(torch.float64).mean())


def _split_gram(Xtr: torch.Tensor, b: int, n_iters: int) -> torch.Tensor | None:
    """The training split's Gram matrix (flattened) when cutting the batch Gram matrices out of
    it is clearly cheaper than computing one per step — small splits are revisited in hundreds
    of batches — else None."""
    n, d = Xtr.shape
    per_step = n_iters * b * b * d  # multiply-adds of one Gram matrix per step
    precompute = n * n * d + _GATHER_COST * n_iters * b * b
    if n <= _FULL_GRAM_MAX and 1.5 * precompute < per_step:
        return (Xtr @ Xtr.T).view(-1)
    return None


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
    big_threads: int,
) -> list[float]:
    """Train ψ with DCA + PCO (Eq. 8) and return the validation accuracy at each check.

    Runs under `st.threads`; the large Gram products switch to `big_threads`.
    """
    n_train, d = Xtr.shape
    b = schedule.shape[1]
    Etr = F.one_hot(ytr, n_classes).to(torch.float32)
    Eval = F.one_hot(yval, n_classes).to(torch.float32)
    psi = _Psi(d, n_classes, affine, st.init, gen)
    v0 = torch.rand(b, generator=gen, dtype=torch.float32) + 0.5
    v0 = v0 / v0.norm()
    s_full = 0.0
    if st.val_evolution == "train_step":
        s_full = _full_split_scale(Xtr, st.eta, st.dca_norm, gen)
    opt = _AdamW(psi.theta, psi.grad, st.lr, st.weight_decay)
    use_dca = st.eta > 0
    with _torch_threads(big_threads):
        G_full = _split_gram(Xtr, b, st.n_iters) if use_dca else None

    def evaluate() -> float:
        return _evaluate(psi, Xtr, Etr, s_full, Xval, Eval, yval, b, st, v0)

    per_step = 4 * b * (d + b)
    chunk = max(1, min(st.n_iters, _CHUNK_BYTES // per_step))
    accs: list[float] = []
    for lo in range(0, st.n_iters, chunk):
        idx = schedule[lo : lo + chunk]
        m = idx.shape[0]
        flat = idx.reshape(-1)
        Xc = Xtr.index_select(0, flat).view(m, b, d)  # gathered once for `m` steps
        Ec = F.one_hot(ytr.index_select(0, flat).view(m, b), n_classes).to(torch.float32)
        Gc, Sc = None, []
        if use_dca:
            if G_full is not None:  # cut the batch blocks out of the split's Gram matrix
                cells = (idx.unsqueeze(2) * n_train + idx.unsqueeze(1)).view(-1)
                Gc = G_full.index_select(0, cells).view(m, b, b)
            else:
                with _torch_threads(big_threads):
                    Gc = Xc @ Xc.transpose(1, 2)  # the batch Gram matrices E_j E_jᵀ
            Sc = _dca_scale(Gc, st.eta, st.dca_norm, v0).tolist()
        accs += _train_steps(psi, opt, Xc, Ec, Gc, Sc, lo, st, evaluate)
    return accs


def _train_steps(
    psi: _Psi,
    opt: _AdamW,
    Xc: torch.Tensor,
    Ec: torch.Tensor,
    Gc: torch.Tensor | None,
    Sc: list[float],
    lo: int,
    st: _Setup,
    evaluate: Callable[[], float],
) -> list[float]:
    """One chunk of training steps (Eq. 7 then Eq. 8); validation accuracies of its checks."""
    accs = []
    for j in range(Xc.shape[0]):
        G = Gc[j] if Gc is not None else None
        psi.loss_grad(Xc[j], Ec[j], G, Sc[j] if Sc else 0.0, st.lam, st.pc_input == "evolved")
        opt.step()
        t = lo + j + 1
        if t % st.eval_every == 0 or t == st.n_iters:
            accs.append(evaluate())
    return accs


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
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))

        Xs32 = Xs.astype(np.float32)
        del Xs

        def as_t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a))

        # local generators only: torch's global RNG and thread count are left as they were;
        # gradients are derived by hand, so grad mode does not matter
        big_threads = torch.get_num_threads()
        with torch.no_grad(), _torch_threads(st.threads):
            accs = _train_and_validate(
                as_t(Xs32[tr]),
                as_t(data.y[tr]),
                as_t(Xs32[va]),
                as_t(data.y[va]),
                as_t(schedule),
                data.n_classes,
                p["psi"] == "affine",
                st,
                gen,
                big_threads,
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
