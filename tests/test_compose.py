"""Composed energies with known answers: products and mixtures of softmaxes, least misery,
most pleasure and Borda on hand-made scores, group keys, and the group measures
(co-rated Pearson against a brute force, group draws meeting their rule, member NDCG, paired CIs)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats

from recsys_ebm.evaluation.groups import (
    DIVERGENT_MAX,
    SIMILAR_MIN,
    draw_groups,
    group_measures,
    mean_pairwise,
    member_ndcg,
    paired_ci,
    pearson_matrix,
)
from recsys_ebm.ranking.compose import (
    borda_points,
    compose_scores,
    group_key,
    member_weights,
    mix_weights,
    mixed_vectors,
)
from recsys_ebm.ranking.sampling import softmax_probabilities
from recsys_ebm.ranking.topk import top_k

RNG = np.random.default_rng(3)


def _softmax(x: np.ndarray) -> np.ndarray:
    return softmax_probabilities(np.atleast_2d(x))[0]


def test_poe_of_two_softmaxes_is_the_softmax_of_summed_logits():
    logits = RNG.normal(size=(2, 7)) * 2
    for t in (0.5, 1.0, 3.0):
        composed = compose_scores(logits, "poe", temperature=t)
        # equal weights 1/2: p_g ∝ (p_1 p_2)^(1/2), i.e. softmax((s_1 + s_2) / (2T))
        np.testing.assert_allclose(_softmax(composed / t), _softmax(logits.sum(0) / (2 * t)), rtol=1e-5)
        product = np.sqrt(_softmax(logits[0] / t) * _softmax(logits[1] / t))
        np.testing.assert_allclose(_softmax(composed / t), product / product.sum(), rtol=1e-5)
    # weights (1, 1) unnormalised give the same distribution at T = 1/2: the plain sum of logits
    np.testing.assert_allclose(_softmax(2 * compose_scores(logits, "poe", [1, 1])),
                               _softmax(logits.sum(0)), rtol=1e-5)
    weighted = compose_scores(logits, "poe", [3, 1])
    expected = _softmax(logits[0]) ** 0.75 * _softmax(logits[1]) ** 0.25
    np.testing.assert_allclose(_softmax(weighted), expected / expected.sum(), rtol=1e-5)


def test_average_is_the_mixture_of_the_members_distributions():
    logits = RNG.normal(size=(3, 6))
    logits[:, 4] = -np.inf  # an item the group may not receive
    for t in (0.7, 1.0, 2.0):
        composed = compose_scores(logits, "average", [0.5, 0.3, 0.2], temperature=t)
        mixture = 0.5 * _softmax(logits[0] / t) + 0.3 * _softmax(logits[1] / t) + 0.2 * _softmax(logits[2] / t)
        np.testing.assert_allclose(_softmax(composed / t), mixture, rtol=1e-5, atol=1e-12)
        assert composed[4] == -np.inf


def test_least_misery_and_most_pleasure_on_a_hand_made_example():
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.3, 0.6]])
    scores = np.log(p)
    # minus the largest energy -log p: min(p) = [0.1, 0.3, 0.2]; max(p) = [0.5, 0.3, 0.6]
    np.testing.assert_allclose(compose_scores(scores, "least-misery"), np.log([0.1, 0.3, 0.2]), rtol=1e-6)
    np.testing.assert_allclose(compose_scores(scores, "most-pleasure"), np.log([0.5, 0.3, 0.6]), rtol=1e-6)
    assert top_k(compose_scores(scores, "least-misery")[None], 3)[0][0].tolist() == [1, 2, 0]
    assert top_k(compose_scores(scores, "most-pleasure")[None], 3)[0][0].tolist() == [2, 0, 1]
    # a member's energies are defined up to a constant: shifting one changes nothing
    shifted = scores + np.array([[5.0], [-3.0]])
    np.testing.assert_allclose(compose_scores(shifted, "least-misery"),
                               compose_scores(scores, "least-misery"), rtol=1e-5)
    # without that gauge member 2's +8 offset would decide everything; with it, item 1 (0.3 for
    # both) beats item 0 (0.5 / 0.1) under least misery
    assert top_k(compose_scores(shifted, "least-misery")[None], 1)[0][0, 0] == 1


def test_borda_on_a_hand_made_example():
    scores = np.array([[3.0, 1.0, 2.0, 0.0], [0.0, 2.0, 3.0, 1.0]])
    np.testing.assert_array_equal(borda_points(scores), scores)  # ranks above = 3, 1, 2, 0
    composed = compose_scores(scores, "borda")
    np.testing.assert_allclose(composed, [1.5, 1.5, 2.5, 0.5])
    assert top_k(composed[None], 4)[0][0].tolist() == [2, 0, 1, 3]  # the tie goes to the lower id
    np.testing.assert_allclose(compose_scores(scores, "borda", [1, 0]), scores[0])
    # ties share the average; ineligible items get no points and take none away
    np.testing.assert_allclose(borda_points(np.array([[1.0, 1.0, 0.0, -np.inf]])),
                               [[1.5, 1.5, 0.0, -np.inf]])
    masked = scores.copy()
    masked[:, 2] = -np.inf
    np.testing.assert_allclose(compose_scores(masked, "borda"), [1.0, 1.5, -np.inf, 0.5])  # (2+0)/2, (1+2)/2, (0+1)/2


def test_a_group_of_one_is_the_user():
    scores = RNG.normal(size=(1, 9)).astype(np.float32)
    for strategy in ("poe", "average", "least-misery", "most-pleasure", "borda"):
        composed = compose_scores(scores, strategy, temperature=1.0)
        assert top_k(composed[None], 9)[0].tolist() == top_k(scores, 9)[0].tolist(), strategy
    np.testing.assert_array_equal(compose_scores(scores, "poe"), scores[0])
    assert group_key([17]) == 17


def test_weights_keys_and_mixed_vectors():
    np.testing.assert_allclose(member_weights(None, 4), [0.25] * 4)
    np.testing.assert_allclose(member_weights([2, 6], 2), [0.25, 0.75])
    np.testing.assert_allclose(mix_weights(0.3), [0.7, 0.3])
    for bad in ([1, -1], [0, 0], [1, np.nan]):
        with pytest.raises(ValueError):
            member_weights(bad, 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mix_weights(1.5)
    with pytest.raises(ValueError, match="not a composition"):
        compose_scores(np.zeros((2, 3)), "pseudo-user")
    # the key is the sorted members' (order-free, deterministic) and above every user key
    assert group_key([5, 2, 9]) == group_key([9, 5, 2]) == group_key([2, 5, 9])
    assert group_key([2, 5, 9]) != group_key([2, 5, 10]) and group_key([2, 5]) >= 1 << 40
    assert group_key([2, 5], [1, 3]) == group_key([5, 2], [3, 1]) != group_key([2, 5])
    vectors = RNG.normal(size=(3, 4))
    np.testing.assert_allclose(mixed_vectors(vectors, [1, 1, 2]), (vectors[0] + vectors[1] + 2 * vectors[2]) / 4,
                               rtol=1e-6)


def test_pearson_matrix_matches_scipy_on_co_rated_items():
    dense = np.where(RNG.random((12, 30)) < 0.5, RNG.integers(1, 6, (12, 30)), 0).astype(float)
    got = pearson_matrix(sp.csr_matrix(dense), min_common=5)
    for u in range(12):
        for v in range(12):
            both = (dense[u] > 0) & (dense[v] > 0)
            x, y = dense[u, both], dense[v, both]
            if both.sum() < 5 or x.std() == 0 or y.std() == 0:
                assert np.isnan(got[u, v])
            else:
                assert got[u, v] == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-9)


def test_group_draws_meet_their_rule_and_are_seeded():
    dense = np.where(RNG.random((60, 80)) < 0.6, RNG.integers(1, 6, (60, 80)), 0).astype(float)
    pearson = pearson_matrix(sp.csr_matrix(dense))
    candidates = np.arange(60)
    for group_type, size in (("similar", 3), ("divergent", 4), ("random", 5)):
        groups = draw_groups(candidates, pearson, size, 20, group_type, seed=1)
        again = draw_groups(candidates, pearson, size, 20, group_type, seed=1)
        assert [g.tolist() for g in groups] == [g.tolist() for g in again]
        assert len({tuple(g) for g in groups}) == len(groups) > 0
        for g in groups:
            assert g.size == size and np.unique(g).size == size
            if group_type == "similar":
                assert mean_pairwise(pearson, g) >= SIMILAR_MIN
            elif group_type == "divergent":
                assert mean_pairwise(pearson, g) <= DIVERGENT_MAX
    # an impossible rule finds nothing and says so by returning fewer groups
    assert draw_groups(candidates, np.full((60, 60), np.nan), 2, 5, "similar", max_attempts=50) == []


def test_member_ndcg_and_measures_by_hand():
    test = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]], dtype=np.float32))
    recs = np.array([[0, 2], [1, 3]])
    per_member = member_ndcg(recs, [np.array([0, 1]), np.array([2])], test, k=2)
    disc = 1 / np.log2(3)
    np.testing.assert_allclose(per_member[0], [1.0, disc / (1 + disc)])
    np.testing.assert_allclose(per_member[1], [disc])
    measures = group_measures(per_member)
    np.testing.assert_allclose(measures["min"], [disc / (1 + disc), disc])
    np.testing.assert_array_equal(measures["zero_hit"], [0.0, 0.0])
    a, b = RNG.normal(size=200), RNG.normal(size=200)
    ci = paired_ci(a, b)
    reference = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert ci["low"] == pytest.approx(reference.low) and ci["high"] == pytest.approx(reference.high)
