"""evaluate_ranking end to end with a fixed-score Recommender; evaluate_ratings; format_table."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import scipy.sparse as sp

from recsys_ebm.evaluation import evaluate_ranking, evaluate_ratings, format_table
from recsys_ebm.evaluation.evaluate import METRIC_LEGEND
from recsys_ebm.models.base import Recommender

L2_3 = math.log2(3)


class FixedScores(Recommender):
    """Scores from a fixed table; fold-in users are scored as ``user_items @ item_sim + prior``."""

    def __init__(
        self,
        user_scores: np.ndarray,
        item_sim: np.ndarray | None = None,
        prior: np.ndarray | None = None,
    ):
        self.user_scores = np.asarray(user_scores, dtype=np.float32)
        self.n_users, self.n_items = self.user_scores.shape
        self.item_sim = item_sim
        self.prior = prior
        self.fold_in_calls = 0

    def fit(self, user_items, *, callback=None, show_progress=True):
        return self

    def score(self, user_ids, user_items=None):
        if user_items is not None:
            self.fold_in_calls += 1
            return np.asarray(user_items @ self.item_sim + self.prior, dtype=np.float32)
        return self.user_scores[np.asarray(user_ids)].copy()


def _csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    dense = np.zeros((len(rows), n_items), np.float32)
    for u, items in enumerate(rows):
        dense[u, items] = 1.0
    return sp.csr_matrix(dense)


# 4 users x 6 items, everyone ranks item 0 > 1 > ... > 5
SCORES = np.tile(np.arange(6, 0, -1, dtype=np.float32), (4, 1))
TRAIN = _csr([[0], [1, 2], [3], []], 6)
TEST = _csr([[1, 4], [0], [], [2]], 6)  # user 2 has no test item: not evaluated
# top-3 lists after removing train items:
#   user 0: [1, 2, 3] vs {1, 4} -> hits [1, 0, 0]
#   user 1: [0, 3, 4] vs {0}    -> hits [1, 0, 0]
#   user 3: [0, 1, 2] vs {2}    -> hits [0, 0, 1]
EXPECTED = {
    "precision@1": (1 + 1 + 0) / 3,
    "precision@3": (1 / 3 + 1 / 3 + 1 / 3) / 3,
    "recall@1": (1 / 1 + 1 / 1 + 0) / 3,
    "recall@3": (1 / 2 + 1 / 1 + 1 / 1) / 3,
    # the standard recall divides by all 2 of user 0's test items even at k = 1
    "recall_allrel@1": (1 / 2 + 1 / 1 + 0) / 3,
    "recall_allrel@3": (1 / 2 + 1 / 1 + 1 / 1) / 3,
    "ndcg@1": (1 + 1 + 0) / 3,
    "ndcg@3": (1 / (1 + 1 / L2_3) + 1 + (1 / 2) / 1) / 3,
    "map@1": (1 + 1 + 0) / 3,
    "map@3": ((1 / 1) / 2 + 1 + (1 / 3) / 1) / 3,
    "map_allrel@1": ((1 / 1) / 2 + 1 + 0) / 3,
    "map_allrel@3": ((1 / 1) / 2 + 1 + (1 / 3) / 1) / 3,
    "hitrate@1": 2 / 3,
    "hitrate@3": 3 / 3,
    "mrr": (1 + 1 + 1 / 3) / 3,
    "coverage@1": 2 / 6,  # {1, 0, 0}
    "coverage@3": 5 / 6,  # {1, 2, 3} | {0, 3, 4} | {0, 1, 2}
}


@pytest.mark.parametrize("batch_size", [1, 2, 1024])
def test_hand_computed_metrics_any_batch_size(batch_size):
    result = evaluate_ranking(FixedScores(SCORES), TRAIN, TEST, ks=(3, 1), batch_size=batch_size)
    expected_keys = [
        f"{m}@{k}"
        for m in ("precision", "recall", "recall_allrel", "ndcg", "map", "map_allrel", "hitrate")
        for k in (1, 3)
    ]
    expected_keys += ["mrr", "coverage@1", "coverage@3", "n_users"]
    assert list(result.summary) == expected_keys
    for key, value in EXPECTED.items():
        assert result.summary[key] == pytest.approx(value), key
    assert result.summary["n_users"] == 3
    np.testing.assert_array_equal(result.recommendations, [[1, 2, 3], [0, 3, 4], [0, 1, 2]])
    per_user = result.per_user
    assert per_user.index.name == "user_id"
    np.testing.assert_array_equal(per_user.index.to_numpy(), [0, 1, 3])
    np.testing.assert_array_equal(per_user["n_test"].to_numpy(), [2, 1, 1])
    assert per_user["ndcg@3"].to_numpy() == pytest.approx([1 / (1 + 1 / L2_3), 1.0, 1 / 2])
    assert per_user["mrr"].to_numpy() == pytest.approx([1.0, 1.0, 1 / 3])
    assert per_user["map@3"].to_numpy() == pytest.approx([1 / 2, 1.0, 1 / 3])
    assert per_user["recall@1"].to_numpy() == pytest.approx([1.0, 1.0, 0.0])
    assert per_user["recall_allrel@1"].to_numpy() == pytest.approx([1 / 2, 1.0, 0.0])
    assert per_user["map_allrel@1"].to_numpy() == pytest.approx([1 / 2, 1.0, 0.0])


def test_k_beyond_eligible_items_is_padded():
    result = evaluate_ranking(FixedScores(SCORES), TRAIN, TEST, ks=(10,))
    recs = result.recommendations
    assert recs.shape == (3, 10)
    np.testing.assert_array_equal(recs[1], [0, 3, 4, 5] + [-1] * 6)
    # every test item is found; precision still divides by k
    assert result.summary["recall@10"] == pytest.approx(1.0)
    assert result.summary["precision@10"] == pytest.approx((2 / 10 + 1 / 10 + 1 / 10) / 3)
    assert result.summary["coverage@10"] == pytest.approx(6 / 6)


def test_fold_in_users_are_scored_from_their_train_rows():
    # 5 held-out users x 4 items; the model was trained on only 2 users, so fold_in=False
    # would be out of range for users 2..4
    item_sim = np.zeros((4, 4), np.float32)
    item_sim[[0, 1, 2], [1, 2, 3]] = 1.0  # "next item" similarity
    prior = np.array([0.4, 0.3, 0.2, 0.1], np.float32)
    model = FixedScores(np.zeros((2, 4)), item_sim, prior)
    fold_in_rows = _csr([[], [], [], [0], [2]], 4)
    test = _csr([[], [], [], [1], [0, 1]], 4)
    # user 3: scores [.4, 1.3, .2, .1], 0 seen -> [1, 2, 3], hits [1, 0, 0]
    # user 4: scores [.4, .3, .2, 1.1], 2 seen -> [3, 0, 1], hits [0, 1, 1]
    result = evaluate_ranking(model, fold_in_rows, test, ks=(1, 3), fold_in=True)
    assert model.fold_in_calls > 0
    np.testing.assert_array_equal(result.recommendations, [[1, 2, 3], [3, 0, 1]])
    assert result.summary["recall@3"] == pytest.approx((1 + 2 / 2) / 2)
    assert result.summary["ndcg@3"] == pytest.approx((1 + (1 / L2_3 + 1 / 2) / (1 + 1 / L2_3)) / 2)
    assert result.summary["map@3"] == pytest.approx((1 + (1 / 2 + 2 / 3) / 2) / 2)
    assert result.summary["mrr"] == pytest.approx((1 + 1 / 2) / 2)
    assert result.summary["precision@1"] == pytest.approx(1 / 2)
    with pytest.raises(IndexError):
        evaluate_ranking(model, fold_in_rows, test, ks=(1,), fold_in=False)


def test_show_progress_and_overlap_warning(caplog):
    test = TEST.copy().tolil()
    test[0, 0] = 1.0  # also a train item of user 0: filtered, can never be a hit
    with caplog.at_level(logging.WARNING, logger="recsys_ebm.evaluation.evaluate"):
        result = evaluate_ranking(
            FixedScores(SCORES), TRAIN, test.tocsr(), ks=(3,), show_progress=True
        )
    assert "also in train" in caplog.text
    assert result.per_user.loc[0, "n_test"] == 3
    assert result.per_user.loc[0, "recall@3"] == pytest.approx(1 / 3)


def test_result_is_frozen():
    result = evaluate_ranking(FixedScores(SCORES), TRAIN, TEST, ks=(1,))
    with pytest.raises(AttributeError):
        result.summary = {}


@pytest.mark.parametrize(
    "call",
    [
        lambda m: evaluate_ranking(m, TRAIN, TEST[:3]),  # shape mismatch
        lambda m: evaluate_ranking(m, TRAIN.toarray(), TEST),  # dense train
        lambda m: evaluate_ranking(m, TRAIN, _csr([[], [], [], []], 6)),  # no test items
        lambda m: evaluate_ranking(m, TRAIN, TEST, ks=()),
        lambda m: evaluate_ranking(m, TRAIN, TEST, ks=(0, 5)),
        lambda m: evaluate_ranking(m, TRAIN, TEST, batch_size=0),
        lambda m: evaluate_ranking(m, TRAIN[:, :5], TEST[:, :5]),  # model has 6 items
    ],
)
def test_bad_inputs_raise_value_error(call):
    with pytest.raises(ValueError):
        call(FixedScores(SCORES))


def test_evaluate_ratings():
    out = evaluate_ratings(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 5.0]))
    assert out["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert out["mae"] == pytest.approx(1.0)
    assert out["n"] == 3
    clipped = evaluate_ratings(np.array([0.2, 3.0, 6.5]), np.array([1.0, 3.0, 4.0]), clip=(1, 5))
    assert clipped["rmse"] == pytest.approx(math.sqrt(1 / 3))
    assert clipped["mae"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        evaluate_ratings(np.zeros(2), np.zeros(3))


def test_format_table():
    summary = {
        "precision@5": 0.12345,
        "precision@10": 0.1,
        "recall@5": 0.5,
        "recall@10": 0.75,
        "ndcg@10": 0.3,
        "mrr": 0.25,
        "coverage@5": 0.05,
        "coverage@10": 0.08,
        "n_users": 943,
    }
    table = format_table(summary)
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "@5", "@10"]
    assert lines[1].split() == ["precision", "0.1235", "0.1000"]
    assert lines[2].split() == ["recall", "0.5000", "0.7500"]
    assert lines[3].split() == ["ndcg", "-", "0.3000"]
    assert lines[4].split() == ["coverage", "0.0500", "0.0800"]
    assert lines[5] == "mrr 0.2500  n_users 943"
    assert lines[6] == METRIC_LEGEND  # which recall definition the recall row uses
    assert len({len(line) for line in lines[:5]}) == 1  # aligned columns
    assert format_table(summary, ks=(10,)).splitlines()[1].split() == ["precision", "0.1000"]
    end_to_end = format_table(evaluate_ranking(FixedScores(SCORES), TRAIN, TEST, ks=(1, 3)).summary)
    end_lines = end_to_end.splitlines()
    assert end_lines[1].split() == ["precision", f"{2 / 3:.4f}", f"{1 / 3:.4f}"]
    rows = [line.split()[0] for line in end_lines[1:-2]]
    assert rows == ["precision", "recall", "recall_allrel", "ndcg", "map", "map_allrel",
                    "hitrate", "coverage"]
    assert end_lines[3].split() == ["recall_allrel", f"{0.5:.4f}", f"{2.5 / 3:.4f}"]
    assert end_lines[-1] == METRIC_LEGEND
    assert "min(k, R)" in METRIC_LEGEND and "recall_allrel, map_allrel: / R " in METRIC_LEGEND
    no_recall = format_table({"ndcg@10": 0.3, "mrr": 0.25})
    assert METRIC_LEGEND not in no_recall



def test_report_pages_state_the_recall_and_map_definitions():
    """Rendered from a committed report: every table with Recall/MAP says which definition it
    uses, and ``_allrel`` columns join the headline table once the document has them."""
    import copy
    import json
    from pathlib import Path

    from recsys_ebm.experiments.render import render_markdown

    path = Path(__file__).resolve().parents[1] / "reports" / "ml-100k" / "random.json"
    committed = json.loads(path.read_text())
    document = copy.deepcopy(committed)  # the page as rendered before any ``_allrel`` columns
    for section in document["models"].values():
        for stat in ("mean", "std"):
            for name in [m for m in section[stat] if "_allrel" in m]:
                del section[stat][name]
        for run in section.get("per_seed", []):
            for name in [m for m in run if "_allrel" in m]:
                del run[name]
    plots = {"metrics_vs_k": "m.png", "temperature": "t.png", "energies": "e.png"}
    old = render_markdown(document, plots).splitlines()

    def sentence_after(lines, header_start):
        start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
        end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
        return lines[end + 1]

    truncated = "Recall and MAP without a suffix divide by min(k, R)"
    assert sentence_after(old, "| model | NDCG@10 |").startswith(truncated)
    assert "_allrel" not in sentence_after(old, "| model | NDCG@10 |")
    assert sentence_after(old, "| model | metric |").startswith(truncated)
    assert sentence_after(old, "| model | grid points |").startswith(
        "Validation Recall@20 divides by min(20, R)")
    assert sentence_after(old, "| T | NDCG@10 |").startswith("Recall@10 divides by min(10, R)")
    assert "Recall_allrel@20" not in "\n".join(old)  # absent from this document: no empty column

    committed_lines = render_markdown(committed, plots).splitlines()
    assert "the `_allrel` ones divide by R" in sentence_after(committed_lines,
                                                               "| model | NDCG@10 |")

    new = copy.deepcopy(document)
    for section in new["models"].values():
        for stat in ("mean", "std"):
            section[stat]["recall_allrel@20"] = 0.125
            section[stat]["map_allrel@10"] = 0.0625
    lines = render_markdown(new, plots).splitlines()
    header = next(line for line in lines if line.startswith("| model | NDCG@10 |"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[1:7] == ["NDCG@10", "Recall@20", "Recall_allrel@20", "Precision@10", "MAP@10",
                          "MAP_allrel@10"]
    assert "the `_allrel` ones divide by R" in sentence_after(lines, "| model | NDCG@10 |")
    ease = next(line for line in lines if line.startswith("| `ease` | 0."))
    assert "0.1250 ± 0.1250" in ease and "0.0625 ± 0.0625" in ease
