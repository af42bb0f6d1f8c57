"""Input checks shared by every estimator.

Every estimator receives float64, finite, 2-D features and labels remapped to 0..C-1, so method
code never has to defend itself against bad input, and users get a `ValueError` that names the
problem instead of a crash from deep inside numpy.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["CheckedInputs", "check_inputs", "reduce_dim_warning", "safe_n_components"]


@dataclass(frozen=True)
class CheckedInputs:
    """Validated inputs: features (N, D) float64, labels (N,) int64 in 0..C-1, optional probs."""

    X: np.ndarray
    y: np.ndarray
    P: np.ndarray | None  # float dtype of the input (float32 stays float32): upcast for arithmetic
    classes: np.ndarray  # original label values; classes[y] gives the user's labels back

    @property
    def n_samples(self) -> int:
        return self.X.shape[0]

    @property
    def n_features(self) -> int:
        return self.X.shape[1]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def class_counts(self) -> np.ndarray:
        return np.bincount(self.y, minlength=self.n_classes)


def _as_matrix(features: object, name: str) -> np.ndarray:
    try:
        X = np.asarray(features)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name} could not be converted to an array: {exc}") from exc
    if X.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be real numbers; got dtype {X.dtype}")
    if X.ndim != 2:
        hint = " (use X.reshape(-1, 1) for a single feature)" if X.ndim == 1 else ""
        raise ValueError(f"{name} must be a 2-D array (N samples, D dims); got shape {X.shape}{hint}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {X.shape}")
    return X


def _raise_non_finite(X: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(X)
    rows = np.unique(np.nonzero(bad)[0])
    kind = "NaN" if np.isnan(X).any() else "inf"
    raise ValueError(
        f"{name} contain non-finite values ({kind}) in {len(rows)} of {X.shape[0]} rows "
        f"(first: row {rows[0]}); drop or impute them before scoring"
    )


def _as_feature_matrix(features: object, name: str = "features") -> np.ndarray:
    X = _as_matrix(features, name).astype(np.float64, copy=False)
    if not np.isfinite(X.sum()) and not np.isfinite(X).all():  # one cheap pass in the common case
        _raise_non_finite(X, name)
    return X


def _remap_labels(labels: object, n: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    if y.ndim == 2 and 1 in y.shape:
        y = y.reshape(-1)
    if y.ndim != 1:
        raise ValueError(f"labels must be a 1-D array of N class labels; got shape {y.shape}")
    if y.shape[0] != n:
        raise ValueError(f"got {n} samples (rows of features/source_probs) but {y.shape[0]} labels")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)):
            raise ValueError("labels contain NaN or inf")
        if not np.all(y == np.round(y)):
            raise ValueError("labels are non-integer floats; pass class ids or names")
    try:
        classes, y_idx = np.unique(y, return_inverse=True)
    except TypeError as exc:
        raise ValueError(f"labels could not be sorted into classes: {exc}") from exc
    return y_idx.astype(np.int64).reshape(-1), classes


def _as_probs(source_probs: object, n: int) -> np.ndarray:
    """Validated probabilities, kept in their float dtype (argmax-only methods need no float64
    copy; methods doing arithmetic upcast)."""
    P = _as_matrix(source_probs, "source_probs")
    if P.dtype.kind != "f":
        P = P.astype(np.float64)
    if P.shape[0] != n:
        raise ValueError(f"features have {n} rows but source_probs have {P.shape[0]}")
    # also the finiteness check (NaN/inf propagate). Row-contiguous float32/64 rows are summed
    # pairwise in their own dtype (~1e-7 off, no float64 copy); anything else in float64.
    native = P.flags.c_contiguous and P.dtype.itemsize >= 4
    with np.errstate(over="ignore", invalid="ignore"):
        sums = P.sum(axis=1) if native else P.sum(axis=1, dtype=np.float64)
        if not np.isfinite(sums).all():
            if not np.isfinite(P).all():
                _raise_non_finite(P, "source_probs")
            sums = P.sum(axis=1, dtype=np.float64)  # finite but overflowed in float32
    if P.min() < 0:
        raise ValueError(
            "source_probs must be probabilities (non-negative, rows summing to 1); "
            "got negative values - pass softmax(logits), not logits"
        )
    if np.abs(sums - 1.0).max() > 1e-3:
        raise ValueError(
            "source_probs rows must sum to 1 (probabilities of the source classifier); "
            f"row sums range over [{sums.min():.4g}, {sums.max():.4g}]"
        )
    return P


def check_inputs(
    features: object,
    labels: object,
    source_probs: object | None = None,
    *,
    needs_features: bool = True,
    needs_source_probs: bool = False,
    min_per_class: int = 1,
    method: str = "estimator",
) -> CheckedInputs:
    """Validate and normalise (features, labels, source_probs) for an estimator.

    Labels of any sortable type (ints with gaps, strings) are remapped to 0..C-1.
    Raises `ValueError` naming the problem for anything an estimator cannot score.
    """
    if needs_source_probs and source_probs is None:
        raise ValueError(
            f"{method} needs source-classifier probabilities: pass source_probs (N x C_s), "
            "or key 'P' in the .npz"
        )
    if features is None or not needs_features:
        if needs_features:
            raise ValueError(f"{method} needs features")
        # methods that read only the source probabilities ignore features (none need checking)
        P0 = np.asarray(source_probs)
        if P0.ndim != 2:
            raise ValueError(f"source_probs must be a 2-D array (N, C_s); got shape {P0.shape}")
        X = np.zeros((P0.shape[0], 0))
    else:
        X = _as_feature_matrix(features)
    y, classes = _remap_labels(labels, X.shape[0])
    if len(classes) < 2:
        raise ValueError(
            f"{method} needs at least 2 classes; labels contain {len(classes)} "
            f"({classes[:1].tolist()})"
        )
    P = _as_probs(source_probs, X.shape[0]) if source_probs is not None else None
    counts = np.bincount(y, minlength=len(classes))
    if counts.min() < min_per_class:
        small = [classes[i].item() if hasattr(classes[i], "item") else classes[i]
                 for i in np.nonzero(counts < min_per_class)[0][:5]]
        raise ValueError(
            f"{method} needs at least {min_per_class} samples per class; "
            f"class(es) {small} have fewer"
        )
    return CheckedInputs(X=X, y=y, P=P, classes=classes)


def safe_n_components(requested: int, n_samples: int, n_features: int, method: str) -> int:
    """Clip a PCA size to what the data allow, warning when it has to."""
    limit = min(n_samples, n_features)
    if requested > limit:
        warnings.warn(reduce_dim_warning(method, requested, limit), UserWarning, stacklevel=3)
        return limit
    return requested


def reduce_dim_warning(method: str, requested: int, used: int) -> str:
    return (
        f"{method}: asked for {requested} PCA dimensions but the data allow only {used} "
        f"(min of N and D); using {used}"
    )
