"""What a ranking may contain and the reference top-k (ranking.topk): ``top_k`` against a
brute-force sort, the tie rule, padding, item masks, seen-row masking and row alignment.

The sampler (``sample_top_k``) is tested in test_sampling.py, the fast exact selections
(``heap_top_k``, ``select_top_k``) and ``select`` in test_select.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_ebm.data.sparse import canonical_csr
from recsys_ebm.ranking.topk import (
    align_rows,
    apply_masks,
    check_k,
    check_temperature,
    item_mask,
    mask_rows,
    top_k,
)


def _brute_force(scores: np.ndarray, k: int, banned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row Python sort by (-score, id) over eligible items, padded with -1 / -inf."""
    ids = np.full((scores.shape[0], k), -1, dtype=np.int64)
    vals = np.full((scores.shape[0], k), -np.inf, dtype=np.float32)
    for u, row in enumerate(scores):
        eligible = [i for i in range(row.size) if not banned[u, i]]
        ranked = sorted(eligible, key=lambda i: (-row[i], i))[:k]
        ids[u, : len(ranked)] = ranked
        vals[u, : len(ranked)] = row[ranked]
    return ids, vals


def _masked_top_k(scores, k, exclude=None, allowed=None, filter_items=None):
    """The new spelling of the old ``top_k(scores, k, exclude=, allowed=)``."""
    scores = scores.copy()
    apply_masks(scores, exclude, item_mask(scores.shape[1], allowed, filter_items))
    return top_k(scores, k)


@st.composite
def topk_cases(draw):
    n = draw(st.integers(1, 8))
    n_items = draw(st.integers(1, 25))
    k = draw(st.integers(1, 30))
    seed = draw(st.integers(0, 2**32 - 1))
    ties = draw(st.booleans())
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values: many ties, including at the cut
        scores = rng.integers(0, 3, size=(n, n_items)).astype(np.float32)
    else:
        scores = rng.permuted(np.tile(np.arange(n_items, dtype=np.float32), (n, 1)), axis=1)
    banned = rng.random((n, n_items)) < draw(st.sampled_from([0.0, 0.3, 0.9]))
    allowed = None
    if draw(st.booleans()):
        allowed = rng.random(n_items) < 0.7
    blocked = None
    if draw(st.booleans()):
        blocked = np.flatnonzero(rng.random(n_items) < 0.2)
    return scores, k, banned, allowed, blocked


@settings(max_examples=200, deadline=None)
@given(topk_cases())
def test_top_k_equals_brute_force_sort(case):
    scores, k, banned, allowed, blocked = case
    exclude = sp.csr_matrix(banned.astype(np.float32))
    all_banned = banned.copy()
    if allowed is not None:
        all_banned |= ~allowed[None, :]
    if blocked is not None:
        all_banned[:, blocked] = True
    ids, vals = _masked_top_k(scores, k, exclude, allowed, blocked)
    exp_ids, exp_vals = _brute_force(scores, k, all_banned)
    assert ids.shape == vals.shape == (scores.shape[0], k)
    assert ids.dtype == np.int64 and vals.dtype == np.float32
    np.testing.assert_array_equal(ids, exp_ids)
    np.testing.assert_array_equal(vals, exp_vals)
    # excluded / non-allowed items never come back; padding only at the end of a row
    returned = ids >= 0
    assert not np.any(all_banned[np.nonzero(returned)[0], ids[returned]])
    assert np.all(np.diff(returned.astype(int), axis=1) <= 0)


def test_ties_go_to_the_lower_item_id():
    scores = np.array([[1.0, 3.0, 3.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]], np.float32)
    ids, vals = top_k(scores.copy(), 2)
    np.testing.assert_array_equal(ids, [[1, 2], [0, 1]])
    np.testing.assert_array_equal(vals, [[3.0, 3.0], [2.0, 2.0]])
    ids, _ = top_k(scores.copy(), 5)
    np.testing.assert_array_equal(ids, [[1, 2, 3, 4, 0], [0, 1, 2, 3, 4]])
    # the tie at the cut is resolved by id even when a lower-id tied item is excluded
    ids, _ = _masked_top_k(scores, 2, exclude=sp.csr_matrix(([1.0], ([0], [2])), shape=(2, 6)))
    np.testing.assert_array_equal(ids[0], [1, 3])


