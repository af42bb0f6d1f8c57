"""Building teachers and students from model specs, and the loss modules each stage trains.

A *backbone* is a model built with ``num_classes=0`` (timm then returns pooled pre-logit features from
``forward``). The teacher is a backbone + a task head (:class:`TaskTeacher`); the student is a plain
classifier with ``num_classes`` outputs, whose pooled features the feature-distillation baseline reads
through ``forward_head(pre_logits=True)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models import ResolvedModel, resolve_model, state_dict_digest
from .losses import distillation_loss, feature_loss

__all__ = ["FeatureDistillModule", "FinetuneModule", "KDModule", "TaskTeacher", "build_model", "feature_dim",
           "folded_batchnorms", "recalibrate_folded_batchnorm", "student_features"]


def build_model(spec: str, num_classes: int | None, *, pretrained: bool = True,
                input_size: int | None = None) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """``(model, timm data config, identity)`` for a spec, with its own weights or randomly initialised.

    ``pretrained=False`` builds the same architecture with random weights (for checkpoint specs too: the
    checkpoint only names the architecture then). ``identity`` describes the weights for cache keys.
    """
    pre = {"input_size": input_size} if input_size else {}
    rm: ResolvedModel = resolve_model(spec, num_classes=num_classes, pretrained=pretrained, **pre)
    if not pretrained and rm.kind == "checkpoint":
        import timm

        from ..models import _CIFAR_RE, CifarResNet

        m = _CIFAR_RE.match(rm.arch or "")
        if m:
            model: nn.Module = CifarResNet(int(m.group(1)), num_classes=10 if num_classes is None else num_classes)
        else:
            nc = {} if num_classes is None else {"num_classes": num_classes}
            model = timm.create_model(rm.arch, pretrained=False, **nc, **rm.model_args)
        model.eval()
    else:
        model = rm.build()
    ident = rm.identity() if pretrained else None
    if ident is None:
        ident = {"arch": rm.arch, "state_dict_sha256": state_dict_digest(model)}
    return model, rm.data_config(), ident


@torch.no_grad()
def feature_dim(model: nn.Module, input_size: tuple[int, int], pre_logits: bool = False) -> int:
    """Width of a model's pooled features (one dummy forward in eval mode)."""
    was = model.training
    model.eval()
    x = torch.zeros(1, 3, *input_size, device=next(model.parameters()).device)
    out = student_features(model, x) if pre_logits else model(x)
    model.train(was)
    return int(out.flatten(1).shape[1])


def student_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled pre-logit features of a timm-like classifier (``forward_head(pre_logits=True)``)."""
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        out = model.forward_head(model.forward_features(x), pre_logits=True)
    else:
        out = model(x)
    return out.flatten(2).mean(-1) if out.ndim > 2 else out


def folded_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """BatchNorm layers whose statistics were folded into the previous convolution (weight 1, running mean 0,
    running var 1 - eps: the Coral/TF-Lite exports). They are the identity + bias in eval mode, but in train
    mode they normalise with batch statistics, which changes the network's function completely."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and m.track_running_stats \
                and m.running_mean is not None:
            if (bool((m.weight == 1).all()) and bool((m.running_mean == 0).all())
                    and bool(((m.running_var - (1.0 - m.eps)).abs() < 1e-7).all())):
                out.append(m)
    return out


