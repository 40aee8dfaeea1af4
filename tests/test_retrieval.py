"""Retrieval: exact factored top-k, FAISS energy indexes (flat/HNSW/IVF), save/load checks."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.synthetic import SyntheticConfig, catalog, generate
from recsys_ebm.models.dot_ebm import DotEBM
from recsys_ebm.ranking.faiss_index import (
    EnergyIndex,
    IndexConfig,
    exact_top_k,
    fingerprint,
    heap_top_k,
    index_path,
    load_or_build,
    recommend_exact,
    sampled_top_k,
    select_top_k,
)
from recsys_ebm.ranking.topk import top_k


class Vectors:
    """The three methods retrieval needs, over fixed arrays."""

    def __init__(self, users, items, biases):
        self.users, self.items, self.biases = users, items, biases
        self.n_users, self.n_items = len(users), len(items)

    def user_vectors(self, user_ids, user_items=None):
        return self.users[np.asarray(user_ids)]

    def item_vectors(self):
        return self.items

    def item_biases(self):
        return self.biases


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


# ----------------------------------------------------------------------------- exact kernels


@st.composite
def score_cases(draw):
    n = draw(st.integers(1, 6))
    n_items = draw(st.sampled_from([8, 40, 300, 5000]))
    k = draw(st.integers(1, 120))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["normal", "ties", "few"]))
    if kind == "normal":
        scores = rng.normal(size=(n, n_items)).astype(np.float32)
    elif kind == "ties":  # many ties, including at the cut
        scores = rng.integers(0, 4, size=(n, n_items)).astype(np.float32)
    else:
        scores = rng.integers(0, 50, size=(n, n_items)).astype(np.float32)
    scores[rng.random((n, n_items)) < draw(st.sampled_from([0.0, 0.5, 0.99]))] = -np.inf
    return scores, k


@settings(max_examples=60, deadline=None)
@given(score_cases())
def test_heap_and_threshold_selection_equal_the_reference_top_k(case):
    scores, k = case
    expected = top_k(scores.copy(), k)
    for select in (heap_top_k, select_top_k):
        ids, values = select(scores.copy(), k)
        np.testing.assert_array_equal(ids, expected[0])
        np.testing.assert_array_equal(values, expected[1])


def test_threshold_path_breaks_ties_by_lower_id():
    scores = np.zeros((3, 6000), np.float32)
    scores[0, ::7] = 1.0  # 858 tied items above the rest
    scores[1, 100:110] = 2.0
    scores[1, 5000:] = 1.0
    scores[2, :] = -np.inf
    scores[2, [10, 20]] = 0.5
    ids, values = select_top_k(scores.copy(), 40)
    np.testing.assert_array_equal(ids[0], np.arange(0, 40 * 7, 7))
    np.testing.assert_array_equal(ids[1], np.r_[np.arange(100, 110), np.arange(5000, 5030)])
    np.testing.assert_array_equal(ids[2, :3], [10, 20, -1])
    assert np.isneginf(values[2, 2:]).all()


def test_augmented_product_is_exactly_minus_energy(small_model):
    model, _ = small_model
    users = np.arange(10)
    ids, scores = exact_top_k(model.user_vectors(users), model.item_vectors(), model.item_biases(), 5)
    energies = model.energy(np.repeat(users, 5), ids.ravel()).reshape(ids.shape)
    np.testing.assert_allclose(scores, -energies, rtol=1e-5, atol=1e-6)


def test_exact_path_equals_recommend_with_seen_items_filtered(small_model):
    model, user_items = small_model
    users = np.arange(model.n_users)
    expected = model.recommend(users, user_items, k=20)
    for threads in (1, 2):
        ids, scores = recommend_exact(model, users, user_items, k=20, batch_size=37, n_threads=threads)
        np.testing.assert_array_equal(ids, expected[0])
        np.testing.assert_allclose(scores, expected[1], rtol=1e-5, atol=1e-6)
    seen = user_items.toarray() > 0
    assert not seen[np.repeat(users, 20), ids.ravel()].any()
    # allowed items
    allowed = np.zeros(model.n_items, bool)
    allowed[::3] = True
    ids, _ = recommend_exact(model, users, user_items, k=5, items=allowed)
    np.testing.assert_array_equal(ids, model.recommend(users, user_items, k=5, items=allowed)[0])


def test_exact_top_k_pads_when_fewer_than_k_eligible():
    rng = np.random.default_rng(0)
    users, items = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(6, 4)).astype(np.float32)
    exclude = sp.csr_matrix(np.array([[1, 1, 1, 1, 0, 0], [1] * 6, [0] * 6], np.float32))
    ids, scores = exact_top_k(users, items, np.zeros(6, np.float32), 4, exclude=exclude)
    assert (ids[0, :2] >= 4).all() and (ids[0, 2:] == -1).all()
    assert (ids[1] == -1).all() and np.isneginf(scores[1]).all()
    assert (ids[2] >= 0).all()


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


def test_exploratory_mode_samples_from_the_candidates(clustered):
    items, biases, queries = clustered
    index = EnergyIndex.build(item_vectors=items, item_biases=biases)
    top, _ = index.search(queries, 50)
    a, scores = index.sample(queries, 10, temperature=0.5, seed=3, n_candidates=50)
    b, _ = index.sample(queries, 10, temperature=0.5, seed=3, n_candidates=50)
    c, _ = index.sample(queries, 10, temperature=0.5, seed=4, n_candidates=50)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert all(set(row) <= set(cands) and len(set(row)) == 10 for row, cands in zip(a, top, strict=True))
    true = np.einsum("nd,nkd->nk", queries, items[a]) + biases[a]
    np.testing.assert_allclose(scores, true, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(index.sample(queries, 10, temperature=0.0)[0], index.search(queries, 10)[0])


def test_sampled_top_k_draws_like_the_score_matrix_sampler(small_model):
    from recsys_ebm.ranking.sampling import sample_top_k

    model, user_items = small_model
    users = model.user_vectors(np.arange(model.n_users))
    ids, scores = sampled_top_k(users, model.item_vectors(), model.item_biases(), 8, 0.7, seed=5,
                                exclude=user_items, batch_size=64, n_threads=2)
    ref, _ = sample_top_k(model.score(np.arange(model.n_users)), 8, 0.7, 5, exclude=user_items)
    # the product is scaled before rounding, so a draw may rarely land on the other side of a
    # boundary; otherwise the draws are the same
    assert np.mean(ids == ref) > 0.98
    np.testing.assert_allclose(scores, np.take_along_axis(model.score(np.arange(model.n_users)), ids, 1),
                               rtol=1e-5, atol=1e-6)
    assert not user_items.toarray()[np.repeat(np.arange(model.n_users), 8), ids.ravel()].any()


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
    with pytest.raises(ValueError):
        index.sample(queries, 3, temperature=-1.0)
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
