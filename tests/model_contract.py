"""The contract every `Recommender` passes: subclass `ModelContract` in a ``test_*.py`` module.

A model's test module writes::

    class TestMyModelContract(ModelContract):
        def make_model(self, seed: int) -> Recommender:
            return MyModel(dim=8, epochs=30, seed=seed)

and inherits every test below. The default data is a two-block checkerboard with one item
per user held out (a "diagonal"), so the correct top-1 for each user is known. Hooks to
override when a model needs them:

- ``train_matrix()``: the training CSR (e.g. ratings instead of 0/1 for explicit models);
  it must keep the block structure of `checkerboard` so ``held_out_items()`` stays right.
- ``held_out_items()``: int (n_users,), the item each user should get as top-1.
- ``liked_items()``: bool (n_users, n_items), each user's own block, held-out item included
  (default: the training interactions plus the held-out item); override when the training
  matrix also holds disliked items (e.g. low ratings on the other block).
- ``fit(model, user_items)``: how to train (default ``model.fit(user_items, show_progress=False)``).
- ``fold_in_exact``: True when scoring a trained user from its own training row gives that
  user's trained scores (a history encoder, an item-item model); False when fold-in
  re-optimises a free user vector, where only the ranking is required to agree.
- ``personalized``: False for models that rank every user alike (popularity): the
  known-answer tests (top-1 is the held-out item) are then skipped.
- ``seeded``: False for deterministic models without a seed (popularity, EASE): the
  different-seed test is then skipped, the same-seed test still runs.

Trained models are cached per test class (training dominates the run time); tests never
mutate a cached model.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys_ebm.models.base import Recommender


class Checkerboard(NamedTuple):
    """Train CSR (n_users, n_items) float32 and the held-out item of every user (n_users,)."""

    train: sp.csr_matrix
    held_out: np.ndarray


def checkerboard(n_groups: int = 2, users_per_group: int = 8, items_per_group: int = 8) -> Checkerboard:
    """Users of group g like exactly the items of block g; user j of a group holds out item j.

    Every user has seen all items of its own block but one, so the only sensible top-1 is the
    held-out item: it is the one unseen item liked by the user's whole group.
    """
    n_users, n_items = n_groups * users_per_group, n_groups * items_per_group
    group = np.repeat(np.arange(n_groups), users_per_group)
    dense = (group[:, None] == np.arange(n_items)[None, :] // items_per_group).astype(np.float32)
    held_out = group * items_per_group + np.arange(n_users) % users_per_group % items_per_group
    dense[np.arange(n_users), held_out] = 0.0
    return Checkerboard(sp.csr_matrix(dense), held_out.astype(np.int64))


def _seen(user_items: sp.csr_matrix) -> np.ndarray:
    """bool (n_users, n_items): True where the user has an interaction."""
    return user_items.toarray() != 0


def _assert_rows_well_formed(ids: np.ndarray, scores: np.ndarray, n: int, k: int, n_items: int) -> None:
    """(n, k) int ids in range or -1, padding only at the end, finite scores non-increasing."""
    assert ids.shape == (n, k) and scores.shape == (n, k)
    assert np.issubdtype(ids.dtype, np.integer)
    assert np.all((ids >= -1) & (ids < n_items))
    padded = ids == -1
    # once a row is padded it stays padded: no -1 followed by a real item
    assert not np.any(padded[:, :-1] & ~padded[:, 1:])
    assert np.all(np.isneginf(scores[padded]))
    assert np.all(np.isfinite(scores[~padded]))
    for row_ids, row_scores in zip(ids, scores, strict=True):
        real = row_ids[row_ids >= 0]
        assert len(set(real.tolist())) == real.size, f"duplicate items in {row_ids}"
        assert np.all(np.diff(row_scores[row_ids >= 0]) <= 0), f"scores increase: {row_scores}"


class ModelContract:
    """Tests every `Recommender` must pass; subclasses provide ``make_model(seed)``."""

    fold_in_exact: bool = True
    seeded: bool = True
    personalized: bool = True

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _one_torch_thread(cls):
        # tiny matrices: with intra-op threads on a busy machine, OpenMP spin-waits make each
        # step ~50x slower; one thread keeps the suite fast and results are the same per run
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)

    # ------------------------------------------------------------------ hooks
    def make_model(self, seed: int) -> Recommender:
        """An unfitted model with fixed hyperparameters and this seed."""
        raise NotImplementedError

    def train_matrix(self) -> sp.csr_matrix:
        return checkerboard().train

    def held_out_items(self) -> np.ndarray:
        return checkerboard().held_out

    def liked_items(self) -> np.ndarray:
        liked = _seen(self.train_matrix())
        liked[self._users(), self.held_out_items()] = True
        return liked

    def fit(self, model: Recommender, user_items: sp.csr_matrix) -> Recommender:
        return model.fit(user_items, show_progress=False)

    # ------------------------------------------------------------------ cached fits
    def fitted(self, seed: int = 0) -> Recommender:
        """The model trained on ``train_matrix()`` with ``seed``, trained once per class."""
        cache = type(self).__dict__.get("_fitted_cache")
        if cache is None:
            cache = {}
            type(self)._fitted_cache = cache
        if seed not in cache:
            cache[seed] = self.fit(self.make_model(seed), self.train_matrix())
        return cache[seed]

    def _users(self) -> np.ndarray:
        return np.arange(self.train_matrix().shape[0])

    # ------------------------------------------------------------------ known answer
    def _require_personalized(self) -> None:
        if not self.personalized:
            pytest.skip("the model ranks every user alike; no per-user known answer")

    def test_top1_is_the_held_out_item(self):
        self._require_personalized()
        model, train = self.fitted(), self.train_matrix()
        ids, _ = model.recommend(self._users(), train, k=1)
        np.testing.assert_array_equal(ids[:, 0], self.held_out_items())

    def test_users_prefer_their_own_block(self):
        self._require_personalized()
        # unfiltered: every item of the user's own block outranks every item of the other block
        model = self.fitted()
        scores = model.score(self._users())
        own = self.liked_items()
        worst_own = np.where(own, scores, np.inf).min(axis=1)
        best_other = np.where(own, -np.inf, scores).max(axis=1)
        assert np.all(worst_own > best_other)

    # ------------------------------------------------------------------ score / recommend
    def test_score_shape_and_dtype(self):
        model, train = self.fitted(), self.train_matrix()
        scores = model.score(self._users())
        assert scores.shape == train.shape
        assert scores.dtype == np.float32
        assert np.all(np.isfinite(scores))
        assert model.score(3).shape == (1, train.shape[1])

    def test_batch_equals_single_user(self):
        model, train = self.fitted(), self.train_matrix()
        users = self._users()
        batch = model.score(users)
        single = np.vstack([model.score([u]) for u in users])
        np.testing.assert_allclose(single, batch, rtol=1e-6, atol=1e-6)
        batch_ids, batch_scores = model.recommend(users, train, k=5)
        for u in users:
            ids, scores = model.recommend([u], train, k=5)
            np.testing.assert_array_equal(ids[0], batch_ids[u])
            np.testing.assert_allclose(scores[0], batch_scores[u], rtol=1e-6, atol=1e-6)

    def test_chunked_recommend_equals_one_batch(self):
        model, train = self.fitted(), self.train_matrix()
        users = self._users()[::-1].copy()  # reversed order: rows must follow user_ids
        whole, whole_scores = model.recommend(users, train, k=4)
        chunked, chunked_scores = model.recommend(users, train, k=4, batch_size=3)
        np.testing.assert_array_equal(chunked, whole)
        np.testing.assert_allclose(chunked_scores, whole_scores, rtol=1e-6, atol=1e-6)

    def test_seen_items_are_never_recommended(self):
        model, train = self.fitted(), self.train_matrix()
        n_items = train.shape[1]
        seen = _seen(train)
        ids, _ = model.recommend(self._users(), train, k=n_items)
        for u, row in enumerate(ids):
            assert not np.any(seen[u, row[row >= 0]]), f"user {u} was recommended a seen item"
            # everything unseen is returned, then padding
            assert (row >= 0).sum() == n_items - seen[u].sum()
        unfiltered, _ = model.recommend(self._users(), train, k=n_items, filter_seen=False)
        assert np.all(unfiltered >= 0)
        assert np.any(seen[self._users()[:, None], unfiltered[:, :1]]), "filter_seen=False filtered too"

    def test_recommend_output_shapes_padding_and_order(self):
        model, train = self.fitted(), self.train_matrix()
        n_items = train.shape[1]
        users = self._users()
        for k in (1, 3, n_items, n_items + 5):
            ids, scores = model.recommend(users, train, k=k)
            _assert_rows_well_formed(ids, scores, len(users), k, n_items)
            assert scores.dtype == np.float32
        ids, scores = model.recommend(users, train, k=n_items + 5, filter_seen=False)
        _assert_rows_well_formed(ids, scores, len(users), n_items + 5, n_items)
        assert np.all(ids[:, n_items:] == -1) and np.all(ids[:, :n_items] >= 0)
        # scores returned are the model's scores of those items
        full = model.score(users)
        np.testing.assert_allclose(scores[:, :n_items], np.take_along_axis(full, ids[:, :n_items], 1),
                                   rtol=1e-6, atol=1e-6)
        ids, scores = model.recommend(np.array([], dtype=np.int64), None, k=4)
        assert ids.shape == (0, 4) and scores.shape == (0, 4)

    def test_recommend_without_user_items_filters_the_fitted_interactions(self):
        """The seen set kept with the model is what recommend leaves out by default, the same
        as passing the training matrix; filter_seen=False returns the whole catalog."""
        model, train = self.fitted(), self.train_matrix()
        users, n_items = self._users(), train.shape[1]
        for a, b in zip(model.recommend(users, None, k=n_items), model.recommend(users, train, k=n_items),
                        strict=True):
            np.testing.assert_array_equal(a, b)
        ids, _ = model.recommend(users, None, k=n_items, filter_seen=False)
        assert np.all(ids >= 0)
        np.testing.assert_array_equal(np.sort(ids, axis=1), np.tile(np.arange(n_items), (len(ids), 1)))
        # implicit's names for the same arguments
        for a, b in zip(model.recommend(users, None, N=3, filter_already_liked_items=False),
                        model.recommend(users, None, k=3, filter_seen=False), strict=True):
            np.testing.assert_array_equal(a, b)

    def test_filter_items_is_a_block_list(self):
        model, train = self.fitted(), self.train_matrix()
        users = self._users()
        top = model.recommend(users, k=1)[0][:, 0]
        blocked = np.unique(top)
        ids, _ = model.recommend(users, k=3, filter_items=blocked)
        assert not np.isin(ids, blocked).any()
        with pytest.raises(IndexError, match="filter_items item id"):
            model.recommend(users, k=3, filter_items=[train.shape[1]])

    def test_probabilities_are_the_gibbs_distribution_over_eligible_items(self):
        model, train = self.fitted(), self.train_matrix()
        users = self._users()
        ids, scores, prob = model.recommend(users, k=3, with_probabilities=True)
        full = model.score(users).astype(np.float64)
        full[_seen(train)] = -np.inf
        expected = np.exp(full - full.max(1, keepdims=True))
        expected /= expected.sum(1, keepdims=True)
        np.testing.assert_allclose(prob, np.take_along_axis(expected, ids, 1), rtol=1e-4, atol=1e-7)

    def test_recommend_restricted_to_allowed_items(self):
        model, train = self.fitted(), self.train_matrix()
        allowed = np.array([0, 2, train.shape[1] - 1])
        ids, _ = model.recommend(self._users(), train, k=5, items=allowed, filter_seen=False)
        assert set(ids[ids >= 0].tolist()) <= set(allowed.tolist())
        assert np.all((ids >= 0).sum(axis=1) == len(allowed))

    # ------------------------------------------------------------------ errors
    def test_unknown_user_ids_raise_index_error(self):
        model, train = self.fitted(), self.train_matrix()
        n_users = train.shape[0]
        for bad in (n_users, -1):
            with pytest.raises(IndexError, match=rf"user id {bad}\b"):
                model.score([0, bad])
            with pytest.raises(IndexError, match=rf"user id {bad}\b"):
                model.recommend([bad], train, k=3)

    def test_bad_user_id_types_raise_value_error(self):
        model = self.fitted()
        with pytest.raises(ValueError, match="user_ids"):
            model.score(np.zeros((2, 2), dtype=np.int64))
        with pytest.raises(ValueError, match="user_ids"):
            model.score(np.array([0.0, 1.0]))

    def test_bad_shapes_raise_value_error(self):
        model, train = self.fitted(), self.train_matrix()
        n_users, n_items = train.shape
        wrong_items = sp.csr_matrix((2, n_items + 1), dtype=np.float32)
        with pytest.raises(ValueError, match=f"{n_items + 1} columns"):
            model.score([0, 1], wrong_items)
        with pytest.raises(ValueError, match=f"{n_items + 1} columns"):
            model.recommend([0, 1], wrong_items, k=3)
        with pytest.raises(ValueError, match="rows"):
            model.score([0, 1, 2], train[:2])  # fold-in rows must align with user_ids
        with pytest.raises(ValueError, match="rows"):
            model.recommend([0, 1], train[:3], k=3)  # neither aligned nor one row per user
        with pytest.raises(ValueError, match="user_items"):
            model.score([0], [[1.0] * n_items])  # a list is not a matrix
        with pytest.raises(ValueError, match="k must be"):
            model.recommend([0], train, k=0)
        with pytest.raises(ValueError, match="k must be"):
            model.recommend([0], train, k=-2)
        with pytest.raises(ValueError, match="temperature"):
            model.recommend([0], train, k=3, temperature=-1.0)

    def test_fit_rejects_bad_input(self):
        with pytest.raises(ValueError, match="user_items"):
            self.fit(self.make_model(0), np.ones(5, dtype=np.float32))
        nan = self.train_matrix().copy()
        nan.data[0] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            self.fit(self.make_model(0), nan)

    def test_unfitted_model_raises(self):
        with pytest.raises(RuntimeError, match="fit"):
            self.make_model(0).score([0])

    def test_fit_does_not_modify_its_input(self):
        train = self.train_matrix()
        ratings = train.copy()
        ratings.data = (1.0 + np.arange(ratings.nnz) % 5).astype(np.float32)
        before = ratings.copy()
        self.fit(self.make_model(0), ratings)
        assert (ratings != before).nnz == 0

    def test_stored_zeros_are_not_interactions(self):
        train = self.train_matrix()
        user, item = 0, int(self.held_out_items()[0])
        assert train[user, item] == 0
        # store an explicit 0 at (user, held-out item): scipy keeps it in .data
        indptr, indices, data = train.indptr, train.indices, train.data
        at = indptr[user + 1]
        with_zero = sp.csr_matrix(
            (np.insert(data, at, 0.0), np.insert(indices, at, item),
             np.concatenate([indptr[: user + 1], indptr[user + 1:] + 1])),
            shape=train.shape,
        )
        assert with_zero.nnz == train.nnz + 1
        users = self._users()
        model = self.fit(self.make_model(0), with_zero)
        np.testing.assert_array_equal(model.score(users), self.fitted(0).score(users))

    # ------------------------------------------------------------------ persistence
    def test_save_load_round_trip_is_bit_identical(self, tmp_path: Path):
        model, train = self.fitted(), self.train_matrix()
        users = self._users()
        path = tmp_path / "model"
        model.save(path)
        loaded = type(model).load(path)
        assert loaded.n_users == model.n_users and loaded.n_items == model.n_items
        np.testing.assert_array_equal(loaded.score(users), model.score(users))
        np.testing.assert_array_equal(loaded.score(users, train), model.score(users, train))
        for a, b in zip(loaded.recommend(users, train, k=5), model.recommend(users, train, k=5), strict=True):
            np.testing.assert_array_equal(a, b)
        # saving again over the same path replaces the model atomically and stays loadable
        model.save(path)
        np.testing.assert_array_equal(type(model).load(path).score(users), model.score(users))

    def test_saved_files_are_plain_data(self, tmp_path: Path):
        path = tmp_path / "model"
        self.fitted().save(path)
        files = sorted(p for p in path.rglob("*") if p.is_file())
        assert files, "save wrote no files"
        n_arrays = 0
        for file in files:
            assert file.suffix in (".json", ".pt", ".npz", ".faiss"), f"unexpected file {file.name}"
            if file.suffix == ".pt":
                tensors = torch.load(file, map_location="cpu", weights_only=True)
                assert isinstance(tensors, dict) and tensors
                assert all(isinstance(t, torch.Tensor) for t in tensors.values())
                n_arrays += len(tensors)
            elif file.suffix == ".npz":
                with np.load(file, allow_pickle=False) as arrays:
                    n_arrays += len(arrays.files)
        assert n_arrays > 0, "no weights were saved"

    # ------------------------------------------------------------------ seeds
    def test_same_seed_gives_a_bit_identical_model(self):
        users = self._users()
        first, again = self.fitted(0), self.fit(self.make_model(0), self.train_matrix())
        np.testing.assert_array_equal(again.score(users), first.score(users))

    def test_different_seed_gives_a_different_model(self):
        if not self.seeded:
            pytest.skip("deterministic model without a seed")
        users = self._users()
        diff = np.abs(self.fitted(0).score(users) - self.fitted(1).score(users)).max()
        assert diff > 1e-3

    # ------------------------------------------------------------------ sampling
    def test_sampling_is_reproducible_and_never_returns_seen_items(self):
        model, train = self.fitted(), self.train_matrix()
        users = self._users()
        seen = _seen(train)
        k = 4
        a = model.recommend(users, train, k=k, temperature=1.0, rng=123)
        for b in (model.recommend(users, train, k=k, temperature=1.0, rng=123),
                  model.recommend(users, None, k=k, temperature=1.0, rng=123)):  # the seen set
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
        from_generators = [model.recommend(users, train, k=k, temperature=1.0,
                                           rng=np.random.default_rng(7))[0] for _ in range(2)]
        np.testing.assert_array_equal(*from_generators)
        # a user's draw is keyed on (seed, user): the same alone, in reverse order, in any batch
        for u in (0, len(users) - 1):
            alone = model.recommend(users[u:u + 1], train, k=k, temperature=1.0, rng=123)[0]
            np.testing.assert_array_equal(alone[0], a[0][u])
        reverse = model.recommend(users[::-1], train, k=k, temperature=1.0, rng=123, batch_size=3)[0]
        np.testing.assert_array_equal(reverse[::-1], a[0])
        draws = [model.recommend(users, train, k=k, temperature=5.0, rng=seed)[0] for seed in range(5)]
        assert any(not np.array_equal(draws[0], d) for d in draws[1:]), "rng seed has no effect"
        n_items = train.shape[1]
        for ids in [a[0], *draws]:
            assert ids.shape == (len(users), k)
            assert np.all((ids >= 0) & (ids < n_items))  # every user has >= k unseen items
            for u, row in enumerate(ids):
                assert not np.any(seen[u, row]), f"user {u} was sampled a seen item"
                assert len(set(row.tolist())) == k, f"repeated item for user {u}: {row}"
        # the sampled items' scores are the model's scores of those items
        np.testing.assert_allclose(a[1], np.take_along_axis(model.score(users), a[0], 1),
                                   rtol=1e-6, atol=1e-6)

    # ------------------------------------------------------------------ fold-in
    def test_fold_in_of_a_trained_users_history(self):
        model, train = self.fitted(), self.train_matrix()
        users = self._users()
        folded = model.score(users, train)
        assert folded.shape == train.shape and folded.dtype == np.float32
        if self.fold_in_exact:
            np.testing.assert_allclose(folded, model.score(users), rtol=1e-5, atol=1e-5)
        # either way the folded-in user's best unseen item is the held-out one
        self._require_personalized()
        ids, _ = model.recommend(users, train, k=1, fold_in=True)
        np.testing.assert_array_equal(ids[:, 0], self.held_out_items())

    def test_fold_in_serves_users_unseen_in_training(self):
        model, train = self.fitted(), self.train_matrix()
        n_users = train.shape[0]
        new_ids = np.array([n_users, n_users + 7])  # not trained users
        rows = train[[0, n_users - 1]]
        scores = model.score(new_ids, rows)
        assert scores.shape == (2, train.shape[1])
        np.testing.assert_allclose(scores, model.score([0, n_users - 1], rows), rtol=1e-5, atol=1e-5)
        self._require_personalized()
        ids, _ = model.recommend(new_ids, rows, k=1, fold_in=True)
        np.testing.assert_array_equal(ids[:, 0], self.held_out_items()[[0, n_users - 1]])
