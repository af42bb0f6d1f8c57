"""CSV manifests: one image per row, ``path,label[,split]`` (header optional).

Relative paths are resolved against the CSV file's folder. Labels may be names or integers; class names
are the sorted distinct labels (integers sorted numerically). A ``split`` column gives native splits.
"""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image

from .base import CorruptImageError, ImageDataset, decode_image, digest_bytes

__all__ = ["CsvManifestDataset"]

_PATH_COLS = ("path", "file", "filename", "filepath", "image", "img", "image_path")
_LABEL_COLS = ("label", "class", "target", "y", "category", "class_name")


def _read_rows(path: Path) -> tuple[list[str], list[str], list[str] | None]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path}: empty manifest")
    head = [c.strip().lower() for c in rows[0]]
    pcol, lcol, scol = 0, 1, None
    if any(h in _PATH_COLS for h in head):
        pcol = next(i for i, h in enumerate(head) if h in _PATH_COLS)
        try:
            lcol = next(i for i, h in enumerate(head) if h in _LABEL_COLS)
        except StopIteration:
            raise ValueError(f"{path}: header {rows[0]} has no label column ({'/'.join(_LABEL_COLS)})") from None
        scol = head.index("split") if "split" in head else None
        rows = rows[1:]
    if any(len(r) <= max(pcol, lcol, scol or 0) for r in rows):
        raise ValueError(f"{path}: every row needs at least a path and a label")
    paths = [r[pcol].strip() for r in rows]
    labels = [r[lcol].strip() for r in rows]
    splits = [r[scol].strip() for r in rows] if scol is not None else None
    return paths, labels, splits


def _sorted_labels(labels: set[str]) -> list[str]:
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


class CsvManifestDataset(ImageDataset):
    """Images listed in a CSV manifest (``path,label`` rows, optional header and ``split`` column)."""

    kind = "csv"

    def __init__(self, path: str | Path, split: str | None = None, fingerprint_mode: str = "content"):
        self.path = Path(path).expanduser().resolve()
        paths, labels, splits = _read_rows(self.path)
        native = sorted(set(splits)) if splits else []
        if splits and split != "all":
            if split is None:
                split = "train" if "train" in native else (native[0] if len(native) == 1 else None)
                if split is None:
                    raise ValueError(f"{self.path} has splits {native}: pass split=")
            if split not in native:
                raise KeyError(f"{self.path}: split {split!r} not found; available: {native}")
            keep = [i for i, s in enumerate(splits) if s == split]
        else:
            keep = list(range(len(paths)))
            split = "all" if splits and split == "all" else None
        classes = _sorted_labels(set(labels))  # classes over the whole manifest: same indices in every split
        cidx = {c: i for i, c in enumerate(classes)}
        super().__init__(classes, [cidx[labels[i]] for i in keep], source=str(self.path), split=split)
        base = self.path.parent
        self.paths = [str((base / paths[i]).resolve()) if not Path(paths[i]).is_absolute() else paths[i]
                      for i in keep]
        self.native_splits = native
        self.fingerprint_mode = fingerprint_mode

    def item_name(self, index: int) -> str:
        return self.paths[index]

    def load(self, index: int) -> Image.Image:
        p = self.paths[index]
        try:
            data = Path(p).read_bytes()
        except OSError as exc:
            raise CorruptImageError(p, exc) from exc
        return decode_image(data, p)

    def _compute_digests(self) -> list[str]:
        out = []
        for p in self.paths:
            try:
                if self.fingerprint_mode == "stat":
                    st = Path(p).stat()
                    out.append(digest_bytes(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode()))
                else:
                    out.append(digest_bytes(Path(p).read_bytes()))
            except OSError:
                out.append(digest_bytes(f"{p}|missing".encode()))
        return out
