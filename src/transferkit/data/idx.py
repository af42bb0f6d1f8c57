"""IDX files (the MNIST / Fashion-MNIST format), plain or gzipped.

A spec is a folder holding ``<prefix>-images-idx3-ubyte[.gz]`` and ``<prefix>-labels-idx1-ubyte[.gz]``
(prefix ``train`` and ``t10k``/``test``), one images file (its labels file is found by name), or the
alias ``fashion-mnist`` (``apt-get install dataset-fashion-mnist`` puts the files in
``/usr/share/datasets/fashion-mnist/``).
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np

from .npz import ArrayImageDataset

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "IdxDataset", "find_idx_pairs", "read_idx", "write_idx"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IMAGES_RE = re.compile(r"^(?P<prefix>.+?)[-_.]images[-_.]idx3[-_.]ubyte(\.gz)?$")


def _open_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (magic ``00 00 <dtype> <ndim>``, big-endian dims) into an array."""
    data = _open_bytes(Path(path))
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(_DTYPES[data[2]]), data[3]
    dims = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(dims)) if dims else 0
    offset = 4 + 4 * ndim
    if len(data) - offset < count * dtype.itemsize:
        raise ValueError(f"{path}: truncated IDX file ({len(data) - offset} bytes for dims {dims})")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write an array as IDX (gzipped when the name ends in .gz or ``compress``); used by tests."""
    a = np.asarray(array)
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
            np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}[a.dtype]
    body = bytes([0, 0, code, a.ndim]) + np.asarray(a.shape, dtype=">u4").tobytes()
    body += a.astype(a.dtype.newbyteorder(">")).tobytes()
    path = Path(path)
    if compress or (compress is None and path.suffix == ".gz"):
        body = gzip.compress(body, mtime=0)
    path.write_bytes(body)


def find_idx_pairs(folder: str | Path) -> dict[str, tuple[Path, Path]]:
    """``{split: (images_file, labels_file)}`` for IDX files in a folder (``t10k`` is called ``test``)."""
    out = {}
    for f in sorted(Path(folder).iterdir()):
        m = _IMAGES_RE.match(f.name)
        if not m:
            continue
        lab = _labels_for(f)
        if lab is not None:
            prefix = m.group("prefix")
            out["test" if prefix in ("t10k", "test") else prefix] = (f, lab)
    return out


def _labels_for(images: Path) -> Path | None:
    cand = images.name.replace("images", "labels").replace("idx3", "idx1")
    for name in (cand, cand + ".gz", cand.removesuffix(".gz")):
        if images.with_name(name).exists():
            return images.with_name(name)
    return None


class IdxDataset(ArrayImageDataset):
    """Grayscale IDX images with IDX labels (decoded to memory once; items are PIL RGB images)."""

    kind = "idx"

    def __init__(self, path: str | Path, split: str | None = None, class_names: list[str] | None = None):
        path = FASHION_MNIST_DIR if str(path).lower() in ("fashion-mnist", "fashion_mnist") else Path(path)
        path = path.expanduser().resolve()
        if path.is_dir():
            pairs = find_idx_pairs(path)
            if not pairs:
                raise FileNotFoundError(f"{path}: no '*-images-idx3-ubyte[.gz]' files with matching labels")
        else:
            lab = _labels_for(path)
            if lab is None:
                raise FileNotFoundError(f"{path}: no matching '*-labels-idx1-ubyte' file next to it")
            m = _IMAGES_RE.match(path.name)
            pairs = {(m.group("prefix") if m else "all"): (path, lab)}
        native = sorted(pairs)
        if split == "all":
            chosen = native
        elif split is None:
            chosen = ["train"] if "train" in pairs else native[:1] if len(native) == 1 else None
            if chosen is None:
                raise ValueError(f"{path} has splits {native}: pass split=")
        elif split in pairs:
            chosen = [split]
        elif len(native) == 1:  # a single pair: no native split, open_dataset makes a seeded one
            chosen, native = native, []
        else:
            raise KeyError(f"{path}: split {split!r} not found; available: {native}")
        imgs, labs = [], []
        for s in chosen:
            xi, yi = pairs[s]
            x, y = read_idx(xi), read_idx(yi)
            if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
                raise ValueError(f"{xi}: expected (N,H,W) images and (N,) labels, got {x.shape} / {y.shape}")
            imgs.append(x)
            labs.append(y.astype(np.int64))
        if class_names is None and "fashion" in str(path).lower():
            class_names = FASHION_MNIST_CLASSES
        chosen_split = split if split == "all" else (chosen[0] if native else None)
        super().__init__(np.concatenate(imgs), np.concatenate(labs), class_names=class_names,
                         source=str(path), split=chosen_split)
        self.native_splits = native
