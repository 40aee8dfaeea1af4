"""attnebm (models/attn_ebm): learns an order rule a set model cannot see, with the exact and the
logQ-corrected sampled softmax; attention weights are a Gibbs distribution; save/load; the
``recommend --explain`` command on a saved model."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_ebm.data.sequences import Sequences
from recsys_ebm.models import load_model
from recsys_ebm.models.attn_ebm import AttnEBM
from recsys_ebm.models.attn_ebm.model import seen_before, windows


def cycles(n_users: int = 48, n_items: int = 10, length: int = 7) -> Sequences:
    rng = np.random.default_rng(1)
    rows = [[(s + j) % n_items for j in range(length)] for s in rng.integers(0, n_items, n_users)]
    return Sequences.from_lists(rows, n_items)


def small(**options) -> AttnEBM:
    return AttnEBM(**{"dim": 16, "max_len": 8, "dropout": 0.1, "lr": 0.01, "epochs": 40,
                      "batch_size": 16, "n_negatives": 6, "seed": 0, **options})


def test_windows_and_history_masks():
    seqs = Sequences.from_lists([[4, 2, 3], [1]], n_items=5)
    assert windows(seqs, 2).tolist() == [[3, 4], [0, 2]]
    import torch

    tokens = torch.tensor([[0, 5, 3, 4]])
    seen = seen_before(tokens, torch.tensor([0, 0]), torch.tensor([1, 3]), 5)
    assert seen.int().tolist() == [[0, 0, 0, 0, 1], [0, 0, 1, 1, 1]]


@pytest.mark.parametrize("loss", ["exact", "sampled"])
def test_learns_the_successor_rule(loss):
    seqs = cycles()
    model = small(loss=loss).fit(seqs.to_csr(), sequences=seqs, show_progress=False)
    probe = Sequences.from_lists([[2, 3, 4], [8, 9]], 10)
    ids, _ = model.recommend(np.arange(2), sequences=probe, k=1)
    assert ids[:, 0].tolist() == [5, 0]
    weights = model.explain(probe.take([0]))
    assert [e["position"] for e in weights] == [0, 1, 2] and [e["item"] for e in weights] == [4, 3, 2]
    assert sum(e["weight"] for e in weights) == pytest.approx(1.0, abs=1e-5)


def test_deterministic_save_load_and_cli_explain(tmp_path, capsys):
    seqs = cycles()
    a = small(epochs=3).fit(seqs.to_csr(), sequences=seqs, show_progress=False)
    b = small(epochs=3).fit(seqs.to_csr(), sequences=seqs, show_progress=False)
    assert np.array_equal(a.score(np.arange(6)), b.score(np.arange(6)))
    meta = {"user_ids": list(range(48)), "item_ids": list(range(10))}
    a.save(tmp_path / "m", meta=meta)
    loaded = load_model(tmp_path / "m")
    assert np.array_equal(loaded.score(np.arange(6)), a.score(np.arange(6)))
    from recsys_ebm.cli import main

    assert main(["recommend", "--model-path", str(tmp_path / "m"), "--history", "1,2,3",
                 "--k", "3", "--explain"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("new user: ") and "attention over past events" in out
    assert main(["recommend", "--model-path", str(tmp_path / "m"), "--user", "0", "--explain"]) == 0
