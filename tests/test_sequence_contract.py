"""What every next-item model (``uses_order``: markov, seqcrbm, attnebm) must do, checked on
each fitted to the same order rule (item j is followed by j + 1): a normalised next-item
distribution that leaves the history out, rankings that depend on the order of a history and
never return its items, a seeded sampler whose draws do not depend on the batch, T -> 0 as the
exact ranking, and the same lists after a save and load."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_ebm.data.sequences import Sequences
from recsys_ebm.models import load_model
from recsys_ebm.models.attn_ebm import AttnEBM
from recsys_ebm.models.markov import MarkovChain
from recsys_ebm.models.seq_crbm import SeqCRBM

N_ITEMS = 12


def cycles(n_users: int = 60, length: int = 8) -> Sequences:
    rng = np.random.default_rng(0)
    rows = [[(s + j) % N_ITEMS for j in range(length)] for s in rng.integers(0, N_ITEMS, n_users)]
    return Sequences.from_lists(rows, N_ITEMS)


MODELS = {
    "markov": lambda: MarkovChain(),
    "seqcrbm": lambda: SeqCRBM(n_hidden=8, n_lags=2, rank=4, training="exact", lr=0.05, epochs=40,
                               positions_per_epoch=400, batch_size=64, seed=0),
    "attnebm": lambda: AttnEBM(dim=16, max_len=8, dropout=0.1, lr=0.01, epochs=40, batch_size=16,
                               n_negatives=6, seed=0),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def fitted(request):
    seqs = cycles()
    model = MODELS[request.param]().fit(seqs.to_csr(), sequences=seqs, show_progress=False)
    return request.param, model


PROBES = Sequences.from_lists([[3, 4], [10, 11], [4, 3], [0, 1, 2, 3, 4, 5], [7]], N_ITEMS)


def test_it_reads_the_order_and_learns_the_rule(fitted):
    _, model = fitted
    assert model.uses_order
    ids, _ = model.recommend(np.arange(len(PROBES)), sequences=PROBES, k=1)
    assert ids[[0, 1, 3, 4], 0].tolist() == [5, 0, 6, 8]
    # the same two items the other way round: another next-item distribution
    p = np.exp(model.log_next(PROBES.take([0, 2])))
    assert np.abs(p[0] - p[1]).max() > 0.2


def test_log_next_is_a_distribution_over_the_unseen_items(fitted):
    _, model = fitted
    log_p = model.log_next(PROBES)
    assert log_p.shape == (len(PROBES), N_ITEMS)
    np.testing.assert_allclose(np.exp(log_p).sum(1), 1.0, rtol=1e-9)
    for r in range(len(PROBES)):
        assert np.isneginf(log_p[r, PROBES.row(r)]).all()
        assert np.isfinite(np.delete(log_p[r], PROBES.row(r))).all()
    # the ranking is the distribution's order
    ids, _ = model.recommend(np.arange(len(PROBES)), sequences=PROBES, k=3)
    np.testing.assert_array_equal(ids, np.argsort(-log_p, axis=1, kind="stable")[:, :3])


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_lists_leave_the_history_out_and_do_not_depend_on_the_batch(fitted, temperature):
    _, model = fitted
    users = np.arange(len(PROBES))
    ids, scores = model.recommend(users, sequences=PROBES, k=6, temperature=temperature, rng=5)
    for r in range(len(PROBES)):
        assert not set(ids[r]) & set(PROBES.row(r)) and len(set(ids[r])) == 6
        alone, alone_scores = model.recommend(users[[r]], sequences=PROBES.take([r]), k=6,
                                              temperature=temperature, rng=5)
        np.testing.assert_array_equal(alone[0], ids[r])
        np.testing.assert_allclose(alone_scores[0], scores[r], rtol=1e-5, atol=1e-5)
    again, _ = model.recommend(users, sequences=PROBES, k=6, temperature=temperature, rng=5)
    np.testing.assert_array_equal(again, ids)


def test_sampling_explores_as_t_rises_and_freezes_to_the_ranking_as_t_falls(fitted):
    _, model = fitted
    users = np.arange(len(PROBES))
    exact, _ = model.recommend(users, sequences=PROBES, k=3)
    cold, _ = model.recommend(users, sequences=PROBES, k=3, temperature=1e-4, rng=1)
    np.testing.assert_array_equal(cold, exact)
    firsts = {int(model.recommend(users[[0]], sequences=PROBES.take([0]), k=1, temperature=50.0,
                                  rng=seed)[0][0, 0]) for seed in range(30)}
    assert len(firsts) >= 4  # hot: the first draw wanders over the catalog


def test_saved_and_loaded_it_serves_the_same_lists(fitted, tmp_path):
    name, model = fitted
    path = model.save(tmp_path / name)
    again = load_model(path)
    users = np.arange(len(PROBES))
    for temperature in (0.0, 0.7):
        np.testing.assert_array_equal(
            again.recommend(users, sequences=PROBES, k=5, temperature=temperature, rng=3)[0],
            model.recommend(users, sequences=PROBES, k=5, temperature=temperature, rng=3)[0])
    np.testing.assert_allclose(again.log_next(PROBES), model.log_next(PROBES), rtol=1e-6)
