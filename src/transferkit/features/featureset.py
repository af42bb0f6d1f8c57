"""``FeatureSet``: the frozen features of one model on one dataset split, and its ``.npz`` format.

The ``.npz`` holds ``X`` (N,D float32), ``y`` (N int64) and, when the model has a classifier, ``P``
(N,C_s float32 source-class probabilities): exactly what ``transferkit rank`` reads. It also holds
``class_names``, ``indices`` (row -> dataset position; skipped corrupt images leave gaps) and
``metadata`` (one JSON string), all readable with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..reporting import atomic_write

__all__ = ["FeatureSet", "atomic_savez"]


def atomic_savez(path: str | Path, **arrays: np.ndarray) -> Path:
    """``np.savez`` atomically (temp file + fsync + rename): readers never see a partial file, and
    an interrupted write leaves no file at ``path``."""
    return atomic_write(path, lambda fh: np.savez(fh, **arrays))


@dataclass
class FeatureSet:
    """Features ``(N, D)``, labels ``(N,)``, optional source probabilities ``(N, C_s)``, class names and
    metadata (model id and weights hash, preprocessing, dataset fingerprint, library versions, ...)."""

    features: np.ndarray
    labels: np.ndarray
    probs: np.ndarray | None
    class_names: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)
    indices: np.ndarray | None = None  # dataset position of each row

    def __post_init__(self) -> None:
        self.features = np.ascontiguousarray(self.features, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.features.ndim != 2 or self.labels.shape != (len(self.features),):
            raise ValueError(f"features must be (N,D) and labels (N,), got {self.features.shape} / {self.labels.shape}")
        if self.probs is not None:
            self.probs = np.ascontiguousarray(self.probs, dtype=np.float32)
            if self.probs.ndim != 2 or len(self.probs) != len(self.features):
                raise ValueError(f"probs must be (N, C_s), got {self.probs.shape}")
        if self.indices is not None:
            self.indices = np.asarray(self.indices, dtype=np.int64)
        self.class_names = [str(c) for c in self.class_names]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def __repr__(self) -> str:
        p = f", P={self.probs.shape}" if self.probs is not None else ""
        name = self.metadata.get("model", {}).get("name", "?")
        return f"FeatureSet({name!r}, X={self.features.shape}{p}, classes={len(self.class_names)})"

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {"X": self.features, "y": self.labels}
        if self.probs is not None:
            out["P"] = self.probs
        out["class_names"] = np.array(self.class_names, dtype=str)
        if self.indices is not None:
            out["indices"] = self.indices
        out["metadata"] = np.array(json.dumps(self.metadata, default=str))
        return out

    def save_npz(self, path: str | Path) -> Path:
        """Write the ``.npz`` (keys X, y, optional P, class_names, indices, metadata) atomically."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        return atomic_savez(path, **self.to_arrays())

    @classmethod
    def load_npz(cls, path: str | Path) -> FeatureSet:
        """Read a file written by :meth:`save_npz` (or any npz with X, y[, P])."""
        with np.load(path, allow_pickle=False) as d:
            meta = json.loads(str(d["metadata"])) if "metadata" in d.files else {}
            y = d["y"]
            names = [str(c) for c in d["class_names"]] if "class_names" in d.files else \
                [str(i) for i in range(int(y.max()) + 1 if len(y) else 0)]
            return cls(d["X"], y, d["P"] if "P" in d.files else None, names, meta,
                       d["indices"] if "indices" in d.files else None)