def test_padding_when_fewer_than_k_eligible_and_k_beyond_catalog():
    scores = np.array([[0.1, 0.5, 0.3, 0.2]], np.float32)
    exclude = sp.csr_matrix(np.array([[0, 1, 0, 1]], np.float32))
    ids, vals = _masked_top_k(scores, 3, exclude=exclude)
    np.testing.assert_array_equal(ids, [[2, 0, -1]])
    assert vals[0, :2] == pytest.approx([0.3, 0.1])
    assert np.isneginf(vals[0, 2])
    ids, vals = top_k(scores.copy(), 7)  # k > n_items
    np.testing.assert_array_equal(ids, [[1, 2, 3, 0, -1, -1, -1]])
    assert np.all(np.isneginf(vals[0, 4:]))


def test_allowed_as_ids_or_mask_and_blocked_items():
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]], np.float32)
    ids, _ = _masked_top_k(scores, 3, allowed=np.array([4, 1]))
    np.testing.assert_array_equal(ids, [[1, 4, -1]])
    ids, _ = _masked_top_k(scores, 2, allowed=np.array([False, False, True, True, True]))
    np.testing.assert_array_equal(ids, [[2, 3]])
    ids, _ = _masked_top_k(scores, 3, filter_items=[0, 2])
    np.testing.assert_array_equal(ids, [[1, 3, 4]])
    # allowed minus blocked
    ids, _ = _masked_top_k(scores, 3, allowed=[0, 1, 2], filter_items=np.array([1]))
    np.testing.assert_array_equal(ids, [[0, 2, -1]])


def test_item_mask_known_answers():
    assert item_mask(5) is None
    np.testing.assert_array_equal(item_mask(5, [3, 1, 3]), [False, True, False, True, False])
    np.testing.assert_array_equal(item_mask(5, filter_items=[0]), [False, True, True, True, True])
    np.testing.assert_array_equal(item_mask(4, np.array([True, True, False, True]), [3]),
                                  [True, True, False, False])
    np.testing.assert_array_equal(item_mask(3, []), [False, False, False])
    # a bool mask given as `items` is not modified by filter_items
    allowed = np.ones(3, bool)
    item_mask(3, allowed, [0])
    assert allowed.all()


@pytest.mark.parametrize(("args", "error", "match"), [
    ((4, np.array([-1])), IndexError, "-1"),  # would wrap around to the last item
    ((4, np.array([4])), IndexError, "4"),
    ((4, None, [7]), IndexError, "7"),
    ((4, np.ones(3, bool)), ValueError, "shape"),
    ((4, np.array([0.5])), ValueError, "integers"),
])
def test_item_mask_rejects_bad_ids(args, error, match):
    with pytest.raises(error, match=match):
        item_mask(*args)


def test_mask_rows_with_an_offset_masks_the_right_rows():
    exclude = sp.csr_matrix(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], np.float32))
    scores = np.zeros((2, 3), np.float32)
    mask_rows(scores, exclude, start=1)  # rows 1 and 2 of exclude
    np.testing.assert_array_equal(np.isneginf(scores), [[False, True, False], [False, False, True]])
    scores = np.zeros((1, 3), np.float32)
    mask_rows(scores, exclude, start=3)
    np.testing.assert_array_equal(np.isneginf(scores), [[True, True, False]])
    untouched = np.ones((2, 3), np.float32)
    mask_rows(untouched, None)
    mask_rows(untouched, sp.csr_matrix((2, 3)))
    assert (untouched == 1).all()


