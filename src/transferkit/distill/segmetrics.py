"""Segmentation metrics from a confusion matrix accumulated over a whole test set.

``cm[t, p]`` counts pixels of true class ``t`` predicted as ``p``; pixels whose label is the ignore index
are left out. From it: IoU_c = cm[c,c] / (row_c + col_c - cm[c,c]), mean IoU over the classes that occur
(in the ground truth or in the predictions; a class absent from both has no IoU and is left out of the
mean and reported as None), pixel accuracy = trace / sum. Accumulating counts (not averaging per-image
scores) is the standard protocol (e.g. the SegNet/CamVid and ADE20K evaluations).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["confusion_matrix", "segmentation_scores"]


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int,
                     ignore_index: int | None = None) -> np.ndarray:
    """(num_classes, num_classes) int64 counts of (true, predicted) over the non-ignored pixels."""
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    target = np.asarray(target).reshape(-1).astype(np.int64)
    if pred.shape != target.shape:
        raise ValueError(f"prediction has {pred.size} pixels, target {target.size}")
    keep = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        keep &= target != ignore_index
    if pred[keep].size and (pred[keep].min() < 0 or pred[keep].max() >= num_classes):
        raise ValueError(f"predicted labels outside [0, {num_classes})")
    idx = target[keep] * num_classes + pred[keep]
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_scores(cm: np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """mean IoU, pixel accuracy, per-class IoU (None where a class is in neither truth nor prediction)."""
    cm = np.asarray(cm, dtype=np.float64)
    k = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    total = cm.sum()
    return {
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "per_class_iou": {n: (None if not np.isfinite(v) else float(v)) for n, v in zip(names, iou)},
        "pixels": int(total),
    }
