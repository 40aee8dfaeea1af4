"""implicit's similar_items / similar_users on every model that has them: known answers on
hand-made vectors, and brute force over the models' own vectors and item-item matrices."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys_ebm.models.baselines import EASE, ItemKNN
from recsys_ebm.models.dot_ebm import DotEBM
from recsys_ebm.models.factor_baselines import ALS
from recsys_ebm.models.similarity import nearest_rows

RNG = np.random.default_rng(5)
TRAIN = sp.csr_matrix((RNG.random((40, 25)) < 0.3).astype(np.float32))


def _assert_best(scores: np.ndarray, ids: np.ndarray, k: int, rows=None) -> None:
    """``ids`` hold the ``k`` best off-diagonal entries of each row (up to float32 ties)."""
    scores = scores.astype(np.float64).copy()
    np.fill_diagonal(scores, -np.inf)
    if rows is not None:
        scores = scores[rows]
    best = -np.sort(-scores, axis=1)[:, :k]
    np.testing.assert_allclose(np.take_along_axis(scores, ids, 1), best, rtol=1e-5, atol=1e-6)


def _brute(scores: np.ndarray, k: int) -> np.ndarray:
    scores = scores.astype(np.float64).copy()
    np.fill_diagonal(scores, -np.inf)
    return np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores), axis=1)[:, :k]


def test_hand_made_vectors_have_the_known_neighbours():
    table = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    ids, scores = nearest_rows(table, np.array([0, 2, 3]), 2)
    np.testing.assert_array_equal(ids, [[1, 2], [1, 0], [2, 1]])
    assert scores[0, 0] == pytest.approx(0.9 / np.hypot(0.9, 0.1), rel=1e-6)
    # by energy, with a large bias the far item wins
    ids, _ = nearest_rows(table, np.array([0]), 1, metric="energy", biases=np.array([0, 0, 5, 0]))
    assert ids[0, 0] == 2


@pytest.mark.parametrize("model", [DotEBM(dim=6, epochs=10, lr=0.05), ALS(factors=6, iterations=3)],
                         ids=["dpebm", "als"])
def test_vector_models_match_brute_force(model):
    model.fit(TRAIN, show_progress=False)
    q = model.item_vectors().astype(np.float64)
    unit = q / np.linalg.norm(q, axis=1, keepdims=True)
    ids, scores = model.similar_items(np.arange(25), k=5)
    _assert_best(unit @ unit.T, ids, 5)
    ids, _ = model.similar_items(np.arange(25), N=4, metric="energy")
    _assert_best(q @ q.T + model.item_biases(), ids, 4)
    p = model.user_vectors(np.arange(40)).astype(np.float64)
    unit_p = p / np.linalg.norm(p, axis=1, keepdims=True)
    ids, _ = model.similar_users([0, 7, 39], k=3)
    _assert_best(unit_p @ unit_p.T, ids, 3, rows=[0, 7, 39])
    assert not np.any(ids == np.array([[0], [7], [39]]))  # nobody is their own neighbour


@pytest.mark.parametrize("cls", [EASE, ItemKNN])
def test_item_item_models_rank_their_own_matrix(cls):
    model = cls().fit(TRAIN, show_progress=False)
    matrix = model._item_item()
    dense = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
    if sp.issparse(matrix):
        dense = np.where(dense != 0, dense, -np.inf)
    ids, scores = model.similar_items(np.arange(25), k=3)
    expected = _brute(dense, 3)
    finite = np.isfinite(np.take_along_axis(dense, expected, 1)) & ~np.eye(25, dtype=bool)[np.arange(25)[:, None], expected]
    np.testing.assert_array_equal(np.where(finite, ids, -1), np.where(finite, expected, -1))


def test_bad_ids_are_clear_errors():
    model = ALS(factors=4, iterations=2).fit(TRAIN, show_progress=False)
    with pytest.raises(IndexError, match="item id 25 is outside 0..24"):
        model.similar_items([25])
    with pytest.raises(IndexError, match="user id -1"):
        model.similar_users([-1])
    with pytest.raises(ValueError, match="metric must be one of"):
        model.similar_items([0], metric="euclid")
