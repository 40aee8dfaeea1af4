"""The one temperature sampler (`sample_top_k`), its keyed randomness, `recommend` at T > 0 on
a score-only model, and temperature calibration.

The sampler is checked against the distribution it claims, p(i | u, T) = softmax(score / T)
over eligible items, without replacement: chi-square tests of single draws, of ordered pairs
and triples against sequential enumeration, on small catalogs (one group) and large ones
(many groups, truncated Gumbels), in its overflow / underflow / float64-fallback paths. Its
randomness is keyed on (seed, user key): a user's draw does not depend on the batch it is in.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import chisquare

from recsys_ebm.models.base import Recommender
from recsys_ebm.ranking.sampling import (
    RNG_BLOCK,
    calibrate_temperature,
    expected_coverage,
    mean_entropy,
    sample_top_k,
    softmax_probabilities,
)
from recsys_ebm.ranking.topk import apply_masks, item_mask, top_k

SCORES = np.array([0.5, -1.0, 1.2, 0.0, 2.0, -0.3, 0.9], np.float32)


def _masked_top_k(scores, k, exclude=None, allowed=None):
    scores = scores.copy()
    apply_masks(scores, exclude, item_mask(scores.shape[1], allowed))
    return top_k(scores, k)


def _one_mask_per_row(n_rows: int, n_items: int, item: int) -> sp.csr_matrix:
    return sp.csr_matrix(([1.0] * n_rows, (np.arange(n_rows), [item] * n_rows)), shape=(n_rows, n_items))


# ----------------------------------------------------------------------------- distribution


@pytest.mark.parametrize("offset", [0.0, 150.0, -150.0])  # plain, overflowing, underflowing exp
@pytest.mark.parametrize("masked", [None, 4])
def test_single_draw_frequencies_follow_softmax(offset, masked):
    temperature, n_draws = 0.7, 20000
    scores = np.tile(SCORES + offset, (n_draws, 1))
    exclude = None if masked is None else _one_mask_per_row(n_draws, SCORES.size, masked)
    ids, values = sample_top_k(scores, 1, temperature, seed=11, exclude=exclude)
    counts = np.bincount(ids[:, 0], minlength=SCORES.size)
    target = SCORES.astype(np.float64)
    if masked is not None:
        assert counts[masked] == 0
        target[masked] = -np.inf
    p = softmax_probabilities(target[None, :], temperature)[0]
    keep = p > 0
    assert chisquare(counts[keep], n_draws * p[keep]).pvalue > 1e-3
    np.testing.assert_array_equal(values[:, 0], (SCORES + offset)[ids[:, 0]])


@pytest.mark.parametrize("masked", [None, 1])
def test_single_draw_frequencies_on_five_items(masked):
    # (ported from the per-item Gumbel reference sampler's test: float64 scores, one group)
    scores = np.array([0.5, -1.0, 1.2, 0.0, 2.0])
    temperature, n_draws = 0.7, 20000
    tiled = np.tile(scores, (n_draws, 1))
    exclude = None if masked is None else _one_mask_per_row(n_draws, scores.size, masked)
    ids, _ = sample_top_k(tiled, 1, temperature, seed=2024, exclude=exclude)
    counts = np.bincount(ids[:, 0], minlength=scores.size)
    target = scores.copy()
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
    p_incl = np.array([sum(pp for (i, j), pp in zip(pairs, p_pair, strict=True) if item in (i, j))
                       for item in range(4)])
    assert p_pair.sum() == pytest.approx(1.0)
    assert p_incl.sum() == pytest.approx(2.0)
    ids, _ = sample_top_k(np.tile(scores, (n_draws, 1)), 2, temperature, seed=7)
    incl = np.bincount(ids.ravel(), minlength=4) / n_draws
    # each inclusion frequency within 4.5 standard errors of the enumerated probability
    se = np.sqrt(p_incl * (1 - p_incl) / n_draws)
    assert np.all(np.abs(incl - p_incl) < 4.5 * se)
    pair_index = {pair: n for n, pair in enumerate(pairs)}
    codes = np.array([pair_index[(int(a), int(b))] for a, b in ids])
    counts = np.bincount(codes, minlength=len(pairs))
    assert chisquare(counts, n_draws * p_pair).pvalue > 1e-3


def test_ordered_draws_without_replacement_match_enumeration():
    temperature, k, n_draws = 0.8, 3, 30000
    p = softmax_probabilities(SCORES[None, :5].astype(np.float64), temperature)[0]
    # sequential sampling: P(i, j, m) = p_i * p_j / (1 - p_i) * p_m / (1 - p_i - p_j)
    triples = list(itertools.permutations(range(5), k))
    prob = np.array([p[i] * p[j] / (1 - p[i]) * p[m] / (1 - p[i] - p[j]) for i, j, m in triples])
    assert prob.sum() == pytest.approx(1.0)
    ids, _ = sample_top_k(np.tile(SCORES[:5], (n_draws, 1)), k, temperature, seed=5)
    code = {t: n for n, t in enumerate(triples)}
    counts = np.bincount([code[tuple(row)] for row in ids.tolist()], minlength=len(triples))
    assert chisquare(counts, n_draws * prob).pvalue > 1e-3
    # inclusion probabilities, within 4.5 standard errors
    inclusion = np.array([sum(q for t, q in zip(triples, prob, strict=True) if item in t) for item in range(5)])
    observed = np.bincount(ids.ravel(), minlength=5) / n_draws
    se = np.sqrt(inclusion * (1 - inclusion) / n_draws)
    assert np.all(np.abs(observed - inclusion) < 4.5 * se)


def test_many_groups_single_draws_follow_softmax():
    # enough items for several groups of several items: exercises the group masses and the
    # truncated Gumbels of the later steps
    rng = np.random.default_rng(3)
    scores = rng.normal(size=60).astype(np.float32)
    temperature, n_draws = 0.5, 30000
    ids, _ = sample_top_k(np.tile(scores, (n_draws, 1)), 4, temperature, seed=2)
    p = softmax_probabilities(scores[None, :].astype(np.float64), temperature)[0]
    first = np.bincount(ids[:, 0], minlength=60)
    big = p * n_draws >= 5
    observed = np.r_[first[big], first[~big].sum()]
    expected = n_draws * np.r_[p[big], p[~big].sum()]
    assert chisquare(observed, expected).pvalue > 1e-3
    # second draw given the first: p_j / (1 - p_i)
    second = np.zeros(60)
    np.add.at(second, ids[:, 1], 1)
    expected_second = (p[ids[:, 0], None] * 0 + p[None, :])
    expected_second[np.arange(n_draws), ids[:, 0]] = 0
    expected_second = (expected_second / expected_second.sum(axis=1, keepdims=True)).sum(axis=0)
    big = expected_second >= 5
    assert chisquare(np.r_[second[big], second[~big].sum()],
                     np.r_[expected_second[big], expected_second[~big].sum()]).pvalue > 1e-3


def test_zero_and_vanishing_temperature_give_the_exact_top_k():
    rng = np.random.default_rng(4)
    scores = rng.normal(size=(50, 200)).astype(np.float32)
    exclude = sp.random(50, 200, density=0.3, format="csr", random_state=rng)
    expected = _masked_top_k(scores, 12, exclude)
    for temperature in (0.0, 1e-6, 1e-40):
        ids, values = sample_top_k(scores.copy(), 12, temperature, seed=1, exclude=exclude)
        np.testing.assert_array_equal(ids, expected[0])
        np.testing.assert_array_equal(values, expected[1])
    # every score / T below float32's range (regression: those items came back as -1 padding)
    negative = -np.abs(scores[:6, :30]) - 1.0
    small_exclude = exclude[:6, :30]
    expected = _masked_top_k(negative, 8, small_exclude)
    tiny, _ = sample_top_k(negative.copy(), 8, 1e-40, seed=0, exclude=small_exclude)
    np.testing.assert_array_equal(tiny, expected[0])
    assert np.all(tiny >= 0)


def test_very_large_temperature_is_uniform():
    rng = np.random.default_rng(5)
    scores = rng.normal(scale=3.0, size=40).astype(np.float32)
    n_draws = 20000
    ids, _ = sample_top_k(np.tile(scores, (n_draws, 1)), 1, 1e7, seed=9)
    counts = np.bincount(ids[:, 0], minlength=40)
    assert chisquare(counts).pvalue > 1e-3


# ----------------------------------------------------------------------------- keyed randomness


def test_chunked_with_keys_equals_unchunked_for_the_same_seed():
    rng = np.random.default_rng(6)
    scores = rng.normal(size=(3 * RNG_BLOCK + 5, 500)).astype(np.float32)
    whole, _ = sample_top_k(scores.copy(), 10, 0.5, seed=21)
    for size in (1, 7, RNG_BLOCK, 100):
        parts = [sample_top_k(scores[s:s + size].copy(), 10, 0.5, seed=21,
                              keys=np.arange(s, min(s + size, len(scores))))[0]
                 for s in range(0, len(scores), size)]
        np.testing.assert_array_equal(np.vstack(parts), whole)
    # the keys are what places a chunk: without them a later chunk draws like the first rows
    unkeyed, _ = sample_top_k(scores[100:].copy(), 10, 0.5, seed=21)
    assert not np.array_equal(unkeyed, whole[100:])
    again, _ = sample_top_k(scores.copy(), 10, 0.5, seed=21)
    other, _ = sample_top_k(scores.copy(), 10, 0.5, seed=22)
    np.testing.assert_array_equal(again, whole)
    assert not np.array_equal(other, whole)
    # fewer draws are a prefix of more draws for the same seed
    fewer, _ = sample_top_k(scores.copy(), 4, 0.5, seed=21)
    np.testing.assert_array_equal(fewer, whole[:, :4])


@pytest.mark.parametrize("n_items", [30, 2000])
def test_a_users_draw_does_not_depend_on_its_batch(n_items):
    """Sampled alone, in a batch, or in a batch in another order: the same items."""
    rng = np.random.default_rng(n_items)
    n = 2 * RNG_BLOCK + 9
    scores = rng.normal(size=(n, n_items)).astype(np.float32)
    keys = np.sort(rng.choice(10**6, n, replace=False))  # sparse keys spanning many blocks
    batch, values = sample_top_k(scores.copy(), 6, 0.8, seed=13, keys=keys)
    for row in (0, 1, RNG_BLOCK, n - 1):
        alone, alone_values = sample_top_k(scores[[row]].copy(), 6, 0.8, seed=13, keys=keys[[row]])
        np.testing.assert_array_equal(alone[0], batch[row])
        np.testing.assert_array_equal(alone_values[0], values[row])
    order = rng.permutation(n)
    shuffled, _ = sample_top_k(scores[order].copy(), 6, 0.8, seed=13, keys=keys[order])
    np.testing.assert_array_equal(shuffled, batch[order])
    # half the batch, with other users around it
    half = order[: n // 2]
    np.testing.assert_array_equal(sample_top_k(scores[half].copy(), 6, 0.8, seed=13, keys=keys[half])[0],
                                  batch[half])
    # the key, not the row, decides: equal scores with different keys draw differently,
    # equal scores with the same key draw the same
    same = np.tile(scores[:1], (40, 1))
    varied, _ = sample_top_k(same.copy(), 6, 0.8, seed=13, keys=np.arange(40))
    assert len({tuple(r) for r in varied.tolist()}) > 20
    repeated, _ = sample_top_k(same.copy(), 6, 0.8, seed=13, keys=np.full(40, 5))
    assert (repeated == repeated[0]).all()


def test_float64_fallback_rows_are_keyed_too():
    # one item e^1000 times likelier than the rest: every other float32 weight is 0, so the
    # draws after the first come from the float64 Gumbel fallback, which must be keyed as well
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(40, 50))
    scores[:, 0] = 1000.0
    keys = np.arange(100, 140)
    batch, _ = sample_top_k(scores.copy(), 5, 1.0, seed=3, keys=keys)
    assert (batch[:, 0] == 0).all() and (batch >= 0).all()
    assert len({tuple(r) for r in batch[:, 1:].tolist()}) > 30  # random, not a ranking
    for row in (0, 7, 39):
        alone, _ = sample_top_k(scores[[row]].copy(), 5, 1.0, seed=3, keys=keys[[row]])
        np.testing.assert_array_equal(alone[0], batch[row])
    order = rng.permutation(40)
    np.testing.assert_array_equal(sample_top_k(scores[order].copy(), 5, 1.0, seed=3, keys=keys[order])[0],
                                  batch[order])
    # and the fallback still samples softmax over the rest: second draws of one row, many keys
    n_draws = 20000
    row = scores[:1, :8].copy()
    ids, _ = sample_top_k(np.tile(row, (n_draws, 1)), 2, 1.0, seed=4)
    assert (ids[:, 0] == 0).all()
    rest = row[0].copy()
    rest[0] = -np.inf
    p = softmax_probabilities(rest[None, :], 1.0)[0]
    counts = np.bincount(ids[:, 1], minlength=8)
    assert counts[0] == 0
    assert chisquare(counts[1:], n_draws * p[1:]).pvalue > 1e-3


@pytest.mark.parametrize("keys", [np.array([-1, 0]), np.array([0, 1, 2]), np.array([0.0, 1.0])])
def test_bad_keys_raise(keys):
    with pytest.raises(ValueError):
        sample_top_k(np.zeros((2, 5), np.float32), 2, 1.0, keys=keys)


# ----------------------------------------------------------------------------- masks, edges


def test_seen_items_never_drawn_and_rows_padded():
    rng = np.random.default_rng(7)
    scores = rng.normal(size=(300, 40)).astype(np.float32)
    seen = rng.random((300, 40)) < 0.5
    seen[0] = True
    seen[1, :39] = True
    ids, values = sample_top_k(scores.copy(), 6, 1.5, seed=3, exclude=sp.csr_matrix(seen.astype(np.float32)))
    drawn = ids >= 0
    assert not seen[np.nonzero(drawn)[0], ids[drawn]].any()
    np.testing.assert_array_equal(drawn.sum(axis=1), np.minimum((~seen).sum(axis=1), 6))
    np.testing.assert_array_equal(ids[0], [-1] * 6)
    np.testing.assert_array_equal(ids[1], [39, -1, -1, -1, -1, -1])
    assert np.isneginf(values[~drawn]).all()
    np.testing.assert_array_equal(values[drawn], scores[np.nonzero(drawn)[0], ids[drawn]])
    srt = np.sort(ids, axis=1)
    assert not np.any((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0))


def test_allowed_items_only():
    rng = np.random.default_rng(8)
    scores = rng.normal(size=(500, 30)).astype(np.float32)
    allowed = np.arange(0, 30, 3)
    ids, _ = sample_top_k(scores.copy(), 4, 1.0, seed=0, allowed=allowed)
    assert np.isin(ids, allowed).all()
    mask = np.zeros(30, bool)
    mask[allowed] = True
    np.testing.assert_array_equal(sample_top_k(scores.copy(), 4, 1.0, seed=0, allowed=mask)[0], ids)
    with pytest.raises(IndexError):
        sample_top_k(scores.copy(), 4, 1.0, allowed=[30])


@pytest.mark.parametrize("n_items", [5, 61, 503])  # 503: the last group has empty slots
def test_drawing_every_item_gives_a_permutation(n_items):
    rng = np.random.default_rng(n_items)
    scores = rng.normal(size=(40, n_items)).astype(np.float32)
    ids, values = sample_top_k(scores.copy(), n_items, 2.0, seed=1)
    np.testing.assert_array_equal(np.sort(ids, axis=1), np.tile(np.arange(n_items), (40, 1)))
    np.testing.assert_array_equal(values, np.take_along_axis(scores, ids, 1))


def test_weights_that_underflow_still_give_valid_exact_draws():
    # spread of 2000 / T: float32 weights of all but the best item underflow; the rest is
    # drawn with float64 Gumbels (the distribution is then essentially the ranking)
    scores = np.tile(np.linspace(-1000, 1000, 50, dtype=np.float32), (20, 1))
    ids, values = sample_top_k(scores.copy(), 5, 1.0, seed=0)
    np.testing.assert_array_equal(ids, np.tile([49, 48, 47, 46, 45], (20, 1)))
    np.testing.assert_array_equal(values, scores[:, [49, 48, 47, 46, 45]])
    # with allowed items only
    ids, _ = sample_top_k(scores.copy(), 3, 1.0, seed=0, allowed=np.arange(10))
    np.testing.assert_array_equal(ids[0], [9, 8, 7])


def test_same_seed_same_draws():
    scores = np.random.default_rng(5).normal(size=(50, 20)).astype(np.float32)
    a = sample_top_k(scores.copy(), 4, 1.0, seed=11)
    b = sample_top_k(scores.copy(), 4, 1.0, seed=11)
    c = sample_top_k(scores.copy(), 4, 1.0, seed=12)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_log_normaliser():
    rng = np.random.default_rng(8)
    scores = rng.normal(size=(5, 30)) * 40
    exclude = sp.csr_matrix(np.eye(5, 30, dtype=np.float32))
    _, _, log_norm = sample_top_k(scores.astype(np.float32), 3, 0.9, seed=0, exclude=exclude,
                                  return_log_norm=True)
    masked = scores.copy()
    masked[np.arange(5), np.arange(5)] = -np.inf
    z = masked / 0.9
    expected = z.max(axis=1) + np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1))
    np.testing.assert_allclose(log_norm, expected, rtol=1e-5)
    _, _, empty = sample_top_k(np.full((1, 4), -np.inf, np.float32), 2, 1.0, return_log_norm=True)
    assert np.isneginf(empty[0])
    with pytest.raises(ValueError):
        sample_top_k(scores.astype(np.float32), 3, 0.0, return_log_norm=True)


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"k": 0, "temperature": 1.0}, ValueError),
    ({"k": 2, "temperature": -1.0}, ValueError),
    ({"k": 2, "temperature": float("nan")}, ValueError),
    ({"k": 2, "temperature": float("inf")}, ValueError),
    ({"k": 2, "temperature": 1.0, "exclude": sp.csr_matrix((3, 5))}, ValueError),
])
def test_bad_arguments_raise(kwargs, error):
    with pytest.raises(error):
        sample_top_k(np.zeros((2, 5), np.float32), **kwargs)


# ----------------------------------------------------------------------------- recommend at T > 0


class ScoreModel(Recommender):
    """A score-only Recommender over a fixed score matrix (no vectors: the generic path)."""

    def __init__(self, scores: np.ndarray, seen: sp.csr_matrix | None = None):
        self.scores = scores
        self.n_users, self.n_items = scores.shape
        if seen is not None:
            self._remember_seen(seen)

    def fit(self, user_items, **kwargs):  # pragma: no cover - not trained
        raise NotImplementedError

    def score(self, user_ids, user_items=None):
        return self.scores[np.asarray(user_ids)].copy()


def test_sampled_recommend_is_batch_invariant_and_filters_seen():
    rng = np.random.default_rng(9)
    seen = sp.random(150, 80, density=0.2, format="csr", random_state=rng, dtype=np.float32)
    model = ScoreModel(rng.normal(size=(150, 80)).astype(np.float32), seen)
    users = np.arange(150)
    a, scores = model.recommend(users, seen, k=5, temperature=0.5, rng=4, batch_size=1000)
    b, _ = model.recommend(users, seen, k=5, temperature=0.5, rng=4, batch_size=13)
    np.testing.assert_array_equal(a, b)
    assert not seen.toarray()[np.repeat(users, 5), a.ravel()].any()
    np.testing.assert_array_equal(scores, np.take_along_axis(model.scores, a, 1))
    # the model's seen set is what is left out without user_items
    np.testing.assert_array_equal(model.recommend(users, k=5, temperature=0.5, rng=4)[0], a)
    # keyed on the user id: a user alone, or users in another order, draw the same items
    np.testing.assert_array_equal(model.recommend([77], k=5, temperature=0.5, rng=4)[0][0], a[77])
    order = rng.permutation(150)
    np.testing.assert_array_equal(model.recommend(order, k=5, temperature=0.5, rng=4)[0], a[order])
    # exactly sample_top_k over the masked scores, keys = user ids
    masked = model.scores.copy()
    apply_masks(masked, seen, None)
    np.testing.assert_array_equal(sample_top_k(masked, 5, 0.5, 4, keys=users)[0], a)
    assert not np.array_equal(model.recommend(users, k=5, temperature=0.5, rng=5)[0], a)
    # a Generator draws the seed: same generator state, same lists
    g1, g2 = (model.recommend(users, k=5, temperature=0.5, rng=np.random.default_rng(1))[0] for _ in range(2))
    np.testing.assert_array_equal(g1, g2)
    exact, _ = model.recommend(users, seen, k=5, temperature=0.0)
    ranked = _masked_top_k(model.scores, 5, seen)[0]
    np.testing.assert_array_equal(exact, ranked)
    with pytest.raises(ValueError):
        model.recommend(users, seen[:10], k=5)
    with pytest.raises(ValueError):
        model.recommend(users, k=5, rng=-1)


def test_sampled_recommend_probabilities_are_the_softmax():
    rng = np.random.default_rng(10)
    seen = sp.random(30, 40, density=0.3, format="csr", random_state=rng, dtype=np.float32)
    model = ScoreModel(rng.normal(size=(30, 40)).astype(np.float32) * 3, seen)
    ids, _, prob = model.recommend(np.arange(30), k=6, temperature=0.7, rng=2, with_probabilities=True)
    z = np.where(seen.toarray() > 0, -np.inf, model.scores.astype(np.float64) / 0.7)
    p = softmax_probabilities(z, 1.0)
    np.testing.assert_allclose(prob, np.take_along_axis(p, ids, 1), rtol=1e-4)


# ----------------------------------------------------------------------------- calibration


def test_mean_entropy_limits_and_monotonic():
    rng = np.random.default_rng(10)
    scores = rng.normal(size=(20, 50))
    seen = sp.random(20, 50, density=0.2, format="csr", random_state=rng)
    n_eligible = 50 - np.diff(seen.indptr)
    entropies = [mean_entropy(scores, t, exclude=seen) for t in (0.01, 0.1, 1.0, 10.0, 1e6)]
    assert all(a < b for a, b in zip(entropies, entropies[1:], strict=False))
    assert entropies[0] < 0.05
    assert entropies[-1] == pytest.approx(np.mean(np.log(n_eligible)), rel=1e-6)


def test_calibrate_temperature_to_a_target_entropy():
    rng = np.random.default_rng(11)
    scores = rng.normal(size=(30, 100))
    target = 3.0  # nats; log(100) = 4.6
    t = calibrate_temperature(scores, target, metric="entropy")
    assert mean_entropy(scores, t) == pytest.approx(target, rel=2e-3)
    with pytest.raises(ValueError, match="outside"):
        calibrate_temperature(scores, 5.0)  # above log(n_items)
    with pytest.raises(ValueError):
        calibrate_temperature(scores, 1.0, metric="novelty")


def test_calibrate_temperature_to_a_target_coverage():
    rng = np.random.default_rng(12)
    # every user likes the same few items: the top-10 covers little of the catalog
    scores = rng.normal(scale=0.02, size=(40, 200)) + np.linspace(3, 0, 200)
    top = expected_coverage(scores, 10, 0.0)
    uniform = expected_coverage(scores, 10, 1e6)
    assert top < 0.15 < 0.8 < uniform
    t = calibrate_temperature(scores, 0.5, metric="coverage", k=10, seed=3, rtol=0.02)
    assert expected_coverage(scores, 10, t, seed=3) == pytest.approx(0.5, abs=0.03)
    assert expected_coverage(scores, 10, t / 4, seed=3) < 0.5 < expected_coverage(scores, 10, t * 4, seed=3)


def test_seen_items_are_masked_in_scores_of_any_memory_order():
    scores = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::-1])
    exclude = sp.csr_matrix(np.eye(3, 4, dtype=np.float32))
    ids, _ = sample_top_k(scores, 2, 0.0, exclude=exclude)
    for row, seen in zip(ids, range(3), strict=True):
        assert seen not in row
