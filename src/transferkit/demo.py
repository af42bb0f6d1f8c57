"""An embedded demo zoo that needs no network and no downloads.

Five fixed "models" view scikit-learn's bundled handwritten-digits images (raw pixels, a random
projection, random ReLU features, noisy pixels, blurred ReLU features). Half of the images are
the target data that the estimators see; the ground truth of each model is the test accuracy of a
logistic-regression probe trained on that half and tested on the other half, so the demo's rank
metrics compare the estimators with a real (if small) transfer measurement. Source-classifier
probabilities come from a 20-way nearest-centroid classifier over k-means "source classes".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .ranking import ZooFeatures
from .reporting import write_csv

__all__ = ["make_demo_zoo", "write_demo_zoo"]


def _views(images: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    from scipy.ndimage import gaussian_filter

    flat = images.reshape(len(images), -1) / 16.0
    blurred = gaussian_filter(images / 16.0, sigma=(0, 1.2, 1.2)).reshape(len(images), -1)
    w_proj = rng.normal(size=(64, 24)) / 8.0
    w_relu = rng.normal(size=(64, 256)) / 8.0
    w_blur = rng.normal(size=(64, 128)) / 8.0
    return {
        "raw_pixels": flat,
        "random_projection24": flat @ w_proj,
        "random_relu256": np.maximum(flat @ w_relu, 0.0),
        "noisy_pixels": flat + rng.normal(scale=0.9, size=flat.shape),
        "blurred_relu128": np.maximum(blurred @ w_blur, 0.0),
    }


def make_demo_zoo(seed: int = 0) -> tuple[list[ZooFeatures], dict[str, float]]:
    """Build the demo zoo: (feature sets on the target half, probe accuracies on the other half)."""
    from sklearn.cluster import KMeans
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    digits = load_digits()
    rng = np.random.default_rng(seed)
    views = _views(digits.images.astype(np.float64), rng)
    idx_target, idx_test = train_test_split(
        np.arange(len(digits.target)), test_size=0.5, stratify=digits.target, random_state=seed
    )
    y = digits.target.astype(np.int64)
    zoo, accuracy = [], {}
    for name, feats in views.items():
        scaler = StandardScaler().fit(feats[idx_target])
        probe = LogisticRegression(max_iter=2000, C=0.1).fit(scaler.transform(feats[idx_target]), y[idx_target])
        accuracy[name] = float(probe.score(scaler.transform(feats[idx_test]), y[idx_test]))
        km = KMeans(n_clusters=20, n_init=3, random_state=seed).fit(feats)
        d2 = ((feats[idx_target, None, :] - km.cluster_centers_[None]) ** 2).sum(-1)
        logits = -d2 / d2.mean()
        logits -= logits.max(axis=1, keepdims=True)
        P = np.exp(logits)
        P /= P.sum(axis=1, keepdims=True)
        zoo.append(ZooFeatures(name, feats[idx_target].astype(np.float32), y[idx_target], P.astype(np.float32)))
    return zoo, accuracy


def write_demo_zoo(out_dir: str | Path, seed: int = 0) -> tuple[list[Path], Path]:
    """Write the demo zoo as `.npz` feature files plus a ground-truth CSV; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    zoo, accuracy = make_demo_zoo(seed)
    paths = []
    for z in zoo:
        p = out_dir / f"{z.name}.npz"
        np.savez(p, X=z.X, y=z.y, P=z.P)
        paths.append(p)
    gt = write_csv(out_dir / "ground_truth.csv",
                   [{"model": m, "dataset": "digits", "accuracy": a} for m, a in accuracy.items()])
    return paths, gt
