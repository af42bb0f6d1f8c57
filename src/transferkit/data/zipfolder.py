"""Zip files of the image-folder layout (the format of ``../shared/data``), read without extracting.

One :class:`zipfile.ZipFile` handle is kept per (process, thread): a handle opened before a DataLoader
forks its workers is never shared with them (a shared file offset would mix up reads), and threads do
not contend for one handle. The fingerprint comes from the zip's central directory
(CRC-32 and size of the selected members), so it is content-based and costs no decompression.
"""

from __future__ import annotations

import os
import threading
import zipfile
from pathlib import Path
from typing import Any

from PIL import Image

from .base import IMAGE_EXTENSIONS, CorruptImageError, ImageDataset, decode_image, split_layout
from .folder import choose_split, layout_items

__all__ = ["ZipImageDataset"]


class ZipImageDataset(ImageDataset):
    """Images in ``[<split>/]<class>/<file>`` inside a zip; class index = sorted class-folder position."""

    kind = "zip"

    def __init__(self, path: str | Path, split: str | None = None):
        self.path = Path(path).expanduser().resolve()
        self._local = threading.local()
        try:
            with zipfile.ZipFile(self.path) as zf:
                infos = {
                    i.filename: i
                    for i in zf.infolist()
                    if not i.is_dir()
                    and not i.filename.startswith("__MACOSX/")
                    and not os.path.basename(i.filename).startswith(".")
                    and os.path.splitext(i.filename)[1].lower() in IMAGE_EXTENSIONS
                }
        except (OSError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{self.path}: not a readable zip file ({exc})") from exc
        layout = split_layout(list(infos))
        if not layout:
            raise ValueError(f"{self.path}: no images in class folders inside the zip")
        native = sorted(s for s in layout if s is not None)
        split = choose_split(layout, split, str(self.path))
        items = layout_items(layout, split)
        classes = sorted({c for _, c in items})
        cidx = {c: i for i, c in enumerate(classes)}
        super().__init__(classes, [cidx[c] for _, c in items], source=str(self.path), split=split)
        self.names = [n for n, _ in items]
        self._meta = [(infos[n].CRC, infos[n].file_size) for n in self.names]
        self.native_splits = native

    def _zip(self) -> zipfile.ZipFile:
        local = self._local
        zf = getattr(local, "zf", None)
        if zf is None or local.pid != os.getpid():
            zf = zipfile.ZipFile(self.path)
            local.zf, local.pid = zf, os.getpid()
        return zf

    def item_name(self, index: int) -> str:
        return f"{self.path}::{self.names[index]}"

    def load(self, index: int) -> Image.Image:
        name = self.names[index]
        try:
            data = self._zip().read(name)
        except (OSError, zipfile.BadZipFile, KeyError, EOFError, ValueError) as exc:  # bad CRC raises BadZipFile
            raise CorruptImageError(self.item_name(index), exc) from exc
        return decode_image(data, self.item_name(index))

    def _compute_digests(self) -> list[str]:
        # content only (CRC-32 and size of the stored bytes): renaming a wrapping folder keeps the cache valid
        return [f"crc{crc:08x}s{size}" for crc, size in self._meta]

    # handles are per process: never pickle them (spawned DataLoader workers reopen the file)
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_local", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def __copy__(self) -> ZipImageDataset:
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)  # the handle cache is shared by shallow copies (same process)
        return new
