"""The common dataset interface shared by every reader.

Every reader returns an :class:`ImageDataset`: ``ds[i] -> (image, label)`` where the image is a PIL RGB
image (or an already preprocessed tensor when ``ds.is_preprocessed``), plus ``classes`` (class names,
index = label), ``targets`` (int64 labels) and a content :meth:`~ImageDataset.fingerprint` used as the
feature-cache key. Reading is lazy; an unreadable item raises :class:`CorruptImageError` so that the
extractor can skip it and list it in a warning (or stop with ``strict``).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLIT_NAMES",
    "CorruptImageError",
    "CorruptImageWarning",
    "ImageDataset",
    "SubsetDataset",
    "decode_image",
    "digest_bytes",
    "split_layout",
]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif"}
)
SPLIT_NAMES = ("train", "val", "valid", "validation", "test")


class CorruptImageError(RuntimeError):
    """An item that cannot be read or decoded (truncated file, not an image, missing file)."""

    def __init__(self, name: str, cause: BaseException | str):
        self.name = name
        self.cause = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"{name}: {self.cause}")


class CorruptImageWarning(UserWarning):
    """Some items could not be read and were skipped."""


def digest_bytes(data: bytes | memoryview) -> str:
    """Short content digest of one item (blake2b-128, hex)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def decode_image(data: bytes, name: str, mode: str = "RGB") -> Image.Image:
    """Decode image bytes fully (so truncation is detected here, not later) and convert to ``mode``."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert(mode)
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise CorruptImageError(name, exc) from exc


def split_layout(relpaths: Sequence[str]) -> dict[str | None, list[tuple[str, str]]]:
    """Group image paths ('a/b/c.jpg', POSIX) by split and class.

    ``root/<class>/*`` gives ``{None: [(path, class), ...]}``; ``root/<split>/<class>/*`` (split in
    :data:`SPLIT_NAMES`) gives one entry per split. A single wrapping top-level folder (``eurosat/train/...``)
    is looked through. Files deeper than ``<class>/`` belong to that class, as in torchvision's ImageFolder.
    """
    paths = [p for p in relpaths if p.count("/") >= 1]
    prefix = ""
    while paths:
        tops = {p.split("/", 1)[0] for p in paths}
        if len(tops) == 1 and all(p.count("/") >= 2 for p in paths) and next(iter(tops)) not in SPLIT_NAMES:
            top = next(iter(tops))
            prefix += top + "/"
            paths = [p.split("/", 1)[1] for p in paths]
            continue
        break
    if not paths:
        return {}
    tops = {p.split("/", 1)[0] for p in paths}
    out: dict[str | None, list[tuple[str, str]]] = {}
    if tops <= set(SPLIT_NAMES) and all(p.count("/") >= 2 for p in paths):
        for p in paths:
            split, cls, _ = p.split("/", 2)
            out.setdefault(split, []).append((prefix + p, cls))
    else:
        out[None] = [(prefix + p, p.split("/", 1)[0]) for p in paths]
    for items in out.values():
        items.sort()
    return out


class ImageDataset(torch.utils.data.Dataset):
    """Base class: lazy ``(image, label)`` items with class names and a content fingerprint.

    Subclasses set ``classes``, ``targets``, ``kind``, ``source`` and implement :meth:`load`,
    :meth:`item_name` and :meth:`_compute_digests`.
    """

    kind: str = "base"
    is_preprocessed: bool = False  # items are model-ready tensors: the extractor applies no transform
    native_splits: tuple[str, ...] | list[str] = ()  # splits the source itself defines (train/test folders...)

    def __init__(self, classes: Sequence[str], targets: np.ndarray, source: str = "", split: str | None = None):
        self.classes = [str(c) for c in classes]
        self.targets = np.asarray(targets, dtype=np.int64)
        self.source = source
        self.split = split
        self.transform: Callable[[Any], Any] | None = None
        self._digests: list[str] | None = None

    # -- to implement ---------------------------------------------------------------------------
    def load(self, index: int) -> Image.Image | torch.Tensor:
        """The raw item (PIL RGB image or tensor); raises CorruptImageError when unreadable."""
        raise NotImplementedError

    def item_name(self, index: int) -> str:
        """Human-readable identifier (path) of an item, for warnings."""
        return f"{self.source}[{index}]"

    def _compute_digests(self) -> list[str]:
        raise NotImplementedError

    # -- common ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self.load(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def item_digests(self) -> list[str]:
        """Per-item content digests (computed once, then memoised)."""
        if self._digests is None:
            self._digests = self._compute_digests()
        return self._digests

    def fingerprint(self) -> str:
        """sha256 over class names and every item's (content digest, label), in order."""
        h = hashlib.sha256()
        h.update(json.dumps(self.classes).encode())
        digests = self.item_digests()
        for d, y in zip(digests, self.targets.tolist(), strict=True):
            h.update(f"{d}:{y};".encode())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        """Metadata about this dataset (for feature files)."""
        counts = np.bincount(self.targets, minlength=len(self.classes)).tolist() if len(self) else []
        return {"kind": self.kind, "source": self.source, "split": self.split, "n": len(self),
                "num_classes": len(self.classes), "class_counts": counts}

    def with_transform(self, transform: Callable[[Any], Any] | None) -> ImageDataset:
        """A shallow copy whose items go through ``transform`` (the underlying data is shared)."""
        new = copy.copy(self)
        new.transform = transform
        return new

    def subset(self, indices: Sequence[int] | np.ndarray, note: str | None = None) -> ImageDataset:
        """A view of the selected items (``note`` says how they were chosen, for metadata)."""
        return SubsetDataset(self, indices, note=note)

    def __repr__(self) -> str:
        split = f", split={self.split!r}" if self.split else ""
        return f"{type(self).__name__}({self.source!r}{split}, n={len(self)}, classes={len(self.classes)})"


class SubsetDataset(ImageDataset):
    """A view of selected items of another dataset (same classes; fingerprint of the selected items)."""

    def __init__(self, base: ImageDataset, indices: Sequence[int] | np.ndarray, note: str | None = None):
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(base)):
            raise IndexError("subset indices out of range")
        super().__init__(base.classes, base.targets[idx], source=base.source, split=base.split)
        self.base = base
        self.indices = idx
        self.kind = base.kind
        self.is_preprocessed = base.is_preprocessed
        self.native_splits = base.native_splits
        self.transform = base.transform
        self.note = note

    def load(self, index: int) -> Image.Image | torch.Tensor:
        return self.base.load(int(self.indices[index]))

    def item_name(self, index: int) -> str:
        return self.base.item_name(int(self.indices[index]))

    def _compute_digests(self) -> list[str]:
        digests = self.base.item_digests()
        return [digests[i] for i in self.indices.tolist()]

    def describe(self) -> dict[str, Any]:
        d = self.base.describe()
        d.update(n=len(self), class_counts=np.bincount(self.targets, minlength=len(self.classes)).tolist())
        if self.note:
            d["selection"] = self.note
        return d

    def subset(self, indices: Sequence[int] | np.ndarray, note: str | None = None) -> ImageDataset:
        notes = "; ".join(n for n in (self.note, note) if n) or None
        return SubsetDataset(self.base, self.indices[np.asarray(indices, dtype=np.int64)], note=notes)
