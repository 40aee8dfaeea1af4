"""Atomic directory writes and the seen-items file saved beside a model."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys_ebm.io import SEEN_FILE, atomic_dir, load_seen_items, save_seen_items


def test_atomic_dir_replaces_the_whole_directory_on_success(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_dir(target) as staging:
        (staging / "new.txt").write_text("new")
        assert not (target / "new.txt").exists()  # nothing visible until the block ends
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging left behind


def test_interrupted_atomic_dir_leaves_the_previous_result_intact(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights.pt").write_text("previous")
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as staging:
        (staging / "weights.pt").write_text("half-written")
        raise KeyboardInterrupt
    assert (target / "weights.pt").read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


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
