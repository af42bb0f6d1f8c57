"""``open_dataset``: pick the reader from the spec, then apply a seeded split and per-class subsampling."""

from __future__ import annotations

from pathlib import Path

from .base import ImageDataset
from .csv_manifest import CsvManifestDataset
from .folder import ImageFolderDataset
from .idx import _IMAGES_RE, FASHION_MNIST_DIR, IdxDataset, find_idx_pairs
from .npz import NpzDataset
from .sampling import stratified_split, stratified_subsample
from .zipfolder import ZipImageDataset

__all__ = ["open_dataset", "reader_for"]

ALIASES = {"fashion-mnist": FASHION_MNIST_DIR, "fashion_mnist": FASHION_MNIST_DIR}


def reader_for(spec: str | Path) -> type[ImageDataset]:
    """The reader class for a path: folder (or IDX folder), .zip, .csv/.tsv, .npz, IDX file."""
    p = Path(str(ALIASES.get(str(spec).lower(), spec))).expanduser()
    if not p.exists():
        hint = " (install it with `apt-get install dataset-fashion-mnist`)" if p == FASHION_MNIST_DIR else ""
        raise FileNotFoundError(f"dataset not found: {p}{hint}")
    if p.is_dir():
        return IdxDataset if find_idx_pairs(p) else ImageFolderDataset
    name = p.name.lower()
    if name.endswith(".zip"):
        return ZipImageDataset
    if name.endswith((".csv", ".txt")):
        return CsvManifestDataset
    if name.endswith(".npz"):
        return NpzDataset
    if _IMAGES_RE.match(p.name):
        return IdxDataset
    raise ValueError(f"{p}: unknown dataset format (use a folder, .zip, .csv, .npz or IDX files)")


def open_dataset(spec: str | Path | ImageDataset, split: str | None = None, *, per_class: int | None = None,
                 seed: int = 0, test_fraction: float = 0.2, fingerprint_mode: str = "content",
                 split_seed: int | None = None) -> ImageDataset:
    """Open a dataset from a path (or pass an :class:`ImageDataset` through).

    ``split``: a native split (``train``/``test`` folders, zip folders, a CSV ``split`` column, npz key
    suffixes, IDX ``train``/``t10k`` files), ``'all'``, or ``None`` (``train`` if present, else everything).
    Asking for ``train``/``test`` on a source without native splits makes a seeded stratified split
    (``test_fraction`` of each class goes to ``test``), seeded by ``split_seed`` (default: ``seed``);
    pass a fixed ``split_seed`` when ``seed`` varies between runs that must share one test set.
    ``per_class`` then keeps a seeded stratified subsample of at most that many items per class.
    """
    if isinstance(spec, ImageDataset):
        ds = spec
    else:
        cls = reader_for(spec)
        path = ALIASES.get(str(spec).lower(), spec)
        kwargs = {"fingerprint_mode": fingerprint_mode} if cls in (ImageFolderDataset, CsvManifestDataset) else {}
        ds = cls(path, split=split, **kwargs)
    if split not in (None, "all") and split not in ds.native_splits and ds.split != split:
        if split not in ("train", "test"):
            hint = " (generated splits are train/test only; a generated 'val' would equal 'test')" \
                if split == "val" else ""
            raise KeyError(f"{ds.source}: no split {split!r}; native splits: "
                           f"{list(ds.native_splits) or 'none'}{hint}")
        if ds.split not in (None, "all"):
            raise KeyError(f"{ds.source}: dataset is already the {ds.split!r} split; cannot take {split!r}")
        sseed = seed if split_seed is None else split_seed
        train, test = stratified_split(ds.targets, test_fraction, sseed)
        ds = ds.subset(train if split == "train" else test,
                       note=f"seeded split {split} (test_fraction={test_fraction}, seed={sseed})")
        ds.split = split
    if per_class is not None:
        ds = ds.subset(stratified_subsample(ds.targets, per_class, seed), note=f"per_class={per_class}, seed={seed}")
    return ds
