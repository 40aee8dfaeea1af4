"""Baselines (recsys_ebm/models/baselines.py, factor_baselines.py): the shared contract plus known answers."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from model_contract import ModelContract, checkerboard

from recsys_ebm.experiments import runner
from recsys_ebm.models import MODELS, load_model
from recsys_ebm.models.baselines import EASE, ItemKNN, MostPopular, ease_weights
from recsys_ebm.models.factor_baselines import ALS, BPR, _bpr_objective, bpr_fold_in


def random_binary(n_users: int = 40, n_items: int = 25, density: float = 0.3, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    return sp.csr_matrix((rng.random((n_users, n_items)) < density).astype(np.float32))


def row_correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b, strict=True)]))


# ---------------------------------------------------------------------------------- contract
class TestMostPopularContract(ModelContract):
    personalized = False
    seeded = False

    def make_model(self, seed: int) -> MostPopular:
        return MostPopular(seed=seed)


class TestItemKNNContract(ModelContract):
    seeded = False

    def make_model(self, seed: int) -> ItemKNN:
        return ItemKNN(n_neighbors=20, seed=seed)


class TestEASEContract(ModelContract):
    seeded = False

    def make_model(self, seed: int) -> EASE:
        return EASE(l2=1.0, seed=seed)

    def test_seen_items_are_never_recommended(self):
        # The shared test's last check expects some user's unfiltered top-1 to be a seen item.
        # EASE has no self-weight, and on the checkerboard every block item has the same weight
        # beta > 0 from every other block item: the held-out item gets 7 beta, a seen item 6 beta,
        # so the held-out item tops every unfiltered list. Check the same property directly.
        model, train = self.fitted(), self.train_matrix()
        n_items = train.shape[1]
        seen = train.toarray() != 0
        ids, _ = model.recommend(self._users(), train, k=n_items)
        for u, row in enumerate(ids):
            assert not np.any(seen[u, row[row >= 0]])
            assert (row >= 0).sum() == n_items - seen[u].sum()
        unfiltered, _ = model.recommend(self._users(), train, k=n_items, filter_seen=False)
        assert np.all(unfiltered >= 0)
        top = unfiltered[:, : 1 + seen.sum(axis=1).max()]  # room for every seen item
        assert all(set(np.flatnonzero(seen[u])) <= set(top[u]) for u in range(len(top)))


class TestALSContract(ModelContract):
    # fold-in is an exact least-squares solve; trained users come from CG steps: close, not equal
    fold_in_exact = False

    def make_model(self, seed: int) -> ALS:
        return ALS(factors=8, regularization=0.1, alpha=5.0, iterations=15, seed=seed)


class TestBPRContract(ModelContract):
    # fold-in optimises the user's BPR objective; the trained vector is SGD's noisy estimate
    fold_in_exact = False

    def make_model(self, seed: int) -> BPR:
        return BPR(factors=8, learning_rate=0.1, regularization=0.01, iterations=300, seed=seed)


# ---------------------------------------------------------------------------------- registry
def test_models_are_registered_under_their_cli_names():
    expected = {"pop": MostPopular, "als": ALS, "bpr": BPR, "itemknn": ItemKNN, "ease": EASE}
    for name, cls in expected.items():
        assert MODELS[name] is cls
        assert cls.model_name == name


@pytest.mark.parametrize("cls", [MostPopular, ItemKNN, EASE, ALS, BPR])
def test_load_model_dispatches_on_the_saved_name(cls, tmp_path):
    train = random_binary()
    model = cls().fit(train, show_progress=False) if cls not in (ALS, BPR) else \
        cls(factors=4, iterations=5).fit(train, show_progress=False)
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is cls
    np.testing.assert_array_equal(loaded.score([0, 3]), model.score([0, 3]))
    other = EASE if cls is not EASE else MostPopular
    with pytest.raises(ValueError, match=f"holds a '{cls.model_name}' model"):
        other.load(tmp_path / "m")


@pytest.mark.parametrize(("cls", "options", "field"), [
    (EASE, {"l2": 0.0}, "l2"),
    (EASE, {"l2": float("nan")}, "l2"),
    (ItemKNN, {"n_neighbors": 0}, "n_neighbors"),
    (ItemKNN, {"n_neighbors": 2.5}, "n_neighbors"),
    (ALS, {"factors": 0}, "factors"),
    (ALS, {"alpha": 0.0}, "alpha"),
    (ALS, {"iterations": True}, "iterations"),
    (ALS, {"regularization": -1.0}, "regularization"),
    (BPR, {"learning_rate": float("inf")}, "learning_rate"),
    (BPR, {"seed": -1}, "seed"),
    (MostPopular, {"seed": 1.0}, "seed"),
])
def test_bad_options_raise_value_error_naming_the_field(cls, options, field):
    with pytest.raises(ValueError, match=field):
        cls(**options)


def test_unknown_option_is_rejected_by_name():
    with pytest.raises(ValueError, match="dim"):
        runner.build_model("als", {"dim": 8})


# ---------------------------------------------------------------------------------- known answers
def test_pop_ranks_by_interaction_count():
    # item counts 3, 1, 4, 0, 2 (a rating value of 5 still counts once)
    dense = np.array([
        [1, 0, 1, 0, 1],
        [1, 1, 1, 0, 0],
        [5, 0, 1, 0, 1],
        [0, 0, 1, 0, 0],
    ], dtype=np.float32)
    model = MostPopular().fit(sp.csr_matrix(dense), show_progress=False)
    np.testing.assert_array_equal(model.score([0, 3])[0], [3, 1, 4, 0, 2])
    ids, scores = model.recommend([0, 1, 2, 3], None, k=5, filter_seen=False)
    np.testing.assert_array_equal(ids, np.tile([2, 0, 4, 1, 3], (4, 1)))
    # by default the fitted interactions are left out: user 3 saw only item 2
    ids, _ = model.recommend([3], k=5)
    np.testing.assert_array_equal(ids[0], [0, 4, 1, 3, -1])
    ids, _ = model.recommend([3], sp.csr_matrix(dense[3:]), k=2)
    np.testing.assert_array_equal(ids[0], [0, 4])  # item 2 seen by user 3


def test_ease_equals_the_closed_form_computed_directly():
    train = random_binary(30, 12, 0.35, seed=3)
    l2 = 2.5
    x = train.toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + l2 * np.eye(12))
    expected = np.eye(12) - p / np.diag(p)[None, :]  # B = I - P diag(1/diag P)
    np.testing.assert_allclose(np.diag(expected), 0.0, atol=1e-12)
    np.testing.assert_allclose(ease_weights(train, l2), expected, rtol=1e-9, atol=1e-12)
    model = EASE(l2=l2).fit(train, show_progress=False)
    np.testing.assert_allclose(model.score(np.arange(30)), x @ expected, rtol=1e-5, atol=1e-6)


def test_itemknn_is_cosine_similarity_and_matches_implicits_ranking():
    from implicit.nearest_neighbours import CosineRecommender

    train = random_binary(40, 15, 0.3, seed=5)
    x = train.toarray()
    unit = x / np.linalg.norm(x, axis=0)
    model = ItemKNN(n_neighbors=50).fit(train, show_progress=False)  # K >= n_items: full cosine
    np.testing.assert_allclose(model.similarity.toarray(), unit.T @ unit, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.score(np.arange(40)), x @ (unit.T @ unit), rtol=1e-5, atol=1e-5)
    # with K < n_items, implicit's own recommend returns the same scores for its top items
    model = ItemKNN(n_neighbors=4).fit(train, show_progress=False)
    reference = CosineRecommender(K=4, num_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # implicit warns about its own internal COO conversion
        reference.fit(train, show_progress=False)
    users = np.arange(40)
    ref_ids, ref_scores = reference.recommend(users, train, N=5)
    ours = model.score(users)
    real = ref_scores > 0  # implicit pads a row with (0, 0.0) when fewer items have a neighbour
    assert real.sum() > 0.8 * real.size
    for u in users:
        np.testing.assert_allclose(ours[u, ref_ids[u][real[u]]], ref_scores[u][real[u]], rtol=1e-5, atol=1e-6)
    _, scores = model.recommend(users, train, k=5)
    np.testing.assert_allclose(scores[real], ref_scores[real], rtol=1e-5, atol=1e-6)  # same top values


@pytest.fixture(scope="module")
def als_and_bpr():
    train = random_binary(60, 30, 0.25, seed=7)
    als = ALS(factors=6, regularization=0.1, alpha=5.0, iterations=15, seed=0).fit(train, show_progress=False)
    bpr = BPR(factors=6, learning_rate=0.05, regularization=0.01, iterations=300, seed=0).fit(
        train, show_progress=False)
    return train, als, bpr


@pytest.mark.parametrize("name", ["als", "bpr"])
def test_embeddings_reproduce_the_scores(als_and_bpr, name):
    train, als, bpr = als_and_bpr
    model = als if name == "als" else bpr
    users = np.arange(train.shape[0])
    items, bias = model.item_vectors(), model.item_biases()
    assert items.shape == (train.shape[1], 6) and bias.shape == (train.shape[1],)
    assert items.dtype == bias.dtype == np.float32
    for rows in (None, train):  # trained users, then folded-in histories
        vectors = model.user_vectors(users, rows)
        assert vectors.shape == (len(users), 6) and vectors.dtype == np.float32
        np.testing.assert_allclose(vectors @ items.T + bias, model.score(users, rows), rtol=1e-5, atol=1e-5)
    if name == "als":
        np.testing.assert_array_equal(bias, 0.0)
    else:
        assert np.abs(bias).max() > 1e-2  # BPR's bias column was split off, not dropped


def test_factor_models_equal_implicits_own_factors(als_and_bpr):
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    train, als, bpr = als_and_bpr
    reference = AlternatingLeastSquares(factors=6, regularization=0.1, alpha=5.0, iterations=15,
                                        num_threads=1, random_state=0)
    reference.fit(train, show_progress=False)
    np.testing.assert_allclose(als.score(np.arange(60)),
                               reference.user_factors @ reference.item_factors.T, rtol=1e-5, atol=1e-5)
    reference = BayesianPersonalizedRanking(factors=6, learning_rate=0.05, regularization=0.01,
                                            iterations=300, num_threads=1, random_state=0)
    reference.fit(train, show_progress=False)
    # implicit's last user column is 1 and last item column the bias: the full product is the score
    np.testing.assert_allclose(bpr.score(np.arange(60)),
                               reference.user_factors @ reference.item_factors.T, rtol=1e-5, atol=1e-5)


def test_als_fold_in_of_a_training_user_closely_reproduces_trained_scores(als_and_bpr):
    train, als, _ = als_and_bpr
    users = np.arange(train.shape[0])
    trained, folded = als.score(users), als.score(users, train)
    assert np.abs(trained - folded).max() < 0.05 * np.abs(trained).max()
    assert row_correlation(trained, folded) > 0.999


def test_bpr_fold_in_of_a_training_user_reproduces_trained_scores(als_and_bpr):
    train, _, bpr = als_and_bpr
    users = np.arange(train.shape[0])
    trained, folded = bpr.score(users), bpr.score(users, train)
    assert row_correlation(trained, folded) > 0.97
    # the top unseen item agrees for most users (SGD leaves the trained vector slightly off)
    top_trained = bpr.recommend(users, train, k=1)[0][:, 0]
    top_folded = bpr.recommend(users, train, k=1, fold_in=True)[0][:, 0]
    assert np.mean(top_trained == top_folded) >= 0.8


def test_bpr_fold_in_is_the_optimum_and_independent_of_the_batch():
    rng = np.random.default_rng(1)
    n_items, dim = 20, 4
    q, b = rng.normal(size=(n_items, dim)), rng.normal(size=n_items)
    weights = rng.random(n_items) + 0.1
    dense = random_binary(5, n_items, 0.3, seed=2).toarray()
    dense[4] = 0  # a user with no history
    rows = sp.csr_matrix(dense)
    vectors = bpr_fold_in(rows, q, b, weights, 0.05)
    np.testing.assert_array_equal(vectors[4], 0.0)
    # the gradient of the objective vanishes; the objective matches a direct pairwise sum
    dense = dense[:4]
    negatives = np.where(dense > 0, 0.0, weights)
    negatives /= negatives.sum(1, keepdims=True) * dense.sum(1, keepdims=True)
    loss, grad, _ = _bpr_objective(vectors[:4], rows[:4], negatives, q, b, 0.05, True)
    assert np.abs(grad).max() < 1e-6
    for u in range(4):
        s = q @ vectors[u] + b
        direct = sum(np.sum(negatives[u] * np.logaddexp(0, s - s[i])) for i in np.flatnonzero(dense[u]))
        np.testing.assert_allclose(loss[u], direct + 0.025 * vectors[u] @ vectors[u], rtol=1e-10)
    # each user's result does not depend on who else is in the call
    np.testing.assert_allclose(bpr_fold_in(rows[[2]], q, b, weights, 0.05)[0], vectors[2], atol=1e-12)


# ---------------------------------------------------------------------------------- validation / runner
def test_fit_records_validation_metrics_once():
    board = checkerboard()
    validation = sp.csr_matrix((np.arange(16) == board.held_out[:, None]).astype(np.float32))
    seen = []
    model = EASE(l2=1.0).fit(board.train, validation=validation, show_progress=False,
                             callback=lambda epoch, metrics: seen.append((epoch, metrics)))
    assert model.history.best_epoch == 1
    assert model.history.best_value == pytest.approx(1.0)  # the held-out item is every top-1
    assert seen == [(1, model.history.epochs[0])]
    assert set(seen[0][1]) == {"val_ndcg@10", "val_recall@10"}
    with pytest.raises(ValueError, match="rows"):
        EASE(l2=1.0).fit(board.train, validation=validation[:3], show_progress=False)


def _small_prepared_data() -> runner.PreparedData:
    rng = np.random.default_rng(0)
    users, items = np.nonzero(rng.random((60, 40)) < 0.3)
    frame = pd.DataFrame({"user_id": users + 100, "item_id": items + 500, "rating": 1.0,
                          "timestamp": rng.permutation(len(users))})
    split = runner.make_split(frame, "random", seed=0)
    return runner.prepare(split, "random")


@pytest.mark.parametrize(("name", "options"), [("ease", {"l2": 10.0}), ("als", {"factors": 4, "iterations": 3}),
                                               ("pop", {})])
def test_runner_fits_epoch_free_models_with_validation_then_refits_on_all_of_train(name, options):
    data = _small_prepared_data()
    model = runner.fit_with_validation(name, options, data, show_progress=False)
    assert isinstance(model, MODELS[name])
    assert model.config == MODELS[name].config_class.from_dict(options)  # same options, no epochs
    assert model.history.best_epoch == 1 and np.isfinite(model.history.best_value)
    assert model.n_users == data.train.n_users
    if name == "ease":
        assert model.train_items.nnz == data.train.user_items.nnz  # refit on all of train
    result = runner.evaluate_model(model, data, ks=(10,))
    assert 0 <= result.summary["ndcg@10"] <= 1
