"""IdMap round trips and errors; Interactions CSR shapes, values, binarize and unknown ids."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_ebm.data.ids import IdMap
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
