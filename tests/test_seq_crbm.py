"""The sequence CRBM (models/seq_crbm): its free energy against brute-force enumeration of a
tiny model, exact and CD-k training on a known sequence rule, save/load and determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from recsys_ebm.data.sequences import Sequences
from recsys_ebm.models import load_model
from recsys_ebm.models.seq_crbm import SeqCRBM
from recsys_ebm.models.seq_crbm.model import contexts, history_mask
from recsys_ebm.models.seq_crbm.module import SeqCRBMNet, gap_buckets


def test_free_energy_matches_enumeration_of_every_state():
    n_items, n_hidden, n_lags, rank = 3, 2, 2, 1
    net = SeqCRBMNet(n_items, n_hidden, n_lags, rank, True, torch.Generator().manual_seed(4))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    lags = torch.tensor([[2, 0], [3, 1]])  # row 0: last event item 1, no second; row 1: items 2, 0
    gaps = torch.tensor([[3, 0], [1, 5]])
    visible, hidden = net.dynamic_biases(lags, gaps)
    free = net.free_energy_all(visible, hidden).detach().double().numpy()
    p = {k: v.detach().double().numpy() for k, v in net.named_parameters()}
    for row in range(2):
        # the energy written out from its definition, summed over every (v, h) state
        a = p["visible_bias"] + sum(p["lag_visible"][lag, lags[row, lag]] @ p["item_factors"].T for lag in range(n_lags))
        c = p["hidden_bias"] + sum(p["lag_hidden"][lag, lags[row, lag]] + p["gap_hidden"][lag, gaps[row, lag]]
                                   for lag in range(n_lags))
        joint = np.zeros(n_items)
        for v in range(n_items):
            for h in itertools.product([0, 1], repeat=n_hidden):
                energy = -a[v] - np.dot(h, c + p["weight"][v])
                joint[v] += np.exp(-energy)
        assert np.allclose(np.exp(-free[row]), joint, rtol=1e-6)
        expected = joint / joint.sum()
        got = np.exp(-free[row]) / np.exp(-free[row]).sum()
        assert np.allclose(got, expected, rtol=1e-6)


def test_contexts_and_masks():
    seqs = Sequences.from_lists([[4, 2, 3], [1, 0]], n_items=5, timestamps=[[0, 0, 100], [5, 10]])
    lags, gaps = contexts(seqs, np.array([2, 3, 5]), np.array([0, 0, 1]), 2)
    assert lags.tolist() == [[3, 5], [4, 3], [1, 2]]
    assert gaps.tolist() == [[1, 0], [3, 1], [2, 0]]  # none 0, tie 1, <= 1 min 2, <= 1 h 3 (100 s)
    mask = history_mask(seqs, np.array([2, 5]), np.array([0, 1]))
    assert mask.numpy().astype(int).tolist() == [[0, 0, 1, 0, 1], [1, 1, 0, 0, 0]]
    assert gap_buckets(torch.tensor([-1, 0, 59, 60, 3599, 10**7])).tolist() == [0, 1, 2, 2, 3, 6]


def cycles(n_users: int = 60, n_items: int = 12, length: int = 8) -> Sequences:
    """Every user walks the items in the order 0, 1, ..., n_items - 1 from a random start."""
    rng = np.random.default_rng(0)
    rows = [[(s + j) % n_items for j in range(length)] for s in rng.integers(0, n_items, n_users)]
    return Sequences.from_lists(rows, n_items)


@pytest.mark.parametrize("training", ["exact", "cd"])
def test_learns_the_successor_rule(training):
    seqs = cycles()
    model = SeqCRBM(n_hidden=8, n_lags=2, rank=4, training=training, cd_steps=1, lr=0.05,
                    epochs=40, positions_per_epoch=400, batch_size=64, seed=0)
    model.fit(seqs.to_csr(), sequences=seqs, show_progress=False)
    probe = Sequences.from_lists([[3, 4], [10, 11]], 12)
    ids, _ = model.recommend(np.arange(2), sequences=probe, k=1)
    assert ids[:, 0].tolist() == [5, 0]
    log_next = model.log_next(probe)
    assert np.allclose(np.exp(log_next).sum(1), 1.0)
    if training == "exact":
        assert np.exp(log_next[0, 5]) > 0.5


def test_save_load_and_determinism(tmp_path):
    seqs = cycles()
    options = dict(n_hidden=4, n_lags=2, rank=2, epochs=3, positions_per_epoch=200, time_gaps=True)
    one = SeqCRBM(seed=1, **options).fit(seqs.to_csr(), sequences=seqs, show_progress=False)
    two = SeqCRBM(seed=1, **options).fit(seqs.to_csr(), sequences=seqs, show_progress=False)
    assert np.array_equal(one.score(np.arange(5)), two.score(np.arange(5)))
    one.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert np.array_equal(loaded.score(np.arange(5)), one.score(np.arange(5)))
