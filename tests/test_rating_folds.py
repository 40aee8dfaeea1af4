"""The rating-prediction protocol runner: folds as data, fallback for unknown ids, clipping,
summaries; the fold builders (official ML-100K folds, seeded k-fold of any ratings file)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsys_ebm.data.interactions import Interactions
from recsys_ebm.data.movielens import load_movielens, load_official_fold
from recsys_ebm.data.variants import RatingScale
from recsys_ebm.experiments import runner
from recsys_ebm.experiments.rating_data import (
    build_rating_folds,
    infer_rating_scale,
    kfold_folds,
    official_folds,
)
from recsys_ebm.experiments.rating_folds import (
    RatingFolds,
    evaluate_folds,
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
    folds = official_folds(movielens_dir, download=False)
    result = evaluate_folds(UserMean, folds, callback=lambda fold, epoch, m: calls.append((fold, epoch)))
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

    result = evaluate_folds(factory, official_folds(movielens_dir, download=False).select([2]))
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
    dataset = runner.load_dataset("movielens", "latest-small", str(movielens_dir), download=False)
    folds = build_rating_folds(dataset)  # not ML-100K: seeded 5-fold by default
    assert folds.protocol == "kfold" and len(folds.folds) == 5 and folds.seed == 0
    result = evaluate_folds(UserMean, folds)
    n_rows = len(load_movielens("latest-small", movielens_dir, download=False).ratings)
    assert sum(f["n_test"] for f in result["folds"]) == n_rows
    assert [f["fold"] for f in result["folds"]] == [f"fold{k}" for k in range(1, 6)]
    assert result["rating_scale"] == [0.5, 5.0, 0.5]
    again = evaluate_folds(UserMean, kfold_folds(dataset, 5, seed=0).select([3]))
    assert again["folds"][0]["rmse"] == result["folds"][2]["rmse"]


def test_variant_name_wrapper_matches_the_folds_as_data(movielens_dir):
    from recsys_ebm.experiments.rating_data import evaluate_rating_folds

    old = evaluate_rating_folds(UserMean, "100k", movielens_dir, folds=[1], download=False)
    new = evaluate_folds(UserMean, official_folds(movielens_dir, download=False).select([1]))
    assert old["rmse"] == new["rmse"] and old["mae"] == new["mae"] and old["folds"][0]["fold"] == "u1"
    dataset = runner.load_dataset("movielens", "100k", str(movielens_dir), download=False)
    assert build_rating_folds(dataset, data_dir=movielens_dir, download=False).protocol == "official-folds"


def test_a_users_own_ratings_file_is_scored_by_seeded_kfold(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"who": rng.integers(0, 30, 600), "what": rng.integers(0, 40, 600),
                          "stars": rng.integers(1, 11, 600) / 2.0}).drop_duplicates(["who", "what"])
    path = tmp_path / "mine.csv"
    frame.to_csv(path, index=False)
    dataset = runner.load_dataset(str(path), user_col="who", item_col="what", rating_col="stars",
                                  timestamp_col=None)
    folds = build_rating_folds(dataset, n_folds=3, seed=4)
    assert folds.dataset == "mine" and folds.protocol == "kfold"
    assert folds.rating_scale == RatingScale(0.5, 5.0, 0.5)  # inferred from the file
    result = evaluate_folds(lambda: UserMean(shift=100.0), folds)
    assert sum(f["n_test"] for f in result["folds"]) == len(frame)
    assert result["mae"] <= 4.5  # every prediction clipped to the inferred maximum 5.0
    with pytest.raises(ValueError, match="ml-100k only"):
        build_rating_folds(dataset, "official-folds")
    with pytest.raises(ValueError, match="two distinct"):
        infer_rating_scale(np.ones(5))


def test_bad_arguments(movielens_dir):
    small = runner.load_dataset("movielens", "latest-small", str(movielens_dir), download=False)
    ml100k = runner.load_dataset("movielens", "100k", str(movielens_dir), download=False)
    with pytest.raises(ValueError, match="protocol"):
        build_rating_folds(ml100k, "loo", data_dir=movielens_dir, download=False)
    with pytest.raises(ValueError, match="ml-100k only"):
        build_rating_folds(small, "official-folds", data_dir=movielens_dir, download=False)
    with pytest.raises(ValueError, match="5 folds"):
        build_rating_folds(ml100k, "official-folds", n_folds=3, data_dir=movielens_dir, download=False)
    with pytest.raises(ValueError, match="fold numbers"):
        official_folds(movielens_dir, download=False).select([0])
    with pytest.raises(ValueError, match="no folds"):
        RatingFolds((), RatingScale(1.0, 5.0, 1.0))
