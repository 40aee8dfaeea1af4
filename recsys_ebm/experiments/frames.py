"""Raw ids in, DataFrames out: any model behind pandas, with its id maps saved beside it.

::

    rec = FrameRecommender(DotEBM()).fit(ratings)        # columns user_id, item_id[, rating]
    rec.recommend(["196", "186"], k=10)                   # user_id, rank, item_id, score
    rec.recommend_history(["50", "172"], k=10)            # a new user, folded in
    rec.similar_items(["50"], k=5)
    rec.save("my-model"); FrameRecommender.load("my-model")

Everything ranks through the model's ``recommend`` (and ``similar_items``), so the lists are the
ones the CLI and the export serve for the same seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys_ebm.data.interactions import Interactions
from recsys_ebm.experiments.jobs import raw_to_index, saved_id_maps
from recsys_ebm.models import load_model
from recsys_ebm.models.base import Recommender


class FrameRecommender:
    """A fitted ``Recommender`` with the raw-id maps of the data it was fitted on."""

    def __init__(self, model: Recommender):
        self.model = model
        self.user_map = self.item_map = None

    def fit(self, frame: pd.DataFrame, *, user_col: str = "user_id", item_col: str = "item_id",
            rating_col: str | None = "rating", **fit_options: Any) -> FrameRecommender:
        """Fit on an interactions frame (raw ids; ratings for rating models)."""
        columns = {user_col: "user_id", item_col: "item_id"}
        if rating_col is not None and rating_col in frame.columns:
            columns[rating_col] = "rating"
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"the frame has no column(s) {missing}; it has {list(frame.columns)}")
        data = Interactions.from_frame(frame[list(columns)].rename(columns=columns), name="frame")
        matrix = data.rating_matrix if self.model.fits_ratings else data.user_items
        self.model.fit(matrix, **{"show_progress": False, **fit_options})
        self.user_map, self.item_map = data.user_map, data.item_map
        return self

    def _frame(self, labels: np.ndarray, ids: np.ndarray, scores: np.ndarray, label: str,
               item_label: str = "item_id") -> pd.DataFrame:
        n, k = ids.shape
        keep = (ids >= 0).ravel()
        return pd.DataFrame({
            label: np.repeat(labels, k)[keep],
            "rank": np.tile(np.arange(1, k + 1), n)[keep],
            item_label: self.item_map.to_raw(ids.ravel()[keep]),
            "score": scores.ravel()[keep],
        }).reset_index(drop=True)

    def recommend(self, raw_user_ids, k: int = 10, **options: Any) -> pd.DataFrame:
        """Each trained user's ``k`` items (``recommend``'s options: temperature, rng,
        filter_items as raw ids, ...): columns user_id, rank, item_id, score."""
        raw = np.atleast_1d(np.asarray(raw_user_ids))
        users = raw_to_index(self.user_map, raw, "user")
        ids, scores = self.model.recommend(users, k=k, **self._options(options))
        return self._frame(self.user_map.to_raw(users), ids, scores, "user_id")

    def recommend_history(self, raw_item_ids, k: int = 10, ratings=None, **options: Any) -> pd.DataFrame:
        """A new user's ``k`` items from their history (raw item ids; ``ratings`` for rating
        models), folded in without retraining."""
        items = raw_to_index(self.item_map, np.atleast_1d(np.asarray(raw_item_ids)), "item")
        values = np.ones(len(items), np.float32) if ratings is None else np.asarray(ratings, np.float32)
        row = sp.csr_matrix((values, (np.zeros(len(items), np.int64), items)),
                            shape=(1, self.model.n_items))
        ids, scores = self.model.recommend(np.array([0]), row, k=k, fold_in=True, **self._options(options))
        return self._frame(np.array(["new user"]), ids, scores, "user_id")

    def similar_items(self, raw_item_ids, k: int = 10, **options: Any) -> pd.DataFrame:
        """Each item's ``k`` nearest items: columns item_id, rank, similar_item_id, score."""
        items = raw_to_index(self.item_map, np.atleast_1d(np.asarray(raw_item_ids)), "item")
        ids, scores = self.model.similar_items(items, k=k, **options)
        return self._frame(self.item_map.to_raw(items), ids, scores, "item_id", "similar_item_id")

    def _options(self, options: dict[str, Any]) -> dict[str, Any]:
        if options.get("filter_items") is not None:
            options = {**options, "filter_items": raw_to_index(
                self.item_map, np.atleast_1d(np.asarray(options["filter_items"])), "filter_items")}
        return options

    def save(self, path: str | Path) -> Path:
        """The model's files with the id maps in their metadata (what ``train`` saves too)."""
        return Path(self.model.save(path, meta={"user_ids": self.user_map.to_list(),
                                                "item_ids": self.item_map.to_list()}))

    @classmethod
    def load(cls, path: str | Path) -> FrameRecommender:
        """A directory saved by :meth:`save` or by ``recsys-ebm train``."""
        model = load_model(path)
        out = cls(model)
        out.user_map, out.item_map = saved_id_maps(model, path)
        return out
