"""In-memory image arrays: ``.npz`` files (images + labels) and pre-made tensors.

An ``.npz`` holds images under ``images``/``x``/``X`` (N,H,W), (N,H,W,C) or (N,C,H,W) with C in {1,3,4},
uint8 (0..255) or float (0..1), and labels under ``labels``/``y``/``targets``; optional ``class_names``.
Native splits use suffixed keys (``x_train``/``y_train``, ``x_test``/``y_test``). Items are returned as
PIL RGB images so that every model's own preprocessing applies. A 2-D ``X`` is a *feature* file (the
format ``transferkit rank`` reads), not images, and is rejected with a clear error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .base import ImageDataset, digest_bytes

__all__ = ["ArrayImageDataset", "NpzDataset", "TensorImageDataset", "to_uint8_nhwc"]

_IMAGE_KEYS = ("images", "x", "X", "data", "imgs")
_LABEL_KEYS = ("labels", "y", "Y", "targets", "label")


def to_uint8_nhwc(images: np.ndarray) -> np.ndarray:
    """(N,H,W) / (N,H,W,C) / (N,C,H,W) uint8-or-float images -> (N,H,W,C) uint8, C in {1,3,4}."""
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4:
        raise ValueError(f"images must be (N,H,W[,C]) or (N,C,H,W), got shape {a.shape}")
    if a.shape[-1] not in (1, 3, 4) and a.shape[1] in (1, 3, 4):
        a = a.transpose(0, 2, 3, 1)
    if a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"cannot find the channel axis (1, 3 or 4 channels) in shape {a.shape}")
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating):
            hi = float(np.nanmax(a)) if a.size else 1.0
            scale = 255.0 if hi <= 1.0 + 1e-6 else 1.0
            a = np.clip(np.nan_to_num(a) * scale + 0.5, 0, 255).astype(np.uint8)
        else:
            a = np.clip(a, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a)


class ArrayImageDataset(ImageDataset):
    """Images held in a uint8 (N,H,W,C) array; items are PIL RGB images."""

    kind = "array"

    def __init__(self, images: np.ndarray, labels: Sequence[int] | np.ndarray, class_names: Sequence[str] | None = None,
                 source: str = "<array>", split: str | None = None):
        self.images = to_uint8_nhwc(images)
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(self.images):
            raise ValueError(f"labels must be 1-D with {len(self.images)} entries, got shape {labels.shape}")
        if class_names is None:
            if np.issubdtype(labels.dtype, np.integer):
                if labels.size and labels.min() < 0:
                    raise ValueError("integer labels must be >= 0")
                n = int(labels.max()) + 1 if labels.size else 0
                class_names = [str(i) for i in range(n)]
                targets = labels.astype(np.int64)
            else:
                class_names = sorted({str(v) for v in labels.tolist()})
                cidx = {c: i for i, c in enumerate(class_names)}
                targets = np.array([cidx[str(v)] for v in labels.tolist()], dtype=np.int64)
        else:
            targets = labels.astype(np.int64)
            if targets.size and (targets.min() < 0 or targets.max() >= len(class_names)):
                raise ValueError("labels out of range of class_names")
        super().__init__(list(class_names), targets, source=source, split=split)

    def load(self, index: int) -> Image.Image:
        a = self.images[index]
        if a.shape[-1] == 1:
            return Image.fromarray(a[..., 0]).convert("RGB")
        return Image.fromarray(a).convert("RGB")

    def _compute_digests(self) -> list[str]:
        return [digest_bytes(self.images[i].tobytes()) for i in range(len(self.images))]


def _pick(files: Sequence[str], names: Sequence[str], suffix: str) -> str | None:
    for n in names:
        if n + suffix in files:
            return n + suffix
    return None


class NpzDataset(ArrayImageDataset):
    """Images and labels from an ``.npz`` file (see the module docstring for the accepted keys)."""

    kind = "npz"

    def __init__(self, path: str | Path, split: str | None = None):
        path = Path(path).expanduser().resolve()
        with np.load(path, allow_pickle=False) as d:
            files = list(d.files)
            native = sorted({k.rsplit("_", 1)[1] for k in files
                             if "_" in k and k.rsplit("_", 1)[0] in _IMAGE_KEYS
                             and k.rsplit("_", 1)[1] in ("train", "test", "val")})
            if native and split != "all":
                if split is None:
                    split = "train" if "train" in native else (native[0] if len(native) == 1 else None)
                    if split is None:
                        raise ValueError(f"{path} has splits {native}: pass split=")
                if split not in native:
                    raise KeyError(f"{path}: split {split!r} not found; available: {native}")
                parts = [split]
            elif native:
                parts = native
            else:
                parts, split = [""], None
            xs, ys = [], []
            for part in parts:
                suffix = f"_{part}" if part else ""
                xk, yk = _pick(files, _IMAGE_KEYS, suffix), _pick(files, _LABEL_KEYS, suffix)
                if xk is None or yk is None:
                    raise ValueError(f"{path}: needs image and label arrays (keys {_IMAGE_KEYS} / {_LABEL_KEYS}"
                                     f"{' with suffix ' + suffix if suffix else ''}); found {files}")
                x = d[xk]
                if x.ndim == 2:
                    raise ValueError(f"{path}: '{xk}' is 2-D {x.shape}: this is a feature file "
                                     "(for `transferkit rank`), not images")
                xs.append(to_uint8_nhwc(x))
                ys.append(d[yk])
            names = [str(c) for c in d["class_names"].tolist()] if "class_names" in files else None
        super().__init__(np.concatenate(xs), np.concatenate(ys), class_names=names, source=str(path), split=split)
        self.native_splits = native


class TensorImageDataset(ImageDataset):
    """Pre-made, model-ready tensors (N,C,H,W): the extractor feeds them to the model unchanged.

    Used by the benchmark (extract vs bare forward on the same batches) and by code that already
    preprocessed its images. ``preprocessing`` (a dict) is recorded in metadata and the cache key.
    """

    kind = "tensor"
    is_preprocessed = True

    def __init__(self, images: torch.Tensor | np.ndarray, labels: Sequence[int] | np.ndarray,
                 class_names: Sequence[str] | None = None, source: str = "<tensor>",
                 preprocessing: dict | None = None):
        self.images = torch.as_tensor(images).float().contiguous()
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N,C,H,W), got {tuple(self.images.shape)}")
        targets = np.asarray(labels, dtype=np.int64)
        if len(targets) != len(self.images):
            raise ValueError("images and labels differ in length")
        if class_names is None:
            class_names = [str(i) for i in range(int(targets.max()) + 1 if targets.size else 0)]
        super().__init__(list(class_names), targets, source=source)
        self.preprocessing = preprocessing or {"premade": True}

    def load(self, index: int) -> torch.Tensor:
        return self.images[index]

    def load_batch(self, indices: Sequence[int]) -> torch.Tensor:
        """Several items at once (one gather instead of a per-item stack)."""
        idx = list(indices)
        if idx and idx == list(range(idx[0], idx[0] + len(idx))):
            return self.images[idx[0]: idx[0] + len(idx)]  # a contiguous run: a view, no copy
        return self.images[torch.as_tensor(idx, dtype=torch.long)]

    def _compute_digests(self) -> list[str]:
        a = self.images.numpy()
        return [digest_bytes(a[i].tobytes()) for i in range(len(a))]
