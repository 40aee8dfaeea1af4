"""Ranking/rating metrics: hand-computed cases, naive-reference properties, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from recsys_ebm.evaluation.metrics import (
    coverage_at_k,
    hit_matrix,
    hit_rate_at_k,
    mae,
    map_allrel_at_k,
    map_at_k,
    mrr,
    ndcg_at_k,
    precision_at_k,
    recall_allrel_at_k,
    recall_at_k,
    rmse,
)

L2_3 = math.log2(3)


def _h(*rows: list[int]) -> np.ndarray:
    return np.array(rows, dtype=bool)


# ---------------------------------------------------------------- hand-computed known answers


def test_single_hit_at_rank_two_of_three_with_two_relevant():
    hits, n_rel = _h([0, 1, 0]), np.array([2])
    assert precision_at_k(hits, 3) == pytest.approx([1 / 3])
    assert recall_at_k(hits, n_rel, 3) == pytest.approx([1 / 2])
    assert ndcg_at_k(hits, n_rel, 3) == pytest.approx([(1 / L2_3) / (1 + 1 / L2_3)])
    # AP: precision@2 = 1/2 at the only hit, normalised by min(3, 2) = 2
    assert map_at_k(hits, n_rel, 3) == pytest.approx([(1 / 2) / 2])
    assert mrr(hits) == pytest.approx([1 / 2])
    assert hit_rate_at_k(hits, 3) == pytest.approx([1.0])
    # cut at k = 1: the hit at rank 2 no longer counts
    assert precision_at_k(hits, 1) == pytest.approx([0.0])
    assert recall_at_k(hits, n_rel, 1) == pytest.approx([0.0])
    assert ndcg_at_k(hits, n_rel, 1) == pytest.approx([0.0])
    assert mrr(hits, 1) == pytest.approx([0.0])
    assert hit_rate_at_k(hits, 1) == pytest.approx([0.0])


def test_two_hits_with_more_relevant_than_k():
    hits, n_rel = _h([1, 0, 1, 0, 0]), np.array([7])
    ideal5 = 1 + 1 / L2_3 + 1 / 2 + 1 / math.log2(5) + 1 / math.log2(6)
    assert precision_at_k(hits, 5) == pytest.approx([2 / 5])
    assert recall_at_k(hits, n_rel, 5) == pytest.approx([2 / 5])  # min(5, 7) = 5
    assert ndcg_at_k(hits, n_rel, 5) == pytest.approx([(1 + 1 / 2) / ideal5])
    assert map_at_k(hits, n_rel, 5) == pytest.approx([(1 + 2 / 3) / 5])
    # the standard definitions divide by all 7 relevant items
    assert recall_allrel_at_k(hits, n_rel, 5) == pytest.approx([2 / 7])
    assert map_allrel_at_k(hits, n_rel, 5) == pytest.approx([(1 + 2 / 3) / 7])
    assert recall_allrel_at_k(hits, n_rel, 1) == pytest.approx([1 / 7])
    assert map_allrel_at_k(hits, n_rel, 1) == pytest.approx([1 / 7])


def test_allrel_equals_truncated_when_relevant_fit_in_k():
    hits, n_rel = _h([0, 1, 0]), np.array([2])
    assert recall_allrel_at_k(hits, n_rel, 3) == pytest.approx([1 / 2])
    assert map_allrel_at_k(hits, n_rel, 3) == pytest.approx([(1 / 2) / 2])
    # with k = 1 < R = 2 they part: truncated / 1, standard / 2
    hits = _h([1, 0, 0])
    assert recall_at_k(hits, n_rel, 1) == pytest.approx([1.0])
    assert recall_allrel_at_k(hits, n_rel, 1) == pytest.approx([1 / 2])
    assert map_at_k(hits, n_rel, 1) == pytest.approx([1.0])
    assert map_allrel_at_k(hits, n_rel, 1) == pytest.approx([1 / 2])
    assert mrr(hits) == pytest.approx([1.0])
    # k = 2: one hit, min(2, 7) = 2
    assert precision_at_k(hits, 2) == pytest.approx([1 / 2])
    assert recall_at_k(hits, n_rel, 2) == pytest.approx([1 / 2])
    assert ndcg_at_k(hits, n_rel, 2) == pytest.approx([1 / (1 + 1 / L2_3)])
    assert map_at_k(hits, n_rel, 2) == pytest.approx([1 / 2])


def test_single_relevant_found_last():
    hits, n_rel = _h([0, 0, 1]), np.array([1])
    assert recall_at_k(hits, n_rel, 3) == pytest.approx([1.0])
    assert ndcg_at_k(hits, n_rel, 3) == pytest.approx([(1 / 2) / 1])
    assert map_at_k(hits, n_rel, 3) == pytest.approx([1 / 3])
    assert mrr(hits) == pytest.approx([1 / 3])


def test_several_users_at_once_and_empty_rows():
    hits = _h([1, 1, 0, 0], [0, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0])
    n_rel = np.array([2, 3, 2, 0])
    assert precision_at_k(hits, 4) == pytest.approx([2 / 4, 0, 2 / 4, 0])
    assert recall_at_k(hits, n_rel, 4) == pytest.approx([1, 0, 1, 0])
    assert ndcg_at_k(hits, n_rel, 4) == pytest.approx(
        [1.0, 0.0, (1 / L2_3 + 1 / math.log2(5)) / (1 + 1 / L2_3), 0.0]
    )
    assert map_at_k(hits, n_rel, 4) == pytest.approx([1.0, 0.0, (1 / 2 + 2 / 4) / 2, 0.0])
    assert mrr(hits) == pytest.approx([1, 0, 1 / 2, 0])
    assert hit_rate_at_k(hits, 4) == pytest.approx([1, 0, 1, 0])


def test_coverage_counts_distinct_items_ignoring_padding():
    rec = np.array([[0, 1, 4], [1, 2, -1], [-1, -1, -1]])
    assert coverage_at_k(rec, 5) == pytest.approx(4 / 5)
    assert coverage_at_k(rec, 5, k=1) == pytest.approx(2 / 5)
    assert coverage_at_k(rec, 8, k=2) == pytest.approx(3 / 8)
    assert coverage_at_k(np.full((2, 3), -1), 5) == pytest.approx(0.0)


def test_rmse_and_mae():
    pred, truth = np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 5.0])
    assert rmse(pred, truth) == pytest.approx(math.sqrt(5 / 3))
    assert mae(pred, truth) == pytest.approx(1.0)
    assert rmse(truth, truth) == pytest.approx(0.0)
    assert rmse(np.array([[1.0], [4.0]]), np.array([[2.0], [2.0]])) == pytest.approx(
        math.sqrt(5 / 2)
    )


def test_hit_matrix_by_hand_with_padding_and_unsorted_csr():
    # row 1's CSR indices are deliberately unsorted, and there is a duplicate + explicit zero
    indptr = np.array([0, 2, 5, 5])
    indices = np.array([3, 0, 4, 1, 2])
    data = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    test = sp.csr_matrix((data, indices, indptr), shape=(3, 6))
    rec = np.array([[0, 1, 3], [2, 4, -1], [5, -1, -1]])
    expected = _h([1, 0, 1], [0, 1, 0], [0, 0, 0])  # item 2 of row 1 is a stored zero
    np.testing.assert_array_equal(hit_matrix(rec, test), expected)
    # -1 padding against an item -1 would otherwise index the last column: no hit
    test_last = sp.csr_matrix(np.array([[0, 0, 1.0]]))
    np.testing.assert_array_equal(hit_matrix(np.array([[-1, 2]]), test_last), _h([0, 1]))


# --------------------------------------------------------------- naive per-user references


def _naive(hits_row: list[bool], n_rel: int, k: int) -> dict[str, float]:
    top = [bool(h) for h in hits_row[:k]]
    n_hit = sum(top)
    norm = min(k, n_rel)
    dcg = sum(1 / math.log2(r + 2) for r, h in enumerate(top) if h)
    idcg = sum(1 / math.log2(r + 2) for r in range(norm))
    ap, seen = 0.0, 0
    for r, h in enumerate(top):
        if h:
            seen += 1
            ap += seen / (r + 1)
    first = next((r for r, h in enumerate(top) if h), None)
    return {
        "precision": n_hit / k,
        "recall": n_hit / norm if norm else 0.0,
        "ndcg": dcg / idcg if idcg else 0.0,
        "map": ap / norm if norm else 0.0,
        "recall_allrel": n_hit / n_rel if n_rel else 0.0,
        "map_allrel": ap / n_rel if n_rel else 0.0,
        "mrr": 1 / (first + 1) if first is not None else 0.0,
        "hitrate": 1.0 if n_hit else 0.0,
    }


@st.composite
def hit_cases(draw):
    n = draw(st.integers(1, 12))
    width = draw(st.integers(1, 12))
    hits = draw(hnp.arrays(bool, (n, width)))
    extra = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, 15)))
    return hits, hits.sum(axis=1) + extra


@settings(max_examples=150, deadline=None)
@given(hit_cases())
def test_metrics_match_naive_reference_and_lie_in_unit_interval(case):
    hits, n_rel = case
    for k in range(1, hits.shape[1] + 1):
        got = {
            "precision": precision_at_k(hits, k),
            "recall": recall_at_k(hits, n_rel, k),
            "ndcg": ndcg_at_k(hits, n_rel, k),
            "map": map_at_k(hits, n_rel, k),
            "recall_allrel": recall_allrel_at_k(hits, n_rel, k),
            "map_allrel": map_allrel_at_k(hits, n_rel, k),
            "mrr": mrr(hits, k),
            "hitrate": hit_rate_at_k(hits, k),
        }
        for name, values in got.items():
            assert values.shape == (hits.shape[0],)
            assert values.dtype == np.float64
            assert np.all((values >= 0) & (values <= 1 + 1e-12)), name
            expected = [_naive(list(h), int(r), k)[name] for h, r in zip(hits, n_rel, strict=True)]
            np.testing.assert_allclose(values, expected, rtol=1e-12, atol=1e-12, err_msg=name)
        # standard <= truncated, equal where every relevant item fits in the top k
        fits = n_rel <= k
        for std, trunc in (("recall_allrel", "recall"), ("map_allrel", "map")):
            assert np.all(got[std] <= got[trunc] + 1e-12), std
            np.testing.assert_array_equal(got[std][fits], got[trunc][fits], err_msg=std)
    # all relevant items retrieved in order -> every metric is 1
    perfect = np.ones_like(hits)
    width = hits.shape[1]
    full = np.full(hits.shape[0], width)
    for f in (recall_at_k, ndcg_at_k, map_at_k, recall_allrel_at_k, map_allrel_at_k):
        np.testing.assert_allclose(f(perfect, full, width), 1.0)


@st.composite
def rec_cases(draw):
    n_users = draw(st.integers(1, 10))
    n_items = draw(st.integers(1, 15))
    k = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    rec = np.full((n_users, k), -1, dtype=np.int64)
    for u in range(n_users):
        length = int(rng.integers(0, min(k, n_items) + 1))
        rec[u, :length] = rng.choice(n_items, size=length, replace=False)
    test = sp.random(
        n_users, n_items, density=float(rng.uniform(0, 0.6)), format="csr", random_state=rng
    )
    test.data[:] = 1.0
    return rec, test, n_items


@settings(max_examples=150, deadline=None)
@given(rec_cases())
def test_hit_matrix_and_coverage_match_naive_loops(case):
    rec, test, n_items = case
    dense = test.toarray() != 0
    expected = np.array([[r >= 0 and bool(dense[u, r]) for r in row] for u, row in enumerate(rec)])
    hits = hit_matrix(rec, test)
    assert hits.dtype == bool
    np.testing.assert_array_equal(hits, expected.reshape(rec.shape))
    for k in range(1, rec.shape[1] + 1):
        union = {int(i) for row in rec for i in row[:k] if i >= 0}
        assert coverage_at_k(rec, n_items, k) == pytest.approx(len(union) / n_items)
        assert 0.0 <= coverage_at_k(rec, n_items, k) <= 1.0


@settings(max_examples=100, deadline=None)
@given(
    hnp.arrays(np.float64, st.integers(1, 30), elements=st.floats(-5, 5)),
    st.integers(0, 2**32 - 1),
)
def test_rmse_mae_match_naive_loop(truth, seed):
    pred = truth + np.random.default_rng(seed).normal(size=truth.shape)
    n = truth.size
    naive_rmse = math.sqrt(
        sum((float(p) - float(t)) ** 2 for p, t in zip(pred, truth, strict=True)) / n
    )
    naive_mae = sum(abs(float(p) - float(t)) for p, t in zip(pred, truth, strict=True)) / n
    assert rmse(pred, truth) == pytest.approx(naive_rmse)
    assert mae(pred, truth) == pytest.approx(naive_mae)
    assert mae(pred, truth) <= rmse(pred, truth) + 1e-12


# ----------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call",
    [
        lambda: precision_at_k(np.zeros(3, dtype=bool), 1),  # 1-D hits
        lambda: precision_at_k(np.zeros((2, 3), dtype=bool), 4),  # k > width
        lambda: precision_at_k(np.zeros((2, 3), dtype=bool), 0),
        lambda: precision_at_k(np.full((2, 3), 2), 1),  # not 0/1
        lambda: recall_at_k(np.zeros((2, 3), dtype=bool), np.array([1, 1, 1]), 2),
        lambda: ndcg_at_k(np.zeros((2, 3), dtype=bool), np.array([1.5, 1.0]), 2),
        lambda: map_at_k(np.ones((1, 3), dtype=bool), np.array([2]), 3),  # 3 hits > 2 relevant
        lambda: recall_at_k(np.zeros((1, 3), dtype=bool), np.array([-1]), 3),
        lambda: recall_allrel_at_k(np.ones((1, 3), dtype=bool), np.array([2]), 3),
        lambda: recall_allrel_at_k(np.zeros((2, 3), dtype=bool), np.array([1, 1]), 4),
        lambda: map_allrel_at_k(np.zeros((1, 3), dtype=bool), np.array([-1]), 3),
        lambda: map_allrel_at_k(np.zeros((2, 3), dtype=bool), np.array([1.0, 1.0]), 2),
        lambda: mrr(np.zeros((2, 2), dtype=bool), 3),
        lambda: coverage_at_k(np.array([[0, 5]]), 5),  # id outside catalog
        lambda: coverage_at_k(np.array([[0, -2]]), 5),  # bad padding
        lambda: coverage_at_k(np.array([0, 1]), 5),  # 1-D
        lambda: hit_matrix(np.array([[0, 1]]), sp.csr_matrix((2, 3))),  # rows mismatch
        lambda: hit_matrix(np.array([[0, 0]]), sp.csr_matrix((1, 3))),  # repeated item
        lambda: hit_matrix(np.array([[0, 3]]), sp.csr_matrix((1, 3))),
        lambda: hit_matrix(np.array([[0.0, 1.0]]), sp.csr_matrix((1, 3))),  # float ids
        lambda: hit_matrix(np.array([[0, 1]]), np.zeros((1, 3))),  # dense test
        lambda: rmse(np.zeros(3), np.zeros(4)),
        lambda: mae(np.zeros((2, 2)), np.zeros(4)),
        lambda: rmse(np.zeros(0), np.zeros(0)),
        lambda: mae(np.array([np.nan]), np.zeros(1)),
    ],
)
def test_bad_inputs_raise_value_error(call):
    with pytest.raises(ValueError):
        call()
