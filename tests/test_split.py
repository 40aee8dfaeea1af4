"""Splits: exact per-user counts on a hand-made frame, coverage/disjointness properties, seeds."""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_ebm.data.split import (
    Split,
    filter_min_interactions,
    held_out_users,
    kfold,
    leave_one_out,
    random_holdout,
    temporal_holdout,
    time_cutoff,
)
from recsys_ebm.errors import DataError

N_CATALOG = 20
#: Users of the hand-made frame by number of interactions -> expected test rows at 20%.
EXPECTED_TEST = {1: 0, 2: 1, 3: 1, 4: 1, 5: 1, 9: 1, 10: 2, 14: 2, 15: 3, 20: 4}


def handmade() -> pd.DataFrame:
    """30 'background' users rating the whole catalog (so no test item is unknown to train)
    plus one user per count in EXPECTED_TEST rating items 0..count-1. ``row`` identifies rows;
    timestamps are distinct and increase with the item id."""
    rows = []
    for user in range(30):
        rows += [(1000 + user, item) for item in range(N_CATALOG)]
    for count in EXPECTED_TEST:
        rows += [(count, item) for item in range(count)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id"])
    frame["rating"] = np.float32(1.0) + (frame["item_id"] % 5).astype(np.float32)
    # Counted users' timestamps increase with the item id; background users' are shuffled so
    # that the items they hold out in temporal splits vary (and stay known to train).
    order = frame["item_id"].to_numpy().copy()
    background = frame["user_id"].to_numpy() >= 1000
    rng = np.random.default_rng(0)
    order[background] = np.concatenate([rng.permutation(N_CATALOG) for _ in range(30)])
    frame["timestamp"] = (frame["user_id"] * 1000 + order * 7).astype(np.int64)
    frame["row"] = np.arange(len(frame))
    return frame


def expected_count(n: int, fraction: float = 0.2) -> int:
    return 0 if n < 2 else min(n - 1, max(1, math.floor(fraction * n + 1e-9)))


def assert_partition(frame: pd.DataFrame, split: Split) -> None:
    """Disjoint; train + test (+ fold_in) + dropped == input; rows unchanged."""
    parts = [split.train, split.test] + ([split.fold_in] if split.fold_in is not None else [])
    ids = np.concatenate([p["row"].to_numpy() for p in parts])
    assert len(ids) == len(set(ids)), "a row is in two parts"
    assert len(ids) + split.n_dropped == len(frame)
    assert set(ids) <= set(frame["row"])
    for part in parts:
        assert list(part.columns) == list(frame.columns)
        assert isinstance(part.index, pd.RangeIndex)
        original = frame.set_index("row").loc[part["row"]].reset_index()[frame.columns]
        pd.testing.assert_frame_equal(part, original, check_dtype=True)


def dropped_rows(frame: pd.DataFrame, split: Split) -> pd.DataFrame:
    kept = set(split.train["row"]) | set(split.test["row"])
    if split.fold_in is not None:
        kept |= set(split.fold_in["row"])
    return frame[~frame["row"].isin(kept)]


def per_user(part: pd.DataFrame) -> dict:
    return part.groupby("user_id").size().to_dict()


# ----------------------------------------------------------------------------- exact counts


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_random_holdout_exact_counts(seed):
    frame = handmade()
    split = random_holdout(frame, fraction=0.2, seed=seed)
    assert_partition(frame, split)
    assert split.n_dropped == 0  # every item is rated by 30 background users
    test_counts = per_user(split.test)
    for count, expected in EXPECTED_TEST.items():
        assert test_counts.get(count, 0) == expected, count
    assert all(test_counts[1000 + u] == 4 for u in range(30))
    assert split.train.groupby("user_id").size().min() >= 1
    assert set(split.train["user_id"]) == set(frame["user_id"])  # single-row user stays in train
    assert split.fold_in is None


def test_random_holdout_other_fraction():
    frame = handmade()
    split = random_holdout(frame, fraction=0.5, seed=3)
    counts = per_user(split.test)
    assert counts[20] == 10 and counts[15] == 7 and counts[3] == 1 and counts[2] == 1
    assert 1 not in counts


def test_random_holdout_seeds():
    frame = handmade()
    a = random_holdout(frame, seed=11)
    b = random_holdout(frame, seed=11)
    c = random_holdout(frame, seed=12)
    pd.testing.assert_frame_equal(a.test, b.test)
    pd.testing.assert_frame_equal(a.train, b.train)
    assert set(a.test["row"]) != set(c.test["row"])


def test_random_holdout_is_roughly_uniform():
    """Across seeds every item of a 10-row user lands in test about 2/10 of the time."""
    frame = pd.DataFrame({"user_id": np.repeat([0, 1], 10), "item_id": np.tile(np.arange(10), 2)})
    hits = np.zeros(10)
    for seed in range(400):
        train = random_holdout(frame, seed=seed).train
        # held out = not in train (test rows whose item both users held out are dropped)
        hits += 1 - np.bincount(train["item_id"][train["user_id"] == 0], minlength=10)
    freq = hits / 400
    assert hits.sum() == 2 * 400
    assert np.all(np.abs(freq - 0.2) < 0.08), freq


def test_temporal_holdout_picks_the_latest():
    frame = handmade()
    split = temporal_holdout(frame, fraction=0.2)
    assert_partition(frame, split)
    assert split.n_dropped == 0
    counts = per_user(split.test)
    for count, expected in EXPECTED_TEST.items():
        assert counts.get(count, 0) == expected
    # user 10 rated items 0..9 with timestamps increasing in the item: test = items 8, 9
    assert sorted(split.test.loc[split.test["user_id"] == 10, "item_id"]) == [8, 9]
    last_train = split.train.groupby("user_id")["timestamp"].max()
    first_test = split.test.groupby("user_id")["timestamp"].min()
    assert (first_test > last_train.loc[first_test.index]).all()


def test_temporal_ties_follow_the_seeded_permutation_not_the_ids_nor_the_row_order():
    frame = pd.DataFrame(
        {"user_id": [1] * 5 + [2] * 5, "item_id": [5, 3, 9, 1, 7] * 2, "timestamp": [10] * 10}
    )
    frame["row"] = np.arange(10)
    from recsys_ebm.data.sequences import tie_keys

    split = temporal_holdout(frame, n=2)
    held = pd.concat([split.test, dropped_rows(frame, split)])
    keys = tie_keys(frame["user_id"], frame["item_id"])
    for user in (1, 2):  # each user's two largest tie keys are the two "latest" items
        mine = frame["user_id"] == user
        expected = frame.loc[mine, "item_id"].to_numpy()[np.argsort(keys[mine.to_numpy()])[-2:]]
        assert sorted(held.loc[held["user_id"] == user, "item_id"]) == sorted(expected)
    picks = [tuple(sorted(held.loc[held["user_id"] == u, "item_id"])) for u in (1, 2)]
    assert picks[0] != picks[1] and (7, 9) not in picks  # a per-user permutation, not the ids
    shuffled = frame.sample(frac=1.0, random_state=5).reset_index(drop=True)
    again = temporal_holdout(shuffled, n=2)
    assert set(again.train["row"]) == set(split.train["row"])
    assert set(temporal_holdout(frame, n=2, tie_seed=1).train["row"]) != set(split.train["row"])


def test_temporal_n_and_leave_one_out():
    frame = handmade()
    loo = leave_one_out(frame)
    assert_partition(frame, loo)
    counts = per_user(loo.test)
    assert set(counts.values()) == {1} and 1 not in counts  # single-row user: train only
    assert loo.test.loc[loo.test["user_id"] == 15, "item_id"].tolist() == [14]
    three = temporal_holdout(frame, n=3)
    assert per_user(three.test)[2] == 1 and per_user(three.test)[4] == 3  # capped at count - 1


def test_time_cutoff():
    frame = handmade()
    cutoff = 1_010_000  # background users 1000..1009 are all before, 1010.. all after
    split = time_cutoff(frame, cutoff)
    assert_partition(frame, split)
    assert (split.train["timestamp"] < cutoff).all() and (split.test["timestamp"] >= cutoff).all()
    # every test user is unknown to train here (timestamps are per user), so all are dropped
    assert len(split.test) == 0 and split.n_dropped == int((frame["timestamp"] >= cutoff).sum())


def test_time_cutoff_keeps_known_users_and_accepts_dates():
    frame = pd.DataFrame(
        {
            "user_id": [1, 1, 2, 2, 3],
            "item_id": [1, 2, 1, 3, 1],
            "timestamp": [0, 86_400 * 2, 10, 86_400 * 3, 86_400 * 5],
        }
    )
    frame["row"] = np.arange(5)
    split = time_cutoff(frame, "1970-01-02")
    assert_partition(frame, split)
    # row 1 (user 1, item 2): item 2 unknown -> dropped; row 3 (item 3) dropped; row 4 user 3 unknown
    assert split.test.empty and split.n_dropped == 3
    frame.loc[1, "item_id"] = 1
    split = time_cutoff(frame, 86_400.0)
    assert split.test["row"].tolist() == [1] and split.n_dropped == 2


def test_held_out_users():
    frame = handmade()
    split = held_out_users(frame, n_users=8, fold_in_fraction=0.8, seed=4)
    assert_partition(frame, split)
    held = (
        set(split.fold_in["user_id"])
        | set(split.test["user_id"])
        | set(dropped_rows(frame, split)["user_id"])
    )
    assert len(held) == 8
    assert held.isdisjoint(split.train["user_id"])
    counts = frame.groupby("user_id").size()
    test_counts = per_user(split.test)
    assert split.n_dropped == 0
    for user in held:
        assert test_counts.get(user, 0) == expected_count(int(counts[user]), 0.2)
        assert per_user(split.fold_in)[user] == counts[user] - test_counts.get(user, 0)


def test_held_out_users_fraction_and_seeds():
    frame = handmade()
    by_fraction = held_out_users(frame, fraction=0.25, seed=1)
    n_users = frame["user_id"].nunique()
    assert by_fraction.fold_in["user_id"].nunique() == math.floor(0.25 * n_users)
    same = held_out_users(frame, fraction=0.25, seed=1)
    other = held_out_users(frame, fraction=0.25, seed=2)
    pd.testing.assert_frame_equal(by_fraction.fold_in, same.fold_in)
    assert set(by_fraction.fold_in["user_id"]) != set(other.fold_in["user_id"])


def test_held_out_users_drop_items_unknown_to_train():
    frame = pd.DataFrame({"user_id": [1, 1, 2, 2, 2, 3, 3], "item_id": [1, 2, 1, 2, 99, 1, 2]})
    frame["row"] = np.arange(len(frame))
    held = {}
    for seed in range(20):
        split = held_out_users(frame, n_users=1, seed=seed)
        assert_partition(frame, split)
        (user,) = set(split.fold_in["user_id"]) | set(split.test["user_id"])
        held[user] = split
    assert set(held) == {1, 2, 3}  # the seed decides who is held out
    assert held[2].n_dropped == 1  # item 99 exists only in user 2's rows
    assert 99 not in set(held[2].fold_in["item_id"]) | set(held[2].test["item_id"])
    assert held[1].n_dropped == 0 and held[3].n_dropped == 0


def test_kfold():
    frame = handmade()
    folds = kfold(frame, n_folds=5, seed=0)
    assert len(folds) == 5
    test_rows = [set(f.test["row"]) for f in folds]
    assert set().union(*test_rows) == set(frame["row"])
    assert sum(len(t) for t in test_rows) == len(frame)  # disjoint test folds
    sizes = sorted(len(t) for t in test_rows)
    assert sizes[-1] - sizes[0] <= 1
    for fold in folds:
        assert_partition(frame, fold)
        assert fold.n_dropped == 0
    again = kfold(frame, n_folds=5, seed=0)
    assert all(set(a.test["row"]) == set(b.test["row"]) for a, b in zip(folds, again, strict=True))
    other = kfold(frame, n_folds=5, seed=1)
    assert set(other[0].test["row"]) != test_rows[0]


def test_kfold_reports_or_drops_unknown(caplog):
    frame = pd.DataFrame({"user_id": [1, 1, 2, 3], "item_id": [1, 2, 1, 5]})
    frame["row"] = np.arange(4)
    with caplog.at_level(logging.INFO, logger="recsys_ebm.data.split"):
        kept = kfold(frame, n_folds=4, seed=0)
    assert sum(len(f.test) for f in kept) == 4 and "kept" in caplog.text
    dropped = kfold(frame, n_folds=4, seed=0, drop_unknown=True)
    # rows of user 2 and user 3 (single rows) and item 2/5 (single items) are unknown when held out
    assert sum(f.n_dropped for f in dropped) == 3
    for fold in dropped:
        assert_partition(frame, fold)


def test_drops_are_logged(caplog):
    frame = pd.DataFrame({"user_id": [1, 1, 1, 2, 2], "item_id": [1, 2, 3, 1, 2], "timestamp": 0})
    with caplog.at_level(logging.INFO, logger="recsys_ebm.data.split"):
        split = leave_one_out(frame)
    assert split.n_dropped == 1  # user 1's latest-tied item 3 exists only in that row
    assert "dropped 1 of 2 evaluation rows" in caplog.text


def test_filter_min_interactions(caplog):
    frame = handmade()
    with caplog.at_level(logging.INFO, logger="recsys_ebm.data.split"):
        kept = filter_min_interactions(frame, min_count=5)
    small = [c for c in EXPECTED_TEST if c < 5]
    assert set(kept["user_id"]) == set(frame["user_id"]) - set(small)
    assert len(kept) == len(frame) - sum(small)
    assert (
        f"dropped {len(small)} users with fewer than 5 interactions ({sum(small)} of" in caplog.text
    )
    with pytest.raises(DataError, match="at least 500"):
        filter_min_interactions(frame, min_count=500)


# ----------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, float("nan"), True, "0.2"])
def test_invalid_fraction_names_the_value(fraction):
    with pytest.raises(ValueError, match=re.escape(f"got {fraction!r}")):
        random_holdout(handmade(), fraction=fraction)


def test_invalid_arguments():
    frame = handmade()
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
        temporal_holdout(frame, n=0)
    with pytest.raises(ValueError, match="n_folds .* got 1"):
        kfold(frame, n_folds=1)
    with pytest.raises(ValueError, match="exactly one of n_users or fraction"):
        held_out_users(frame)
    with pytest.raises(ValueError, match="got 41"):
        held_out_users(frame, n_users=41)
    with pytest.raises(ValueError, match="fold_in_fraction .* got 1.0"):
        held_out_users(frame, n_users=2, fold_in_fraction=1.0)
    with pytest.raises(ValueError, match="leaves test empty"):
        time_cutoff(frame, 10**12)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['timestamp'\]"):
        leave_one_out(frame.drop(columns="timestamp"))
    with pytest.raises(ValueError, match="empty"):
        random_holdout(frame.iloc[:0])
    with pytest.raises(ValueError, match="min_count .* got 0"):
        filter_min_interactions(frame, min_count=0)


def test_a_single_user_is_refused_by_every_split():
    one_user = pd.DataFrame(
        {"user_id": 7, "item_id": np.arange(30), "timestamp": np.arange(30, dtype=np.int64)}
    )
    splits = [
        ("random_holdout", lambda f: random_holdout(f)),
        ("temporal_holdout", lambda f: temporal_holdout(f)),
        ("leave_one_out", lambda f: leave_one_out(f)),
        ("time_cutoff", lambda f: time_cutoff(f, 15)),
        ("held_out_users", lambda f: held_out_users(f, fraction=0.1)),
        ("kfold", lambda f: kfold(f)),
    ]
    for name, split in splits:
        with pytest.raises(DataError, match=rf"^{name}: the data has a single user \(7, 30 "):
            split(one_user)
    two_users = pd.concat([one_user, one_user.assign(user_id=8)], ignore_index=True)
    split = random_holdout(two_users)
    assert len(split.test) + split.n_dropped == 12 and set(split.train["user_id"]) == {7, 8}


# ----------------------------------------------------------------------------- properties


@st.composite
def interaction_frames(draw):
    pairs = draw(
        st.lists(
            st.tuples(st.integers(0, 9), st.integers(0, 14)),
            min_size=1,
            max_size=80,
            unique=True,
        )
    )
    timestamps = draw(st.lists(st.integers(0, 20), min_size=len(pairs), max_size=len(pairs)))
    frame = pd.DataFrame(pairs, columns=["user_id", "item_id"])
    frame["timestamp"] = np.asarray(timestamps, dtype=np.int64)
    frame["row"] = np.arange(len(frame))
    return frame


SPLITTERS = {
    "random": lambda f, s: random_holdout(f, 0.2, seed=s),
    "random_half": lambda f, s: random_holdout(f, 0.5, seed=s),
    "temporal": lambda f, s: temporal_holdout(f, 0.2),
    "loo": lambda f, s: leave_one_out(f),
}


@settings(max_examples=60, deadline=None)
@given(
    frame=interaction_frames(), seed=st.integers(0, 2**31), name=st.sampled_from(sorted(SPLITTERS))
)
def test_per_user_splits_partition_the_input(frame, seed, name):
    if frame["user_id"].nunique() < 2:
        with pytest.raises(DataError, match="single user"):
            SPLITTERS[name](frame, seed)
        return
    split = SPLITTERS[name](frame, seed)
    assert_partition(frame, split)
    counts = frame.groupby("user_id").size()
    evaluated = pd.concat([split.test, dropped_rows(frame, split)])
    fraction = 0.5 if name == "random_half" else 0.2
    for user, n in counts.items():
        n_eval = int((evaluated["user_id"] == user).sum())
        assert n_eval == (min(1, n - 1) if name == "loo" else expected_count(n, fraction))
    # dropped rows are exactly the held-out rows whose item is not in train
    train_items = set(split.train["item_id"])
    assert all(item not in train_items for item in dropped_rows(frame, split)["item_id"])
    assert all(item in train_items for item in split.test["item_id"])
    if name in ("temporal", "loo"):
        last_train = split.train.groupby("user_id")["timestamp"].max()
        first_eval = evaluated.groupby("user_id")["timestamp"].min()
        assert (first_eval >= last_train.loc[first_eval.index]).all()


@settings(max_examples=40, deadline=None)
@given(frame=interaction_frames(), seed=st.integers(0, 2**31))
def test_held_out_users_partition_the_input(frame, seed):
    if frame["user_id"].nunique() < 2:
        return
    split = held_out_users(frame, n_users=1, seed=seed)
    assert_partition(frame, split)
    assert set(split.fold_in["user_id"]).isdisjoint(split.train["user_id"])
    assert set(split.test["user_id"]).isdisjoint(split.train["user_id"])
    train_items = set(split.train["item_id"])
    assert (
        set(split.fold_in["item_id"]) <= train_items and set(split.test["item_id"]) <= train_items
    )


@settings(max_examples=40, deadline=None)
@given(frame=interaction_frames(), seed=st.integers(0, 2**31), n_folds=st.integers(2, 5))
def test_kfold_partitions_the_rows(frame, seed, n_folds):
    if len(frame) < n_folds:
        return
    if frame["user_id"].nunique() < 2:
        with pytest.raises(DataError, match="single user"):
            kfold(frame, n_folds=n_folds, seed=seed)
        return
    folds = kfold(frame, n_folds=n_folds, seed=seed)
    rows = np.concatenate([f.test["row"].to_numpy() for f in folds])
    assert sorted(rows) == list(range(len(frame)))
    for fold in folds:
        assert_partition(frame, fold)
