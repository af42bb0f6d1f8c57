"""Image folders: ``root/<class>/*`` or ``root/<split>/<class>/*`` (torchvision ImageFolder layout)."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from .base import IMAGE_EXTENSIONS, CorruptImageError, ImageDataset, decode_image, digest_bytes, split_layout

__all__ = ["ImageFolderDataset", "choose_split", "layout_items", "list_folder_splits"]


def _scan(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root).as_posix()
        for f in filenames:
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                out.append(f if rel == "." else f"{rel}/{f}")
    return out


def list_folder_splits(root: str | Path) -> list[str]:
    """Native splits of a folder dataset ([] when it is a plain ``root/<class>/*`` folder)."""
    return sorted(s for s in split_layout(_scan(Path(root))) if s is not None)


class ImageFolderDataset(ImageDataset):
    """Images in class folders; class index = position in the sorted class-folder names.

    ``split`` selects ``root/<split>/``; with ``split=None`` a split layout uses ``train`` if present.
    ``fingerprint_mode='content'`` hashes every file's bytes (exact); ``'stat'`` hashes path, size and
    modification time only (fast for very large folders, but blind to in-place rewrites).
    """

    kind = "folder"

    def __init__(self, root: str | Path, split: str | None = None, fingerprint_mode: str = "content"):
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"not a directory: {self.root}")
        if fingerprint_mode not in ("content", "stat"):
            raise ValueError("fingerprint_mode must be 'content' or 'stat'")
        layout = split_layout(_scan(self.root))
        if not layout:
            raise ValueError(f"{self.root}: no images found in class sub-folders")
        native = sorted(s for s in layout if s is not None)
        split = choose_split(layout, split, str(self.root))
        items = layout_items(layout, split)
        classes = sorted({c for _, c in items})
        cidx = {c: i for i, c in enumerate(classes)}
        super().__init__(classes, [cidx[c] for _, c in items], source=str(self.root), split=split)
        self.paths = [p for p, _ in items]
        self.native_splits = native
        self.fingerprint_mode = fingerprint_mode

    def item_name(self, index: int) -> str:
        return str(self.root / self.paths[index])

    def load(self, index: int) -> Image.Image:
        path = self.root / self.paths[index]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CorruptImageError(str(path), exc) from exc
        return decode_image(data, str(path))

    def _compute_digests(self) -> list[str]:
        out = []
        for p in self.paths:
            path = self.root / p
            if self.fingerprint_mode == "stat":
                try:
                    st = path.stat()
                    out.append(digest_bytes(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode()))
                except OSError:
                    out.append(digest_bytes(f"{p}|missing".encode()))
            else:
                try:
                    out.append(digest_bytes(path.read_bytes()))
                except OSError:
                    out.append(digest_bytes(f"{p}|unreadable".encode()))
        return out


def layout_items(layout: dict, split: str | None) -> list[tuple[str, str]]:
    """Items of one split (``'all'``: every split concatenated, in split-name order)."""
    if split == "all":
        return [it for s in sorted(k for k in layout if k is not None) for it in layout[s]]
    return layout[split]


def choose_split(layout: dict, split: str | None, where: str) -> str | None:
    """Pick the native split: the requested one, else ``train`` when present, else the only one."""
    native = sorted(s for s in layout if s is not None)
    if not native:
        return None  # no native splits: open_dataset makes a seeded split if one was asked for
    if split == "all":
        return "all"
    if split is None:
        if "train" in native:
            return "train"
        if len(native) == 1:
            return native[0]
        raise ValueError(f"{where} has splits {native}: pass split=")
    if split not in layout:
        raise KeyError(f"{where}: split {split!r} not found; available: {native}")
    return split
