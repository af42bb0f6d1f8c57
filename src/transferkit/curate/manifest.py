"""Transfer-set manifests: the CSV that ``transferkit curate`` writes and ``transferkit distill`` reads.

A manifest lists image crops taken from one or more gallery datasets::

    # transferkit-transfer-set v1
    # meta {"model": "...", "budget": 1000, ...}
    source,split,item,x0,y0,x1,y1,query_id,similarity,rank
    /data/pool.zip,all,train/cat/001.jpg,0,0,32,32,q17,0.8123,0

``source`` is the gallery dataset spec (anything :func:`transferkit.data.open_dataset` opens), ``split``
the reader split it was opened with (empty = the reader's default), ``item`` the image's name inside the
source (zip member, folder-relative path, CSV path, or ``#<index>`` for array/IDX readers), the crop box
is in original-image pixels (PIL ``crop`` convention: ``x1``/``y1`` exclusive), and ``query_id``,
``similarity``, ``rank`` say which query retrieved the crop, how closely, and at which position of that
query's list. :class:`ManifestDataset` re-opens every source once and returns the crops, unlabeled.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data import ImageDataset, SubsetDataset, open_dataset
from ..data.base import CorruptImageError
from ..reporting import atomic_write_text

__all__ = [
    "MANIFEST_COLUMNS",
    "MANIFEST_MAGIC",
    "MANIFEST_VERSION",
    "ManifestDataset",
    "ManifestRow",
    "TransferManifest",
    "is_transfer_manifest",
    "item_ref",
    "read_manifest",
    "resolve_item",
    "write_manifest",
]

MANIFEST_VERSION = 1
MANIFEST_MAGIC = "# transferkit-transfer-set"
MANIFEST_COLUMNS = ("source", "split", "item", "x0", "y0", "x1", "y1", "query_id", "similarity", "rank")


@dataclass(frozen=True)
class ManifestRow:
    """One crop of the transfer set."""

    source: str
    split: str
    item: str
    x0: int
    y0: int
    x1: int
    y1: int
    query_id: str = ""
    similarity: float = float("nan")
    rank: int = -1

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)

    def validate(self, where: str = "") -> None:
        if not self.source or not self.item:
            raise ValueError(f"{where}manifest row needs a source and an item: {self}")
        if not (self.x1 > self.x0 >= 0 and self.y1 > self.y0 >= 0):
            raise ValueError(f"{where}bad crop box {self.box} for {self.item!r} (need 0 <= x0 < x1, 0 <= y0 < y1)")


@dataclass
class TransferManifest:
    """A read manifest: its rows and the run metadata stored in the header."""

    rows: list[ManifestRow]
    meta: dict[str, Any] = field(default_factory=dict)
    version: int = MANIFEST_VERSION
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def sources(self) -> list[tuple[str, str]]:
        """Distinct (source, split) pairs, in first-appearance order."""
        return list(dict.fromkeys((r.source, r.split) for r in self.rows))


# ------------------------------------------------------------------------------------------------
# write / read
# ------------------------------------------------------------------------------------------------
def _as_row(r: ManifestRow | Mapping[str, Any]) -> ManifestRow:
    if isinstance(r, ManifestRow):
        return r
    missing = [c for c in ("source", "item", "x0", "y0", "x1", "y1") if c not in r]
    if missing:
        raise ValueError(f"manifest row lacks {missing}: {dict(r)}")
    return ManifestRow(
        source=str(r["source"]), split=str(r.get("split") or ""), item=str(r["item"]),
        x0=int(r["x0"]), y0=int(r["y0"]), x1=int(r["x1"]), y1=int(r["y1"]),
        query_id=str(r.get("query_id", "")), similarity=float(r.get("similarity", float("nan"))),
        rank=int(r.get("rank", -1)),
    )


def write_manifest(path: str | Path, rows: Iterable[ManifestRow | Mapping[str, Any]],
                   meta: Mapping[str, Any] | None = None) -> Path:
    """Write a transfer-set manifest atomically (rows: :class:`ManifestRow` or dicts with the columns)."""
    rows = [_as_row(r) for r in rows]
    for i, r in enumerate(rows):
        r.validate(f"row {i}: ")
    buf = io.StringIO()
    buf.write(f"{MANIFEST_MAGIC} v{MANIFEST_VERSION}\n")
    buf.write("# meta " + json.dumps(dict(meta or {}), sort_keys=True, default=str) + "\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(MANIFEST_COLUMNS)
    for r in rows:
        d = asdict(r)
        d["similarity"] = f"{r.similarity:.6f}"
        w.writerow([d[c] for c in MANIFEST_COLUMNS])
    return atomic_write_text(path, buf.getvalue())


def _read_header(path: Path) -> int | None:
    """The manifest version from the first line, or None when the file is not a transfer manifest."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline(256)
    except (OSError, UnicodeDecodeError):
        return None
    if not first.startswith(MANIFEST_MAGIC):
        return None
    tail = first[len(MANIFEST_MAGIC):].strip()
    if not tail.startswith("v") or not tail[1:].isdigit():
        return None
    return int(tail[1:])


