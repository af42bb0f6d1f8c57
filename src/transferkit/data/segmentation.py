"""Image/mask pairs for semantic segmentation: readers, mask validation, joint geometric augmentation.

Layouts (``open_segmentation``):

* a folder or a zip holding ``[<wrapper>/]<split>/images/<name>.<ext>`` and ``<split>/masks/<name>.png``
  (CamVid in ``../shared/data/camvid/camvid.zip``); a mask is paired with the image of the same stem;
* a CSV manifest with ``image,mask`` columns (optional ``split`` column; relative paths are resolved
  against the CSV's folder).

``split`` may join several splits with ``+`` (``train+val``). A mask is a single-channel label map
(PIL mode ``L``, ``P``, ``I`` or ``I;16``) with values in ``[0, num_classes)`` or ``ignore_index``.
Bad input is one line (:class:`MaskError`, a ``ValueError``): an image without a mask, image and mask of
different sizes, label values out of range, an RGB (colour-coded) mask.

Joint augmentation reuses :class:`~transferkit.distill.views.View` (a relative crop box + flips, a pure
function of seed, image digest and view id): :func:`render_mask` cuts the same box out of the mask and
resizes it with nearest-neighbour, so the mask stays aligned with the bilinearly resized image. The box's
area is the scale augmentation (a box of area a, resized to the output size, zooms by 1/sqrt(a)).
"""

from __future__ import annotations

import csv
import io
import os
import threading
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .base import IMAGE_EXTENSIONS, CorruptImageError, ImageDataset, decode_image, digest_bytes

__all__ = ["MaskError", "SegmentationDataset", "check_mask", "open_segmentation", "render_mask"]

_LABEL_MODES = ("L", "P", "I", "I;16", "I;16L", "I;16B", "1")


class MaskError(ValueError):
    """A mask that cannot serve as a label map for its image (one-line message naming the file)."""


def check_mask(mask: np.ndarray, num_classes: int, ignore_index: int | None, name: str) -> None:
    """Raise :class:`MaskError` if ``mask`` holds a value outside ``[0, num_classes)`` other than the ignore index."""
    values = np.unique(mask)
    bad = values[(values < 0) | (values >= num_classes)]
    if ignore_index is not None:
        bad = bad[bad != ignore_index]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:6]) + (", ..." if bad.size > 6 else "")
        ign = f" or the ignore index {ignore_index}" if ignore_index is not None else ""
        raise MaskError(f"{name}: label values {shown} are outside [0, {num_classes}){ign}; "
                        "set num_classes/ignore_index to match the masks")


