"""Gallery formats used at scale: WebDataset tar shards and precomputed embedding folders.

* **WebDataset shards** (img2dataset's output: ``00000.tar`` holding ``key.jpg`` + optional ``key.txt`` /
  ``key.json``), named one by one or with a brace pattern (``/data/pool/{00000..00099}.tar``). Each shard
  is one :class:`TarShardDataset`: its sample list is read once as a stream through the ``webdataset``
  library (raw bytes, no decoding of the whole shard in memory); a sample whose image is missing or does not
  decode is skipped and counted (``skipped``), never fatal, as is a truncated shard's tail. Items are then
  read back by random access into the tar (member offsets from :mod:`tarfile`), so crops, the transfer-set
  manifest and ``transferkit distill`` work as with any other dataset (item name = the tar member).
* **Precomputed embeddings** (clip-retrieval / img2dataset layout): a folder with ``img_emb/*.npy``
  embedding shards and ``metadata/*.parquet`` metadata shards (same order, one row per embedding, an
  ``image_path`` column naming each image: a file path, absolute or relative to the folder, or
  ``<shard.tar>::<member>``). :func:`open_precomputed` returns the stores (the ``.npy`` files memory-mapped,
  rows L2-normalised on the fly, not copied) and the images as a dataset, so nothing is re-embedded. One
  embedding per image (whole-image crops only).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data import ImageDataset
from ..data.base import CorruptImageError

__all__ = ["IMAGE_EXTS", "PrecomputedStore", "TarShardDataset", "expand_shards", "is_precomputed_folder",
           "is_shard_spec", "open_precomputed", "open_shard_gallery"]

UNLABELED = ["unlabeled"]  # gallery images carry no label: one placeholder class (views and subsets need one)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "tif", "tiff")


def is_shard_spec(spec: str) -> bool:
    """True for a tar shard path or a brace pattern of them (``.../{000..099}.tar``)."""
    s = str(spec)
    return s.endswith(".tar") or (".tar" in s and "{" in s and ".." in s)


def expand_shards(spec: str) -> list[str]:
    """The shard paths of a brace pattern (``a/{00000..00002}.tar`` -> three paths); a plain path as is."""
    from webdataset.shardlists import expand_urls

    paths = list(expand_urls(str(spec)))
    missing = [p for p in paths if not Path(p).expanduser().is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"WebDataset shard not found: {missing[0]}{more}")
    return [str(Path(p).expanduser().resolve()) for p in paths]


def _image_ext(sample: dict[str, Any]) -> str | None:
    """The sample's image field, as spelt in the tar (``JPG`` too: members keep their case)."""
    by_lower = {k.lower(): k for k in sample if not k.startswith("__")}
    for ext in IMAGE_EXTS:
        if ext in by_lower:
            return by_lower[ext]
    return None


def _decodes(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        return True
    except Exception:  # any decoder error: the sample is corrupt
        return False


@dataclass
class _ShardEntry:
    member: str
    digest: str


def _scan(path: str) -> tuple[list[_ShardEntry], int, list[str]]:
    """Stream one shard with ``webdataset``: the readable image samples, the skipped count and why."""
    errors: list[str] = []

    def handler(exc: Exception) -> bool:  # a broken tar record: note it and carry on with the rest
        errors.append(f"{type(exc).__name__}: {exc}")
        return True

    entries: list[_ShardEntry] = []
    skipped = 0
    from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

    # webdataset's own grouping, with the members' suffixes kept as spelt (its default lower-cases them, and
    # `key.JPG` could then not be found again by name); each process lists the whole shard
    files = tar_file_expander(url_opener([{"url": path}], handler=handler), handler=handler)
    stream = group_by_keys(files, lcase=False, handler=handler)
    seen: set[str] = set()
    for sample in stream:
        key = str(sample.get("__key__", ""))
        ext = _image_ext(sample)
        if ext is None or not isinstance(sample[ext], (bytes, bytearray)) or not _decodes(sample[ext]):
            skipped += 1
            continue
        member = f"{key}.{ext}"
        if member in seen:
            skipped += 1
            continue
        seen.add(member)
        entries.append(_ShardEntry(member, hashlib.blake2b(bytes(sample[ext]), digest_size=16).hexdigest()))
    return entries, skipped + len(errors), errors


class TarShardDataset(ImageDataset):
    """The images of one WebDataset tar shard, unlabeled (one placeholder class), in the shard's order.

    ``names`` are the tar members (``key.jpg``); corrupt samples are left out and counted in ``skipped``.
    The sample list (members and content digests) is memoised next to nothing: it is rebuilt by one
    streaming pass per process, which also checks that every image decodes.
    """

    kind = "webdataset-shard"

    def __init__(self, path: str | Path):
        path = str(Path(path).expanduser().resolve())
        if not Path(path).is_file():
            raise FileNotFoundError(f"WebDataset shard not found: {path}")
        if tarfile.is_tarfile(path):
            entries, skipped, errors = _scan(path)
        else:  # a broken or foreign file among the shards: no samples, said once (the pipeline skips it)
            entries, skipped, errors = [], 0, ["not a tar archive"]
            warnings.warn(f"{path}: not a tar archive; no samples read from it", RuntimeWarning, stacklevel=2)
        super().__init__(UNLABELED, np.zeros(len(entries), dtype=np.int64), source=path, split=None)
        self.names = [e.member for e in entries]
        self._digests = [e.digest for e in entries]
        self.skipped = skipped
        self.errors = errors
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] | None = None
        if skipped:
            warnings.warn(f"{path}: skipped {skipped} corrupt or image-less sample(s)", RuntimeWarning, stacklevel=2)

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers re-open the tar themselves
        d = dict(self.__dict__)
        d["_tar"] = d["_members"] = None
        return d

    def _open(self) -> tuple[tarfile.TarFile, dict[str, tarfile.TarInfo]]:
        if self._tar is None or self._members is None:
            tf = tarfile.open(self.source, mode="r:")
            members: dict[str, tarfile.TarInfo] = {}
            try:
                for m in tf:
                    members[m.name] = m
            except tarfile.ReadError:  # truncated tail: the members read so far are usable
                pass
            self._tar, self._members = tf, members
        return self._tar, self._members

    def load(self, index: int) -> Image.Image:
        name = self.names[int(index)]
        tf, members = self._open()
        try:
            f = tf.extractfile(members[name])
            if f is None:
                raise OSError("not a regular file")
            with Image.open(io.BytesIO(f.read())) as im:
                return im.convert("RGB")
        except Exception as exc:
            raise CorruptImageError(self.item_name(index), str(exc)) from exc

    def item_name(self, index: int) -> str:
        return f"{self.source}::{self.names[int(index)]}"

    def _compute_digests(self) -> list[str]:  # pragma: no cover - set in __init__
        return list(self._digests or [])

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "split": None, "n": len(self), "num_classes": 0,
                "class_counts": [len(self)], "skipped": self.skipped}


