"""Segmentation models (any loadable backbone + a light FPN decoder) and the loss modules of each stage.

**Decoder: FPN-style** (Lin et al. 2017; the "semantic FPN" head of Kirillov et al. 2019, reduced to one
output branch): a 1x1 lateral convolution per feature level (strides 4, 8, 16, 32), a top-down pathway
(upsample the coarser map, add the lateral), one 3x3 conv + BN + ReLU on the stride-4 map and a 1x1
classifier; the logits are bilinearly upsampled to the input size. Why FPN rather than DeepLabV3+:
DeepLabV3+ needs a stride-16 (dilated) backbone and an ASPP block of dilated 3x3 convolutions on it;
timm's MobileNet/EfficientNet feature extractors are stride 32 and dilating them changes their pretrained
behaviour and multiplies their cost, while the FPN uses every level timm returns as is, costs a few 1x1
convolutions (about 70 k parameters at width 64 for mobilenetv1_025) and exports to ONNX with plain ops.

Backbones come from the project's model loading (:func:`transferkit.distill.models.build_model`: timm
names, ``local-dir:``, checkpoints); their multi-scale maps are taken with timm's
``forward_intermediates`` (the ``features_only`` feature levels, ``feature_info``), and the unused
classifier head is pruned.

Loss modules follow the trainer's contract ``forward(x, index, view, label) -> (loss, parts)``; ``label``
is the (N, H, W) mask batch for supervised stages and unused for the unlabeled transfer set.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .models import build_model

__all__ = ["DenseFeatureDistillModule", "SegFinetuneModule", "SegKDModule", "SegModel", "build_seg_model",
           "dense_kl", "seg_param_counts"]


class _Backbone(nn.Module):
    """A timm model reduced to its multi-scale feature maps (the ``feature_info`` levels at stride >= 4)."""

    def __init__(self, model: nn.Module, spec: str = ""):
        super().__init__()
        info = getattr(model, "feature_info", None)
        if not info or not hasattr(model, "forward_intermediates"):
            raise ValueError(f"{spec or type(model).__name__}: no multi-scale feature maps (needs a timm model with "
                             "feature_info and forward_intermediates, e.g. a CNN like mobilenetv1/efficientnet/resnet)")
        info = [dict(f) for f in info]
        keep = [i for i, f in enumerate(info) if f["reduction"] >= 4][-4:]
        if not keep:
            raise ValueError(f"{spec}: no feature level at stride >= 4")
        self.indices = keep
        self.channels = [int(info[i]["num_chs"]) for i in keep]
        self.reductions = [int(info[i]["reduction"]) for i in keep]
        try:
            model.prune_intermediate_layers(indices=len(info), prune_norm=False, prune_head=True)
        except (AttributeError, TypeError, NotImplementedError):
            pass
        self.model = model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.model.forward_intermediates(x, indices=max(self.indices) + 1, intermediates_only=True)
        return [feats[i] for i in self.indices]


def _conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FPNDecoder(nn.Module):
    """Laterals (1x1) -> top-down sum -> 3x3 conv-BN-ReLU on the finest level -> 1x1 classifier."""

    def __init__(self, in_channels: list[int], num_classes: int, width: int = 64):
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        self.smooth = _conv_bn_relu(width, width, 3)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        p = self.laterals[-1](feats[-1])
        for lat, f in zip(reversed(self.laterals[:-1]), reversed(feats[:-1])):
            p = lat(f) + F.interpolate(p, size=f.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.smooth(p))


class SegModel(nn.Module):
    """Backbone feature levels -> FPN decoder -> logits (N, classes, H, W) at the input resolution.

    ``forward_lowres`` gives the decoder's own stride-4 logits (what distillation matches and the teacher
    cache stores: the full-resolution output is their bilinear upsampling). With ``freeze_backbone`` the
    backbone has no trainable parameters and stays in eval mode (its BatchNorm statistics untouched) when
    the model is put in training mode: the head-only teacher adaptation.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, width: int = 64, *, freeze_backbone: bool = False,
                 spec: str = ""):
        super().__init__()
        self.backbone = backbone if isinstance(backbone, _Backbone) else _Backbone(backbone, spec)
        self.decoder = FPNDecoder(self.backbone.channels, num_classes, width)
        self.num_classes = int(num_classes)
        self.freeze_backbone = bool(freeze_backbone)
        if freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> SegModel:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone(x)

    def forward_lowres(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.forward_lowres(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_seg_model(spec: str, num_classes: int, *, pretrained: bool = True, width: int = 64,
                    freeze_backbone: bool = False) -> tuple[SegModel, dict[str, Any], dict[str, Any]]:
    """``(model, timm data config, identity)``: the backbone of ``spec`` (its own weights or random) + a fresh decoder."""
    backbone, dc, ident = build_model(spec, 0, pretrained=pretrained)
    return SegModel(backbone, num_classes, width, freeze_backbone=freeze_backbone, spec=spec), dc, ident


def seg_param_counts(model: SegModel) -> dict[str, int]:
    return {"backbone": sum(p.numel() for p in model.backbone.parameters()),
            "decoder": sum(p.numel() for p in model.decoder.parameters()),
            "total": sum(p.numel() for p in model.parameters())}


# ------------------------------------------------------------------------------------------------
# losses
# ------------------------------------------------------------------------------------------------
def dense_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-pixel ``T^2 KL(softmax(t/T) || softmax(s/T))`` averaged over every pixel of the batch.

    The teacher's logits are bilinearly resized to the student's grid when the two differ (a cache kept at
    a coarser stride); no pixel is ignored (the transfer set has no labels).
    """
    t = teacher_logits.float()
    if t.shape[-2:] != student_logits.shape[-2:]:
        t = F.interpolate(t, size=student_logits.shape[-2:], mode="bilinear", align_corners=False)
    if t.shape != student_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(t.shape)} differ")
    tau = float(temperature)
    log_s = F.log_softmax(student_logits.float() / tau, dim=1)
    log_t = F.log_softmax(t / tau, dim=1)
    kl = (log_t.exp() * (log_t - log_s)).sum(1)  # (N, h, w)
    return kl.mean() * (tau * tau)


class SegFinetuneModule(nn.Module):
    """Per-pixel cross-entropy on labeled image/mask views (ignore_index left out)."""

    def __init__(self, model: SegModel, ignore_index: int | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.model, self.ignore_index, self.label_smoothing = model, ignore_index, float(label_smoothing)

    def forward(self, x: torch.Tensor, index: torch.Tensor, view: torch.Tensor,
                label: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.model(x)
        ign = -100 if self.ignore_index is None else int(self.ignore_index)
        loss = F.cross_entropy(logits.float(), label, ignore_index=ign, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            valid = label != ign
            acc = float((logits.argmax(1)[valid] == label[valid]).float().mean()) if bool(valid.any()) else 0.0
        return loss, {"pixel_acc": acc}


class SegKDModule(nn.Module):
    """Task-oriented distillation for segmentation: per-pixel KL to the adapted teacher's cached logits.

    ``teacher_logits[i, v]`` (C, h, w), float16 or float32, is a plain attribute (not checkpointed)."""

    def __init__(self, student: SegModel, teacher_logits: torch.Tensor, temperature: float = 1.0):
        super().__init__()
        self.student, self.teacher_logits, self.temperature = student, teacher_logits, float(temperature)

    def forward(self, x: torch.Tensor, index: torch.Tensor, view: torch.Tensor,
                label: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        dev = self.teacher_logits.device
        t = self.teacher_logits[index.to(dev), view.to(dev)].to(x.device)
        s = self.student.forward_lowres(x)
        loss = dense_kl(s, t, self.temperature)
        with torch.no_grad():
            tt = t.float()
            if tt.shape[-2:] != s.shape[-2:]:
                tt = F.interpolate(tt, size=s.shape[-2:], mode="bilinear", align_corners=False)
            agree = float((s.argmax(1) == tt.argmax(1)).float().mean())
        return loss, {"kd_kl": float(loss.detach()), "agree": agree}


class DenseFeatureDistillModule(nn.Module):
    """Task-agnostic dense feature distillation: the student's deepest feature map -> learned 1x1 projection
    -> per-location cosine distance to the frozen, unadapted teacher's deepest map (cached)."""

    def __init__(self, student: SegModel, projection: nn.Module, teacher_features: torch.Tensor):
        super().__init__()
        self.student, self.projection = student, projection
        self.teacher_features = teacher_features  # (N, views, D, h, w), plain attribute

    def forward(self, x: torch.Tensor, index: torch.Tensor, view: torch.Tensor,
                label: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        dev = self.teacher_features.device
        t = self.teacher_features[index.to(dev), view.to(dev)].to(x.device).float()
        p = self.projection(self.student.features(x)[-1]).float()
        if p.shape[-2:] != t.shape[-2:]:
            p = F.interpolate(p, size=t.shape[-2:], mode="bilinear", align_corners=False)
        cos = F.cosine_similarity(p, t, dim=1, eps=1e-8)  # (N, h, w)
        loss = (1.0 - cos).mean()
        return loss, {"cos": float(cos.detach().mean())}
