"""Retrieval: FAISS energy indexes (flat/HNSW/IVF) against brute force, models served through
them (IndexedRecommender: exact at T = 0, sampling the candidates at T > 0), save/load checks.

The exact kernels moved: ``heap_top_k`` / ``select_top_k`` are tested in test_select.py, the
factored ranking ``rank_vectors`` in test_factored.py."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import chisquare

from benchmarks.synthetic import SyntheticConfig, catalog, generate
from recsys_ebm.models.base import EmbeddingMixin, Recommender
from recsys_ebm.models.dot_ebm import DotEBM
from recsys_ebm.models.indexed import IndexedRecommender
from recsys_ebm.ranking.faiss_index import (
    EnergyIndex,
    IndexConfig,
    index_path,
    load_or_build,
)
from recsys_ebm.ranking.sampling import softmax_probabilities
from recsys_ebm.ranking.select import select
from recsys_ebm.ranking.topk import top_k
from recsys_ebm.ranking.vectors import fingerprint


class VectorModel(EmbeddingMixin, Recommender):
    """A Recommender over fixed vectors (the three methods retrieval needs), with a seen set."""

    def __init__(self, users, items, biases, seen=None):
        self.user_factors, self.item_factors = np.asarray(users, np.float32), np.asarray(items, np.float32)
        self.item_bias = np.asarray(biases, np.float32)
        self.n_users, self.n_items = len(users), len(items)
        if seen is not None:
            self._remember_seen(seen)

    def _require_fitted(self):
        pass

    def fit(self, user_items, **kwargs):  # pragma: no cover - fixed vectors
        raise NotImplementedError

    def user_vectors(self, user_ids, user_items=None):
        return self.user_factors[np.asarray(user_ids)]


@pytest.fixture(scope="module")
def small_model() -> tuple[DotEBM, sp.csr_matrix]:
    data = generate(SyntheticConfig(n_users=200, n_items=300, n_interactions=6000, rank=4, n_tastes=8))
    model = DotEBM(dim=8, user_model="free", epochs=3, lr=0.05, seed=0).fit(data.user_items, show_progress=False)
    return model, data.user_items


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    items, biases, queries = catalog(10_000, 16, 200, n_clusters=100, seed=3)
    return items, biases, queries


def _brute_force(queries, items, biases, k, banned=None):
    scores = (queries.astype(np.float64) @ items.T.astype(np.float64) + biases).astype(np.float32)
    if banned is not None:
        scores[banned] = -np.inf
    return top_k(scores, k)


# ----------------------------------------------------------------------------- indexes


def test_flat_index_equals_brute_force_tie_aware(clustered):
    items, biases, queries = clustered
    index = EnergyIndex.build(item_vectors=items, item_biases=biases, kind="flat")
    ids, scores = index.search(queries, 50)
    exp_ids, exp_scores = _brute_force(queries, items, biases, 50)
    np.testing.assert_allclose(scores, exp_scores, rtol=1e-5, atol=1e-5)
    # ids may differ only among (near-)tied scores: each returned item's true score reaches
    # the k-th best one
    true = np.einsum("nd,nkd->nk", queries, items[ids]) + biases[ids]
    assert np.all(true >= exp_scores[:, -1:] - 1e-5)
    assert np.mean(np.all(np.sort(ids, 1) == np.sort(exp_ids, 1), axis=1)) > 0.99
    # exact ties: integer vectors, many equal scores; the tie rule is the lower id
    rng = np.random.default_rng(1)
    int_items = rng.integers(-1, 2, size=(400, 3)).astype(np.float32)
    int_queries = rng.integers(-1, 2, size=(20, 3)).astype(np.float32)
    zero = np.zeros(400, np.float32)
    index = EnergyIndex.build(item_vectors=int_items, item_biases=zero)
    ids, scores = index.search(int_queries, 30)
    exp_ids, exp_scores = _brute_force(int_queries, int_items, zero, 30)
    np.testing.assert_array_equal(scores, exp_scores)
    kth = exp_scores[:, -1:]
    above = exp_scores > kth  # strictly above the cut: the same items, in the same order
    np.testing.assert_array_equal(np.where(above, ids, -1), np.where(above, exp_ids, -1))
    true = int_queries @ int_items.T
    assert np.all(np.take_along_axis(true, ids, 1)[~above] == np.broadcast_to(kth, ids.shape)[~above])


@pytest.mark.parametrize(("kind", "knobs", "floor"), [
    ("hnsw", {"hnsw_m": 16, "ef_construction": 80, "ef_search": 64}, 0.9),
    ("ivf", {"nlist": 128, "nprobe": 16}, 0.9),
    ("ivf", {"nlist": 128, "nprobe": 32, "metric": "ip"}, 0.5),
])
def test_approximate_recall_above_floor(clustered, kind, knobs, floor):
    items, biases, queries = clustered
    index = EnergyIndex.build(item_vectors=items, item_biases=biases, kind=kind, **knobs)
    ids, scores = index.search(queries, 20)
    exp_ids, _ = _brute_force(queries, items, biases, 20)
    recall = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(ids, exp_ids, strict=True)])
    assert recall >= floor, f"{kind} recall@20 {recall:.3f} below {floor}"
    # scores are exact -E of the returned items, best first
    true = np.einsum("nd,nkd->nk", queries, items[ids]) + biases[ids]
    np.testing.assert_allclose(scores, true, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_seen_items_never_returned_and_k_filled(clustered, kind):
    items, biases, queries = clustered
    n, n_items = len(queries), len(items)
    rng = np.random.default_rng(2)
    # users who saw their own top items (the hardest case for over-fetching), some heavily
    exp_ids, _ = _brute_force(queries, items, biases, 300)
    n_seen = rng.integers(0, 300, n)
    n_seen[:5] = 300
    rows = np.repeat(np.arange(n), n_seen)
    cols = np.concatenate([exp_ids[u, :c] for u, c in enumerate(n_seen)])
    exclude = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(n, n_items))
    index = EnergyIndex.build(item_vectors=items, item_biases=biases, kind=kind, nlist=64, nprobe=2,
                              ef_search=16, hnsw_m=8, ef_construction=40)
    ids, scores = index.search(queries, 25, exclude=exclude)
    assert (ids >= 0).all(), "k items whenever k unseen items exist"
    assert not exclude.toarray()[np.repeat(np.arange(n), 25), ids.ravel()].any()
    assert all(len(set(row)) == 25 for row in ids)
    if kind == "flat":
        banned = exclude.toarray() > 0
        np.testing.assert_allclose(scores, _brute_force(queries, items, biases, 25, banned)[1], atol=1e-5)


def test_tiny_catalog_padding_and_allowed():
    rng = np.random.default_rng(4)
    items, biases = rng.normal(size=(30, 4)).astype(np.float32), rng.normal(size=30).astype(np.float32)
    queries = rng.normal(size=(3, 4)).astype(np.float32)
    exclude = sp.csr_matrix((np.ones(28, np.float32), (np.zeros(28, int), np.arange(28))), shape=(3, 30))
    allowed = np.arange(0, 30, 2)
    for kind, metric in (("flat", "l2"), ("hnsw", "l2"), ("ivf", "l2"), ("hnsw", "ip"), ("ivf", "ip")):
        index = EnergyIndex.build(item_vectors=items, item_biases=biases, kind=kind, nlist=2, metric=metric)
        ids, _ = index.search(queries, 5, exclude=exclude)
        np.testing.assert_array_equal(np.sort(ids[0, :2]), [28, 29])
        assert (ids[0, 2:] == -1).all()
        ids, _ = index.search(queries, 20, allowed=allowed)
        assert set(ids[1][ids[1] >= 0]) == set(allowed)


def test_indexed_recommender_at_t0_is_the_brute_force_ranking(clustered):
    items, biases, queries = clustered
    rng = np.random.default_rng(5)
    seen = sp.random(len(queries), len(items), density=0.002, format="csr", random_state=rng, dtype=np.float32)
    model = VectorModel(queries, items, biases, seen)
    served = IndexedRecommender(model, EnergyIndex.build(model, kind="flat"))
    users = np.arange(len(queries))
    ids, scores = served.recommend(users, k=20)  # the model's seen set is left out
    banned = seen.toarray() > 0
    exp_ids, exp_scores = _brute_force(queries, items, biases, 20, banned)
    np.testing.assert_allclose(scores, exp_scores, rtol=1e-5, atol=1e-5)
    assert not banned[np.repeat(users, 20), ids.ravel()].any()
    assert np.mean(np.all(ids == exp_ids, axis=1)) > 0.99  # differences only at float ties
    np.testing.assert_array_equal(served.recommend(users, seen, k=20)[0], ids)
    # allowed / blocked items go through the index's selector
    allowed = np.arange(0, len(items), 5)
    ids, _ = served.recommend(users[:10], k=5, items=allowed, filter_items=allowed[:3])
    assert np.isin(ids, allowed[3:]).all()


def test_exploratory_mode_samples_from_the_candidates(clustered):
    items, biases, queries = clustered
    model = VectorModel(queries, items, biases)
    index = EnergyIndex.build(model)
    served = IndexedRecommender(model, index, n_candidates=50)
    users = np.arange(len(queries))
    top, cand_scores = index.search(queries, 50)
    a, scores = served.recommend(users, k=10, temperature=0.5, rng=3)
    b, _ = served.recommend(users, k=10, temperature=0.5, rng=3)
    c, _ = served.recommend(users, k=10, temperature=0.5, rng=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert all(set(row) <= set(cands) and len(set(row)) == 10 for row, cands in zip(a, top, strict=True))
    true = np.einsum("nd,nkd->nk", queries, items[a]) + biases[a]
    np.testing.assert_allclose(scores, true, rtol=1e-5, atol=1e-5)
    # known answer: the one sampler over the candidates' scores, keyed on the user ids
    slots, _, _ = select(cand_scores.copy(), 10, 0.5, 3, users)
    np.testing.assert_array_equal(a, np.take_along_axis(top, slots, 1))
    np.testing.assert_array_equal(served.recommend(users, k=10, temperature=0.0)[0], index.search(queries, 10)[0])


def test_exploratory_draws_are_keyed_per_user(clustered):
    """A user's draw is the same alone, in a batch, or in a batch in another order."""
    items, biases, queries = clustered
    model = VectorModel(queries, items, biases)
    served = IndexedRecommender(model, EnergyIndex.build(model), n_candidates=100)
    users = np.arange(len(queries))
    batch, _ = served.recommend(users, k=8, temperature=0.3, rng=11)
    for u in (0, 64, 199):
        np.testing.assert_array_equal(served.recommend([u], k=8, temperature=0.3, rng=11)[0][0], batch[u])
    order = np.random.default_rng(0).permutation(len(users))
    np.testing.assert_array_equal(served.recommend(order, k=8, temperature=0.3, rng=11)[0], batch[order])


