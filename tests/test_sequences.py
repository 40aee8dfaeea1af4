"""The sequence view (data/sequences.py), the seeded tie rule of the loo split, and the
next-item metrics (evaluation/metrics.py) with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from recsys_ebm.data.interactions import Interactions
from recsys_ebm.data.sequences import Sequences, tie_keys
from recsys_ebm.data.split import leave_one_out
from recsys_ebm.evaluation.metrics import next_item_metrics, target_ranks


def tied_frame(n_users: int = 400) -> pd.DataFrame:
    """Every user has three events at t=10 (items u, u+1, u+2... in id order) and one at t=5."""
    rows = []
    for u in range(n_users):
        rows.append((u, 1000 + u, 5))
        rows += [(u, u * 3 + j, 10) for j in range(3)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_ties_are_broken_by_a_seeded_permutation_not_by_id():
    frame = tied_frame()
    split = leave_one_out(frame)
    test = split.test.set_index("user_id")["item_id"]
    position_in_tie = (test - test.index.to_numpy() * 3).to_numpy()  # 0, 1 or 2 by id rank
    counts = np.bincount(position_in_tie, minlength=3)
    # uniform over the three tied items (chi-square, 2 dof, 0.1% level 13.8); by id it would be all 2
    expected = len(test) / 3
    assert ((counts - expected) ** 2 / expected).sum() < 13.8
    # the rule depends neither on the row order nor on the split: shuffled rows, same test items
    shuffled = leave_one_out(frame.sample(frac=1.0, random_state=3).reset_index(drop=True))
    assert shuffled.test.set_index("user_id")["item_id"].sort_index().equals(test.sort_index())
    # another seed is another permutation
    other = leave_one_out(frame, tie_seed=1).test.set_index("user_id")["item_id"]
    assert (other.sort_index() != test.sort_index()).mean() > 0.4


def test_sequence_view_agrees_with_the_split_and_keeps_gaps():
    frame = tied_frame(50)
    inter = Interactions.from_frame(frame)
    seqs = inter.sequences()
    split = leave_one_out(frame)
    last = inter.item_map.to_raw(seqs.items[seqs.indptr[1:] - 1])
    train_pairs = set(zip(split.train["user_id"], split.train["item_id"], strict=True))
    held = [i for u, i in zip(frame["user_id"], frame["item_id"], strict=True) if (u, i) not in train_pairs]
    assert list(last) == held  # (unique items: the split drops them as unknown, but held them out)
    assert seqs.tied_last().all()
    gaps = seqs.gaps
    assert gaps[seqs.indptr[:-1]].tolist() == [-1] * 50
    assert set(gaps[seqs.indptr[:-1] + 1]) == {5} and set(gaps[seqs.indptr[:-1] + 2]) == {0}
    keys = tie_keys(np.array([1, 1]), np.array(["7", 7]))
    assert keys[0] == keys[1]  # ids hashed as text: int and str spellings agree


def test_sequences_operations():
    seqs = Sequences.from_lists([[3, 1], [], [2, 0, 4]], n_items=5, timestamps=[[1, 2], [], [5, 6, 9]])
    assert seqs.lengths.tolist() == [2, 0, 3]
    assert seqs.take([2, 0]).row(0).tolist() == [2, 0, 4] and seqs.take([2, 0]).row(1).tolist() == [3, 1]
    assert seqs.to_csr().toarray().tolist() == [[0, 1, 0, 1, 0], [0] * 5, [1, 0, 1, 0, 1]]
    grown = seqs.appended([2, 1], [1, 4], [10, 11])
    assert [grown.row(r).tolist() for r in range(3)] == [[3, 1], [4], [2, 0, 4, 1]]
    assert grown.timestamps.tolist() == [1, 2, 11, 5, 6, 9, 10]
    assert seqs.gaps.tolist() == [-1, 1, -1, 1, 3]
    with pytest.raises(ValueError, match="outside"):
        Sequences.from_lists([[5]], n_items=5)


def test_next_item_metrics_known_answers():
    hits = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=bool)
    assert target_ranks(hits).tolist() == [1, 2, 0]
    out = next_item_metrics(np.array([1, 2, 0, 11]), ks=(1, 10))
    assert out["hr@1"] == 0.25 and out["hr@10"] == 0.5
    assert out["ndcg@1"] == 0.25
    assert out["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert out["mrr"] == pytest.approx((1 + 0.5 + 0 + 1 / 11) / 4)
    assert out["n_users"] == 4
    with pytest.raises(ValueError):
        next_item_metrics(np.array([-1]))


def test_ml100k_loo_test_items_are_the_last_events(movielens_dir):
    from recsys_ebm.experiments import runner

    dataset = runner.load_dataset("movielens", "100k", str(movielens_dir), download=False)
    data = runner.prepare(runner.make_split(dataset.ratings, "loo"), "loo")
    full = Interactions.from_frame(dataset.ratings, user_map=data.train.user_map,
                                   item_map=data.train.item_map)
    seqs = full.sequences()
    users = data.test.user_idx
    assert np.array_equal(seqs.items[seqs.indptr[1:] - 1][users], data.test.item_idx)
    train = data.train.sequences()
    assert all(np.array_equal(train.row(u), seqs.row(u)[:-1]) for u in users[:100])
    assert runner.tied_test_items(data) == 414  # of 940 test items, order decided by the tie rule
    assert int(seqs.tied_last().sum()) == 415  # users whose last two events share a timestamp


def test_next_item_report_section_and_chart():
    from recsys_ebm.experiments.next_item import markdown_section, plot_training_curves

    mean = {"next_hr@10": 0.2, "next_hr@20": 0.3, "next_ndcg@10": 0.1, "next_ndcg@20": 0.12, "next_mrr": 0.09}
    document = {"dataset": {"n_tied_test": 414, "n_test": 940},
                "models": {"markov": {"mean": mean, "std": dict.fromkeys(mean, 0.0)},
                           "pop": {"mean": {"ndcg@10": 0.04}, "std": {}}},
                "crbm_training": {"CD-1": {"val_ndcg@10": [0.05, 0.08], "best_epoch": 2,
                                           "best_value": 0.08, "fit_seconds": 3.0}}}
    lines = markdown_section(document, "loo-seqcrbm-training.png")
    assert "| `markov` | 0.2000 ± 0.0000 | 0.3000 ± 0.0000 | 0.1000 ± 0.0000 | 0.1200 ± 0.0000 | 0.0900 ± 0.0000 |" in lines
    assert not any("`pop`" in line for line in lines)  # no next-item metrics: not in the table
    assert "414 of 940 test items" in lines[2] and "| CD-1 | 0.0800 | 2 | 3 |" in lines
    assert plot_training_curves(document["crbm_training"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert markdown_section({"dataset": {}, "models": {"pop": document["models"]["pop"]}}, None) == []