def decode_mask(data: bytes, name: str) -> np.ndarray:
    """A label map (H, W) int64 from mask file bytes; an RGB mask is refused (one line)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode = im.mode
            if mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA", "HSV", "LAB"):
                arr = np.asarray(im.convert("RGB"))
                if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
                    raise MaskError(f"{name}: RGB (colour-coded) mask where a single-channel label map is expected; "
                                    "convert the colours to class indices (one 8-bit channel) first")
                return arr[..., 0].astype(np.int64)
            if mode not in _LABEL_MODES:
                raise MaskError(f"{name}: mask mode {mode!r} is not a label map (expected L, P or I)")
            return np.asarray(im, dtype=np.int64)
    except MaskError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError...
        raise CorruptImageError(name, exc) from exc


def render_mask(mask: np.ndarray, box: tuple[float, float, float, float], hflip: bool, vflip: bool,
                size: tuple[int, int]) -> np.ndarray:
    """Crop ``box`` (relative x0, y0, x1, y1) of ``mask``, resize to ``size`` = (H, W) nearest, flip.

    Uses the same PIL resize-with-box as the image renderer, so output pixel centres sample the same
    source coordinates as the image's (aligned); nearest-neighbour keeps labels labels.
    """
    h, w = mask.shape
    im = Image.fromarray(mask.astype(np.int32), mode="I")
    x0, y0, x1, y1 = box
    out = im.resize((size[1], size[0]), Image.NEAREST, box=(x0 * w, y0 * h, x1 * w, y1 * h))
    if hflip:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    if vflip:
        out = out.transpose(Image.FLIP_TOP_BOTTOM)
    return np.asarray(out, dtype=np.int64)


# ------------------------------------------------------------------------------------------------
# where the bytes come from
# ------------------------------------------------------------------------------------------------
class _Files:
    """Reads members of a folder (paths relative to ``root``; absolute paths are used as given)."""

    def __init__(self, root: Path):
        self.root = root

    def read(self, rel: str) -> bytes:
        p = Path(rel) if os.path.isabs(rel) else self.root / rel
        return p.read_bytes()

    def name(self, rel: str) -> str:
        return str(Path(rel) if os.path.isabs(rel) else self.root / rel)


class _Zip:
    """Reads members of a zip; one handle per (process, thread), never pickled."""

    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()

    def read(self, rel: str) -> bytes:
        zf = getattr(self._local, "zf", None)
        if zf is None or self._local.pid != os.getpid():
            zf = zipfile.ZipFile(self.path)
            self._local.zf, self._local.pid = zf, os.getpid()
        return zf.read(rel)

    def name(self, rel: str) -> str:
        return f"{self.path}::{rel}"

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._local = threading.local()


def _pair_layout(members: Sequence[str], source: str) -> dict[str, list[tuple[str, str]]]:
    """``{split: [(image, mask), ...]}`` from paths ``[wrapper/]<split>/images/*`` + ``<split>/masks/*``."""
    by_dir: dict[tuple[str, str], dict[str, str]] = {}
    for m in members:
        parts = m.split("/")
        if len(parts) < 3 or parts[-2] not in ("images", "masks"):
            continue
        if os.path.splitext(parts[-1])[1].lower() not in IMAGE_EXTENSIONS or parts[-1].startswith("."):
            continue
        split_dir = "/".join(parts[:-2])
        by_dir.setdefault((split_dir, parts[-2]), {})[os.path.splitext(parts[-1])[0]] = m
    out: dict[str, list[tuple[str, str]]] = {}
    for (split_dir, kind), files in sorted(by_dir.items()):
        if kind != "images":
            continue
        masks = by_dir.get((split_dir, "masks"), {})
        split = split_dir.rsplit("/", 1)[-1] if split_dir else "all"
        pairs = []
        for stem, img in sorted(files.items()):
            if stem not in masks:
                raise MaskError(f"{source}: image {img} has no mask (expected {split_dir + '/' if split_dir else ''}"
                                f"masks/{stem}.png)")
            pairs.append((img, masks[stem]))
        out[split] = pairs
    if not out:
        raise ValueError(f"{source}: no <split>/images/* + <split>/masks/* pairs found")
    return out


def _read_manifest(path: Path) -> dict[str, list[tuple[str, str]]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path}: empty manifest")
    head = [c.strip().lower() for c in rows[0]]
    if "image" not in head or "mask" not in head:
        raise ValueError(f"{path}: a segmentation manifest needs a header with 'image' and 'mask' columns "
                         f"(got {rows[0]})")
    ic, mc = head.index("image"), head.index("mask")
    sc = head.index("split") if "split" in head else None
    out: dict[str, list[tuple[str, str]]] = {}
    for n, r in enumerate(rows[1:], start=2):
        if len(r) <= max(ic, mc, sc or 0) or not r[ic].strip():
            raise ValueError(f"{path}: line {n} needs an image and a mask path")
        if not r[mc].strip():
            raise MaskError(f"{path}: line {n}: image {r[ic].strip()} has no mask")
        out.setdefault(r[sc].strip() if sc is not None else "all", []).append((r[ic].strip(), r[mc].strip()))
    return out


# ------------------------------------------------------------------------------------------------
# the dataset
# ------------------------------------------------------------------------------------------------
class SegmentationDataset(ImageDataset):
    """Image/mask pairs. ``load(i)`` gives the RGB image (so every image pipeline accepts it),
    ``load_mask(i)`` the label map (H, W) int64, checked against the image size and the label range."""

    kind = "segmentation"

    def __init__(self, reader: _Files | _Zip, pairs: Sequence[tuple[str, str]], *, num_classes: int,
                 ignore_index: int | None, class_names: Sequence[str] | None = None, source: str = "",
                 split: str | None = None, native_splits: Sequence[str] = ()):
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        if len(names) != num_classes:
            raise ValueError(f"class_names has {len(names)} names but num_classes is {num_classes}")
        super().__init__(names, np.zeros(len(pairs), dtype=np.int64), source=source, split=split)
        self.reader, self.pairs = reader, list(pairs)
        self.num_classes, self.ignore_index = int(num_classes), ignore_index
        self.native_splits = list(native_splits)

    def item_name(self, index: int) -> str:
        return self.reader.name(self.pairs[index][0])

    def mask_name(self, index: int) -> str:
        return self.reader.name(self.pairs[index][1])

    def load(self, index: int) -> Image.Image:
        name = self.item_name(index)
        try:
            data = self.reader.read(self.pairs[index][0])
        except (OSError, KeyError, zipfile.BadZipFile, EOFError, ValueError) as exc:
            raise CorruptImageError(name, exc) from exc
        return decode_image(data, name)

    def load_mask(self, index: int, image_size: tuple[int, int] | None = None) -> np.ndarray:
        """The label map of item ``index``; ``image_size`` (W, H), when given, must match the mask's."""
        name = self.mask_name(index)
        try:
            data = self.reader.read(self.pairs[index][1])
        except (OSError, KeyError) as exc:
            raise MaskError(f"{name}: mask missing or unreadable ({type(exc).__name__}: {exc})") from exc
        mask = decode_mask(data, name)
        if image_size is not None and (mask.shape[1], mask.shape[0]) != tuple(image_size):
            raise MaskError(f"{name}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                            f"{self.item_name(index)} is {image_size[0]}x{image_size[1]} (W x H); they must match")
        check_mask(mask, self.num_classes, self.ignore_index, name)
        return mask

    def load_pair(self, index: int) -> tuple[Image.Image, np.ndarray]:
        img = self.load(index)
        return img, self.load_mask(index, img.size)

    def validate(self, progress: bool = False) -> None:
        """Read every pair once (image header + mask) so bad input fails before training, in one line."""
        for i in range(len(self)):
            name = self.item_name(i)
            try:
                with Image.open(io.BytesIO(self.reader.read(self.pairs[i][0]))) as im:
                    size = im.size
            except Exception as exc:
                raise MaskError(f"{name}: unreadable image ({type(exc).__name__}: {exc})") from exc
            self.load_mask(i, size)

    def _compute_digests(self) -> list[str]:
        # the image bytes alone: the same photo in another dataset (a transfer set) gets the same digest
        out = []
        for img, _ in self.pairs:
            try:
                out.append(digest_bytes(self.reader.read(img)))
            except (OSError, KeyError):
                out.append(f"missing:{img}")
        return out

    def subset(self, indices: Sequence[int] | np.ndarray, note: str | None = None) -> SegmentationDataset:
        idx = np.asarray(indices, dtype=np.int64)
        new = SegmentationDataset(self.reader, [self.pairs[i] for i in idx.tolist()], num_classes=self.num_classes,
                                  ignore_index=self.ignore_index, class_names=self.classes, source=self.source,
                                  split=self.split, native_splits=self.native_splits)
        if self._digests is not None:
            new._digests = [self._digests[i] for i in idx.tolist()]
        new.note = note  # type: ignore[attr-defined]
        return new

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "split": self.split, "n": len(self),
                "num_classes": self.num_classes, "ignore_index": self.ignore_index}


def open_segmentation(spec: str | Path, split: str | None = None, *, num_classes: int,
                      ignore_index: int | None = 255, class_names: Sequence[str] | None = None) -> SegmentationDataset:
    """Open image/mask pairs (folder, zip or CSV manifest; see the module docstring).

    ``split``: one native split, several joined by ``+`` (``train+val``), ``all``, or None (``train`` if
    present, else everything).
    """
    p = Path(spec).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"segmentation dataset not found: {p}")
    p = p.resolve()
    reader: _Files | _Zip
    if p.is_dir():
        members = [str(f.relative_to(p)).replace(os.sep, "/") for f in p.rglob("*") if f.is_file()]
        layout, reader = _pair_layout(members, str(p)), _Files(p)
    elif p.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(p) as zf:
                members = [i.filename for i in zf.infolist() if not i.is_dir() and not i.filename.startswith("__MACOSX/")]
        except (OSError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{p}: not a readable zip file ({exc})") from exc
        layout, reader = _pair_layout(members, str(p)), _Zip(p)
    elif p.suffix.lower() in (".csv", ".txt"):
        layout, reader = _read_manifest(p), _Files(p.parent)
    else:
        raise ValueError(f"{p}: unknown segmentation dataset format (use a folder, a .zip or an image,mask .csv)")
    native = sorted(layout)
    if split is None:
        wanted = ["train"] if "train" in layout else native
    elif split == "all":
        wanted = native
    else:
        wanted = [s.strip() for s in split.split("+") if s.strip()]
        missing = [s for s in wanted if s not in layout]
        if missing:
            raise KeyError(f"{p}: no split {missing[0]!r}; splits: {native}")
    pairs = [pair for s in wanted for pair in layout[s]]
    return SegmentationDataset(reader, pairs, num_classes=num_classes, ignore_index=ignore_index,
                               class_names=class_names, source=str(p), split="+".join(wanted), native_splits=native)
