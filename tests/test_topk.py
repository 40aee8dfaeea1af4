"""Exact top-k (topk.top_k) and Gumbel-top-k sampling (sampling.gumbel_top_k)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from recsys_ebm.ranking.sampling import gumbel_top_k, softmax_probabilities
from recsys_ebm.ranking.topk import top_k


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
    return scores, k, banned, allowed


@settings(max_examples=200, deadline=None)
@given(topk_cases())
def test_top_k_equals_brute_force_sort(case):
    scores, k, banned, allowed = case
    exclude = sp.csr_matrix(banned.astype(np.float32))
    all_banned = banned | (~allowed[None, :] if allowed is not None else False)
    ids, vals = top_k(scores.copy(), k, exclude=exclude, allowed=allowed)
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
    ids, _ = top_k(scores.copy(), 2, exclude=sp.csr_matrix(([1.0], ([0], [2])), shape=(2, 6)))
    np.testing.assert_array_equal(ids[0], [1, 3])


def test_padding_when_fewer_than_k_eligible_and_k_beyond_catalog():
    scores = np.array([[0.1, 0.5, 0.3, 0.2]], np.float32)
    exclude = sp.csr_matrix(np.array([[0, 1, 0, 1]], np.float32))
    ids, vals = top_k(scores.copy(), 3, exclude=exclude)
    np.testing.assert_array_equal(ids, [[2, 0, -1]])
    assert vals[0, :2] == pytest.approx([0.3, 0.1])
    assert np.isneginf(vals[0, 2])
    ids, vals = top_k(scores.copy(), 7)  # k > n_items
    np.testing.assert_array_equal(ids, [[1, 2, 3, 0, -1, -1, -1]])
    assert np.all(np.isneginf(vals[0, 4:]))


def test_allowed_as_ids_or_mask():
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]], np.float32)
    ids, _ = top_k(scores.copy(), 3, allowed=np.array([4, 1]))
    np.testing.assert_array_equal(ids, [[1, 4, -1]])
    ids, _ = top_k(scores.copy(), 2, allowed=np.array([False, False, True, True, True]))
    np.testing.assert_array_equal(ids, [[2, 3]])


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
        (
            {"scores": np.zeros((2, 4), np.float32), "k": 2, "exclude": sp.csr_matrix((3, 4))},
            ValueError,
        ),
        (
            {"scores": np.zeros((2, 4), np.float32), "k": 2, "exclude": sp.csr_matrix((2, 5))},
            ValueError,
        ),
        ({"scores": np.zeros((2, 4), np.float32), "k": 2, "allowed": np.ones(3, bool)}, ValueError),
        ({"scores": np.zeros((2, 4), np.float32), "k": 2, "allowed": np.array([-1])}, IndexError),
        ({"scores": np.zeros((2, 4), np.float32), "k": 2, "allowed": np.array([4])}, IndexError),
    ],
)
def test_bad_arguments_raise(kwargs, error):
    with pytest.raises(error):
        top_k(**kwargs)


# ------------------------------------------------------------------------- gumbel_top_k


def test_zero_temperature_is_exact_top_k():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(6, 30)).astype(np.float32)
    exclude = sp.random(6, 30, density=0.3, format="csr", random_state=rng)
    exp = top_k(scores.copy(), 8, exclude=exclude)
    got = gumbel_top_k(scores.copy(), 8, 0.0, np.random.default_rng(0), exclude=exclude)
    np.testing.assert_array_equal(got[0], exp[0])
    np.testing.assert_array_equal(got[1], exp[1])
    # a vanishing positive temperature also gives the top-k, even when every score / T is
    # below float32's range (regression: those items used to come back as -1 padding)
    negative = -np.abs(scores) - 1.0
    exp_neg = top_k(negative.copy(), 8, exclude=exclude)
    tiny = gumbel_top_k(negative.copy(), 8, 1e-40, np.random.default_rng(0), exclude=exclude)
    np.testing.assert_array_equal(tiny[0], exp_neg[0])
    assert np.all(tiny[0] >= 0)


def test_sampling_never_returns_seen_items_and_pads():
    rng = np.random.default_rng(4)
    scores = rng.normal(size=(400, 12)).astype(np.float32)
    seen = rng.random((400, 12)) < 0.5
    seen[0] = True  # nothing eligible
    seen[1, :11] = True  # one eligible item
    ids, vals = gumbel_top_k(
        scores.copy(), 5, 2.0, rng, exclude=sp.csr_matrix(seen.astype(np.float32))
    )
    drawn = ids >= 0
    assert not np.any(seen[np.nonzero(drawn)[0], ids[drawn]])
    np.testing.assert_array_equal(drawn.sum(axis=1), np.minimum((~seen).sum(axis=1), 5))
    np.testing.assert_array_equal(ids[0], [-1] * 5)
    np.testing.assert_array_equal(ids[1], [11, -1, -1, -1, -1])
    assert np.all(np.isneginf(vals[~drawn]))
    np.testing.assert_array_equal(vals[drawn], scores[np.nonzero(drawn)[0], ids[drawn]])
    # distinct items within a row
    srt = np.sort(ids, axis=1)
    assert not np.any((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0))


def test_same_seed_same_draws():
    scores = np.random.default_rng(5).normal(size=(50, 20)).astype(np.float32)
    a = gumbel_top_k(scores.copy(), 4, 1.0, np.random.default_rng(11))
    b = gumbel_top_k(scores.copy(), 4, 1.0, np.random.default_rng(11))
    c = gumbel_top_k(scores.copy(), 4, 1.0, np.random.default_rng(12))
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("masked", [None, 1])
def test_single_draw_frequencies_follow_softmax(masked):
    scores = np.array([0.5, -1.0, 1.2, 0.0, 2.0], np.float32)
    temperature, n_draws = 0.7, 20000
    tiled = np.tile(scores, (n_draws, 1))
    exclude = None
    if masked is not None:
        exclude = sp.csr_matrix(
            ([1.0] * n_draws, (np.arange(n_draws), [masked] * n_draws)), shape=tiled.shape
        )
    ids, _ = gumbel_top_k(tiled, 1, temperature, np.random.default_rng(2024), exclude=exclude)
    counts = np.bincount(ids[:, 0], minlength=scores.size)
    target = scores.astype(np.float64).copy()
    if masked is not None:
        assert counts[masked] == 0
        target[masked] = -np.inf
    p = softmax_probabilities(target[None, :], temperature)[0]
    keep = p > 0
    assert chisquare(counts[keep], n_draws * p[keep]).pvalue > 1e-3


def test_two_draws_without_replacement_match_sequential_enumeration():
    scores = np.array([1.0, 0.2, -0.5, 0.6])
    temperature, n_draws = 0.8, 20000
    p = softmax_probabilities(scores[None, :], temperature)[0]
    # sequential sampling: P(first = i, second = j) = p_i * p_j / (1 - p_i)
    pairs = list(itertools.permutations(range(4), 2))
    p_pair = np.array([p[i] * p[j] / (1 - p[i]) for i, j in pairs])
    p_incl = np.array(
        [
            sum(pp for (i, j), pp in zip(pairs, p_pair, strict=True) if item in (i, j))
            for item in range(4)
        ]
    )
    assert p_pair.sum() == pytest.approx(1.0)
    assert p_incl.sum() == pytest.approx(2.0)

    ids, _ = gumbel_top_k(np.tile(scores, (n_draws, 1)), 2, temperature, np.random.default_rng(7))
    incl = np.bincount(ids.ravel(), minlength=4) / n_draws
    # each inclusion frequency within 4.5 standard errors of the enumerated probability
    se = np.sqrt(p_incl * (1 - p_incl) / n_draws)
    assert np.all(np.abs(incl - p_incl) < 4.5 * se)
    pair_index = {pair: n for n, pair in enumerate(pairs)}
    codes = np.array([pair_index[(int(a), int(b))] for a, b in ids])
    counts = np.bincount(codes, minlength=len(pairs))
    assert chisquare(counts, n_draws * p_pair).pvalue > 1e-3
