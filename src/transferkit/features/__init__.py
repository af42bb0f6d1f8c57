"""Frozen-feature extraction with a content-addressed, resumable cache.

>>> from transferkit.features import extract_zoo, extract_features
>>> sets = extract_zoo(["resnet50.a1_in1k", "local-dir:../shared/weights/mobilenetv2_100.in1k"],
...                    "../shared/data/eurosat/eurosat.zip", split="train", per_class=50)  # doctest: +SKIP
>>> sets["resnet50.a1_in1k"].save_npz("resnet50.npz")   # X, y, P: what `transferkit rank` reads  # doctest: +SKIP
"""

from .cache import CacheEntry, FeatureCache, cache_key
from .distributed import DistContext, dist_context
from .extract import (
    DEFAULT_CHUNK_SECONDS,
    DEFAULT_CHUNK_SIZE,
    ExtractionInterrupted,
    default_num_workers,
    extract_features,
    extract_zoo,
    resolve_precision,
    select_device,
)
from .featureset import FeatureSet, atomic_savez

__all__ = [
    "DEFAULT_CHUNK_SECONDS",
    "DEFAULT_CHUNK_SIZE",
    "CacheEntry",
    "DistContext",
    "ExtractionInterrupted",
    "FeatureCache",
    "FeatureSet",
    "atomic_savez",
    "cache_key",
    "default_num_workers",
    "dist_context",
    "extract_features",
    "extract_zoo",
    "resolve_precision",
    "select_device",
]
