"""Train/test splits of an interaction frame: pure, seeded, vectorized functions.

Every function takes a frame with at least ``user_id, item_id`` (``timestamp`` for the temporal
ones), returns a :class:`Split` of frames with the same columns (RangeIndex, input row order),
and never modifies its input. Data with a single user raises ``DataError`` (no recommender
can be trained and evaluated on it). No per-user Python loops: rows are ranked within their user by
one ``np.lexsort`` over (user, key), with random keys from ``np.random.default_rng(seed)``.

Top-N splits (random, temporal, leave-one-out, time cutoff, held-out users) drop test rows
whose user (except held-out users) or item never occurs in train, because such rows cannot be
ranked; the count is returned in ``Split.n_dropped`` and logged. Rating-prediction splits
(:func:`kfold`, the official ML-100K folds) keep them by default, as docs/protocols.md requires every
model to be scored on the same test rows (with a documented fallback prediction).

The official ML-100K folds u1..u5, ua, ub are read by
:func:`recsys_ebm.data.movielens.load_official_fold`.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys_ebm.data.ids import shown
from recsys_ebm.data.sequences import TIE_SEED, tie_keys
from recsys_ebm.errors import DataError

logger = logging.getLogger(__name__)

# floor(fraction * n) must not lose a whole unit to rounding, e.g. (1 - 0.8) * 10 = 1.9999999999999996.
_FLOOR_EPS = 1e-9


@dataclass(frozen=True, eq=False)
class Split:
    """A train/test split.

    Attributes
    ----------
    train, test : DataFrame
        Rows of the input frame (same columns), disjoint.
    fold_in : DataFrame or None
        Strong generalization only: the held-out users' rows given to the model at
        evaluation time (``test`` holds their targets).
    n_dropped : int
        Input rows in none of the frames (test/fold-in rows whose user or item is
        unknown to train).
    """

    train: pd.DataFrame
    test: pd.DataFrame
    fold_in: pd.DataFrame | None = None
    n_dropped: int = 0


def filter_min_interactions(frame: pd.DataFrame, min_count: int = 5) -> pd.DataFrame:
    """Drop users with fewer than ``min_count`` interactions (PROTOCOLS: before splitting).

    Parameters
    ----------
    frame : DataFrame (n, ...)
        Needs ``user_id``.
    min_count : int
        Users with fewer rows are dropped; the numbers of users and rows dropped are logged.

    Returns
    -------
    DataFrame (m, ...)
        The kept rows in input order, RangeIndex.
    """
    _check_frame(frame, ("user_id",), "filter_min_interactions")
    if not _is_int(min_count) or min_count < 1:
        raise ValueError(f"min_count must be an integer >= 1, got {min_count!r}")
    counts = frame.groupby("user_id", sort=False)["user_id"].transform("size").to_numpy()
    keep = counts >= min_count
    n_rows = int((~keep).sum())
    if n_rows:
        n_users = int(frame.loc[~keep, "user_id"].nunique())
        logger.info(
            "filter_min_interactions: dropped %d users with fewer than %d interactions "
            "(%d of %d rows)",
            n_users,
            min_count,
            n_rows,
            len(frame),
        )
    if not keep.any():
        raise DataError(
            f"filter_min_interactions: no user has at least {min_count} interactions "
            f"(largest count {int(counts.max())}); nothing left to split"
        )
    return frame.loc[keep].reset_index(drop=True)


def random_holdout(frame: pd.DataFrame, fraction: float = 0.2, seed: int = 0) -> Split:
    """Per user, ``max(1, floor(fraction * n))`` uniformly random interactions go to test.

    A user with a single interaction stays wholly in train; every user keeps at least one
    train row. Test rows whose item is not in train are dropped (counted, logged).

    Parameters
    ----------
    frame : DataFrame (n, ...)
        Needs ``user_id, item_id``.
    fraction : float in (0, 1)
    seed : int
        Seeds ``np.random.default_rng``; same frame and seed give the same split.
    """
    _check_frame(frame, ("user_id", "item_id"), "random_holdout")
    _check_several_users(frame, "random_holdout")
    fraction = _check_fraction(fraction, "fraction")
    rng = np.random.default_rng(seed)
    users = _codes(frame["user_id"])
    order_key = rng.random(len(frame))
    position = _position_within_user(users, order_key)
    is_test = position < _n_holdout(users, fraction)[users]
    return _finish(frame, is_test, name="random_holdout")


def temporal_holdout(frame: pd.DataFrame, fraction: float = 0.2, n: int | None = None,
                     tie_seed: int = TIE_SEED) -> Split:
    """Per user, the latest ``max(1, floor(fraction * count))`` interactions go to test.

    ``n``, when given, replaces ``fraction``: the latest ``n`` per user (capped so every user
    keeps one train row). A user with a single interaction stays in train. Interactions with the
    same timestamp are ordered by the next-item protocol's seeded permutation
    (:func:`recsys_ebm.data.sequences.tie_keys`), as in :func:`leave_one_out`: independent of the
    row order and of the ids (ordering them by id would hold out the larger ids, on MovieLens the
    newer and less popular films, whenever a tie straddles the cut).

    Parameters
    ----------
    frame : DataFrame (n_rows, ...)
        Needs ``user_id, item_id, timestamp``.
    """
    _check_frame(frame, ("user_id", "item_id", "timestamp"), "temporal_holdout")
    _check_several_users(frame, "temporal_holdout")
    users = _codes(frame["user_id"])
    if n is None:
        n_test = _n_holdout(users, _check_fraction(fraction, "fraction"))
    else:
        if not _is_int(n) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        counts = np.bincount(users)
        n_test = np.where(counts < 2, 0, np.minimum(n, counts - 1))
    keys = tie_keys(frame["user_id"].to_numpy(), frame["item_id"].to_numpy(), tie_seed)
    # latest first: descending timestamp, then descending tie key
    position = _position_within_user(users, -_numeric_timestamps(frame).astype(np.float64), ~keys)
    is_test = position < n_test[users]
    return _finish(
        frame, is_test, name="temporal_holdout" if n is None else f"temporal_holdout(n={n})"
    )


def leave_one_out(frame: pd.DataFrame, tie_seed: int = TIE_SEED) -> Split:
    """Per user, the single latest interaction goes to test (users with one row stay in train).

    Interactions with the same timestamp are ordered by the next-item protocol's seeded
    permutation (:func:`recsys_ebm.data.sequences.tie_keys`), never by id, so the test item
    is the last event of the user's sequence view.
    """
    _check_frame(frame, ("user_id", "item_id", "timestamp"), "leave_one_out")
    _check_several_users(frame, "leave_one_out")
    users = _codes(frame["user_id"])
    keys = tie_keys(frame["user_id"].to_numpy(), frame["item_id"].to_numpy(), tie_seed)
    timestamps = _numeric_timestamps(frame).astype(np.float64)
    # latest first: descending timestamp, then descending tie key
    position = _position_within_user(users, -timestamps, ~keys)
    counts = np.bincount(users)
    return _finish(frame, (position < 1) & (counts[users] >= 2), name="leave_one_out")


def time_cutoff(frame: pd.DataFrame, cutoff: float | str | pd.Timestamp) -> Split:
    """Global temporal split: ``timestamp < cutoff`` is train, the rest is test.

    ``cutoff`` is Unix seconds, or anything ``pd.Timestamp`` parses (naive means UTC). Test
    rows whose user or item is not in train are dropped (counted, logged).
    """
    _check_frame(frame, ("user_id", "item_id", "timestamp"), "time_cutoff")
    _check_several_users(frame, "time_cutoff")
    if isinstance(cutoff, bool):
        raise ValueError(f"cutoff must be Unix seconds or a date-time, got {cutoff!r}")
    if isinstance(cutoff, numbers.Real):
        seconds = float(cutoff)
    else:
        try:
            stamp = pd.Timestamp(cutoff)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"cutoff {cutoff!r} is neither Unix seconds nor a date-time") from exc
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp
        seconds = (stamp - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    if not math.isfinite(seconds):
        raise ValueError(f"cutoff must be finite, got {cutoff!r}")
    timestamps = _numeric_timestamps(frame)
    is_test = timestamps >= seconds
    if is_test.all() or not is_test.any():
        side = "train" if is_test.all() else "test"
        raise ValueError(
            f"cutoff {cutoff!r} ({seconds:.0f} s) leaves {side} empty: timestamps range from "
            f"{timestamps.min()} to {timestamps.max()}"
        )
    return _finish(frame, is_test, name="time_cutoff")


def held_out_users(
    frame: pd.DataFrame,
    n_users: int | None = None,
    *,
    fraction: float | None = None,
    fold_in_fraction: float = 0.8,
    seed: int = 0,
) -> Split:
    """Strong generalization (Liang et al. 2018): hold out whole users.

    ``n_users`` (or ``fraction`` of the users, floored, at least 1) are drawn uniformly with
    the seed; the others form train. Each held-out user's rows are split at random:
    ``max(1, floor((1 - fold_in_fraction) * n))`` to ``test``, the rest to ``fold_in`` (a
    held-out user with one row has it in fold-in). Fold-in and test rows whose item is not in
    train are dropped (counted, logged); held-out users are unknown to train by design.
    """
    _check_frame(frame, ("user_id", "item_id"), "held_out_users")
    _check_several_users(frame, "held_out_users")
    if (n_users is None) == (fraction is None):
        raise ValueError(
            f"pass exactly one of n_users or fraction, got n_users={n_users!r}, fraction={fraction!r}"
        )
    fold_in_fraction = _check_fraction(fold_in_fraction, "fold_in_fraction")
    raw_users = np.unique(frame["user_id"].to_numpy())
    n_total = len(raw_users)
    if fraction is not None:
        fraction = _check_fraction(fraction, "fraction")
        n_users = max(1, math.floor(fraction * n_total + _FLOOR_EPS))
    if not _is_int(n_users) or not 1 <= n_users < n_total:
        raise ValueError(
            f"n_users must be an integer in [1, {n_total - 1}] (the frame has {n_total} users), "
            f"got {n_users!r}"
        )
    rng = np.random.default_rng(seed)
    held = raw_users[rng.permutation(n_total)[:n_users]]
    is_held = frame["user_id"].isin(held).to_numpy()
    users = _codes(frame["user_id"])
    position = _position_within_user(users, rng.random(len(frame)))
    n_test = _n_holdout(users, 1.0 - fold_in_fraction)
    is_test = is_held & (position < n_test[users])
    return _finish(frame, is_test, is_fold_in=is_held & ~is_test, name="held_out_users")


def kfold(
    frame: pd.DataFrame, n_folds: int = 5, seed: int = 0, *, drop_unknown: bool = False
) -> list[Split]:
    """K-fold split of the rows for rating prediction.

    Rows are permuted with the seed and cut into ``n_folds`` contiguous chunks (sizes differ
    by at most one); fold ``k`` tests on chunk ``k`` and trains on the rest. Test rows whose
    user or item is not in train are kept by default (PROTOCOLS: every model is scored on the
    same rows) and their number is logged; ``drop_unknown=True`` drops and counts them.
    """
    _check_frame(frame, ("user_id", "item_id"), "kfold")
    _check_several_users(frame, "kfold")
    if not _is_int(n_folds) or not 2 <= n_folds <= len(frame):
        raise ValueError(f"n_folds must be an integer in [2, {len(frame)}], got {n_folds!r}")
    rng = np.random.default_rng(seed)
    fold_of_row = np.empty(len(frame), dtype=np.int64)
    fold_of_row[rng.permutation(len(frame))] = np.arange(len(frame)) * n_folds // len(frame)
    return [
        _finish(frame, fold_of_row == k, drop_unknown=drop_unknown, name=f"kfold[{k}/{n_folds}]")
        for k in range(n_folds)
    ]


# --------------------------------------------------------------------------------------------
# internals


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_frame(frame: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{name}: expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing}; found {list(frame.columns)}")
    if len(frame) == 0:
        raise ValueError(f"{name}: the frame is empty")
    for column in ("user_id", "item_id"):
        if column in columns and frame[column].isna().any():
            row = int(np.flatnonzero(frame[column].isna().to_numpy())[0])
            raise ValueError(f"{name}: column {column!r} has a missing id at row {row}")


def _check_several_users(frame: pd.DataFrame, name: str) -> None:
    """A recommender learns from several users: one user is refused before any training."""
    users = frame["user_id"].unique()
    if len(users) < 2:
        raise DataError(
            f"{name}: the data has a single user ({shown(users[0])!r}, {len(frame)} "
            "interactions); training and evaluating a recommender needs at least 2 users"
        )


def _check_fraction(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def _codes(ids: pd.Series) -> np.ndarray:
    """Contiguous int64 codes ``0..n_users-1`` of a user column (order of first appearance)."""
    return pd.factorize(ids, sort=False)[0].astype(np.int64)


def _n_holdout(users: np.ndarray, fraction: float) -> np.ndarray:
    """Test rows per user code: ``max(1, floor(fraction * n))``, 0 for single-row users,
    and never more than ``n - 1`` (every user keeps a train row)."""
    counts = np.bincount(users)
    n_test = np.maximum(1, np.floor(fraction * counts + _FLOOR_EPS).astype(np.int64))
    return np.where(counts < 2, 0, np.minimum(n_test, counts - 1))


def _position_within_user(users: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """0-based rank of each row within its user, ordering by ``keys`` (first is primary).

    Returns int64 (n,); one lexsort, no Python loop over users.
    """
    order = np.lexsort((*reversed(keys), users))
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order)) - group_start
    return position


def _numeric_timestamps(frame: pd.DataFrame) -> np.ndarray:
    timestamps = frame["timestamp"].to_numpy()
    if not np.issubdtype(timestamps.dtype, np.number):
        raise ValueError(
            f"timestamp must be numeric (Unix seconds), got dtype {frame['timestamp'].dtype}; "
            "read the data with recsys_ebm.data.readers.read_interactions"
        )
    return timestamps


def _finish(
    frame: pd.DataFrame,
    is_test: np.ndarray,
    *,
    is_fold_in: np.ndarray | None = None,
    drop_unknown: bool = True,
    name: str,
) -> Split:
    """Assemble a Split, dropping (or, with ``drop_unknown=False``, reporting) evaluation rows
    whose user or item never occurs in train. Fold-in users are exempt from the user check."""
    is_eval = is_test if is_fold_in is None else is_test | is_fold_in
    train = frame.loc[~is_eval]
    unknown_item = is_eval & ~frame["item_id"].isin(train["item_id"].unique()).to_numpy()
    if is_fold_in is None:
        unknown_user = is_eval & ~frame["user_id"].isin(train["user_id"].unique()).to_numpy()
    else:
        unknown_user = np.zeros(len(frame), dtype=bool)  # held-out users are new by design
    unknown = unknown_item | unknown_user
    n_unknown = int(unknown.sum())
    if n_unknown:
        detail = (
            f"{int(unknown_user.sum())} with a user and {int(unknown_item.sum())} with an item "
            "unknown to train"
        )
        if drop_unknown:
            logger.info(
                "%s: dropped %d of %d evaluation rows (%s)",
                name,
                n_unknown,
                int(is_eval.sum()),
                detail,
            )
        else:
            logger.info("%s: kept %d test rows (%s)", name, n_unknown, detail)
    keep = ~unknown if drop_unknown else np.ones(len(frame), dtype=bool)
    test = frame.loc[is_test & keep].reset_index(drop=True)
    fold_in = None if is_fold_in is None else frame.loc[is_fold_in & keep].reset_index(drop=True)
    return Split(
        train=train.reset_index(drop=True),
        test=test,
        fold_in=fold_in,
        n_dropped=n_unknown if drop_unknown else 0,
    )
