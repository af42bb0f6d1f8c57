"""Retrieval-augmented transfer sets (``transferkit curate``).

>>> from transferkit.curate import CurateConfig, curate
>>> result = curate(CurateConfig(queries="../shared/data/eurosat/eurosat.zip", query_per_class=5,
...                              gallery=["../shared/data/cifar10/cifar10.zip"], budget=1000,
...                              model="../shared/weights/mobilenetv1_025.in1k"))  # doctest: +SKIP
>>> ds = ManifestDataset(result.manifest)   # what `transferkit distill --transfer` reads  # doctest: +SKIP

Modules: :mod:`.crops` (crop grids), :mod:`.embed` (memory-mapped, resumable embedding stores),
:mod:`.index` (exact / IVF / IVF-PQ search and recall@k), :mod:`.select` (query-balanced selection,
near-duplicate removal, the leakage guard), :mod:`.manifest` (the transfer-set CSV and its dataset),
:mod:`.pipeline` (one config, one run), :mod:`.shards` (WebDataset tar shards and precomputed-embedding
folders as galleries).
"""

from .crops import CropDataset, CropGrid
from .embed import EmbeddingStore, GalleryEmbeddings, embed_dataset
from .index import IndexConfig, build_index, recall_at_k
from .manifest import (
    MANIFEST_COLUMNS,
    MANIFEST_VERSION,
    ManifestDataset,
    ManifestRow,
    TransferManifest,
    is_transfer_manifest,
    item_ref,
    read_manifest,
    write_manifest,
)
from .pipeline import CurateConfig, CurationResult, GallerySource, curate
from .select import select_balanced, select_random
from .shards import TarShardDataset, expand_shards, open_precomputed, write_shards

__all__ = [
    "MANIFEST_COLUMNS",
    "MANIFEST_VERSION",
    "CropDataset",
    "CropGrid",
    "CurateConfig",
    "CurationResult",
    "EmbeddingStore",
    "GalleryEmbeddings",
    "GallerySource",
    "IndexConfig",
    "ManifestDataset",
    "ManifestRow",
    "TarShardDataset",
    "TransferManifest",
    "build_index",
    "curate",
    "embed_dataset",
    "expand_shards",
    "is_transfer_manifest",
    "item_ref",
    "open_precomputed",
    "read_manifest",
    "recall_at_k",
    "select_balanced",
    "select_random",
    "write_manifest",
    "write_shards",
]
