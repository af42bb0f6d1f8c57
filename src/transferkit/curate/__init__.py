"""Retrieval-augmented transfer sets (``transferkit curate``)."""

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

__all__ = [
    "MANIFEST_COLUMNS",
    "MANIFEST_VERSION",
    "ManifestDataset",
    "ManifestRow",
    "TransferManifest",
    "is_transfer_manifest",
    "item_ref",
    "read_manifest",
    "write_manifest",
]
