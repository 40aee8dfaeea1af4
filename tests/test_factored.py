"""The factored ranking kernel (ranking.factored.rank_vectors): -E = <[p_u, 1], [q_i, b_i]>
scored in blocks on worker threads, against brute force over the score matrix; and the vector
models' ``recommend`` that runs it."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from benchmarks.synthetic import SyntheticConfig, generate
from recsys_ebm.data.sparse import canonical_csr
from recsys_ebm.models.dot_ebm import DotEBM
from recsys_ebm.ranking.factored import FactorScorer, auto_batch_size, rank_vectors, run_blocks
from recsys_ebm.ranking.sampling import sample_top_k, softmax_probabilities
from recsys_ebm.ranking.topk import apply_masks, item_mask, top_k


@pytest.fixture(scope="module")
def small_model() -> tuple[DotEBM, sp.csr_matrix]:
    data = generate(SyntheticConfig(n_users=200, n_items=300, n_interactions=6000, rank=4, n_tastes=8))
    model = DotEBM(dim=8, user_model="free", epochs=3, lr=0.05, seed=0).fit(data.user_items, show_progress=False)
    return model, canonical_csr(data.user_items)


def _vectors(model: DotEBM, users: np.ndarray):
    return model.user_vectors(users), model.item_vectors(), model.item_biases()


def _brute_force(model, users, k, exclude=None, mask=None):
    scores = model.score(users).astype(np.float32)
    apply_masks(scores, exclude, mask)
    return top_k(scores, k)


def test_augmented_product_is_exactly_minus_energy(small_model):
    model, _ = small_model
    users = np.arange(10)
    ids, scores, log_p = rank_vectors(*_vectors(model, users), 5)
    assert log_p is None
    energies = model.energy(np.repeat(users, 5), ids.ravel()).reshape(ids.shape)
    np.testing.assert_allclose(scores, -energies, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [20, 64])  # heap and threshold selections
def test_exact_ranking_equals_brute_force_in_any_blocks_and_threads(small_model, k):
    model, user_items = small_model
    users = np.arange(model.n_users)
    expected = _brute_force(model, users, k, user_items)
    for batch_size, threads in ((None, 1), (37, 1), (37, 2), (1, 2)):
        ids, scores, _ = rank_vectors(*_vectors(model, users), k, exclude=user_items,
                                      batch_size=batch_size, n_threads=threads)
        np.testing.assert_array_equal(ids, expected[0])
        np.testing.assert_allclose(scores, expected[1], rtol=1e-5, atol=1e-6)
    seen = user_items.toarray() > 0
    assert not seen[np.repeat(users, k), ids.ravel()].any()
    # allowed items, and the model's own recommend (which runs this kernel)
    mask = np.zeros(model.n_items, bool)
    mask[::3] = True
    ids, _, _ = rank_vectors(*_vectors(model, users), 5, exclude=user_items, mask=mask)
    np.testing.assert_array_equal(ids, _brute_force(model, users, 5, user_items, mask)[0])
    np.testing.assert_array_equal(ids, model.recommend(users, user_items, k=5, items=mask)[0])
    assert mask[ids].all()


def test_exact_ranking_pads_when_fewer_than_k_eligible():
    rng = np.random.default_rng(0)
    users, items = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(6, 4)).astype(np.float32)
    exclude = sp.csr_matrix(np.array([[1, 1, 1, 1, 0, 0], [1] * 6, [0] * 6], np.float32))
    ids, scores, log_p = rank_vectors(users, items, np.zeros(6, np.float32), 4, exclude=exclude,
                                      with_log_p=True)
    assert (ids[0, :2] >= 4).all() and (ids[0, 2:] == -1).all()
    assert (ids[1] == -1).all() and np.isneginf(scores[1]).all() and np.isneginf(log_p[1]).all()
    assert (ids[2] >= 0).all()
    # user 0 has exactly two eligible items: their probabilities sum to one
    assert np.exp(log_p[0, :2]).sum() == pytest.approx(1.0, rel=1e-5)


def test_exact_ranking_log_p_is_the_t1_softmax_over_eligible_items(small_model):
    model, user_items = small_model
    users = np.arange(60)
    exclude = user_items[users]
    ids, _, log_p = rank_vectors(*_vectors(model, users), 10, exclude=exclude, with_log_p=True, batch_size=16)
    scores = model.score(users).astype(np.float64)
    scores[exclude.toarray() > 0] = -np.inf
    p = softmax_probabilities(scores, 1.0)
    np.testing.assert_allclose(np.exp(log_p), np.take_along_axis(p, ids, 1), rtol=1e-4)


def test_sampled_ranking_draws_like_the_score_matrix_sampler(small_model):
    model, user_items = small_model
    users = np.arange(model.n_users)
    ids, scores, _ = rank_vectors(*_vectors(model, users), 8, 0.7, seed=5, exclude=user_items,
                                  batch_size=64, n_threads=2)
    matrix = model.score(users).astype(np.float32)
    ref, _ = sample_top_k(matrix.copy(), 8, 0.7, 5, exclude=user_items)
    # the product is scaled before rounding, so a draw may rarely land on the other side of a
    # boundary; otherwise the draws are the same
    assert np.mean(ids == ref) > 0.98
    np.testing.assert_allclose(scores, np.take_along_axis(matrix, ids, 1), rtol=1e-5, atol=1e-6)
    assert not user_items.toarray()[np.repeat(users, 8), ids.ravel()].any()
    # blocks and threads do not change a draw; the seed does
    for batch_size, threads in ((None, 1), (7, 2), (1, 1)):
        again, _, _ = rank_vectors(*_vectors(model, users), 8, 0.7, seed=5, exclude=user_items,
                                   batch_size=batch_size, n_threads=threads)
        np.testing.assert_array_equal(again, ids)
    other, _, _ = rank_vectors(*_vectors(model, users), 8, 0.7, seed=6, exclude=user_items)
    assert not np.array_equal(other, ids)


def test_sampled_ranking_is_keyed_per_user(small_model):
    """A user's draw is the same alone, in a batch, or in a batch in another order."""
    model, user_items = small_model
    users = np.arange(model.n_users)
    batch, _, _ = rank_vectors(*_vectors(model, users), 6, 0.5, seed=2, keys=users, exclude=user_items)
    for u in (0, 63, 64, 199):
        alone, _, _ = rank_vectors(*_vectors(model, np.array([u])), 6, 0.5, seed=2, keys=np.array([u]),
                                   exclude=user_items[[u]])
        np.testing.assert_array_equal(alone[0], batch[u])
    order = np.random.default_rng(0).permutation(model.n_users)
    shuffled, _, _ = rank_vectors(*_vectors(model, order), 6, 0.5, seed=2, keys=order,
                                  exclude=canonical_csr(user_items[order]), batch_size=11, n_threads=2)
    np.testing.assert_array_equal(shuffled, batch[order])
    # and recommend keys on the user id
    np.testing.assert_array_equal(model.recommend(order, user_items, k=6, temperature=0.5, rng=2)[0],
                                  batch[order])