def test_apply_masks_handles_unsorted_duplicate_entries():
    # a CSR with unsorted, duplicate column indices: canonicalised, never misread
    exclude = sp.csr_matrix((np.ones(3, np.float32), np.array([2, 0, 2]), np.array([0, 3, 3])), shape=(2, 4))
    assert not exclude.has_canonical_format
    scores = np.zeros((2, 4), np.float32)
    apply_masks(scores, exclude, np.array([True, True, True, False]))
    np.testing.assert_array_equal(np.isneginf(scores), [[True, False, True, True], [False, False, False, True]])
    fixed = canonical_csr(exclude)
    assert fixed.has_canonical_format and fixed.nnz == 2
    assert not exclude.has_canonical_format  # the input was copied, not changed
    with pytest.raises(ValueError, match="shape"):
        canonical_csr(exclude, (3, 4))
    with pytest.raises(ValueError, match="sparse"):
        canonical_csr(np.zeros((2, 4)))


def test_align_rows_indexed_or_aligned():
    full = sp.csr_matrix(np.arange(12, dtype=np.float32).reshape(4, 3))
    users = np.array([2, 0])
    # (n_users, n_items): indexed by the ids
    np.testing.assert_array_equal(align_rows(full, users, 4).toarray(), full.toarray()[[2, 0]])
    # (len(user_ids), n_items): already aligned
    two = full[:2]
    np.testing.assert_array_equal(align_rows(two, users, 4).toarray(), two.toarray())
    # both counts agree: indexed, unless aligned (fold-in)
    same = np.array([3, 1, 0, 2])
    np.testing.assert_array_equal(align_rows(full, same, 4).toarray(), full.toarray()[same])
    np.testing.assert_array_equal(align_rows(full, same, 4, aligned=True).toarray(), full.toarray())
    assert align_rows(None, users, 4) is None
    with pytest.raises(ValueError, match="3 rows"):
        align_rows(full[:3], users, 4)
    with pytest.raises(IndexError, match="5"):
        align_rows(full, np.array([5, 0, 1, 2]), 4)


def test_large_negative_float64_scores_are_not_taken_for_padding():
    # below float32's range but finite: still eligible items (regression for the cast bug)
    scores = np.array([[-1e39, -2e39, 0.0]])
    ids, _ = top_k(scores, 3)
    np.testing.assert_array_equal(ids, [[2, 0, 1]])


def test_empty_user_batch():
    ids, vals = top_k(np.zeros((0, 4), np.float32), 2)
    assert ids.shape == vals.shape == (0, 2)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"scores": np.zeros(4, np.float32), "k": 2}, ValueError),
        ({"scores": np.zeros((1, 2, 3), np.float32), "k": 2}, ValueError),
        ({"scores": np.zeros((2, 4), np.float32), "k": 0}, ValueError),
        ({"scores": np.zeros((2, 4), np.float32), "k": 2.5}, ValueError),
        ({"scores": np.zeros((2, 4), np.float32), "k": "3"}, ValueError),
    ],
)
def test_bad_arguments_raise(kwargs, error):
    with pytest.raises(error):
        top_k(**kwargs)


@pytest.mark.parametrize("exclude", [sp.csr_matrix((3, 4)), sp.csr_matrix((2, 5))])
def test_apply_masks_rejects_a_misaligned_exclude(exclude):
    with pytest.raises(ValueError, match="shape"):
        apply_masks(np.zeros((2, 4), np.float32), exclude, None)


def test_check_k_and_temperature():
    assert check_k(np.int64(3)) == 3
    for bad in (0, -1, 2.0, None, True - 2):
        with pytest.raises(ValueError):
            check_k(bad)
    assert check_temperature(0) == 0.0 and check_temperature(np.float32(0.5)) == 0.5
    for bad in (-1e-9, float("nan"), float("inf"), "warm", None):
        with pytest.raises(ValueError):
            check_temperature(bad)
