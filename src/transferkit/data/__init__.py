"""Datasets for feature extraction: one reader per format, one interface.

>>> ds = open_dataset("../shared/data/eurosat/eurosat.zip", split="train", per_class=20)  # doctest: +SKIP
>>> img, label = ds[0]; ds.classes; ds.fingerprint()                                    # doctest: +SKIP

Readers: image folders (:class:`ImageFolderDataset`), zips of the same layout (:class:`ZipImageDataset`),
CSV manifests (:class:`CsvManifestDataset`), ``.npz`` arrays (:class:`NpzDataset`), IDX files
(:class:`IdxDataset`, e.g. Fashion-MNIST) and pre-made tensors (:class:`TensorImageDataset`).
"""

from .base import (
    IMAGE_EXTENSIONS,
    CorruptImageError,
    CorruptImageWarning,
    ImageDataset,
    SubsetDataset,
    decode_image,
    split_layout,
)
from .csv_manifest import CsvManifestDataset
from .folder import ImageFolderDataset
from .idx import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, IdxDataset, read_idx, write_idx
from .npz import ArrayImageDataset, NpzDataset, TensorImageDataset
from .open import open_dataset, reader_for
from .sampling import stratified_split, stratified_subsample
from .zipfolder import ZipImageDataset

__all__ = [
    "ArrayImageDataset",
    "CorruptImageError",
    "CorruptImageWarning",
    "CsvManifestDataset",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "IMAGE_EXTENSIONS",
    "IdxDataset",
    "ImageDataset",
    "ImageFolderDataset",
    "NpzDataset",
    "SubsetDataset",
    "TensorImageDataset",
    "ZipImageDataset",
    "decode_image",
    "open_dataset",
    "read_idx",
    "reader_for",
    "split_layout",
    "stratified_split",
    "stratified_subsample",
    "write_idx",
]
