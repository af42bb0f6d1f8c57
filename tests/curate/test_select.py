"""Query-balanced selection: quotas, no duplicates, near-duplicates, the leakage guard, exclusions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transferkit.curate.select import CandidateList, merge_candidates, quotas, select_balanced, select_random


def _lists(*ids_lists: list[int]) -> list[CandidateList]:
    return [CandidateList(np.asarray(ids, np.int64), np.linspace(1.0, 0.5, len(ids)).astype(np.float32))
            for ids in ids_lists]


def test_quotas() -> None:
    assert quotas(10, 5).tolist() == [2] * 5
    q = quotas(11, 4, seed=3)
    assert q.sum() == 11 and sorted(q.tolist()) == [2, 3, 3, 3]
    with pytest.raises(ValueError):
        quotas(0, 3)


def test_balanced_fills_equal_quotas_without_duplicates() -> None:
    # both queries love items 1 and 2; the one that loses a contested item takes its next candidate
    sel = select_balanced(_lists([1, 2, 3, 4], [1, 2, 5, 6]), budget=4)
    assert sel.filled.tolist() == [2, 2]
    assert len(set(sel.gallery_ids.tolist())) == 4
    assert {1, 2} <= set(sel.gallery_ids.tolist())
    assert sel.skipped["taken"] >= 1
    for g, q, r in zip(sel.gallery_ids, sel.query, sel.rank):
        assert [[1, 2, 3, 4], [1, 2, 5, 6]][q][r] == g  # rank = position in that query's list


def test_balanced_beats_greedy_on_diversity() -> None:
    # query 0 has many strong matches; query 1 few weak ones: balancing still serves query 1
    sel = select_balanced(_lists(list(range(10)), [20, 21, 22]), budget=6)
    assert sel.filled.tolist() == [3, 3]
    assert {20, 21, 22} <= set(sel.gallery_ids.tolist())


def test_short_queries_reported() -> None:
    sel = select_balanced(_lists([1, 2, 3, 4, 5], [1]), budget=4)
    assert sel.short.tolist() == [1] and sel.filled[0] == 2 and sel.summary()["queries_short"] == 1
    sel = select_balanced(_lists([1, 2, 3, 4, 5], [1, 2]), budget=6)
    assert len(sel.short) >= 1 and len(set(sel.gallery_ids.tolist())) == len(sel.gallery_ids)


def test_near_duplicates_leakage_exclusion_per_image() -> None:
    emb = np.eye(8, dtype=np.float32)
    emb[3] = emb[2]  # item 3 duplicates item 2
    emb[5] = emb[4] * 0.6 + emb[7] * 0.8  # item 5 is close to the "test image" 7 (cos 0.8)
    vec = lambda ids: emb[ids]  # noqa: E731
    cands = _lists([2, 3, 4, 5, 6, 1, 0])
    sel = select_balanced(cands, 3, vectors=vec, dup_threshold=0.99)
    assert 3 not in sel.gallery_ids and sel.skipped["near_duplicate"] == 1
    sel = select_balanced(cands, 3, vectors=vec, dup_threshold=0.99, test_vectors=emb[[7]], leak_threshold=0.75)
    assert 5 not in sel.gallery_ids and sel.leak_ids.tolist() == [5] and sel.skipped["leakage"] == 1
    assert sel.gallery_ids.tolist() == [2, 4, 6]
    excl = np.zeros(8, bool)
    excl[[2, 4]] = True
    sel = select_balanced(cands, 3, exclude=excl)
    assert sel.gallery_ids.tolist() == [3, 5, 6] and sel.skipped["excluded"] == 2
    group = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    sel = select_balanced(cands, 4, group=group, max_per_image=1)
    assert len(set(group[sel.gallery_ids].tolist())) == 4
    with pytest.raises(ValueError, match="vectors"):
        select_balanced(cands, 3, dup_threshold=0.9)


def test_merge_candidates_keeps_best_per_item() -> None:
    sims = np.array([[0.9, 0.5], [0.8, 0.7], [0.6, -np.inf]], np.float32)
    ids = np.array([[1, 2], [2, 3], [4, -1]])
    lists = merge_candidates(sims, ids, owner=np.array([0, 0, 1]), n_queries=2)
    assert lists[0].ids.tolist() == [1, 2, 3] and lists[0].sims.tolist() == pytest.approx([0.9, 0.8, 0.7])
    assert lists[1].ids.tolist() == [4]


def test_random_selection_respects_rules() -> None:
    valid = np.ones(100, bool)
    valid[:10] = False
    excl = np.zeros(100, bool)
    excl[10:20] = True
    emb = np.random.default_rng(0).standard_normal((100, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sel = select_random(valid, 50, vectors=lambda i: emb[i], test_vectors=emb[[30, 31]], leak_threshold=0.999,
                        exclude=excl, seed=1)
    got = set(sel.gallery_ids.tolist())
    assert len(got) == 50 and not got & set(range(20)) and not got & {30, 31}
    assert sel.skipped["excluded"] == 10
    again = select_random(valid, 50, vectors=lambda i: emb[i], test_vectors=emb[[30, 31]], leak_threshold=0.999,
                          exclude=excl, seed=1)
    assert again.gallery_ids.tolist() == sel.gallery_ids.tolist()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 40), st.integers(0, 10_000))
def test_balanced_invariants(nq: int, budget: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cands = []
    for _ in range(nq):
        ids = rng.choice(50, size=rng.integers(1, 30), replace=False)
        cands.append(CandidateList(ids.astype(np.int64), np.sort(rng.random(len(ids)))[::-1].astype(np.float32)))
    sel = select_balanced(cands, budget, seed=seed)
    g = sel.gallery_ids.tolist()
    assert len(g) == len(set(g))  # never twice
    assert (sel.filled <= sel.quota).all() and sel.quota.sum() == budget
    assert sel.quota.max() - sel.quota.min() <= 1
    for q in range(nq):  # a query short of its quota has used up its whole list
        if sel.filled[q] < sel.quota[q]:
            assert set(cands[q].ids.tolist()) <= set(g)
