"""Query-balanced selection of gallery crops (Fig. 2 right of Vemulapalli et al.).

Every query gets the same quota (``budget // n_queries``; the remainder goes one item each to a seeded
random subset of queries). Quotas are filled round by round: in each round every query that still needs
items takes its best remaining candidate. A candidate is skipped (and the query's next one considered)
when it is

* already taken by another query (no duplicates in the transfer set),
* excluded up front (e.g. the query images themselves when the gallery contains them),
* a near-duplicate of the target's TEST images (cosine >= ``leak_threshold``; the leakage guard),
* a near-duplicate of an item already selected (cosine >= ``dup_threshold``),
* from an image that already gave ``max_per_image`` crops.

Balancing quotas (rather than taking the globally most similar items) keeps the retrieved set as
diverse as the queries: a query with many close matches cannot crowd out the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CandidateList", "Selection", "merge_candidates", "quotas", "select_balanced", "select_random"]


@dataclass
class CandidateList:
    """One query's candidates: gallery ids and similarities, best first (no repeated ids)."""

    ids: np.ndarray
    sims: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def merge_candidates(sims: np.ndarray, ids: np.ndarray, owner: np.ndarray, n_queries: int) -> list[CandidateList]:
    """Per-query candidate lists from per-crop search results.

    ``sims``/``ids``: ``(n_query_crops, k)`` search results; ``owner[j]``: the query that crop ``j`` belongs
    to. A gallery item found by several crops of one query keeps its best similarity.
    """
    owner = np.asarray(owner, dtype=np.int64)
    out = []
    for q in range(n_queries):
        rows = np.nonzero(owner == q)[0]
        s = sims[rows].ravel()
        i = ids[rows].ravel()
        ok = (i >= 0) & np.isfinite(s)
        s, i = s[ok], i[ok]
        order = np.lexsort((i, -s))  # best first, ties by id (deterministic)
        s, i = s[order], i[order]
        _, first = np.unique(i, return_index=True)
        keep = np.sort(first)
        out.append(CandidateList(i[keep].astype(np.int64), s[keep].astype(np.float32)))
    return out


