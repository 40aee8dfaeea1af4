"""`Interactions`: the (user, item, rating, timestamp) log as index arrays and CSR matrices;
`parse_ratings` / `parse_timestamps`: the validation of raw rating and time columns."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys_ebm.data.ids import IdMap, by_position, parse_ids, shown
from recsys_ebm.data.sequences import TIE_SEED, Sequences, sequence_view
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

        Ids follow :func:`~recsys_ebm.data.ids.parse_ids` (mixed ints and strings are read as
        strings); ratings must be finite numbers, timestamps Unix seconds or date-times;
        anything else raises ``DataError`` naming the column and the row. Maps not given are
        fitted on ``frame``. Rows whose user or item is unknown to given maps are dropped and
        the count is logged (never silently).
        """
        if not isinstance(frame, pd.DataFrame):
            raise DataError(f"{name}: expected a pandas DataFrame, got {type(frame).__name__}")
        missing = [c for c in ("user_id", "item_id") if c not in frame.columns]
        if missing:
            raise DataError(f"{name}: missing column(s) {missing}; found {list(frame.columns)}")
        raw_users = parse_ids(frame["user_id"], "user_id", name)
        raw_items = parse_ids(frame["item_id"], "item_id", name)
        user_map = user_map if user_map is not None else IdMap.fit(raw_users)
        item_map = item_map if item_map is not None else IdMap.fit(raw_items)
        users = _lookup(user_map, raw_users)
        items = _lookup(item_map, raw_items)
        keep = (users >= 0) & (items >= 0)
        n_dropped = int((~keep).sum())
        if n_dropped:
            logger.info(
                "%s: dropped %d of %d rows whose user (%d) or item (%d) is unknown to the id maps",
                name, n_dropped, len(frame), int((users < 0).sum()), int((items < 0).sum()),
            )
        ratings = (
            parse_ratings(frame["rating"], "rating", name)
            if "rating" in frame.columns
            else np.ones(len(frame), dtype=np.float32)
        )
        timestamps = (
            parse_timestamps(frame["timestamp"], "timestamp", name)
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

    def sequences(self, seed: int = TIE_SEED) -> Sequences:
        """Each user's events ordered by timestamp, ties by the protocol's seeded permutation
        (:mod:`recsys_ebm.data.sequences`); row ``u`` is user index ``u``."""
        return sequence_view(self.user_idx, self.item_idx, self.timestamps,
                             self.user_map.to_raw(self.user_idx), self.item_map.to_raw(self.item_idx),
                             self.n_users, self.n_items, seed)

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


def _lookup(id_map: IdMap, raw: np.ndarray) -> np.ndarray:
    """Indices of parsed ids in a map (-1 when unknown), also across int and string maps."""
    map_is_int = id_map.raw_ids.dtype.kind in "iu"
    raw_is_int = raw.dtype.kind in "iu"
    if len(id_map) and map_is_int and not raw_is_int:
        return np.full(len(raw), -1, dtype=np.int64)  # parsed strings are never integers
    if len(id_map) and raw_is_int and not map_is_int:
        raw = raw.astype(str).astype(object)
    return id_map.to_index(raw, missing="mask")


# --------------------------------------------------------------------------------------------
# parsing raw rating and time columns

_FLOAT32_MAX = float(np.finfo(np.float32).max)
#: Without a declared scale a rating more than this many orders of magnitude above the
#: median rating magnitude (at least 1) is refused as a corrupt value.
MAX_RATING_MAGNITUDE_GAP = 6


def parse_ratings(
    series: pd.Series,
    column: str,
    where: str,
    *,
    locate: Callable[[int], str] = by_position,
    scale: tuple[float, float, float | None] | None = None,
    infer_scale: bool = False,
) -> np.ndarray:
    """Validate a rating column; float32 (n,).

    Ratings must be finite numbers within float32. ``scale = (min, max, step)`` (``step``
    None for any value in range) refuses values off it. Without a scale and with
    ``infer_scale``, a value more than ``10**MAX_RATING_MAGNITUDE_GAP`` times the (lower) median
    absolute rating (taken as at least 1) is refused. Errors name the value and its row.
    """
    values = _numbers(series, column, where, locate, "rating")
    not_finite = ~np.isfinite(values) | (np.abs(values) > _FLOAT32_MAX)
    if not_finite.any():
        position = int(np.flatnonzero(not_finite)[0])
        raise DataError(
            f"{where}: column {column!r} has a missing, infinite or too large rating "
            f"{shown(series.iloc[position])!r} {locate(position)}"
        )
    if scale is not None:
        _check_scale(values, scale, column, where, locate)
    elif infer_scale and len(values):
        reference = max(1.0, float(np.quantile(np.abs(values), 0.5, method="lower")))
        outlier = np.abs(values) > reference * 10.0**MAX_RATING_MAGNITUDE_GAP
        if outlier.any():
            position = int(np.flatnonzero(outlier)[0])
            raise DataError(
                f"{where}: column {column!r} has a rating {shown(values[position])!r} "
                f"{locate(position)} more than {MAX_RATING_MAGNITUDE_GAP} orders of magnitude "
                f"above the typical rating {reference:g}; declare the scale "
                "(rating_scale=(min, max, step)) if such ratings are genuine"
            )
    return values.astype(np.float32)


def _check_scale(values: np.ndarray, scale, column: str, where: str, locate) -> None:
    low, high, step = scale
    outside = (values < low) | (values > high)
    if outside.any():
        position = int(np.flatnonzero(outside)[0])
        raise DataError(
            f"{where}: column {column!r} has a rating {shown(values[position])!r} {locate(position)} "
            f"outside the range [{low:g}, {high:g}] ({int(outside.sum())} such rows)"
        )
    if step is not None:
        steps = (values - low) / step
        off = np.abs(steps - np.round(steps)) > 1e-6
        if off.any():
            position = int(np.flatnonzero(off)[0])
            raise DataError(
                f"{where}: column {column!r} has a rating {shown(values[position])!r} "
                f"{locate(position)} that is not on the scale {low:g}..{high:g} in steps of "
                f"{step:g}"
            )


def _numbers(series: pd.Series, column: str, where: str, locate, what: str) -> np.ndarray:
    """A column as float64 (NaN where missing); booleans and non-numbers are refused."""
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        raise DataError(f"{where}: column {column!r} holds booleans ({shown(series.iloc[0])!r}), "
                        f"not {what}s")
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype):
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    if not (isinstance(dtype, pd.StringDtype) or pd.api.types.is_object_dtype(dtype)):
        raise DataError(f"{where}: column {column!r} holds {dtype} values "
                        f"({shown(series.iloc[0])!r}), not {what}s")
    values = series.to_numpy(dtype=object)
    numeric = np.full(len(values), np.nan)
    bad = np.zeros(len(values), dtype=bool)
    for position, value in enumerate(values):  # object columns only: text or mixed objects
        if value is None or (isinstance(value, float) and value != value):
            continue
        try:
            if isinstance(value, (bool, np.bool_, bytes)):
                raise TypeError
            if isinstance(value, str) and "_" in value:
                raise ValueError  # float() reads "1_0" as 10; no file means that
            numeric[position] = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError, OverflowError):
            bad[position] = True
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        raise DataError(f"{where}: column {column!r} has a non-numeric {what} "
                        f"{shown(values[position])!r} {locate(position)}")
    return numeric


