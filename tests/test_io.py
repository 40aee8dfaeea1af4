"""The seen-items file older versions saved beside a model (still read for those models)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys_ebm.io import SEEN_FILE, load_seen_items, save_seen_items


def test_seen_items_round_trip_as_a_binary_pattern(tmp_path):
    ratings = sp.csr_matrix(np.array([[5.0, 0.0, 3.0], [0.0, 0.0, 0.0], [0.0, 4.5, 0.0]]))
    ratings[1, 1] = 0.0  # a stored zero is not an interaction
    save_seen_items(tmp_path, ratings)
    seen = load_seen_items(tmp_path)
    np.testing.assert_array_equal(seen.toarray(), [[1, 0, 1], [0, 0, 0], [0, 1, 0]])
    assert load_seen_items(tmp_path / "elsewhere") is None


def test_a_corrupt_seen_file_names_itself(tmp_path):
    (tmp_path / SEEN_FILE).write_bytes(b"not an npz")
    with pytest.raises(ValueError, match=SEEN_FILE):
        load_seen_items(tmp_path)


def test_a_truncated_seen_file_names_itself(tmp_path):
    save_seen_items(tmp_path, sp.csr_matrix(np.eye(3, dtype=np.float32)))
    path = tmp_path / SEEN_FILE
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match=SEEN_FILE):
        load_seen_items(tmp_path)
