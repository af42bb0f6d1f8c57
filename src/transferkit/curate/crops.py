"""Crop grids: every image contributes the same set of crop *slots* (scale, grid cell).

Crop-level retrieval (Fig. 2 right of Vemulapalli et al.) raises the chance of a good match: a small
object or texture patch in a large web image can match a target image that a whole-image embedding
would miss. A slot is defined in relative coordinates, so the pixel box of a crop is known from the
image size alone and the crops of an image never have to be listed before it is read.

For scale ``s`` a crop covers ``s`` of the image width and ``s`` of its height; the crops of one scale
sit on an ``n x n`` grid (``n = ceil(1/s)`` by default: non-overlapping tiles that cover the image;
a larger ``n`` overlaps them), evenly spaced from the top-left to the bottom-right corner.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..data import ImageDataset

__all__ = ["CropDataset", "CropGrid", "CropSlot"]


@dataclass(frozen=True)
class CropSlot:
    """One crop position: ``scale`` of the image side, cell ``(gx, gy)`` of an ``n x n`` grid."""

    scale: float
    gx: int
    gy: int
    n: int

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Pixel box ``(x0, y0, x1, y1)`` (x1/y1 exclusive) of this slot in a ``width x height`` image."""
        cw = max(1, int(round(self.scale * width)))
        ch = max(1, int(round(self.scale * height)))
        x0 = 0 if self.n == 1 else int(round(self.gx * (width - cw) / (self.n - 1)))
        y0 = 0 if self.n == 1 else int(round(self.gy * (height - ch) / (self.n - 1)))
        return x0, y0, x0 + cw, y0 + ch

    def key(self) -> str:
        return f"s{self.scale:g}n{self.n}x{self.gx}y{self.gy}"


@dataclass(frozen=True)
class CropGrid:
    """The crop slots taken from every image: ``scales`` and, per scale, the grid size ``grid``.

    ``grid``: ``None`` (``ceil(1/scale)`` per scale), one int for every scale below 1, or one int per scale.
    ``CropGrid()`` is the whole image only; ``CropGrid((1.0, 0.5))`` is the image plus its 4 quadrants.
    """

    scales: tuple[float, ...] = (1.0,)
    grid: int | tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        scales = tuple(float(s) for s in (self.scales if isinstance(self.scales, Sequence) else (self.scales,)))
        if not scales:
            raise ValueError("a crop grid needs at least one scale")
        bad = [s for s in scales if not 0.0 < s <= 1.0]
        if bad:
            raise ValueError(f"crop scales must be in (0, 1], got {bad}")
        object.__setattr__(self, "scales", scales)
        g = self.grid
        if g is not None and not isinstance(g, int):
            g = tuple(int(x) for x in g)
            if len(g) != len(scales):
                raise ValueError(f"grid has {len(g)} entries for {len(scales)} scales")
            object.__setattr__(self, "grid", g)
        for n in self._sizes():
            if n < 1:
                raise ValueError(f"grid sizes must be >= 1, got {self.grid}")

    @classmethod
    def parse(cls, scales: str | Sequence[float] | None, grid: str | int | Sequence[int] | None = None) -> CropGrid:
        """From CLI/YAML values: ``"1,0.5"`` or ``[1, 0.5]``; grid ``"3"`` / ``"1,3"`` / ``None``."""
        if scales is None or scales == "":
            return cls()
        try:
            if isinstance(scales, str):
                scales = [float(s) for s in scales.replace(" ", "").split(",") if s]
            elif isinstance(scales, (int, float)):
                scales = [float(scales)]
            scales = tuple(float(s) for s in scales)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"scales are crop sizes in (0, 1] as a fraction of the image, e.g. '1,0.5'; "
                             f"got {scales!r}") from exc
        try:
            if isinstance(grid, str):
                parts = [int(x) for x in grid.replace(" ", "").split(",") if x]
                grid = parts[0] if len(parts) == 1 else tuple(parts)
            elif grid is not None and not isinstance(grid, int):
                grid = tuple(int(x) for x in grid)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"grid is a whole number of crops per side, one per scale or one for all, e.g. "
                             f"'3' or '1,3'; got {grid!r}") from exc
        return cls(scales, grid)

    def _sizes(self) -> list[int]:
        if self.grid is None:
            return [max(1, math.ceil(1.0 / s - 1e-9)) for s in self.scales]
        if isinstance(self.grid, int):
            return [1 if s >= 1.0 else self.grid for s in self.scales]
        return list(self.grid)

    def slots(self) -> list[CropSlot]:
        out = []
        for s, n in zip(self.scales, self._sizes()):
            out.extend(CropSlot(s, gx, gy, n) for gy in range(n) for gx in range(n))
        return out

    def __len__(self) -> int:
        return sum(n * n for n in self._sizes())

    def describe(self) -> dict[str, Any]:
        return {"scales": list(self.scales), "grid": self._sizes(), "crops_per_image": len(self)}


class CropDataset(ImageDataset):
    """Every image of ``base`` cut into the slots of ``grid``: item ``i`` is slot ``i % S`` of image ``i // S``.

    Labels are those of the source image (queries keep their class), so a labeled query set stays
    labeled. The fingerprint covers the source items' content and the slot definitions.
    """

    kind = "crops"

    def __init__(self, base: ImageDataset, grid: CropGrid | None = None):
        self.grid = grid or CropGrid()
        self._slots = self.grid.slots()
        s = len(self._slots)
        super().__init__(base.classes, np.repeat(base.targets, s), source=base.source, split=base.split)
        self.base = base
        self.is_preprocessed = False
        self._last: tuple[int, Image.Image] | None = None  # the crops of one image are read one after another
        if base.is_preprocessed:
            raise ValueError(f"{base}: crops need decoded images, not pre-made tensors")

    @property
    def crops_per_image(self) -> int:
        return len(self._slots)

    def image_index(self, index: int | np.ndarray) -> int | np.ndarray:
        return index // len(self._slots)

    def slot(self, index: int) -> CropSlot:
        return self._slots[int(index) % len(self._slots)]

    def load(self, index: int) -> Image.Image:
        i = int(index) // len(self._slots)
        if len(self._slots) == 1:
            img = self.base.load(i)
        else:  # decode each image once for all its crops (a DataLoader worker gets consecutive items)
            last = self._last
            if last is not None and last[0] == i:
                img = last[1]
            else:
                img = self.base.load(i)
                self._last = (i, img)
        sl = self.slot(index)
        return img if sl.scale >= 1.0 else img.crop(sl.box(*img.size))

    def item_name(self, index: int) -> str:
        return f"{self.base.item_name(int(index) // len(self._slots))}@{self.slot(index).key()}"

    def _compute_digests(self) -> list[str]:
        keys = [sl.key() for sl in self._slots]
        out = []
        for d in self.base.item_digests():
            if len(keys) == 1 and keys[0] == "s1n1x0y0":
                out.append(d)  # whole image: the same digest as the source item (shares cache entries)
            else:
                out.extend(hashlib.blake2b(f"{d}|{k}".encode(), digest_size=16).hexdigest() for k in keys)
        return out

    def describe(self) -> dict[str, Any]:
        d = self.base.describe()
        d.update(kind=self.kind, n=len(self), crops=self.grid.describe())
        return d