@pytest.mark.parametrize("n_candidates", [7, 3])
def test_exploratory_frequencies_follow_the_truncated_softmax(n_candidates):
    """Single draws follow softmax(-E / T) over the user's n_candidates best items."""
    rng = np.random.default_rng(6)
    items, biases = rng.normal(size=(7, 3)).astype(np.float32), rng.normal(size=7).astype(np.float32)
    n_draws, temperature = 20000, 0.8
    users = np.tile(rng.normal(size=(1, 3)).astype(np.float32), (n_draws, 1))
    model = VectorModel(users, items, biases)
    served = IndexedRecommender(model, EnergyIndex.build(model), n_candidates=n_candidates)
    ids, _, prob = served.recommend(np.arange(n_draws), k=1, temperature=temperature, rng=1,
                                    with_probabilities=True)
    scores = (users[:1].astype(np.float64) @ items.T + biases)[0]
    scores[np.argsort(-scores)[n_candidates:]] = -np.inf
    p = softmax_probabilities(scores[None, :], temperature)[0]
    counts = np.bincount(ids[:, 0], minlength=7)
    assert counts[p == 0].sum() == 0
    keep = p > 0
    assert chisquare(counts[keep], n_draws * p[keep]).pvalue > 1e-3
    np.testing.assert_allclose(prob[:, 0], p[ids[:, 0]], rtol=1e-4)