@torch.no_grad()
def recalibrate_folded_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Give folded BatchNorm layers real statistics without changing the eval-mode function.

    For each folded layer the per-channel mean ``mu`` and variance ``var`` of its input are measured on
    ``batches`` (eval mode, so every layer sees the original network's activations), then
    ``running_mean = mu``, ``running_var = var``, ``weight = sqrt(var + eps)``, ``bias += mu``: in eval mode
    ``(x - mu) / sqrt(var + eps) * sqrt(var + eps) + bias + mu == x + bias`` as before, and in train mode
    batch statistics ~ (mu, var) now reproduce the pretrained function, so fine-tuning starts from it.
    Returns the number of layers changed.
    """
    bns = folded_batchnorms(model)
    if not bns:
        return 0
    acc: dict[int, list[Any]] = {id(b): [0, None, None] for b in bns}

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
        x = inp[0].detach().double()
        dims = [d for d in range(x.ndim) if d != 1]
        a = acc[id(mod)]
        a[0] += x.numel() // x.shape[1]
        s1, s2 = x.sum(dims), (x * x).sum(dims)
        a[1] = s1 if a[1] is None else a[1] + s1
        a[2] = s2 if a[2] is None else a[2] + s2

    handles = [b.register_forward_pre_hook(hook) for b in bns]
    was = model.training
    model.eval()
    try:
        seen = 0
        dev = next(model.parameters()).device
        for x in batches:
            model(x.to(dev))
            seen += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    if not seen:
        return 0
    for b in bns:
        n, s1, s2 = acc[id(b)]
        mu = s1 / n
        var = (s2 / n - mu * mu).clamp_min(0.0)
        b.running_mean.copy_(mu.to(b.running_mean.dtype))
        b.running_var.copy_(var.to(b.running_var.dtype))
        b.weight.copy_(torch.sqrt(var + b.eps).to(b.weight.dtype))
        b.bias.add_(mu.to(b.bias.dtype))
    return len(bns)


class TaskTeacher(nn.Module):
    """An adapted teacher: backbone (pooled features) -> linear task head."""

    def __init__(self, backbone: nn.Module, head: nn.Linear):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        return self.head(f.flatten(2).mean(-1) if f.ndim > 2 else f)


# ------------------------------------------------------------------------------------------------
# loss modules: forward(x, index, view, label) -> (loss, {name: float})
# ------------------------------------------------------------------------------------------------
class FinetuneModule(nn.Module):
    """Supervised cross-entropy on labeled images (student fine-tuning, teacher full fine-tuning)."""

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0):
        super().__init__()
        self.model, self.label_smoothing = model, float(label_smoothing)

    def forward(self, x: torch.Tensor, index: torch.Tensor, view: torch.Tensor,
                label: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.model(x)
        loss = F.cross_entropy(logits.float(), label, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            acc = float((logits.argmax(1) == label).float().mean())
        return loss, {"train_acc": acc}


class KDModule(nn.Module):
    """Task-oriented distillation: the student matches the adapted teacher's predictions.

    ``teacher_logits[i, v]`` holds the teacher's logits for view ``v`` of transfer item ``i`` (from the
    on-disk cache). It is a plain attribute, not a buffer: it is neither checkpointed nor broadcast by DDP.
    Labels are never read: the transfer set is unlabeled.
    """

    def __init__(self, student: nn.Module, teacher_logits: torch.Tensor, *, temperature: float = 1.0,
                 soft_weight: float = 1.0, hard_weight: float = 0.0):
        super().__init__()
        self.student = student
        self.teacher_logits = teacher_logits
        self.temperature, self.soft_weight, self.hard_weight = temperature, soft_weight, hard_weight

    def forward(self, x: torch.Tensor, index: torch.Tensor, view: torch.Tensor,
                label: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        t = self.teacher_logits[index.to(self.teacher_logits.device), view.to(self.teacher_logits.device)]
        s = self.student(x)
        return distillation_loss(s, t.to(s.device), temperature=self.temperature, soft_weight=self.soft_weight,
                                 hard_weight=self.hard_weight)


class FeatureDistillModule(nn.Module):
    """Task-agnostic distillation baseline: student features -> learned linear projection -> teacher features."""

    def __init__(self, student: nn.Module, projection: nn.Module, teacher_features: torch.Tensor, kind: str = "cosine"):
        super().__init__()
        self.student, self.projection = student, projection
        self.teacher_features = teacher_features  # (N, views, D_teacher), plain attribute
        self.kind = kind

    def forward(self, x: torch.Tensor, index: torch.Tensor, view: torch.Tensor,
                label: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        t = self.teacher_features[index.to(self.teacher_features.device), view.to(self.teacher_features.device)]
        p = self.projection(student_features(self.student, x))
        loss = feature_loss(p, t.to(p.device), self.kind)
        with torch.no_grad():
            cos = float(F.cosine_similarity(p.float(), t.to(p.device).float(), dim=1).mean())
        return loss, {"cos": cos}
