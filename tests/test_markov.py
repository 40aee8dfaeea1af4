"""The first-order Markov chain (models/markov.py): known transition probabilities, the
ordered-history plumbing of models/sequential.py, save/load, and its ML-100K next-item numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from recsys_ebm.data.sequences import Sequences
from recsys_ebm.models import load_model
from recsys_ebm.models.markov import MarkovChain, transition_counts

ROWS = [[0, 1, 2], [0, 1, 3], [2, 0, 1], [3, 2]]


def fitted(alpha: float = 1.0) -> tuple[MarkovChain, Sequences]:
    seqs = Sequences.from_lists(ROWS, n_items=5)
    return MarkovChain(alpha=alpha).fit(seqs.to_csr(), sequences=seqs, show_progress=False), seqs


def test_transition_counts_and_probabilities():
    seqs = Sequences.from_lists(ROWS, n_items=5)
    counts = transition_counts(seqs).toarray()
    assert counts[0, 1] == 3 and counts[1, 2] == 1 and counts[1, 3] == 1 and counts[2, 0] == 1
    assert counts[3, 2] == 1 and counts.sum() == 7  # 2 + 2 + 2 + 1 transitions, none across rows
    model, _ = fitted(alpha=2.0)
    pop = (np.bincount(seqs.items, minlength=5) + 1.0) / (len(seqs.items) + 5.0)
    history = Sequences.from_lists([[3, 0]], n_items=5)  # last item 0: followed by 1 three times
    log_p = model.score(np.array([0]), sequences=history)[0]
    expected = (counts[0] + 2.0 * pop) / (counts[0].sum() + 2.0)
    assert np.allclose(np.exp(log_p), expected, rtol=1e-5)
    # log_next renormalises over the items the history has not had
    log_next = model.log_next(history)[0]
    assert np.isneginf(log_next[[0, 3]]).all()
    assert np.allclose(np.exp(log_next[[1, 2, 4]]), expected[[1, 2, 4]] / expected[[1, 2, 4]].sum())


def test_trained_users_rank_from_their_sequences_and_the_order_matters():
    model, _ = fitted()
    ids, _ = model.recommend(np.arange(4), k=2)
    assert ids[3].tolist() == [0, 1]  # user 3 ends with 2: 2 -> 0 once, then popularity (1)
    assert ids[0].tolist() == [3, 4]  # user 0 ends with 2 too, but 0 is in its history
    # the same set in another order ends elsewhere: another next item
    a = model.recommend(np.array([0]), sequences=Sequences.from_lists([[3, 0]], 5), k=1)[0]
    b = model.recommend(np.array([0]), sequences=Sequences.from_lists([[0, 3]], 5), k=1)[0]
    assert (a[0, 0], b[0, 0]) == (1, 2)
    with pytest.raises(ValueError, match="pass sequences="):
        model.recommend(np.array([0]), sp.csr_matrix(np.ones((1, 5))), fold_in=True)
    with pytest.raises(ValueError, match="reads the order"):
        MarkovChain().fit(sp.csr_matrix(np.ones((2, 5))))


def test_save_load_round_trip(tmp_path):
    model, seqs = fitted()
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert np.array_equal(loaded.train_sequences.items, seqs.items)
    assert np.array_equal(loaded.score(np.arange(4)), model.score(np.arange(4)))
    assert np.array_equal(loaded.recommend(np.arange(4), k=3)[0], model.recommend(np.arange(4), k=3)[0])


def test_ml100k_next_item_through_the_cli(tmp_path, movielens_dir):
    from recsys_ebm.cli import main

    out = tmp_path / "markov.json"
    assert main(["evaluate", "--data-dir", str(movielens_dir), "--no-download", "--protocol", "loo",
                 "--model", "markov", "--no-mlflow", "--quiet", "--json", str(out)]) == 0
    document = json.loads(out.read_text())
    nxt = document["next_item"]
    assert nxt["n_users"] == 940 and nxt["n_tied_test"] == 414
    assert nxt["ndcg@10"] == pytest.approx(0.0801, abs=5e-4)
    assert nxt["hr@10"] == pytest.approx(0.1532, abs=5e-4)
    assert nxt["hr@10"] == pytest.approx(document["metrics"]["hitrate@10"])
