"""Deterministic stratified subsampling and seeded stratified splits.

Each class is shuffled by its own generator seeded with ``(seed, class)``, so the choice inside one class
does not depend on the other classes, and ``per_class=5`` picks a subset of what ``per_class=10`` picks.
Returned indices are sorted (dataset order is kept).
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["stratified_split", "stratified_subsample"]


def _class_perm(labels: np.ndarray, c: int, seed: int) -> np.ndarray:
    idx = np.flatnonzero(labels == c)
    return idx[np.random.default_rng([int(seed), int(c)]).permutation(len(idx))]


def stratified_subsample(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """At most ``per_class`` indices of every class (all of a smaller class, with a warning)."""
    if per_class < 1:
        raise ValueError("per_class must be >= 1")
    labels = np.asarray(labels, dtype=np.int64)
    out, short = [], []
    for c in np.unique(labels):
        perm = _class_perm(labels, c, seed)
        if len(perm) < per_class:
            short.append((int(c), len(perm)))
        out.append(perm[:per_class])
    if short:
        warnings.warn(f"per_class={per_class}: {len(short)} class(es) have fewer images and are used whole "
                      f"(class, count): {short[:10]}", stacklevel=2)
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def stratified_split(labels: np.ndarray, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices with ``round(n_c * test_fraction)`` test items per class (at least one in
    each part for classes with two or more items)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError("test_fraction must be in (0, 1)")
    labels = np.asarray(labels, dtype=np.int64)
    train, test = [], []
    for c in np.unique(labels):
        perm = _class_perm(labels, c, seed + 1_000_003)  # independent of the subsampling stream
        n = len(perm)
        k = 0 if n < 2 else min(max(int(round(n * test_fraction)), 1), n - 1)
        test.append(perm[:k])
        train.append(perm[k:])
    cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)  # noqa: E731
    return cat(train), cat(test)