def test_sampled_ranking_log_p_is_the_softmax_at_t(small_model):
    model, user_items = small_model
    users = np.arange(50)
    exclude = user_items[users]
    ids, _, log_p = rank_vectors(*_vectors(model, users), 5, 0.4, seed=1, exclude=exclude, with_log_p=True)
    scores = model.score(users).astype(np.float64)
    scores[exclude.toarray() > 0] = -np.inf
    p = softmax_probabilities(scores, 0.4)
    np.testing.assert_allclose(np.exp(log_p), np.take_along_axis(p, ids, 1), rtol=1e-3)


def test_factor_scorer_masks_disallowed_items():
    rng = np.random.default_rng(1)
    items, biases = rng.normal(size=(9, 3)).astype(np.float32), rng.normal(size=9).astype(np.float32)
    users = rng.normal(size=(4, 3)).astype(np.float32)
    scorer = FactorScorer(items, biases, allowed=[1, 4])
    scores = scorer.score(users)
    expected = users @ items.T + biases
    np.testing.assert_allclose(scores[:, [1, 4]], expected[:, [1, 4]], rtol=1e-5, atol=1e-6)
    assert np.isneginf(np.delete(scores, [1, 4], axis=1)).all()
    with pytest.raises(ValueError):
        scorer.score(users[:, :2])


def test_a_user_scores_bit_for_bit_the_same_alone_and_in_any_block():
    # a single row would go through BLAS's matrix-vector kernel, rounded differently from the
    # matrix product: recommend() for one user and export in blocks would then disagree on ties
    rng = np.random.default_rng(5)
    items, biases = rng.normal(size=(3000, 64)).astype(np.float32), rng.normal(size=3000).astype(np.float32)
    users = rng.normal(size=(50, 64)).astype(np.float32)
    scorer = FactorScorer(items, biases)
    full = scorer.score(users)
    for size in (1, 2, 3, 7, 16):
        for start in range(0, 50, size):
            block = scorer.score(users[start:start + size])
            assert np.array_equal(block, full[start:start + size]), (size, start)
    buffer = np.full((4, 3000), np.nan, dtype=np.float32)
    assert scorer.score(users[:1], out=buffer[:1]) is not None and np.array_equal(buffer[0], full[0])
    assert scorer.score(users[:0]).shape == (0, 3000)


def test_run_blocks_covers_every_row_once():
    for n_rows, batch_size, threads in ((0, 5, 1), (1, 5, 2), (23, 5, 2), (23, 23, 1), (100, 7, 3)):
        hits = np.zeros(n_rows, int)

        def fn(start, stop, hits=hits):
            hits[start:stop] += 1

        run_blocks(fn, n_rows, batch_size, threads)
        assert (hits == 1).all()
    assert 8 <= auto_batch_size(1_000_000) <= auto_batch_size(27_000) <= 1024
    assert auto_batch_size(0) == 1024


def test_rank_vectors_rejects_bad_arguments():
    users, items, biases = np.zeros((2, 3), np.float32), np.zeros((5, 3), np.float32), np.zeros(5, np.float32)
    for kwargs in ({"k": 0}, {"k": 2, "temperature": -1.0}, {"k": 2, "item_biases": np.zeros(4)}):
        with pytest.raises(ValueError):
            rank_vectors(**{"user_vectors": users, "item_vectors": items, "item_biases": biases, **kwargs})
    with pytest.raises(ValueError, match="shape"):
        rank_vectors(users, items, biases, 2, mask=np.ones(4, bool))
    # a mask leaves only its items
    ids, _, _ = rank_vectors(users, items, biases, 3, mask=item_mask(5, [1, 3]))
    np.testing.assert_array_equal(ids, [[1, 3, -1], [1, 3, -1]])