def test_indexed_probabilities_at_t0_are_the_t1_softmax_over_candidates(clustered):
    items, biases, queries = clustered
    items, biases = items[:500], biases[:500]
    model = VectorModel(queries[:20], items, biases)
    served = IndexedRecommender(model, EnergyIndex.build(model), n_candidates=500)  # every item
    ids, _, prob = served.recommend(np.arange(20), k=10, with_probabilities=True)
    scores = queries[:20].astype(np.float64) @ items.T.astype(np.float64) + biases
    p = softmax_probabilities(scores, 1.0)
    np.testing.assert_allclose(prob, np.take_along_axis(p, ids, 1), rtol=1e-4)
    np.testing.assert_array_equal(ids, model.recommend(np.arange(20), k=10)[0])


def test_save_load_next_to_the_model_and_mismatch(small_model, tmp_path):
    model, user_items = small_model
    model_dir = model.save(tmp_path / "model")
    index = load_or_build(model, model_dir, kind="hnsw", hnsw_m=8)
    path = index_path(model_dir, "hnsw")
    assert (path / "index.faiss").is_file() and (path / "index.json").is_file()
    users = model.user_vectors(np.arange(20))
    loaded = EnergyIndex.load(path, model)
    assert loaded.fingerprint == fingerprint(model.item_vectors(), model.item_biases())
    np.testing.assert_array_equal(loaded.search(users, 10)[0], index.search(users, 10)[0])
    other = DotEBM(dim=8, user_model="free", epochs=3, lr=0.05, seed=1).fit(user_items, show_progress=False)
    assert index.matches(model) and not index.matches(other)
    with pytest.raises(ValueError, match="does not match"):
        EnergyIndex.load(path, other)
    rebuilt = load_or_build(other, model_dir, kind="hnsw", hnsw_m=8)  # stale index replaced
    assert rebuilt.matches(other) and EnergyIndex.load(path, other).matches(other)
    ivf = EnergyIndex.build(model, kind="ivf", nlist=4)
    ivf.save(tmp_path / "ivf")
    np.testing.assert_array_equal(EnergyIndex.load(tmp_path / "ivf").search(users, 5)[0], ivf.search(users, 5)[0])


