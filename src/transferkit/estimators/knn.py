"""Leave-one-out 1-nearest-neighbour accuracy of the features (the kNN baseline of dbolya/parc)."""

from __future__ import annotations

import numpy as np

from ._base import TransferabilityEstimator, register_estimator
from ._validation import CheckedInputs

__all__ = ["KNN1", "nearest_neighbours"]

# Screen blocks of rows whose float32 distance matrix holds at most this many entries (~16 MB).
_BLOCK_ENTRIES = 1 << 22
# Unit round-off of float32, the precision of the screening pass.
_U32 = float(np.finfo(np.float32).eps) / 2


def nearest_neighbours(X: np.ndarray) -> np.ndarray:
    """Index of each row's nearest other row in squared Euclidean distance; ties -> lowest index.

    A float32 Gram-matrix pass over blocks of rows (no N x N matrix in memory, half the cost of
    float64) keeps, for every row, all points that could be the nearest one given a rigorous bound
    on the float32 round-off; those few candidates are then compared with exactly computed float64
    distances. The result is therefore exact and independent of BLAS summation order.
    """
    n, d = X.shape
    Xc = X - X.mean(axis=0)  # translation-invariant; reduces cancellation in |a|^2 + |b|^2 - 2ab
    top = np.abs(Xc).max()
    if top > 0:  # exact power-of-two rescaling: keeps float32 away from overflow and underflow
        Xc *= 2.0 ** -np.floor(np.log2(top))
    sq = np.einsum("ij,ij->i", Xc, Xc)
    X32 = Xc.astype(np.float32)
    sq32 = sq.astype(np.float32)
    # |d32_ij - d_ij| <= c (|a_i|^2 + |a_j|^2): conversion, dot product (gamma_D) and the two sums
    c = 1.01 * (d + 8) * _U32
    csq = (c * sq).astype(np.float32)
    block = max(1, min(n, _BLOCK_ENTRIES // n))
    out = np.empty(n, dtype=np.int64)
    for start in range(0, n, block):
        stop = min(n, start + block)
        rows = np.arange(stop - start)
        dist = X32[start:stop] @ X32.T
        dist *= -2.0
        dist += sq32[start:stop, None]
        dist += sq32[None, :]
        dist[rows, rows + start] = np.inf
        # upper bound of the true minimum, then every j whose lower bound does not exceed it
        upper = (dist + csq[None, :]).min(axis=1).astype(np.float64) + 2.0 * c * sq[start:stop]
        dist -= csq[None, :]
        cand_r, cand_j = np.nonzero(dist <= upper.astype(np.float32)[:, None] * (1 + 4 * _U32))
        out[start:stop] = _closest_candidate(Xc, start + cand_r, cand_j, stop - start)
    return out


def _closest_candidate(Xc: np.ndarray, qi: np.ndarray, cj: np.ndarray, n_rows: int) -> np.ndarray:
    """For candidate pairs (qi, cj) sorted by qi then cj: per query the exactly nearest cj."""
    exact = np.empty(qi.shape[0])
    step = max(1, (1 << 20) // Xc.shape[1])
    for s in range(0, qi.shape[0], step):
        diff = Xc[cj[s : s + step]] - Xc[qi[s : s + step]]
        exact[s : s + step] = np.einsum("ij,ij->i", diff, diff)
    first = np.flatnonzero(np.r_[True, qi[1:] != qi[:-1]])  # every query has >= 1 candidate
    best = np.minimum.reduceat(exact, first)
    is_best = exact == np.repeat(best, np.diff(np.r_[first, qi.shape[0]]))
    idx = np.flatnonzero(is_best)
    _, firsts = np.unique(qi[idx], return_index=True)  # lowest cj among exact ties
    assert firsts.shape[0] == n_rows
    return cj[idx[firsts]]


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
        "dbolya/parc methods.py kNN (k=1, L2, hold-one-out); Bolya et al., 'Scalable "
        "Diverse Model Selection for Accessible Transfer Learning', NeurIPS 2021"
    )

    def _score(self, data: CheckedInputs, random_state: int) -> dict[str, float]:
        nn = nearest_neighbours(data.X)
        return {"score": 100.0 * float(np.mean(data.y[nn] == data.y))}
