"""scikit-learn's k-means++ seeding, fed from a precomputed Gram matrix.

``KMeans(init='k-means++')`` spends most of its seeding time on the distances from a few
candidate points to every sample (``2 + log K`` candidates for each of K centres). Candidates are
samples, so with the Gram matrix of the (mean-centred) samples already at hand the distances are
row look-ups. The random draws, the candidate choice and the update are scikit-learn's
(``sklearn.cluster._kmeans._kmeans_plusplus``, unit sample weights), so the chosen centres are the
same; the dot products come from one Gram product instead of many small ones, which can change
their last bit (a different choice then needs two candidates' potentials to tie to ~1e-16).
"""

from __future__ import annotations

import numpy as np


def kmeans_plusplus_indices(X: np.ndarray, gram: np.ndarray, n_clusters: int,
                            random_state: np.random.RandomState) -> np.ndarray:
    """Indices of the k-means++ centres of ``X`` (already mean-centred); ``gram = X @ X.T``."""
    n_samples = X.shape[0]
    n_local_trials = 2 + int(np.log(n_clusters))
    x_squared_norms = np.einsum("ij,ij->i", X, X)  # sklearn's row_norms(X, squared=True)
    weights = np.ones(n_samples, dtype=X.dtype)
    center_id = random_state.choice(n_samples, p=weights / weights.sum())
    indices = np.full(n_clusters, -1, dtype=int)
    indices[0] = center_id
    closest_dist_sq = _squared_distances(gram, [center_id], x_squared_norms)
    current_pot = closest_dist_sq @ weights
    for c in range(1, n_clusters):
        rand_vals = random_state.uniform(size=n_local_trials) * current_pot
        candidate_ids = np.searchsorted(np.cumsum(weights * closest_dist_sq), rand_vals)
        np.clip(candidate_ids, None, closest_dist_sq.size - 1, out=candidate_ids)
        distance_to_candidates = _squared_distances(gram, candidate_ids, x_squared_norms)
        np.minimum(closest_dist_sq, distance_to_candidates, out=distance_to_candidates)
        candidates_pot = distance_to_candidates @ weights.reshape(-1, 1)
        best = int(np.argmin(candidates_pot))
        current_pot = candidates_pot[best]
        closest_dist_sq = distance_to_candidates[best]
        indices[c] = candidate_ids[best]
    return indices


def _squared_distances(gram: np.ndarray, rows, x_squared_norms: np.ndarray) -> np.ndarray:
    """sklearn's ``_euclidean_distances(X[rows], X, squared=True)`` from Gram rows."""
    rows = np.asarray(rows)
    d = -2.0 * gram[rows]
    d += x_squared_norms[rows][:, None]
    d += x_squared_norms[None, :]
    np.maximum(d, 0, out=d)
    return d
