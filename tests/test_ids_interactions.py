"""IdMap round trips and errors; Interactions CSR shapes, values, binarize and unknown ids."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_ebm.data.ids import IdMap, parse_ids
from recsys_ebm.data.interactions import Interactions
from recsys_ebm.errors import DataError

raw_id_lists = st.one_of(
    st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=50),
    # numpy's fixed-width str dtype drops trailing NUL characters ("a\0" == "a"), so NUL is
    # excluded; ids read from files never contain it.
    st.lists(
        st.text(st.characters(exclude_characters="\x00"), max_size=6), min_size=1, max_size=50
    ),
)


@settings(max_examples=80, deadline=None)
@given(raw=raw_id_lists)
def test_idmap_round_trip(raw):
    id_map = IdMap.fit(raw)
    assert len(id_map) == len(set(raw))
    index = id_map.to_index(raw)
    assert index.dtype == np.int64
    assert index.min() >= 0 and index.max() == len(id_map) - 1
    assert id_map.to_raw(index).tolist() == list(raw)
    # contiguous and sorted: index i is the i-th smallest raw id
    assert id_map.to_raw(np.arange(len(id_map))).tolist() == sorted(set(raw))
    restored = IdMap.from_list(json.loads(json.dumps(id_map.to_list())))
    assert restored == id_map
    assert restored.to_index(raw).tolist() == index.tolist()


def test_idmap_is_deterministic_for_a_set_of_ids():
    assert IdMap.fit([30, 10, 20, 10]) == IdMap.fit([10, 20, 30])
    assert IdMap.fit([30, 10, 20]).to_index([10, 20, 30]).tolist() == [0, 1, 2]
    assert hash(IdMap.fit([3, 1])) == hash(IdMap.fit([1, 3]))
    assert IdMap.fit([1, 2]) != IdMap.fit([1, 3])


def test_idmap_unknown_ids():
    id_map = IdMap.fit([10, 20, 30])
    with pytest.raises(KeyError, match="unknown id 25 .2 unknown in total"):
        id_map.to_index([10, 25, 99])
    assert id_map.to_index([10, 25, 99, 30], missing="mask").tolist() == [0, -1, -1, 2]
    with pytest.raises(ValueError, match="missing must be"):
        id_map.to_index([99], missing="drop")
    with pytest.raises(KeyError, match="cannot be compared|unknown id"):
        id_map.to_index(["a"])
    assert IdMap.fit([]).to_index([5], missing="mask").tolist() == [-1]


def test_idmap_out_of_range_index_and_bad_list():
    id_map = IdMap.fit(["a", "b"])
    with pytest.raises(IndexError, match="index 2 out of range for 2 ids"):
        id_map.to_raw([0, 2])
    with pytest.raises(IndexError, match="index -1"):
        id_map.to_raw([-1])
    with pytest.raises(ValueError, match="sorted unique"):
        IdMap.from_list(["b", "a"])


def sample_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [100, 100, 200, 300, 300, 300],
            "item_id": ["x", "z", "x", "y", "z", "x"],
            "rating": np.array([5, 3, 4, 1, 2, 4], dtype=np.float32),
            "timestamp": np.array([1, 2, 3, 4, 5, 6], dtype=np.int64),
        }
    )


def test_interactions_csr_shape_and_values():
    inter = Interactions.from_frame(sample_frame())
    assert inter.shape == (3, 3) and len(inter) == 6
    expected_ratings = np.array(
        # items x, y, z
        [
            [5, 0, 3],  # user 100
            [4, 0, 0],  # user 200
            [4, 1, 2],
        ],  # user 300
        dtype=np.float32,
    )
    ratings = inter.rating_matrix
    assert ratings.dtype == np.float32 and ratings.shape == (3, 3)
    np.testing.assert_array_equal(ratings.toarray(), expected_ratings)
    binary = inter.user_items
    np.testing.assert_array_equal(binary.toarray(), (expected_ratings > 0).astype(np.float32))
    assert binary.has_sorted_indices
    assert binary.indptr.tolist() == [0, 2, 3, 6]
    pd.testing.assert_frame_equal(inter.to_frame(), sample_frame(), check_dtype=False)


def test_interactions_binarize_threshold():
    inter = Interactions.from_frame(sample_frame())
    liked = inter.binarize(threshold=4)
    assert len(liked) == 3
    np.testing.assert_array_equal(
        liked.user_items.toarray(), np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0]], dtype=np.float32)
    )
    np.testing.assert_array_equal(liked.ratings, np.ones(3, dtype=np.float32))
    assert liked.shape == inter.shape  # the maps (and so the shape) are unchanged
    assert len(inter.binarize()) == 6
    with pytest.raises(DataError, match="rating >= 6"):
        inter.binarize(threshold=6)


def test_interactions_with_train_maps_drop_unknown_rows(caplog):
    train = Interactions.from_frame(sample_frame())
    test = pd.DataFrame({"user_id": [100, 999, 300], "item_id": ["y", "x", "w"]})
    with caplog.at_level(logging.INFO, logger="recsys_ebm.data.interactions"):
        inter = Interactions.from_frame(
            test, user_map=train.user_map, item_map=train.item_map, name="test"
        )
    assert len(inter) == 1 and inter.shape == (3, 3)
    assert inter.user_items.toarray()[0].tolist() == [0, 1, 0]
    assert "dropped 2 of 3 rows" in caplog.text
    np.testing.assert_array_equal(inter.timestamps, np.zeros(1, dtype=np.int64))


def test_interactions_missing_columns():
    with pytest.raises(DataError, match=r"missing column\(s\) \['item_id'\]"):
        Interactions.from_frame(pd.DataFrame({"user_id": [1]}))


# ----------------------------------------------------------------------------- raw id columns


def test_mixed_int_and_str_ids_are_read_as_strings():
    frame = pd.DataFrame({"user_id": [1, "a", 1, 20], "item_id": [5, 5, 6, 6]})
    inter = Interactions.from_frame(frame)
    assert inter.user_map.to_list() == ["1", "20", "a"]
    assert inter.to_frame()["user_id"].tolist() == ["1", "a", "1", "20"]
    assert inter.item_map.raw_ids.dtype == np.int64


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([3, 1, 3], [3, 1, 3]),
        (np.array([2.0, 7.0]), [2, 7]),
        (["b", 2.0, 2.5], ["b", "2", "2.5"]),
        (["10", " 7 ", "007"], [10, 7, 7]),  # integer literals are integers, compared as numbers
        (["x", "10", 3], ["x", "10", "3"]),
        ([2**63, 1], [str(2**63), "1"]),  # beyond int64: strings, never wrapped around
    ],
)
def test_parse_ids_rule(values, expected):
    series = pd.Series(values) if isinstance(values, np.ndarray) else pd.Series(values, dtype=object)
    parsed = parse_ids(series, "user_id", "frame")
    assert parsed.tolist() == expected


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        (["1", "1.0"], "non-integer id '1.0' at row 2"),
        (["1", "a", "1.0"], "the ids '1' at row 1 and '1.0' at row 3: the same number"),
        (["a", "+5", "5"], "the ids '+5' at row 2 and '5' at row 3"),
        ([1, None], "missing id (None: an empty or NA field) at row 2"),
        (["a", " "], "missing id (a blank field) at row 2"),
        ([1, True], "holds a bool value True at row 2"),
        ([b"x"], "holds a bytes value b'x' at row 1"),
        ([(1, 2)], "holds a tuple value (1, 2) at row 1"),
        (np.array([1.0, 2.5]), "non-integer id 2.5 at row 2"),
    ],
)
def test_parse_ids_errors_name_the_column_value_and_row(values, fragment):
    series = pd.Series(values) if isinstance(values, np.ndarray) else pd.Series(values, dtype=object)
    with pytest.raises(DataError) as info:
        parse_ids(series, "user_id", "frame")
    assert str(info.value).startswith("frame: column 'user_id' ")
    assert fragment in str(info.value)


def test_from_frame_refuses_missing_ids_and_bad_ratings():
    with pytest.raises(DataError, match=r"^train: column 'item_id' has a missing id .* at row 2"):
        Interactions.from_frame(pd.DataFrame({"user_id": [1, 2], "item_id": [3, None]}),
                                name="train")
    bad_rating = pd.DataFrame({"user_id": [1, 2], "item_id": [3, 4], "rating": [1.0, np.nan]})
    with pytest.raises(DataError, match=r"column 'rating' has a missing.* rating nan at row 2"):
        Interactions.from_frame(bad_rating)
    bad_time = pd.DataFrame({"user_id": [1], "item_id": [3], "timestamp": ["soon"]})
    with pytest.raises(DataError, match=r"unparseable timestamp 'soon' at row 1"):
        Interactions.from_frame(bad_time)


def test_from_frame_maps_ids_across_int_and_string_maps():
    text_train = Interactions.from_frame(pd.DataFrame({"user_id": ["a", "1"], "item_id": [1, 2]}))
    test = Interactions.from_frame(
        pd.DataFrame({"user_id": [1, 2], "item_id": [1, 2]}),
        user_map=text_train.user_map, item_map=text_train.item_map,
    )
    assert len(test) == 1 and test.user_map.to_raw(test.user_idx).tolist() == ["1"]
    int_train = Interactions.from_frame(pd.DataFrame({"user_id": [1, 2], "item_id": [1, 2]}))
    unknown = Interactions.from_frame(
        pd.DataFrame({"user_id": ["a"], "item_id": [1]}),
        user_map=int_train.user_map, item_map=int_train.item_map,
    )
    assert len(unknown) == 0