def quotas(budget: int, n_queries: int, seed: int = 0) -> np.ndarray:
    """Equal quotas summing to ``budget``; the ``budget % n_queries`` extra items go to a seeded random subset."""
    if n_queries < 1:
        raise ValueError("need at least one query")
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    q = np.full(n_queries, budget // n_queries, dtype=np.int64)
    extra = budget % n_queries
    if extra:
        q[np.random.default_rng(seed).permutation(n_queries)[:extra]] += 1
    return q


@dataclass
class Selection:
    """The selected items and what happened on the way."""

    gallery_ids: np.ndarray  # (n,) selected gallery rows
    query: np.ndarray  # (n,) query index that took each item
    similarity: np.ndarray  # (n,) similarity to that query
    rank: np.ndarray  # (n,) position in that query's candidate list
    quota: np.ndarray  # (n_queries,)
    filled: np.ndarray  # (n_queries,) items each query got
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> candidates skipped
    leak_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # candidates blocked as test leakage

    @property
    def short(self) -> np.ndarray:
        """Queries whose candidate lists ran out before their quota was met."""
        return np.nonzero(self.filled < self.quota)[0]

    def summary(self) -> dict[str, Any]:
        return {"selected": int(len(self.gallery_ids)), "budget": int(self.quota.sum()),
                "quota_per_query": sorted({int(x) for x in self.quota}),
                "queries_short": int(len(self.short)), "skipped": dict(self.skipped),
                "leakage_excluded": int(len(self.leak_ids)),
                "mean_similarity": float(self.similarity.mean()) if len(self.similarity) else float("nan")}


def select_balanced(
    candidates: list[CandidateList],
    budget: int,
    *,
    vectors: Callable[[np.ndarray], np.ndarray] | None = None,
    dup_threshold: float | None = None,
    test_vectors: np.ndarray | None = None,
    leak_threshold: float | None = None,
    exclude: np.ndarray | None = None,
    group: np.ndarray | None = None,
    max_per_image: int | None = None,
    seed: int = 0,
) -> Selection:
    """Fill equal per-query quotas round by round (see the module docstring).

    ``vectors(ids)``: unit embeddings of gallery rows (needed for ``dup_threshold`` and the leakage guard).
    ``test_vectors``: unit embeddings of the target's test images (and crops). ``exclude``: a boolean mask
    over gallery rows that may never be selected. ``group[id]``: the source image of each gallery row
    (for ``max_per_image``).
    """
    nq = len(candidates)
    quota = quotas(budget, nq, seed)
    union = np.unique(np.concatenate([c.ids for c in candidates])) if nq else np.zeros(0, np.int64)
    need_vec = (dup_threshold is not None and dup_threshold < 1.0) or (
        test_vectors is not None and len(test_vectors) and leak_threshold is not None)
    if need_vec and vectors is None:
        raise ValueError("dup_threshold / the leakage guard need the gallery vectors (vectors=)")
    vec_u = vectors(union) if need_vec and len(union) else None
    # leakage guard: max cosine of every candidate to the test set (one blocked matrix product)
    leak = np.zeros(len(union), bool)
    if vec_u is not None and test_vectors is not None and len(test_vectors) and leak_threshold is not None:
        t = np.ascontiguousarray(test_vectors, dtype=np.float32)
        best = np.full(len(union), -np.inf, np.float32)
        for a in range(0, len(union), 4096):
            best[a:a + 4096] = (vec_u[a:a + 4096] @ t.T).max(axis=1)
        leak = best >= leak_threshold
    pos_of = {int(g): p for p, g in enumerate(union.tolist())}
    excl = np.zeros(len(union), bool) if exclude is None else np.asarray(exclude, bool)[union]
    dim = vec_u.shape[1] if vec_u is not None else 0
    use_dup = dup_threshold is not None and dup_threshold < 1.0 and vec_u is not None
    sel_vec = np.zeros((int(quota.sum()), dim), np.float32) if use_dup else None
    taken = np.zeros(len(union), bool)
    per_image: dict[int, int] = {}
    ptr = np.zeros(nq, np.int64)
    filled = np.zeros(nq, np.int64)
    skipped = {"taken": 0, "excluded": 0, "leakage": 0, "near_duplicate": 0, "per_image": 0}
    out_g, out_q, out_s, out_r = [], [], [], []
    rng = np.random.default_rng(seed)
    active = [q for q in range(nq) if quota[q] > 0]
    while active:
        still = []
        for q in rng.permutation(active).tolist():  # a fresh random order each round: no query always wins ties
            cand = candidates[q]
            got = False
            while ptr[q] < len(cand):
                r = int(ptr[q])
                ptr[q] += 1
                g = int(cand.ids[r])
                p = pos_of[g]
                if taken[p]:
                    skipped["taken"] += 1
                    continue
                if excl[p]:
                    skipped["excluded"] += 1
                    continue
                if leak[p]:
                    skipped["leakage"] += 1
                    continue
                if group is not None and max_per_image is not None and per_image.get(int(group[g]), 0) >= max_per_image:
                    skipped["per_image"] += 1
                    continue
                if use_dup:
                    n_sel = len(out_g)
                    if n_sel and float((sel_vec[:n_sel] @ vec_u[p]).max()) >= dup_threshold:
                        skipped["near_duplicate"] += 1
                        continue
                    sel_vec[n_sel] = vec_u[p]
                taken[p] = True
                if group is not None:
                    per_image[int(group[g])] = per_image.get(int(group[g]), 0) + 1
                out_g.append(g)
                out_q.append(q)
                out_s.append(float(cand.sims[r]))
                out_r.append(r)
                filled[q] += 1
                got = True
                break
            if got and filled[q] < quota[q]:
                still.append(q)
        active = sorted(still)
    return Selection(np.asarray(out_g, np.int64), np.asarray(out_q, np.int64), np.asarray(out_s, np.float32),
                     np.asarray(out_r, np.int64), quota, filled, skipped,
                     union[leak & ~excl].astype(np.int64))


def select_random(
    valid: np.ndarray,
    budget: int,
    *,
    vectors: Callable[[np.ndarray], np.ndarray] | None = None,
    test_vectors: np.ndarray | None = None,
    leak_threshold: float | None = None,
    exclude: np.ndarray | None = None,
    seed: int = 0,
) -> Selection:
    """A uniformly random transfer set of ``budget`` gallery rows (the baseline curation is compared with).

    The same rules as :func:`select_balanced` apply where they make sense: unreadable and excluded rows
    are never drawn, and the leakage guard rejects rows too close to the test images.
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    ok = np.asarray(valid, bool).copy()
    n_excl = 0
    if exclude is not None:
        n_excl = int((ok & np.asarray(exclude, bool)).sum())
        ok &= ~np.asarray(exclude, bool)
    order = np.random.default_rng(seed).permutation(np.nonzero(ok)[0])
    guard = test_vectors is not None and len(test_vectors) and leak_threshold is not None
    if guard and vectors is None:
        raise ValueError("the leakage guard needs the gallery vectors (vectors=)")
    t = np.ascontiguousarray(test_vectors, dtype=np.float32) if guard else None
    chosen: list[np.ndarray] = []
    leaks: list[np.ndarray] = []
    n, pos = 0, 0
    while n < budget and pos < len(order):
        batch = order[pos:pos + max(256, 2 * (budget - n))]
        pos += len(batch)
        if guard:
            bad = (vectors(batch) @ t.T).max(axis=1) >= leak_threshold
            leaks.append(batch[bad])
            batch = batch[~bad]
        take = batch[:budget - n]
        chosen.append(take)
        n += len(take)
    ids = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
    leak_ids = np.unique(np.concatenate(leaks)) if leaks else np.zeros(0, np.int64)
    return Selection(ids.astype(np.int64), np.full(len(ids), -1, np.int64), np.full(len(ids), np.nan, np.float32),
                     np.full(len(ids), -1, np.int64), np.array([budget]), np.array([len(ids)]),
                     {"excluded": n_excl, "leakage": int(len(leak_ids))}, leak_ids.astype(np.int64))
