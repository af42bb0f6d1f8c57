"""Decoded, resized images as one uint8 tensor, cached on disk, and cheap batch augmentation.

Fine-tuning on a CPU is dominated by the model only if the input pipeline costs nothing: every image is
decoded once, resized (shorter side) and centre-cropped to the training resolution, and kept as a
``(N, 3, S, S)`` uint8 array. The array is cached under ``<work_dir>/images/<key>.npy`` (key: dataset
content fingerprint, resolution, interpolation; labels and class names in ``<key>.npz``) and memory-mapped
when read back, so the six grid configurations and every model at the same resolution reuse it and a large
dataset does not have to fit in memory. Augmentation (random crop with reflection padding, horizontal flip)
runs on batches of that array, with an explicit generator so that a resumed epoch sees the same crops.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data import CorruptImageError, ImageDataset
from ..features import atomic_savez
from ..reporting import temp_file_beside

__all__ = ["ImageTensors", "augment_batch", "load_image_tensors", "normalize_batch"]

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


@dataclass
class ImageTensors:
    """Images ``(N, 3, S, S)`` uint8 (an array, possibly memory-mapped), labels ``(N,)`` int64, class names;
    ``skipped``: unreadable items."""

    images: np.ndarray
    labels: torch.Tensor
    classes: list[str]
    skipped: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def batch(self, index: torch.Tensor | slice) -> torch.Tensor:
        """The uint8 images at ``index`` (positions or a slice) as a tensor."""
        idx = index.numpy() if isinstance(index, torch.Tensor) else index
        return torch.from_numpy(np.array(self.images[idx], dtype=np.uint8))  # a writable copy


def _resize_crop(img, size: int, interpolation: str) -> np.ndarray:
    from PIL import Image

    resample = getattr(Image.Resampling, interpolation.upper())
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), resample=resample)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)


def load_image_tensors(ds: ImageDataset, size: int, interpolation: str = "bicubic",
                       cache_dir: str | Path | None = None, progress: bool = True,
                       desc: str = "decode") -> ImageTensors:
    """All items of ``ds`` as a uint8 tensor at ``size`` px (cached on disk when ``cache_dir`` is given).

    The resize matches timm's eval transform with ``crop_pct=1``: shorter side to ``size``, centre crop.
    Unreadable images are skipped and listed in ``skipped``.
    """
    if interpolation not in _INTERPOLATIONS:
        interpolation = "bicubic" if interpolation == "random" else "bilinear"
    if ds.is_preprocessed:
        raise ValueError(f"{ds}: pre-made tensors cannot be resized for fine-tuning; give an image dataset")
    meta = arr = None
    if cache_dir is not None:
        key_doc = {"data": ds.fingerprint(), "size": int(size), "interpolation": interpolation, "v": 2}
        key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:32]
        meta, arr = Path(cache_dir) / f"{key}.npz", Path(cache_dir) / f"{key}.npy"
        if meta.exists() and arr.exists():  # the .npz is written last: its presence means complete
            with np.load(meta, allow_pickle=False) as d:
                return ImageTensors(np.load(arr, mmap_mode="r"), torch.from_numpy(d["labels"]),
                                    [str(c) for c in d["classes"]], [str(s) for s in d["skipped"]])
    n = len(ds)
    tmp = None
    if arr is not None:
        arr.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_file_beside(arr)  # 0o666 & ~umask, not 0600
        os.close(fd)
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
    else:
        out = np.empty((n, 3, size, size), dtype=np.uint8)
    keep = np.ones(n, dtype=bool)
    skipped: list[str] = []
    from tqdm.auto import tqdm

    try:
        for i in tqdm(range(n), desc=desc, unit="img", disable=not progress, leave=False, dynamic_ncols=True):
            try:
                out[i] = _resize_crop(ds.load(i), size, interpolation)
            except CorruptImageError as exc:
                keep[i] = False
                skipped.append(f"{exc.name}: {exc.cause}")
        labels = np.asarray(ds.targets, dtype=np.int64)
        if not keep.all():  # compact: drop the rows of unreadable images
            j = 0
            for i in np.flatnonzero(keep):
                out[j] = out[i]
                j += 1
            labels = labels[keep]
        if tmp is None:
            return ImageTensors(out[: len(labels)], torch.from_numpy(labels), list(ds.classes), skipped)
        out.flush()
        del out
        if not keep.all():  # rewrite with the right length
            full = np.load(tmp, mmap_mode="r")[: len(labels)]
            np.save(tmp + ".npy", full)
            del full
            os.replace(tmp + ".npy", tmp)
        os.replace(tmp, arr)
        tmp = None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    atomic_savez(meta, labels=labels, classes=np.array(ds.classes, dtype=str), skipped=np.array(skipped, dtype=str))
    return ImageTensors(np.load(arr, mmap_mode="r"), torch.from_numpy(labels), list(ds.classes), skipped)


def augment_batch(x: torch.Tensor, mode: str, generator: torch.Generator) -> torch.Tensor:
    """Augment a uint8 batch ``(B, 3, S, S)``: ``flip`` (horizontal, p=0.5), ``flip_crop`` (plus a random
    S×S crop of the image padded by S/8 with reflection), ``none``."""
    if mode == "none":
        return x
    b, _, s, _ = x.shape
    if mode == "flip_crop":
        pad = max(1, s // 8)
        padded = F.pad(x.float(), (pad, pad, pad, pad), mode="reflect")
        offs = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator)
        x = torch.stack([padded[i, :, oy:oy + s, ox:ox + s] for i, (oy, ox) in enumerate(offs.tolist())])
    flip = torch.rand(b, generator=generator) < 0.5
    if flip.any():
        x = x.clone()
        x[flip] = x[flip].flip(-1)
    return x


def normalize_batch(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (or float 0..255) ``(B, 3, S, S)`` -> float, scaled to [0, 1] then standardised."""
    return (x.float().div_(255.0) - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