def test_indexed_recommender_save_load_round_trip(small_model, tmp_path):
    model, user_items = small_model
    served = IndexedRecommender(model, EnergyIndex.build(model, kind="flat"))
    path = served.save(tmp_path / "served")
    assert (index_path(path, "flat") / "index.faiss").is_file()
    loaded = IndexedRecommender.load(path)
    users = np.arange(model.n_users)
    for kwargs in ({}, {"temperature": 0.6, "rng": 2}):
        np.testing.assert_array_equal(loaded.recommend(users, k=10, **kwargs)[0],
                                      served.recommend(users, k=10, **kwargs)[0])
    # the seen set travels with the model: fitted interactions are never served
    ids, _ = loaded.recommend(users, k=10)
    assert not user_items.toarray()[np.repeat(users, 10), ids.ravel()].any()
    # T = 0 through the flat index is the model's own exact ranking
    np.testing.assert_array_equal(ids, model.recommend(users, k=10)[0])


def test_bad_arguments(clustered, tmp_path):
    items, biases, queries = clustered
    index = EnergyIndex.build(item_vectors=items[:100], item_biases=biases[:100])
    with pytest.raises(ValueError):
        index.search(queries, 0)
    with pytest.raises(ValueError):
        index.search(queries[:, :5], 3)  # wrong dim
    with pytest.raises(ValueError):
        index.search(queries, 3, exclude=sp.csr_matrix((len(queries), 99)))
    with pytest.raises(IndexError):
        index.search(queries, 3, allowed=np.array([100]))
    with pytest.raises(ValueError):
        IndexConfig(kind="lsh")
    with pytest.raises(ValueError):
        IndexConfig(kind="hnsw", metric="cosine")
    with pytest.raises(ValueError):
        EnergyIndex.build(item_vectors=items[:10], item_biases=biases[:9])
    model = VectorModel(queries, items[:100], biases[:100])
    with pytest.raises(ValueError):
        IndexedRecommender(model, index).recommend([0], k=3, temperature=-1.0)
    with pytest.raises(ValueError):
        IndexedRecommender(model, index, n_candidates=0)
    with pytest.raises(ValueError, match="does not match"):
        IndexedRecommender(VectorModel(queries, items[:100] + 1, biases[:100]), index)
    with pytest.raises(RuntimeError):
        IndexedRecommender(model).recommend([0], k=3)
    with pytest.raises(FileNotFoundError):
        EnergyIndex.load(tmp_path)
    with pytest.raises(TypeError):
        EnergyIndex.build(object())


def test_synthetic_generator_is_seeded_and_shaped():
    config = SyntheticConfig(n_users=300, n_items=400, n_interactions=12_000, seed=7)
    a, b = generate(config), generate(config)
    assert (a.user_items != b.user_items).nnz == 0
    assert a.user_items.shape == (300, 400)
    assert abs(a.n_interactions - 12_000) < 0.05 * 12_000
    activity = np.diff(a.user_items.indptr)
    assert activity.min() >= config.min_activity - 2 and activity.max() <= 200
    popularity = np.sort(np.asarray(a.user_items.sum(axis=0)).ravel())[::-1]
    assert popularity[:40].sum() > 3 * popularity[-40:].sum()  # skewed
    c = generate(SyntheticConfig(n_users=300, n_items=400, n_interactions=12_000, seed=8))
    assert (a.user_items != c.user_items).nnz > 0
    scaled = SyntheticConfig().scaled(0.01)
    assert (scaled.n_users, scaled.n_items, scaled.n_interactions) == (1380, 270, 200_000)


@pytest.mark.parametrize("name", ["als", "bpr"])
def test_flat_index_serves_factor_baselines_like_their_recommend(small_model, name):
    """ALS and BPR expose the same three vector methods: the flat index must give exactly
    their own filtered top-k (scores to float tolerance, item sets equal)."""
    from recsys_ebm.models import MODELS

    _, user_items = small_model
    cls = MODELS[name]
    model = cls(cls.config_class.from_dict({"factors": 8, "iterations": 5, "seed": 0}))
    model.fit(user_items, show_progress=False)
    users = np.arange(40)
    index = EnergyIndex.build(model, kind="flat")
    ids, scores = index.search(model.user_vectors(users), 10, exclude=user_items[users])
    ref_ids, ref_scores = model.recommend(users, user_items, k=10)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-4)
    same = [set(a) == set(b) for a, b in zip(ids, ref_ids, strict=True)]
    assert np.mean(same) >= 0.95  # a differing set can only come from a float tie at the cut
    seen = user_items[users].toarray().astype(bool)
    assert not np.any(np.take_along_axis(seen, ids, axis=1))
