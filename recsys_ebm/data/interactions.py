"""`Interactions`: the (user, item, rating, timestamp) log as index arrays and CSR matrices."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys_ebm.data.ids import IdMap
from recsys_ebm.errors import DataError

logger = logging.getLogger(__name__)

#: Column names of the canonical interaction frame every reader produces.
COLUMNS = ("user_id", "item_id", "rating", "timestamp")


@dataclass(frozen=True)
class Interactions:
    """Interactions over contiguous ids.

    Attributes
    ----------
    user_idx, item_idx : int64 (n,)
        Internal indices of each interaction.
    ratings : float32 (n,)
        Rating of each interaction (1.0 for implicit data).
    timestamps : int64 (n,)
        Unix seconds (0 when the source has none).
    user_map, item_map : IdMap
        Raw id <-> index maps; they fix the CSR shapes.
    """

    user_idx: np.ndarray
    item_idx: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    user_map: IdMap
    item_map: IdMap

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        *,
        user_map: IdMap | None = None,
        item_map: IdMap | None = None,
        name: str = "interactions",
    ) -> Interactions:
        """Build from a frame with ``user_id, item_id`` (+ optional ``rating, timestamp``).

        Maps not given are fitted on ``frame``. Rows whose user or item is unknown to
        given maps are dropped and the count is logged (never silently).
        """
        missing = [c for c in ("user_id", "item_id") if c not in frame.columns]
        if missing:
            raise DataError(f"{name}: missing column(s) {missing}; found {list(frame.columns)}")
        user_map = user_map if user_map is not None else IdMap.fit(frame["user_id"].to_numpy())
        item_map = item_map if item_map is not None else IdMap.fit(frame["item_id"].to_numpy())
        users = user_map.to_index(frame["user_id"].to_numpy(), missing="mask")
        items = item_map.to_index(frame["item_id"].to_numpy(), missing="mask")
        keep = (users >= 0) & (items >= 0)
        n_dropped = int((~keep).sum())
        if n_dropped:
            logger.info(
                "%s: dropped %d of %d rows whose user (%d) or item (%d) is unknown to the id maps",
                name, n_dropped, len(frame), int((users < 0).sum()), int((items < 0).sum()),
            )
        ratings = (
            frame["rating"].to_numpy(dtype=np.float32)
            if "rating" in frame.columns
            else np.ones(len(frame), dtype=np.float32)
        )
        timestamps = (
            frame["timestamp"].to_numpy(dtype=np.int64)
            if "timestamp" in frame.columns
            else np.zeros(len(frame), dtype=np.int64)
        )
        return cls(
            user_idx=users[keep],
            item_idx=items[keep],
            ratings=ratings[keep],
            timestamps=timestamps[keep],
            user_map=user_map,
            item_map=item_map,
        )

    def __len__(self) -> int:
        return len(self.user_idx)

    @property
    def n_users(self) -> int:
        return len(self.user_map)

    @property
    def n_items(self) -> int:
        return len(self.item_map)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_users, self.n_items)

    def _csr(self, values: np.ndarray) -> sp.csr_matrix:
        matrix = sp.csr_matrix(
            (values, (self.user_idx, self.item_idx)), shape=self.shape, dtype=np.float32
        )
        matrix.sum_duplicates()
        matrix.sort_indices()
        return matrix

    @property
    def user_items(self) -> sp.csr_matrix:
        """Binary users x items CSR (float32 ones where an interaction exists)."""
        matrix = self._csr(np.ones(len(self), dtype=np.float32))
        matrix.data[:] = 1.0
        return matrix

    @property
    def rating_matrix(self) -> sp.csr_matrix:
        """Users x items CSR whose values are the ratings (explicit-feedback models use this)."""
        return self._csr(self.ratings)

    def binarize(self, threshold: float | None = None) -> Interactions:
        """Keep interactions with ``rating >= threshold`` (all when None), ratings set to 1."""
        keep = np.ones(len(self), dtype=bool) if threshold is None else self.ratings >= threshold
        if not keep.any():
            raise DataError(f"no interaction has rating >= {threshold}; nothing left to train on")
        return Interactions(
            user_idx=self.user_idx[keep],
            item_idx=self.item_idx[keep],
            ratings=np.ones(int(keep.sum()), dtype=np.float32),
            timestamps=self.timestamps[keep],
            user_map=self.user_map,
            item_map=self.item_map,
        )

    def to_frame(self) -> pd.DataFrame:
        """Back to a frame with raw ids (``user_id, item_id, rating, timestamp``)."""
        return pd.DataFrame(
            {
                "user_id": self.user_map.to_raw(self.user_idx),
                "item_id": self.item_map.to_raw(self.item_idx),
                "rating": self.ratings,
                "timestamp": self.timestamps,
            }
        )
