"""The raw-id, pandas-in/pandas-out facade: the same lists as the model's recommend, raw ids
both ways, save/load with the id maps, on the real ML-100K ratings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys_ebm.experiments.frames import FrameRecommender
from recsys_ebm.models.baselines import EASE
from recsys_ebm.models.crbm import CRBM


@pytest.fixture(scope="module")
def ratings(movielens_dir) -> pd.DataFrame:
    frame = pd.read_csv(movielens_dir / "ml-100k" / "u.data", sep="\t",
                        names=["user", "movie", "stars", "ts"])
    return frame[frame.user <= 200]


@pytest.fixture(scope="module")
def fitted(ratings) -> FrameRecommender:
    return FrameRecommender(EASE()).fit(ratings, user_col="user", item_col="movie", rating_col="stars")


def test_recommend_by_raw_ids_equals_the_models_recommend(fitted, ratings):
    frame = fitted.recommend([196, 22], k=5, temperature=0.5, rng=3)
    assert list(frame.columns) == ["user_id", "rank", "item_id", "score"] and len(frame) == 10
    users = fitted.user_map.to_index(np.array([196, 22]))
    ids, scores = fitted.model.recommend(users, k=5, temperature=0.5, rng=3)
    np.testing.assert_array_equal(frame.item_id.to_numpy(), fitted.item_map.to_raw(ids.ravel()))
    seen = set(ratings.loc[ratings.user == 196, "movie"])
    assert not seen & set(frame.loc[frame.user_id == 196, "item_id"])


def test_history_similar_items_block_list_and_round_trip(fitted, tmp_path):
    history = fitted.recommend_history([50, 172, 181], k=10)
    assert len(history) == 10 and not {50, 172, 181} & set(history.item_id)
    blocked = history.item_id.iloc[0]
    again = fitted.recommend_history([50, 172, 181], k=10, filter_items=[blocked])
    assert blocked not in set(again.item_id)
    similar = fitted.similar_items([50], k=3)
    assert list(similar.columns) == ["item_id", "rank", "similar_item_id", "score"] and 50 not in set(similar.similar_item_id)
    fitted.save(tmp_path / "m")
    loaded = FrameRecommender.load(tmp_path / "m")
    pd.testing.assert_frame_equal(loaded.recommend([196, 22], k=5), fitted.recommend([196, 22], k=5))
    with pytest.raises(KeyError, match="999999"):
        loaded.recommend([999999])


def test_rating_models_fit_on_the_ratings(ratings):
    rec = FrameRecommender(CRBM(n_hidden=8, epochs=2)).fit(ratings, user_col="user", item_col="movie",
                                                          rating_col="stars")
    assert rec.model.levels.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    frame = rec.recommend_history([50, 172], k=5, ratings=[5, 4])
    assert len(frame) == 5
