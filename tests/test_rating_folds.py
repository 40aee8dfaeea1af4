"""The rating-prediction protocol runner: folds, fallback for unknown ids, clipping, summaries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsys_ebm.data.interactions import Interactions
from recsys_ebm.data.movielens import load_movielens, load_official_fold
from recsys_ebm.experiments.rating_folds import (
    evaluate_rating_folds,
    fallback_ratings,
    predict_test_ratings,
)


class UserMean:
    """Predicts each user's mean training rating (+ ``shift``); records what ``fit`` received."""

    def __init__(self, shift: float = 0.0, uses_query_pattern: bool = False):
        self.shift = shift
        self.uses_query_pattern = uses_query_pattern
        self.implicit = None

    def fit(self, user_items: sp.csr_matrix, *, callback=None, show_progress: bool = True,
            implicit: sp.csr_matrix | None = None):
        counts = np.diff(user_items.indptr)
        self.means = np.asarray(user_items.sum(axis=1)).ravel() / np.maximum(counts, 1)
        self.implicit = implicit
        if callback is not None:
            callback(1, {"val_rmse": 1.0})
        return self

    def predict(self, user_ids, item_ids):
        return self.means[np.asarray(user_ids)] + self.shift


TRAIN = pd.DataFrame({"user_id": [1, 1, 2, 2, 3], "item_id": [10, 11, 10, 12, 12],
                      "rating": [4.0, 2.0, 5.0, 5.0, 1.0]})


def test_fallback_known_answers():
    got = fallback_ratings(TRAIN, np.array([1, 9, 9, 3]), np.array([99, 10, 98, 12]))
    # known user -> user mean; unknown user, known item -> item mean; both unknown -> global mean
    np.testing.assert_allclose(got, [3.0, 4.5, 17.0 / 5, 1.0])


def test_predict_test_ratings_uses_the_model_only_for_known_pairs():
    train = Interactions.from_frame(TRAIN)
    model = UserMean(shift=0.25).fit(train.rating_matrix)
    test = pd.DataFrame({"user_id": [1, 2, 7, 3], "item_id": [12, 99, 10, 11], "rating": [3.0] * 4})
    pred, known = predict_test_ratings(model, train, TRAIN, test)
    np.testing.assert_array_equal(known, [True, False, False, True])
    np.testing.assert_allclose(pred, [3.25, 5.0, 4.5, 1.25])


def test_official_folds_known_answer(movielens_dir):
    calls = []
    result = evaluate_rating_folds(UserMean, "100k", movielens_dir,
                                   callback=lambda fold, epoch, m: calls.append((fold, epoch)),
                                   download=False)
    assert {"rmse", "rmse_std", "mae", "mae_std", "folds"} <= set(result)
    assert [f["fold"] for f in result["folds"]] == ["u1", "u2", "u3", "u4", "u5"]
    assert calls == [(f"u{k}", 1) for k in range(1, 6)]
    u1 = result["folds"][0]
    assert u1["n_test"] == 20_000 and u1["n_fallback"] == 32 and u1["n_train"] == 80_000
    # independent computation: every u1 test row scored with its user's u1.base mean
    split = load_official_fold(1, movielens_dir, download=False)
    means = split.train.groupby("user_id")["rating"].mean()
    err = split.test["user_id"].map(means).to_numpy() - split.test["rating"].to_numpy()
    assert u1["rmse"] == pytest.approx(float(np.sqrt(np.mean(err**2))), rel=1e-9)
    assert u1["mae"] == pytest.approx(float(np.mean(np.abs(err))), rel=1e-9)
    rmses = [f["rmse"] for f in result["folds"]]
    assert result["rmse"] == pytest.approx(np.mean(rmses)) and result["rmse_std"] == pytest.approx(np.std(rmses))


def test_predictions_are_clipped_and_query_pattern_is_passed(movielens_dir):
    models = []

    def factory():
        models.append(UserMean(shift=10.0, uses_query_pattern=True))
        return models[-1]

    result = evaluate_rating_folds(factory, "100k", movielens_dir, folds=[2], download=False)
    split = load_official_fold(2, movielens_dir, download=False)
    # everything the model predicts (mean + 10) is clipped to 5; fallback rows use the user's mean
    known_item = split.test["item_id"].isin(split.train["item_id"]).to_numpy()
    means = split.train.groupby("user_id")["rating"].mean()
    pred = np.where(known_item, 5.0, split.test["user_id"].map(means).to_numpy())
    expected = float(np.sqrt(np.mean((pred - split.test["rating"].to_numpy()) ** 2)))
    assert result["folds"][0]["fold"] == "u2"
    assert result["rmse"] == pytest.approx(expected, rel=1e-9) and result["rmse_std"] == 0.0
    implicit = models[0].implicit
    assert implicit is not None and implicit.nnz == len(split.test) - result["folds"][0]["n_fallback"]
    assert set(np.unique(implicit.data)) == {1.0}


def test_kfold_on_latest_small(movielens_dir):
    result = evaluate_rating_folds(UserMean, "latest-small", movielens_dir, protocol="kfold",
                                   n_folds=5, seed=0, download=False)
    n_rows = len(load_movielens("latest-small", movielens_dir, download=False).ratings)
    assert sum(f["n_test"] for f in result["folds"]) == n_rows
    assert [f["fold"] for f in result["folds"]] == [f"fold{k}" for k in range(1, 6)]
    assert result["rating_scale"] == [0.5, 5.0, 0.5]
    again = evaluate_rating_folds(UserMean, "latest-small", movielens_dir, protocol="kfold",
                                  folds=[3], download=False)
    assert again["folds"][0]["rmse"] == result["folds"][2]["rmse"]


def test_bad_arguments(movielens_dir):
    with pytest.raises(ValueError, match="protocol"):
        evaluate_rating_folds(UserMean, "100k", movielens_dir, protocol="loo", download=False)
    with pytest.raises(ValueError, match="ml-100k only"):
        evaluate_rating_folds(UserMean, "latest-small", movielens_dir, download=False)
    with pytest.raises(ValueError, match="5 folds"):
        evaluate_rating_folds(UserMean, "100k", movielens_dir, n_folds=3, download=False)
    with pytest.raises(ValueError, match="fold numbers"):
        evaluate_rating_folds(UserMean, "100k", movielens_dir, folds=[0], download=False)
