"""ITM's training loop: ψ trained by hand-derived gradients of Eq. 8 with DCA on every batch.

Imported lazily by `transferkit.estimators.itm` so that torch is loaded only when ITM runs
(importing the estimator registry stays fast for every other method).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .itm import _Setup

_LANCZOS_STEPS = 10  # Krylov steps for λ_max of a batch Gram matrix
_CHUNK_BYTES = 32 * 2**20  # working-set budget for batched Gram precomputation
_FULL_GRAM_MAX = 4096  # largest training split whose Gram matrix (64 MiB) is precomputed
_GATHER_COST = 260  # one gathered Gram entry costs about as much as this many multiply-adds


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
    for B = 1, smaller steps when the batch spectrum is flat). "trace": s = η / tr(G), so the
    eigenvalues of C sum to η (also C = η for B = 1; the smallest steps of the three).
    """
    if norm == "spectral":
        denom = _lanczos_top(lambda V: V @ G, v0.expand(*G.shape[:-1]))
    elif norm == "trace":
        denom = torch.diagonal(G, dim1=-2, dim2=-1).sum(-1)
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
    elif norm == "trace":  # tr(X Xᵀ) = ‖X‖_F²
        denom = float((X * X).sum())
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
) -> tuple[float, float]:
    """Validation accuracy and mean log-likelihood of the true class under h(evolved embedding).

    The log-likelihood is the tie-free companion of the accuracy (which moves in steps of
    1/N_val and saturates at 1)."""
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
    acc = float((pred == yval).to(torch.float64).mean())
    loglik = float(torch.log_softmax(logits.double(), dim=1).gather(1, yval[:, None]).mean())
    return acc, loglik


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
) -> list[tuple[float, float]]:
    """Train ψ with DCA + PCO (Eq. 8); (accuracy, log-likelihood) on validation at each check.

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

    def evaluate() -> tuple[float, float]:
        return _evaluate(psi, Xtr, Etr, s_full, Xval, Eval, yval, b, st, v0)

    per_step = 4 * b * (d + b)
    chunk = max(1, min(st.n_iters, _CHUNK_BYTES // per_step))
    accs: list[tuple[float, float]] = []
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
    evaluate: Callable[[], tuple[float, float]],
) -> list[tuple[float, float]]:
    """One chunk of training steps (Eq. 7 then Eq. 8); validation results of its checks."""
    accs = []
    for j in range(Xc.shape[0]):
        G = Gc[j] if Gc is not None else None
        psi.loss_grad(Xc[j], Ec[j], G, Sc[j] if Sc else 0.0, st.lam, st.pc_input == "evolved")
        opt.step()
        t = lo + j + 1
        if t % st.eval_every == 0 or t == st.n_iters:
            accs.append(evaluate())
    return accs


def train_on_split(Xtr: np.ndarray, ytr: np.ndarray, Xval: np.ndarray, yval: np.ndarray,
                   schedule: np.ndarray, n_classes: int, affine: bool, st: _Setup,
                   seed: int) -> list[tuple[float, float]]:
    """`_train_and_validate` on numpy inputs, with a local generator seeded by ``seed``.

    torch's global RNG and thread count are left as they were; gradients are derived by hand,
    so grad mode does not matter.
    """
    gen = torch.Generator().manual_seed(seed)

    def as_t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a))

    big_threads = torch.get_num_threads()
    with torch.no_grad(), _torch_threads(st.threads):
        return _train_and_validate(as_t(Xtr), as_t(ytr), as_t(Xval), as_t(yval), as_t(schedule),
                                   n_classes, affine, st, gen, big_threads)
