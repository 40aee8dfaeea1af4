"""The standard recall and MAP (``recall_allrel``, ``map_allrel``) against ranx on the same lists.

ranx's ``recall@k`` is hits in the top k / R and its ``map@k`` is
Σ_{r ≤ k} precision@r · rel_r / R (R = all relevant items of the query), so ours must equal it
per user to 1e-9, on random lists and on an EASE ranking of ML-100K's random split.
"""

from __future__ import annotations

import numpy as np
import pytest
import ranx  # a dev dependency (pyproject's dev extra): missing it fails, never skips
import scipy.sparse as sp

from recsys_ebm.evaluation.evaluate import evaluate_ranking
from recsys_ebm.evaluation.metrics import (
    hit_matrix,
    map_allrel_at_k,
    map_at_k,
    recall_allrel_at_k,
    recall_at_k,
)

KS = (1, 3, 5, 10, 20)


@pytest.fixture(scope="module", autouse=True)
def _one_numba_thread():
    """ranx runs numba-parallel loops; one thread on the shared machine."""
    import numba

    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(threads)


def _ranx_scores(rec_ids: np.ndarray, test: sp.csr_matrix, ks) -> dict[str, np.ndarray]:
    """ranx's per-user recall@k and map@k for the lists ``rec_ids`` (-1 = padding)."""
    qrels = {str(u): {str(i): 1 for i in test.indices[test.indptr[u]:test.indptr[u + 1]]}
             for u in range(test.shape[0])}
    width = rec_ids.shape[1]
    run = {str(u): {str(i): float(width - r) for r, i in enumerate(row) if i >= 0}
           for u, row in enumerate(rec_ids)}
    run_obj = ranx.Run(run)
    metrics = [f"{m}@{k}" for m in ("recall", "map") for k in ks]
    ranx.evaluate(ranx.Qrels(qrels), run_obj, metrics, threads=1, make_comparable=True)
    return {m: np.array([run_obj.scores[m][str(u)] for u in range(test.shape[0])])
            for m in metrics}


def _random_case(seed: int) -> tuple[np.ndarray, sp.csr_matrix]:
    """40 users x 60 items: lists of 0..25 distinct items (padded to 25), 1..30 relevant each."""
    rng = np.random.default_rng(seed)
    n_users, n_items, width = 40, 60, 25
    rec = np.full((n_users, width), -1, dtype=np.int64)
    dense = np.zeros((n_users, n_items), dtype=np.float32)
    for u in range(n_users):
        length = int(rng.integers(0, width + 1))
        rec[u, :length] = rng.choice(n_items, size=length, replace=False)
        dense[u, rng.choice(n_items, size=int(rng.integers(1, 31)), replace=False)] = 1.0
    return rec, sp.csr_matrix(dense)


@pytest.mark.parametrize("seed", range(5))
def test_standard_recall_and_map_equal_ranx_on_random_lists(seed):
    rec, test = _random_case(seed)
    hits, n_rel = hit_matrix(rec, test), np.diff(test.indptr)
    ranx_scores = _ranx_scores(rec, test, KS)
    for k in KS:
        np.testing.assert_allclose(recall_allrel_at_k(hits, n_rel, k), ranx_scores[f"recall@{k}"],
                                   rtol=0, atol=1e-9, err_msg=f"recall@{k}")
        np.testing.assert_allclose(map_allrel_at_k(hits, n_rel, k), ranx_scores[f"map@{k}"],
                                   rtol=0, atol=1e-9, err_msg=f"map@{k}")
    # the truncated ones are a different metric wherever a user has more than k relevant items
    k = 5
    more = n_rel > k
    assert np.any(more & hits[:, :k].any(axis=1))
    assert np.any(np.abs(recall_at_k(hits, n_rel, k) - ranx_scores[f"recall@{k}"]) > 1e-3)
    assert np.any(np.abs(map_at_k(hits, n_rel, k) - ranx_scores[f"map@{k}"]) > 1e-3)


def test_standard_recall_and_map_equal_ranx_on_an_ease_ranking_of_ml100k(movielens_dir):
    from recsys_ebm.experiments import runner

    ks = (5, 10, 20, 50)
    dataset = runner.load_dataset("movielens", "100k", data_dir=str(movielens_dir), download=False)
    data = runner.prepare(runner.make_split(dataset.ratings, "random"), "random")
    model = runner.build_model("ease", {"l2": 500.0})
    model.fit(runner.model_input(model, data.train), show_progress=False)
    result = runner.evaluate_model(model, data, ks=ks)
    test = data.test.user_items.tocsr()[result.per_user.index.to_numpy()]
    ranx_scores = _ranx_scores(result.recommendations, test, ks)
    for k in ks:
        for ours, theirs in ((f"recall_allrel@{k}", f"recall@{k}"), (f"map_allrel@{k}", f"map@{k}")):
            np.testing.assert_allclose(result.per_user[ours].to_numpy(), ranx_scores[theirs],
                                       rtol=0, atol=1e-9, err_msg=ours)
            assert result.summary[ours] == pytest.approx(ranx_scores[theirs].mean(), abs=1e-9)
    # the min(k, R) normalisation is well above the standard one at these cut-offs
    assert result.summary["recall@20"] > result.summary["recall_allrel@20"] + 0.05
    assert result.summary["map@10"] > result.summary["map_allrel@10"] + 0.05


def test_evaluate_ranking_matches_ranx_through_a_fixed_ranking():
    """A random catalog ranking through evaluate_ranking's own path (train items excluded)."""
    rng = np.random.default_rng(7)
    n_users, n_items = 30, 50
    train = sp.csr_matrix((rng.random((n_users, n_items)) < 0.15).astype(np.float32))
    test = sp.csr_matrix(((rng.random((n_users, n_items)) < 0.3) & (train.toarray() == 0))
                         .astype(np.float32))
    scores = rng.random((n_users, n_items)).astype(np.float32)

    class Fixed:
        """recommend() from a fixed score table, seen items removed."""

        def recommend(self, user_ids, user_items=None, k=10, *, filter_seen=True, fold_in=False):
            s = scores[user_ids].copy()
            s[user_items.toarray() > 0] = -np.inf
            ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
            return ids, np.take_along_axis(s, ids, axis=1)

    result = evaluate_ranking(Fixed(), train, test, ks=(5, 10, 20))
    rows = result.per_user.index.to_numpy()
    ranx_scores = _ranx_scores(result.recommendations, test[rows], (5, 10, 20))
    for k in (5, 10, 20):
        np.testing.assert_allclose(result.per_user[f"recall_allrel@{k}"], ranx_scores[f"recall@{k}"],
                                   rtol=0, atol=1e-9)
        np.testing.assert_allclose(result.per_user[f"map_allrel@{k}"], ranx_scores[f"map@{k}"],
                                   rtol=0, atol=1e-9)
