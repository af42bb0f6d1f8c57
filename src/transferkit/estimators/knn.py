"""Leave-one-out 1-nearest-neighbour accuracy of the features (the kNN baseline of dbolya/parc)."""

from __future__ import annotations

import numpy as np

from ._base import TransferabilityEstimator, register_estimator
from ._validation import CheckedInputs

__all__ = ["KNN1", "nearest_neighbours"]

# Work on blocks of rows whose distance matrix holds at most this many float64 entries (~32 MB).
_BLOCK_ENTRIES = 1 << 22
# Gram-matrix distances are exact up to round-off; candidates within this relative margin of the
# row minimum are re-checked with directly computed distances.
_TIE_RTOL = 1e-9


def nearest_neighbours(X: np.ndarray) -> np.ndarray:
    """Index of each row's nearest other row in squared Euclidean distance.

    Exact ties go to the lowest index. Distances are screened with a blocked Gram-matrix product
    (no N x N matrix in memory) and near-ties are resolved with exactly computed distances, so the
    result does not depend on BLAS round-off.
    """
    n = X.shape[0]
    Xc = X - X.mean(axis=0)  # translation-invariant; reduces cancellation in |a|^2 + |b|^2 - 2ab
    sq = np.einsum("ij,ij->i", Xc, Xc)
    block = max(1, min(n, _BLOCK_ENTRIES // n))
    out = np.empty(n, dtype=np.int64)
    for start in range(0, n, block):
        stop = min(n, start + block)
        rows = np.arange(stop - start)
        d = Xc[start:stop] @ Xc.T
        d *= -2.0
        d += sq[start:stop, None]
        d += sq[None, :]
        d[rows, rows + start] = np.inf
        best = d.argmin(axis=1)
        margin = _TIE_RTOL * (sq[start:stop] + sq.max()) + 1e-300
        near = d <= (d[rows, best] + margin)[:, None]
        ambiguous = np.flatnonzero(near.sum(axis=1) > 1)
        for r in ambiguous:
            cand = np.flatnonzero(near[r])
            diff = Xc[cand] - Xc[start + r]
            exact = np.einsum("ij,ij->i", diff, diff)
            best[r] = cand[np.argmin(exact)]  # argmin: first = lowest index among exact ties
        out[start:stop] = best
    return out


@register_estimator
class KNN1(TransferabilityEstimator):
    """100 x leave-one-out accuracy of the 1-nearest-neighbour classifier (squared L2).

    Upstream sorts each row of the full distance matrix and skips the first column, assuming it is
    the sample itself; with exact duplicates its result then depends on the sort's tie order. Here
    the sample itself is always excluded and ties go to the lowest index (identical to upstream on
    every input without exact distance ties).
    """

    name = "knn1"
    summary = "Leave-one-out 1-nearest-neighbour accuracy (x100) of the target features."
    reference = (
        "dbolya/parc methods.py kNN(k=1, metric='l2') (hold-one-out); Bolya et al., 'Scalable "
        "Diverse Model Selection for Accessible Transfer Learning', NeurIPS 2021"
    )

    def _score(self, data: CheckedInputs, random_state: int) -> dict[str, float]:
        nn = nearest_neighbours(data.X)
        return {"score": 100.0 * float(np.mean(data.y[nn] == data.y))}