def open_shard_gallery(spec: str) -> list[TarShardDataset]:
    """Every shard of a path or brace pattern, opened (corrupt samples skipped and counted per shard)."""
    return [TarShardDataset(p) for p in expand_shards(spec)]


# ------------------------------------------------------------------------------------------------
# precomputed embeddings
# ------------------------------------------------------------------------------------------------
def is_precomputed_folder(spec: str | Path) -> bool:
    p = Path(spec).expanduser()
    return p.is_dir() and (p / "img_emb").is_dir()  # metadata/ missing is then named by open_precomputed


class _PathImages(ImageDataset):
    """Images named by path (``file`` or ``shard.tar::member``), unlabeled; item names are the paths as given."""

    kind = "precomputed-images"

    def __init__(self, root: Path, paths: Sequence[str]):
        super().__init__(UNLABELED, np.zeros(len(paths), dtype=np.int64), source=str(root), split=None)
        self.root = root
        self.paths = [str(p) for p in paths]
        self._tars: dict[str, tuple[tarfile.TarFile, dict[str, tarfile.TarInfo]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_tars"] = {}
        return d

    def _bytes(self, index: int) -> bytes:
        p = self.paths[int(index)]
        if "::" in p:
            tar, member = p.split("::", 1)
            tpath = str(self.root / tar) if not Path(tar).is_absolute() else tar
            if tpath not in self._tars:
                tf = tarfile.open(tpath, mode="r:")
                self._tars[tpath] = (tf, {m.name: m for m in tf})
            tf, members = self._tars[tpath]
            f = tf.extractfile(members[member])
            if f is None:
                raise OSError("not a regular file")
            return f.read()
        path = Path(p) if Path(p).is_absolute() else self.root / p
        return path.read_bytes()

    def load(self, index: int) -> Image.Image:
        try:
            with Image.open(io.BytesIO(self._bytes(index))) as im:
                return im.convert("RGB")
        except Exception as exc:
            raise CorruptImageError(self.item_name(index), str(exc)) from exc

    def item_name(self, index: int) -> str:
        return self.paths[int(index)]

    def _compute_digests(self) -> list[str]:
        out = []
        for i in range(len(self)):
            try:
                out.append(hashlib.blake2b(self._bytes(i), digest_size=16).hexdigest())
            except Exception:  # unreadable image: a digest no other item has
                out.append(f"unreadable:{self.paths[i]}")
        return out


@dataclass
class PrecomputedStore:
    """One ``.npy`` embedding shard, memory-mapped; rows are unit-normalised when read (``emb``)."""

    path: Path
    key: str
    meta: dict[str, Any]

    @property
    def n(self) -> int:
        return int(self.meta["n"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def emb(self) -> _UnitRows:
        return _UnitRows(np.load(self.path, mmap_mode="r"))

    @property
    def valid(self) -> np.ndarray:
        """Rows that are finite and non-zero (computed block by block)."""
        mm = np.load(self.path, mmap_mode="r")
        out = np.zeros(len(mm), bool)
        for lo in range(0, len(mm), 65536):
            blk = np.asarray(mm[lo:lo + 65536], dtype=np.float32)
            out[lo:lo + len(blk)] = np.isfinite(blk).all(1) & (np.abs(blk).sum(1) > 0)
        return out


class _UnitRows:
    """A read-only view of a memory-mapped matrix whose rows come back L2-normalised (and NaN-free)."""

    def __init__(self, mm: np.ndarray):
        self.mm = mm
        self.shape = mm.shape

    def __len__(self) -> int:
        return len(self.mm)

    def __getitem__(self, idx: Any) -> np.ndarray:
        from .embed import normalize_rows

        x = np.asarray(self.mm[idx], dtype=np.float32)
        single = x.ndim == 1
        x = np.nan_to_num(x.reshape(1, -1) if single else x, nan=0.0, posinf=0.0, neginf=0.0)
        x = normalize_rows(x)
        return x[0] if single else x

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        x = self[:]
        return x if dtype is None else x.astype(dtype)


def open_precomputed(folder: str | Path) -> tuple[_PathImages, list[PrecomputedStore]]:
    """The images and the embedding stores of a clip-retrieval style folder (see the module docstring)."""
    import pyarrow.parquet as pq

    root = Path(folder).expanduser().resolve()
    if not is_precomputed_folder(root):
        raise FileNotFoundError(f"{root}: not a precomputed-embedding folder (needs img_emb/*.npy and "
                                "metadata/*.parquet)")
    if not (root / "metadata").is_dir():
        raise FileNotFoundError(f"{root}: img_emb/ but no metadata/ folder (precomputed embeddings need "
                                "metadata/*.parquet with an image_path column, one file per .npy shard)")
    embs = sorted((root / "img_emb").glob("*.npy"))
    metas = sorted((root / "metadata").glob("*.parquet"))
    if not embs:
        raise ValueError(f"{root}/img_emb: no .npy embedding shards")
    if len(embs) != len(metas):
        raise ValueError(f"{root}: {len(embs)} embedding shards but {len(metas)} metadata shards "
                         "(they must pair up in sorted order)")
    paths: list[str] = []
    stores: list[PrecomputedStore] = []
    dims = set()
    for e, m in zip(embs, metas):
        try:
            mm = np.load(e, mmap_mode="r")
        except Exception as exc:  # numpy's errors do not name the file
            raise ValueError(f"{e}: not a readable .npy array ({' '.join(str(exc).split())})") from exc
        if mm.ndim != 2:
            raise ValueError(f"{e}: expected a 2-D (n, dim) embedding array, got shape {mm.shape}")
        try:
            cols = pq.read_schema(m).names
        except Exception as exc:  # pyarrow's errors do not name the file
            raise ValueError(f"{m}: not a readable parquet file ({' '.join(str(exc).split())})") from exc
        if "image_path" not in cols:
            raise ValueError(f"{m}: metadata has no 'image_path' column (columns: {cols})")
        col = pq.read_table(m, columns=["image_path"]).column("image_path").to_pylist()
        if len(col) != len(mm):
            raise ValueError(f"{m}: {len(col)} metadata rows for {len(mm)} embeddings in {e.name}")
        remote = next((str(p) for p in col if "://" in str(p)), None)
        if remote is not None:
            raise ValueError(f"{m}: image_path holds URLs (e.g. {remote}); curate needs the images on disk "
                             "(download them, e.g. with img2dataset, and point image_path at the files)")
        paths.extend(str(p) for p in col)
        dims.add(int(mm.shape[1]))
        ident = json.dumps({"file": str(e), "size": e.stat().st_size, "mtime": e.stat().st_mtime_ns})
        stores.append(PrecomputedStore(e, hashlib.sha256(ident.encode()).hexdigest()[:16],
                                       {"n": int(len(mm)), "dim": int(mm.shape[1]), "precomputed": str(e)}))
    if len(dims) != 1:
        raise ValueError(f"{root}: embedding shards have different dimensions {sorted(dims)}")
    return _PathImages(root, paths), stores


def write_shards(samples: Any, out_dir: str | Path, *, per_shard: int = 1000, prefix: str = "") -> list[Path]:
    """Write ``(key, jpeg/png bytes, ext, caption or None)`` samples as WebDataset tar shards
    (``<prefix>00000.tar``, ...; img2dataset's layout: ``key.jpg`` + ``key.txt``). Each shard is written to
    a temporary name and renamed when complete, so an interrupted writer leaves no partial shard."""
    import os

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    tf: tarfile.TarFile | None = None
    tmp = final = None
    count = 0

    def add(name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        assert tf is not None
        tf.addfile(info, io.BytesIO(data))

    def close() -> None:
        nonlocal tf
        if tf is not None:
            tf.close()
            os.replace(tmp, final)
            written.append(Path(final))
            tf = None

    for key, data, ext, caption in samples:
        if tf is None or count == per_shard:
            close()
            final = out / f"{prefix}{len(written):05d}.tar"
            tmp = final.with_suffix(".tar.tmp")
            tf = tarfile.open(tmp, mode="w")
            count = 0
        add(f"{key}.{ext}", bytes(data))
        if caption is not None:
            add(f"{key}.txt", str(caption).encode())
        count += 1
    close()
    return written
