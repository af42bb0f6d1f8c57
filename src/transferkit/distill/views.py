"""Deterministic augmented views of images, rendered identically for teacher and student.

A :class:`View` is a crop box in *relative* image coordinates plus flips. It is a pure function of
(seed, image content digest, view id), so the teacher and the student see the same crop of the same image
at their own resolutions and normalisations, a resumed run regenerates exactly the same views, and the
teacher's output for a view can be cached on disk and looked up later. View id 0 is the whole image
(no crop, no flip): the evaluation view.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["AugRecipe", "View", "ViewRenderer", "make_view"]

_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
             "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}


@dataclass(frozen=True)
class AugRecipe:
    """How random views are drawn: random-resized-crop area/aspect ranges and flips."""

    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (0.75, 4 / 3)
    hflip: bool = True
    vflip: bool = False

    def key(self) -> str:
        return (f"rrc{self.scale[0]:.4g}-{self.scale[1]:.4g}_r{self.ratio[0]:.4g}-{self.ratio[1]:.4g}"
                f"_h{int(self.hflip)}v{int(self.vflip)}")


@dataclass(frozen=True)
class View:
    """Crop box ``(x0, y0, x1, y1)`` as fractions of width/height, then optional flips."""

    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    hflip: bool = False
    vflip: bool = False

    def key(self) -> str:
        return ",".join(f"{v:.5f}" for v in self.box) + f"|{int(self.hflip)}{int(self.vflip)}"


FULL_VIEW = View()


def _rng(seed: int, digest: str, view_id: int) -> np.random.Generator:
    h = hashlib.blake2b(f"{seed}|{digest}|{view_id}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(h, "little"))


def make_view(digest: str, view_id: int, seed: int, recipe: AugRecipe) -> View:
    """The view ``view_id`` of the image with content ``digest`` (id 0: the whole image)."""
    if view_id == 0:
        return FULL_VIEW
    rng = _rng(seed, digest, view_id)
    lo, hi = recipe.scale
    log_r = (math.log(recipe.ratio[0]), math.log(recipe.ratio[1]))
    box = (0.0, 0.0, 1.0, 1.0)
    for _ in range(10):  # torchvision RandomResizedCrop, in relative coordinates (square-agnostic)
        area = rng.uniform(lo, hi)
        ratio = math.exp(rng.uniform(*log_r))
        w, h = math.sqrt(area * ratio), math.sqrt(area / ratio)
        if w <= 1.0 and h <= 1.0:
            x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
            box = (x0, y0, x0 + w, y0 + h)
            break
    hflip = bool(recipe.hflip and rng.random() < 0.5)
    vflip = bool(recipe.vflip and rng.random() < 0.5)
    return View(box, hflip, vflip)


class ViewRenderer:
    """Render a view of a PIL image for one model: crop+resize in one PIL call, flips, normalisation.

    ``data_config`` is a timm data config (``input_size``, ``interpolation``, ``mean``, ``std``); the crop
    is resized straight to ``input_size`` (no centre crop: view 0 shows the whole image).
    """

    def __init__(self, data_config: Mapping[str, Any]):
        size = data_config.get("input_size", (3, 224, 224))
        self.height, self.width = int(size[-2]), int(size[-1])
        interp = str(data_config.get("interpolation", "bilinear"))
        self.resample = _RESAMPLE.get(interp, Image.BILINEAR)
        self.mean = torch.tensor(data_config.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(data_config.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32).view(3, 1, 1)

    def describe(self) -> dict[str, Any]:
        return {"size": [self.height, self.width], "resample": int(self.resample),
                "mean": [round(float(v), 6) for v in self.mean.flatten()],
                "std": [round(float(v), 6) for v in self.std.flatten()]}

    def __call__(self, img: Image.Image | torch.Tensor, view: View = FULL_VIEW) -> torch.Tensor:
        if isinstance(img, torch.Tensor):  # pre-made tensors: crop/resize/flip in tensor space, no renormalising
            return _tensor_view(img, view, self.height, self.width)
        if img.mode != "RGB":
            img = img.convert("RGB")
        w, h = img.size
        x0, y0, x1, y1 = view.box
        box = (x0 * w, y0 * h, x1 * w, y1 * h)
        out = img.resize((self.width, self.height), self.resample, box=box)
        if view.hflip:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        if view.vflip:
            out = out.transpose(Image.FLIP_TOP_BOTTOM)
        t = torch.from_numpy(np.asarray(out, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
        return (t - self.mean) / self.std


def _tensor_view(x: torch.Tensor, view: View, height: int, width: int) -> torch.Tensor:
    _, h, w = x.shape
    x0, y0, x1, y1 = view.box
    t = x[:, int(round(y0 * h)):max(int(round(y1 * h)), int(round(y0 * h)) + 1),
          int(round(x0 * w)):max(int(round(x1 * w)), int(round(x0 * w)) + 1)]
    if t.shape[1:] != (height, width):
        t = torch.nn.functional.interpolate(t[None].float(), size=(height, width), mode="bilinear",
                                            align_corners=False)[0]
    if view.hflip:
        t = t.flip(-1)
    if view.vflip:
        t = t.flip(-2)
    return t.float()


def view_keys(digests: Sequence[str], view_ids: Sequence[int], seed: int, recipe: AugRecipe) -> list[str]:
    """The view key of every (digest, view id) pair."""
    return [make_view(d, v, seed, recipe).key() for d, v in zip(digests, view_ids)]