def parse_timestamps(
    series: pd.Series, column: str, where: str, *, locate: Callable[[int], str] = by_position
) -> np.ndarray:
    """Validate a time column: Unix seconds (int or float) or ISO 8601 date-times; int64 (n,).

    Fractional seconds are floored; missing, unparseable or out-of-int64 values are refused.
    """
    missing = series.isna().to_numpy()
    if missing.any():
        position = int(np.flatnonzero(missing)[0])
        raise DataError(f"{where}: column {column!r} has a missing timestamp "
                        f"{shown(series.iloc[position])!r} {locate(position)}")
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        return _datetimes_to_seconds(series)
    if pd.api.types.is_integer_dtype(series.dtype):
        values = series.to_numpy()
        if values.dtype != np.uint64 or values.max() <= np.iinfo(np.int64).max:
            return values.astype(np.int64)
    try:
        values = _numbers(series, column, where, locate, "timestamp")
    except DataError:
        if not (isinstance(series.dtype, pd.StringDtype) or pd.api.types.is_object_dtype(series.dtype)):
            raise
        return _iso_to_seconds(series, column, where, locate)
    bad = ~np.isfinite(values) | (np.abs(values) >= 2.0**63)
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        raise DataError(f"{where}: column {column!r} has an unparseable or out-of-range "
                        f"timestamp {shown(series.iloc[position])!r} {locate(position)}")
    return np.floor(values).astype(np.int64)


def _iso_to_seconds(series: pd.Series, column: str, where: str, locate) -> np.ndarray:
    try:
        parsed = pd.to_datetime(series, errors="coerce", utc=True, format="ISO8601")
    except (TypeError, ValueError, OverflowError):
        parsed = pd.Series(pd.NaT, index=series.index, dtype="datetime64[ns, UTC]")
    bad = parsed.isna().to_numpy()
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{where}: column {column!r} has an unparseable timestamp "
            f"{shown(series.iloc[position])!r} {locate(position)} (expected Unix seconds or ISO 8601 "
            "date-times)"
        )
    return _datetimes_to_seconds(parsed)


def _datetimes_to_seconds(series: pd.Series) -> np.ndarray:
    """Unix seconds (floored) of datetimes of any unit, naive ones taken as UTC."""
    if series.dt.tz is not None:
        series = series.dt.tz_convert("UTC").dt.tz_localize(None)
    values = series.to_numpy()
    unit = np.datetime_data(values.dtype)[0]
    per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
    return values.view(np.int64) // per_second
