"""Step (a): teach the target task to the teacher.

* ``linear_probe``: a linear head on the frozen teacher's pooled features of the labeled images (every
  cached augmented view of each image is a training row). Multinomial logistic regression, full batch,
  L-BFGS, features standardised (folded back into the head), L2 strength picked by stratified k-fold
  cross-validation on the labeled images. The frozen backbone's features of the transfer set are then
  the same for every seed and for the feature-distillation baseline: one teacher pass serves all.
* ``finetune``: the whole teacher (backbone + head) trained with cross-entropy on the labeled images
  (same loop as every other stage: AMP, accumulation, checkpoints, DDP).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ProbeResult", "fit_linear_probe", "head_from_probe"]


@dataclass
class ProbeResult:
    """A fitted linear probe: the head (applies to raw features), the chosen L2 and the CV accuracies."""

    head: nn.Linear
    l2: float
    cv_accuracy: dict[str, float] = field(default_factory=dict)
    train_accuracy: float = float("nan")

    def info(self) -> dict[str, Any]:
        return {"l2": self.l2, "cv_accuracy": self.cv_accuracy, "train_accuracy": self.train_accuracy}


def _lbfgs_logreg(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, max_iter: int = 300) -> nn.Linear:
    """Multinomial logistic regression on standardised features: mean CE + l2/2 * ||W||^2."""
    lin = nn.Linear(x.shape[1], n_classes, dtype=torch.float64)  # zero start: deterministic, no RNG used
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(lin(x), y) + 0.5 * l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return lin


def _folds(labels: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Stratified fold id per image (round-robin within each shuffled class)."""
    fold = np.zeros(len(labels), dtype=np.int64)
    rng = np.random.default_rng([seed, 31337])
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        fold[idx] = np.arange(len(idx)) % k
    return [np.flatnonzero(fold == f) for f in range(k)]


def fit_linear_probe(features: np.ndarray, labels: np.ndarray, n_classes: int, *, l2_grid: tuple[float, ...],
                     folds: int = 5, seed: int = 0) -> ProbeResult:
    """Fit a linear head on ``features`` of shape (n_images, n_views, D) (view 0 = the whole image).

    Training rows are every view of the training images; validation uses view 0 of held-out images. The L2
    strength with the best mean CV accuracy wins (ties: the stronger regularisation).
    """
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim == 2:
        feats = feats[:, None, :]
    labels = np.asarray(labels, dtype=np.int64)
    n, v, d = feats.shape
    ok = np.isfinite(feats).all(axis=(1, 2))
    if not ok.all():
        feats, labels = feats[ok], labels[ok]
        n = len(labels)
    if n == 0:
        raise ValueError("no labeled features to fit the linear probe on")
    mean = feats.reshape(-1, d).mean(0)
    std = feats.reshape(-1, d).std(0) + 1e-6
    z = torch.from_numpy((feats - mean) / std)
    y = torch.from_numpy(labels)
    min_count = int(np.bincount(labels, minlength=n_classes)[np.unique(labels)].min())
    k = min(folds, min_count)
    cv: dict[str, float] = {}
    grid = sorted(set(float(a) for a in l2_grid))
    if len(grid) > 1 and k >= 2:
        parts = _folds(labels, k, seed)
        for l2 in grid:
            accs = []
            for f in range(k):
                val = parts[f]
                tr = np.setdiff1d(np.arange(n), val)
                lin = _lbfgs_logreg(z[tr].reshape(-1, d), y[tr].repeat_interleave(v), n_classes, l2)
                with torch.no_grad():
                    accs.append(float((lin(z[val, 0]).argmax(1) == y[val]).double().mean()))
            cv[f"{l2:g}"] = float(np.mean(accs))
        best = max(cv.values())
        l2 = max(a for a in grid if cv[f"{a:g}"] >= best - 1e-12)
    else:
        l2 = grid[-1] if len(grid) == 1 else grid[len(grid) // 2]
    lin = _lbfgs_logreg(z.reshape(-1, d), y.repeat_interleave(v), n_classes, l2)
    with torch.no_grad():
        train_acc = float((lin(z[:, 0]).argmax(1) == y).double().mean())
    return ProbeResult(head_from_probe(lin, mean, std), l2, cv, train_acc)


def head_from_probe(lin: nn.Linear, mean: np.ndarray, std: np.ndarray) -> nn.Linear:
    """Fold the standardisation into the head: ``W (f - mu)/s + b == (W/s) f + (b - W mu/s)``."""
    w = lin.weight.detach() / torch.from_numpy(std)
    b = lin.bias.detach() - w @ torch.from_numpy(mean)
    head = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        head.weight.copy_(w.float())
        head.bias.copy_(b.float())
    return head
