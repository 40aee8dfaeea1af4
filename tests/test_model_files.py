"""Saved models and indexes are verified before use: a manifest of SHA-256 hashes, finite
weights, named tensors of the right shape; damage is a message naming the file, never a
traceback, and a save never deletes what it did not write."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys_ebm.cli import main
from recsys_ebm.errors import ModelFileError
from recsys_ebm.io import MANIFEST_FILE, WEIGHTS_FILE, write_manifest
from recsys_ebm.models import load_model
from recsys_ebm.models.dot_ebm import DotEBM
from recsys_ebm.ranking.faiss_index import INDEX_FILE, EnergyIndex, index_path, load_or_build


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    train = sp.csr_matrix((rng.random((40, 30)) < 0.2).astype(np.float32))
    return DotEBM(dim=4, epochs=3, lr=0.05).fit(train, show_progress=False)


@pytest.fixture
def saved(fitted, tmp_path):
    path = tmp_path / "model"
    fitted.save(path, meta={"user_ids": list(range(100, 140)), "item_ids": list(range(30))})
    return path


def _rewrite_weights(path, change) -> None:
    tensors = torch.load(path / WEIGHTS_FILE, weights_only=True)
    change(tensors)
    torch.save(tensors, path / WEIGHTS_FILE)
    write_manifest(path, ["config.json", WEIGHTS_FILE])  # a consistent but bad model


def test_a_saved_model_lists_every_file_with_its_hash(saved):
    files = json.loads((saved / MANIFEST_FILE).read_text())["files"]
    assert sorted(files) == ["config.json", WEIGHTS_FILE] and all(len(h) == 64 for h in files.values())
    load_model(saved)  # verifies


def test_flipped_bytes_in_the_weights_are_caught(saved):
    data = bytearray((saved / WEIGHTS_FILE).read_bytes())
    data[len(data) // 2: len(data) // 2 + 100] = bytes(100)
    (saved / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"weights\.pt does not match its manifest"):
        load_model(saved)


@pytest.mark.parametrize("content", [b"\xff\xfe not text", b'{"model": "ease"}'])
def test_a_changed_config_is_caught_before_it_is_read(saved, content):
    # config.json names the class that loads the rest: it is checked against the manifest first
    (saved / "config.json").write_bytes(content)
    with pytest.raises(ModelFileError, match="config.json does not match its manifest"):
        load_model(saved)


def test_nan_weights_are_rejected_naming_the_tensor(saved):
    _rewrite_weights(saved, lambda t: t["item_factors"].fill_(float("nan")))
    with pytest.raises(ModelFileError, match="'item_factors' holds NaN"):
        load_model(saved)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_unreadable_weights_name_the_file(saved, damage):
    data = (saved / WEIGHTS_FILE).read_bytes()
    (saved / WEIGHTS_FILE).write_bytes(data[:200] if damage == "truncated" else b"garbage" * 50)
    (saved / MANIFEST_FILE).unlink()  # as an older save without a manifest
    with pytest.raises(ModelFileError, match=r"weights\.pt: not a readable weights file"):
        load_model(saved)


def test_a_missing_tensor_is_named(saved):
    _rewrite_weights(saved, lambda t: t.pop("item_bias"))
    with pytest.raises(ModelFileError, match=r"no tensor 'item_bias' \(it holds"):
        load_model(saved)


def test_a_tensor_of_another_shape_names_both_shapes(saved):
    _rewrite_weights(saved, lambda t: t.__setitem__("item_factors", torch.zeros(30, 7)))
    with pytest.raises(ModelFileError, match=r"'item_factors' has shape \(30, 7\).*needs \(30, 4\)"):
        load_model(saved)


def test_the_cli_reports_a_damaged_model_without_a_traceback(saved, caplog):
    _rewrite_weights(saved, lambda t: t["item_bias"].fill_(float("inf")))
    code = main(["recommend", "--model-path", str(saved), "--user", "100"])
    assert code == 2 and "'item_bias' holds NaN or inf" in caplog.text


def test_a_damaged_or_swapped_index_file_is_caught_and_rebuilt(fitted, saved, tmp_path, caplog):
    index = load_or_build(fitted, saved, kind="flat")
    expected = index.search(fitted.user_vectors(np.arange(5)), 5)
    path = index_path(saved, "flat")
    data = bytearray((path / INDEX_FILE).read_bytes())
    data[-64:] = bytes(64)
    (path / INDEX_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="index.faiss does not match the SHA-256"):
        EnergyIndex.load(path, fitted)
    # another index of the same shape in its place: also caught by the hash
    other = DotEBM(dim=4, epochs=3, lr=0.05, seed=1).fit(fitted.seen_items, show_progress=False)
    EnergyIndex.build(other, kind="flat").save(tmp_path / "other")
    (path / INDEX_FILE).write_bytes((tmp_path / "other" / INDEX_FILE).read_bytes())
    with pytest.raises(ModelFileError, match="does not match"):
        EnergyIndex.load(path, fitted)
    with caplog.at_level(logging.WARNING):
        rebuilt = load_or_build(fitted, saved, kind="flat")
    assert "rebuilding" in caplog.text
    for a, b in zip(rebuilt.search(fitted.user_vectors(np.arange(5)), 5), expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_train_never_deletes_an_existing_directory(tmp_path, movielens_dir, caplog):
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "notes.txt").write_text("important")
    code = main(["train", "--data-dir", str(movielens_dir), "--no-mlflow", "--quiet", "--model", "pop",
                 "--output-dir", str(victim)])
    assert code == 2 and "victim exists and is not a directory this toolkit wrote" in caplog.text
    assert "evaluated" not in caplog.text  # refused before any training, not after it
    assert (victim / "notes.txt").read_text() == "important" and (victim / "sub").is_dir()
    assert sorted(p.name for p in victim.iterdir()) == ["notes.txt", "sub"]


def test_load_model_puts_back_a_model_left_aside_by_an_interrupted_save(saved, tmp_path):
    """The state a kill between the two renames of the fallback swap leaves."""
    import os
    import subprocess
    import sys

    from recsys_ebm.atomic import MARKER

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (saved / MARKER).write_text(str(dead.pid))
    os.rename(saved, tmp_path / f".model.old-{dead.pid}-abcdefgh")
    model = load_model(saved)
    assert saved.is_dir() and model.n_users == 40


def test_cleaning_leaves_the_siblings_of_other_paths_alone(fitted, tmp_path):
    import subprocess
    import sys

    from recsys_ebm.atomic import MARKER

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    other = tmp_path / f".model.v2.old-{dead.pid}-abcdefgh"  # another model's only copy
    other.mkdir()
    (other / MARKER).write_text(str(dead.pid))
    (other / "config.json").write_text("{}")
    fitted.save(tmp_path / "model")
    assert (other / "config.json").is_file()


def test_a_stored_zero_counts_as_seen_exactly_when_the_model_counts_it(tmp_path):
    from recsys_ebm.models.baselines import MostPopular
    from recsys_ebm.models.crbm import CRBM

    dense = np.array([[1, 0, 1, 1, 0], [1, 1, 0, 1, 1], [0, 1, 1, 1, 1]], dtype=np.float32)
    with_zero = sp.csr_matrix(dense)
    with_zero[0, 1] = 0.0  # a stored zero: not an interaction for a binary model
    pop = MostPopular().fit(with_zero, show_progress=False)
    for a, b in zip(pop.recommend([0], k=3), pop.recommend([0], with_zero, k=3), strict=True):
        np.testing.assert_array_equal(a, b)
    assert 1 in pop.recommend([0], k=3)[0]
    ratings = sp.csr_matrix(np.array([[2, 0, 1, 2], [1, 2, 0, 2], [2, 1, 2, 0]], dtype=np.float32))
    ratings[0, 1] = 0.0  # a rating of 0 on a 0..2 scale
    crbm = CRBM(levels=(0, 1, 2), n_hidden=3, epochs=2, val_fraction=0.0).fit(ratings, show_progress=False)
    assert crbm.seen_items[0, 1] == 1
    assert 1 not in crbm.recommend([0], k=3)[0]
