"""The one selection (ranking.select): ``select`` at T = 0 and T > 0 with log-probabilities,
the fast exact top-k (``select_top_k``: heap / threshold; FAISS's ``heap_top_k``) against the
reference ``top_k``, and the log-partition ``logsumexp_rows``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

from recsys_ebm.ranking.faiss_index import heap_top_k
from recsys_ebm.ranking.sampling import sample_top_k
from recsys_ebm.ranking.select import (
    THRESHOLD_MIN_K,
    log_probabilities,
    logsumexp_rows,
    select,
    select_top_k,
)
from recsys_ebm.ranking.topk import top_k


@st.composite
def score_cases(draw):
    n = draw(st.integers(1, 6))
    n_items = draw(st.sampled_from([8, 40, 300, 5000]))
    k = draw(st.integers(1, 120))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["normal", "ties", "few"]))
    if kind == "normal":
        scores = rng.normal(size=(n, n_items)).astype(np.float32)
    elif kind == "ties":  # many ties, including at the cut
        scores = rng.integers(0, 4, size=(n, n_items)).astype(np.float32)
    else:
        scores = rng.integers(0, 50, size=(n, n_items)).astype(np.float32)
    scores[rng.random((n, n_items)) < draw(st.sampled_from([0.0, 0.5, 0.99]))] = -np.inf
    return scores, k


@settings(max_examples=60, deadline=None)
@given(score_cases())
def test_heap_and_threshold_selection_equal_the_reference_top_k(case):
    scores, k = case
    expected = top_k(scores.copy(), k)
    for fn in (heap_top_k, select_top_k):
        ids, values = fn(scores.copy(), k)
        np.testing.assert_array_equal(ids, expected[0])
        np.testing.assert_array_equal(values, expected[1])
    ids, values, log_p = select(scores.copy(), k, 0.0, 0, np.arange(len(scores)))
    np.testing.assert_array_equal(ids, expected[0])
    np.testing.assert_array_equal(values, expected[1])
    assert log_p is None


def test_threshold_path_is_taken_and_breaks_ties_by_lower_id():
    assert 40 >= THRESHOLD_MIN_K  # the cases below run the threshold pass, not the heap
    scores = np.zeros((3, 6000), np.float32)
    scores[0, ::7] = 1.0  # 858 tied items above the rest
    scores[1, 100:110] = 2.0
    scores[1, 5000:] = 1.0
    scores[2, :] = -np.inf
    scores[2, [10, 20]] = 0.5
    ids, values = select_top_k(scores.copy(), 40)
    np.testing.assert_array_equal(ids[0], np.arange(0, 40 * 7, 7))
    np.testing.assert_array_equal(ids[1], np.r_[np.arange(100, 110), np.arange(5000, 5030)])
    np.testing.assert_array_equal(ids[2, :3], [10, 20, -1])
    assert np.isneginf(values[2, 2:]).all()


def test_threshold_path_on_large_random_blocks():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(20, 30_000)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.1] = -np.inf
    scores[3, :] = -np.inf
    scores[3, :50] = 1.0  # fewer than k groups hold an item: falls back to the heap
    for k in (THRESHOLD_MIN_K, 100, 500):
        expected = top_k(scores.copy(), k)
        ids, values = select_top_k(scores.copy(), k)
        np.testing.assert_array_equal(ids, expected[0])
        np.testing.assert_array_equal(values, expected[1])


def test_heap_top_k_keeps_scores_at_or_below_minus_flt_max():
    lowest = np.finfo(np.float32).min
    scores = np.full((2, 50), -np.inf, np.float32)
    scores[0, [3, 9]] = lowest
    scores[1, 5] = 0.0
    ids, values = heap_top_k(scores, 3)
    np.testing.assert_array_equal(ids, [[3, 9, -1], [5, -1, -1]])
    assert values[0, 0] == lowest and np.isneginf(values[0, 2])


def _log_softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    z = scores.astype(np.float64) / temperature
    with np.errstate(invalid="ignore"):  # rows with nothing eligible: -inf - (-inf)
        return z - logsumexp(z, axis=1, keepdims=True)


@pytest.mark.parametrize("offset", [0.0, 300.0, -300.0])  # direct window and shifted rows
def test_exact_selection_log_p_is_the_t1_gibbs_distribution(offset):
    rng = np.random.default_rng(1)
    scores = (rng.normal(size=(12, 700)) * 4 + offset).astype(np.float32)
    scores[rng.random(scores.shape) < 0.3] = -np.inf
    scores[5] = -np.inf  # nothing eligible
    reference = _log_softmax(np.where(np.isfinite(scores), scores, -np.inf), 1.0)
    ids, values, log_p = select(scores.copy(), 10, 0.0, 0, np.arange(12), with_log_p=True,
                                work=np.empty(scores.size, np.float32))
    np.testing.assert_array_equal(ids, top_k(scores.copy(), 10)[0])
    ok = ids >= 0
    np.testing.assert_allclose(log_p[ok], np.take_along_axis(reference, np.maximum(ids, 0), 1)[ok],
                               atol=2e-5)
    assert np.isneginf(log_p[~ok]).all() and (ids[5] == -1).all()
    assert (log_p <= 0).all()


@pytest.mark.parametrize("temperature", [0.3, 2.0])
def test_sampled_selection_is_the_keyed_sampler_with_its_log_p(temperature):
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(30, 400)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.2] = -np.inf
    keys = rng.choice(10_000, 30, replace=False)
    ids, values, log_p = select(scores.copy(), 7, temperature, 9, keys, with_log_p=True)
    ref_ids, ref_values = sample_top_k(scores.copy(), 7, temperature, 9, keys=keys)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(values, ref_values)
    reference = _log_softmax(scores, temperature)
    np.testing.assert_allclose(log_p, np.take_along_axis(reference, ids, 1), atol=1e-5)
    plain = select(scores.copy(), 7, temperature, 9, keys)
    np.testing.assert_array_equal(plain[0], ids)
    assert plain[2] is None


def test_select_rejects_bad_arguments():
    scores = np.zeros((2, 10), np.float32)
    for k, temperature in ((0, 0.0), (3, -1.0), (3, float("nan"))):
        with pytest.raises(ValueError):
            select(scores.copy(), k, temperature, 0, np.arange(2))


def test_logsumexp_rows_matches_scipy_in_every_regime():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(6, 500)) * 3
    base[:, ::4] = -np.inf
    for offset in (0.0, -19.0, 59.0, 200.0, -200.0, 1e4):
        scores = (base + offset).astype(np.float32)
        row_max = scores.max(axis=1).astype(np.float64)
        expected = logsumexp(scores.astype(np.float64), axis=1)
        np.testing.assert_allclose(logsumexp_rows(scores, row_max), expected, rtol=1e-6, atol=1e-5)
        work = np.full(scores.size + 7, np.nan, np.float32)  # a larger, dirty scratch buffer
        np.testing.assert_allclose(logsumexp_rows(scores, row_max, work), expected, rtol=1e-6, atol=1e-5)
    empty = np.full((2, 5), -np.inf, np.float32)
    assert np.isneginf(logsumexp_rows(empty, np.full(2, -np.inf))).all()


def test_log_probabilities_clip_and_pad():
    values = np.array([[2.0, 1.0, -np.inf]], np.float32)
    log_norm = np.array([np.log(np.exp(2.0) + np.exp(1.0))])
    log_p = log_probabilities(values, log_norm, 1.0)
    np.testing.assert_allclose(np.exp(log_p[0, :2]).sum(), 1.0, rtol=1e-6)
    assert np.isneginf(log_p[0, 2])
    # rounding between scores and partition never gives p > 1
    assert log_probabilities(np.array([[1.0]], np.float32), np.array([0.999]), 1.0)[0, 0] == 0.0
    np.testing.assert_allclose(log_probabilities(values[:, :2], np.array([5.0]), 0.5), [[-1.0, -3.0]])