def is_transfer_manifest(path: str | Path) -> bool:
    """True when ``path`` is a file written by :func:`write_manifest` (checked from its first line)."""
    p = Path(path).expanduser()
    return p.is_file() and _read_header(p) is not None


def read_manifest(path: str | Path) -> TransferManifest:
    """Read a manifest; relative ``source`` paths are resolved against the manifest's folder."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise FileNotFoundError(f"transfer-set manifest not found: {p}")
    version = _read_header(p)
    if version is None:
        raise ValueError(f"{p}: not a transferkit transfer-set manifest (first line must be '{MANIFEST_MAGIC} v1')")
    if version > MANIFEST_VERSION:
        raise ValueError(f"{p}: manifest version {version} is newer than this transferkit supports "
                         f"({MANIFEST_VERSION}); upgrade transferkit")
    meta: dict[str, Any] = {}
    lines = p.read_text(encoding="utf-8").splitlines()
    body = []
    for line in lines[1:]:
        if line.startswith("# meta "):
            try:
                meta = json.loads(line[len("# meta "):])
            except json.JSONDecodeError as exc:
                raise ValueError(f"{p}: unreadable meta line ({exc})") from exc
        elif line.startswith("#") or not line.strip():
            continue
        else:
            body.append(line)
    reader = csv.DictReader(body)
    cols = reader.fieldnames or []
    need = {"source", "item", "x0", "y0", "x1", "y1"}
    if not need <= set(cols):
        raise ValueError(f"{p}: manifest header {cols} lacks columns {sorted(need - set(cols))}")
    rows = []
    for n, rec in enumerate(reader, start=1):
        try:
            row = _as_row(rec)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{p}: data row {n}: {exc}") from exc
        src = row.source
        if not _looks_absolute(src) and (p.parent / src).exists():
            row = ManifestRow(**{**asdict(row), "source": str((p.parent / src).resolve())})
        row.validate(f"{p}: data row {n}: ")
        rows.append(row)
    return TransferManifest(rows, meta, version, p)


def _looks_absolute(spec: str) -> bool:
    return Path(spec).expanduser().is_absolute()


# ------------------------------------------------------------------------------------------------
# item references: (source, split, item) of a dataset position, and back
# ------------------------------------------------------------------------------------------------
def _unwrap(ds: ImageDataset, index: int) -> tuple[ImageDataset, int]:
    while isinstance(ds, SubsetDataset):
        index = int(ds.indices[index])
        ds = ds.base
    return ds, index


def item_ref(ds: ImageDataset, index: int) -> tuple[str, str, str]:
    """``(source, split, item)`` naming position ``index`` of ``ds`` so that it can be re-opened later."""
    base, i = _unwrap(ds, index)
    split = "" if base.split is None else str(base.split)
    if hasattr(base, "names"):  # zip members
        return base.source, split, str(base.names[i])
    if hasattr(base, "paths"):  # folder-relative or absolute (CSV) paths
        return base.source, split, str(base.paths[i])
    return base.source, split, f"#{i}"


def _name_index(base: ImageDataset) -> dict[str, int]:
    names = getattr(base, "names", None) or getattr(base, "paths", None)
    if names is None:
        return {}
    return {str(n): i for i, n in enumerate(names)}


def resolve_item(base: ImageDataset, item: str, lookup: Mapping[str, int] | None = None) -> int:
    """The position of ``item`` in ``base`` (a reader as opened by :func:`open_source`)."""
    lookup = _name_index(base) if lookup is None else lookup
    if item in lookup:
        return lookup[item]
    if item.startswith("#") and item[1:].isdigit() and not lookup:
        i = int(item[1:])
        if i < len(base):
            return i
    raise KeyError(f"{base.source}: item {item!r} not found")


def open_source(source: str, split: str) -> ImageDataset:
    """Re-open a gallery source the way :func:`item_ref` named it."""
    from .shards import TarShardDataset, is_precomputed_folder, open_precomputed

    if str(source).endswith(".tar") and Path(source).is_file():
        return TarShardDataset(source)
    if is_precomputed_folder(source):
        return open_precomputed(source)[0]
    ds = open_dataset(source, split=split or None)
    while isinstance(ds, SubsetDataset):
        ds = ds.base
    return ds


# ------------------------------------------------------------------------------------------------
# the dataset
# ------------------------------------------------------------------------------------------------
class ManifestDataset(ImageDataset):
    """The crops listed in a transfer-set manifest, as an unlabeled dataset: ``ds[i] -> (PIL crop, -1)``.

    Each distinct source is opened once (zip handles stay per process, so DataLoader workers are safe).
    ``classes`` is empty and every target is -1: the transfer set carries no labels.
    """

    kind = "transfer-manifest"

    def __init__(self, path: str | Path | TransferManifest, *, rows: Sequence[int] | None = None):
        man = path if isinstance(path, TransferManifest) else read_manifest(path)
        all_rows = man.rows if rows is None else [man.rows[int(i)] for i in rows]
        super().__init__([], np.full(len(all_rows), -1, dtype=np.int64),
                         source=str(man.path) if man.path else "<manifest>", split=None)
        self.manifest = man
        self.rows = all_rows
        self.meta = man.meta
        self._bases: dict[tuple[str, str], ImageDataset] = {}
        self._pos = np.zeros(len(all_rows), dtype=np.int64)
        self._src = np.zeros(len(all_rows), dtype=np.int64)
        by_key: dict[tuple[str, str], list[int]] = {}
        for j, r in enumerate(all_rows):
            by_key.setdefault((r.source, r.split), []).append(j)
        self._keys = list(by_key)
        for k, (src, split) in enumerate(self._keys):
            try:
                base = open_source(src, split)
            except (FileNotFoundError, KeyError, ValueError) as exc:
                raise ValueError(f"{self.source}: cannot open transfer-set source {src!r} "
                                 f"(split {split or 'default'}): {exc}") from exc
            self._bases[(src, split)] = base
            lookup = _name_index(base)
            for j in by_key[(src, split)]:
                try:
                    self._pos[j] = resolve_item(base, all_rows[j].item, lookup)
                except KeyError as exc:
                    raise ValueError(f"{self.source}: {exc.args[0]}") from None
                self._src[j] = k

    def _base(self, index: int) -> tuple[ImageDataset, int]:
        return self._bases[self._keys[int(self._src[index])]], int(self._pos[index])

    def item_name(self, index: int) -> str:
        r = self.rows[index]
        return f"{r.source}::{r.item}@{r.x0},{r.y0},{r.x1},{r.y1}"

    def load(self, index: int) -> Image.Image:
        base, pos = self._base(index)
        img = base.load(pos)
        if not isinstance(img, Image.Image):
            raise CorruptImageError(self.item_name(index), "source item is a preprocessed tensor; cannot crop")
        r = self.rows[index]
        w, h = img.size
        if r.x1 > w or r.y1 > h:
            raise CorruptImageError(self.item_name(index), f"crop box {r.box} outside the {w}x{h} image")
        return img.crop(r.box)

    def _compute_digests(self) -> list[str]:
        per_src = {k: b.item_digests() for k, b in self._bases.items()}
        out = []
        for j, r in enumerate(self.rows):
            d = per_src[self._keys[int(self._src[j])]][int(self._pos[j])]
            out.append(hashlib.blake2b(f"{d}|{r.box}".encode(), digest_size=16).hexdigest())
        return out

    def source_digests(self) -> list[str]:
        """Per item, the content digest of the whole source image the crop comes from (the digest scheme of
        that source's reader): use it to drop crops of images that are also labeled or test images."""
        per_src = {k: b.item_digests() for k, b in self._bases.items()}
        return [per_src[self._keys[int(self._src[j])]][int(self._pos[j])] for j in range(len(self.rows))]

    def describe(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for r in self.rows:
            counts[r.source] = counts.get(r.source, 0) + 1
        return {"kind": self.kind, "source": self.source, "split": None, "n": len(self), "num_classes": 0,
                "sources": counts, "curation": self.meta}

    def subset(self, indices: Sequence[int] | np.ndarray, note: str | None = None) -> ManifestDataset:
        """A manifest dataset over the selected rows (sources are shared, not re-opened)."""
        idx = np.asarray(indices, dtype=np.int64)
        new = copy.copy(self)
        new.rows = [self.rows[int(i)] for i in idx]
        new.targets = self.targets[idx]
        new._pos = self._pos[idx]
        new._src = self._src[idx]
        new._digests = None if self._digests is None else [self._digests[int(i)] for i in idx]
        if note:
            new.meta = dict(self.meta, selection=note)
        return new

