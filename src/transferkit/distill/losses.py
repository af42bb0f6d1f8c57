"""Distillation losses: task-oriented (match predictions) and task-agnostic (match features)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["distillation_loss", "feature_loss", "kd_kl"]


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, averaged over the batch (Hinton et al. 2015).

    The ``T^2`` factor keeps gradient magnitudes comparable across temperatures.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0,
                      soft_weight: float = 1.0, hard_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """``soft_weight * kd_kl + hard_weight * CE(student, argmax teacher)`` and its parts (for the log)."""
    parts: dict[str, float] = {}
    total = student_logits.new_zeros((), dtype=torch.float32)
    if soft_weight:
        soft = kd_kl(student_logits, teacher_logits, temperature)
        total = total + soft_weight * soft
        parts["kd_soft"] = float(soft.detach())
    if hard_weight:
        hard = F.cross_entropy(student_logits.float(), teacher_logits.argmax(1))
        total = total + hard_weight * hard
        parts["kd_hard"] = float(hard.detach())
    with torch.no_grad():
        parts["agree"] = float((student_logits.argmax(1) == teacher_logits.argmax(1)).float().mean())
    return total, parts


def feature_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Distance between projected student features and teacher features, averaged over the batch.

    ``cosine``: ``1 - cos``; ``mse``: mean squared error; ``smooth_l1``: Huber (beta 1) on the raw values.
    """
    if pred.shape != target.shape:
        raise ValueError(f"projected student features {tuple(pred.shape)} and teacher features "
                         f"{tuple(target.shape)} differ in shape")
    pred, target = pred.float(), target.float()
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(pred, target, dim=1, eps=1e-8)).mean()
    if kind == "mse":
        return F.mse_loss(pred, target)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target)
    raise ValueError(f"unknown feature loss {kind!r}; use cosine, mse or smooth_l1")
