"""The CRBM's joint visible layer checked against brute force on tiny models.

Every (K + 1)-way item state and every hidden vector of a 4-item, 2-level, 3-hidden model is
enumerated: the free energy, the exact p(r_i = 1 | v) scores, the CD / persistent-CD gradients
(against the exact log-likelihood gradient by autograd) and the temperature-T Gibbs chains
(chi-square against the exact conditional distribution over item sets).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy import stats

from recsys_ebm.models.crbm import CRBM, joint
from recsys_ebm.models.crbm.cases import CaseBatch
from recsys_ebm.models.crbm.gibbs import ChainModel, exploratory_lists, run_chains
from recsys_ebm.models.crbm.module import CRBMModule

N_ITEMS, K, F = 4, 2, 3


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_module(seed: int = 0, scale: float = 1.0) -> CRBMModule:
    gen = torch.Generator().manual_seed(seed)
    module = CRBMModule(N_ITEMS, K, F, True, gen, init_std=scale, joint=True).double()
    with torch.no_grad():
        for p in (module.b, module.c, module.D, module.a):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale)
    return module.requires_grad_(False)


def all_states(n: int = N_ITEMS) -> torch.Tensor:
    """Every state code vector (0 unrated, k + 1 rated at level k): ((K + 1)^n, n)."""
    return torch.tensor(list(itertools.product(range(K + 1), repeat=n)), dtype=torch.int64)


def all_hidden() -> torch.Tensor:
    return torch.tensor(list(itertools.product((0.0, 1.0), repeat=F)), dtype=torch.float64)


def energy(module: CRBMModule, states: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """E(s, h) for every pair of rows: states (S, N), h (H, F) -> (S, H), written from the
    definition (loops over items, no shared code with the library)."""
    out = torch.zeros(len(states), len(h), dtype=torch.float64)
    for i in range(N_ITEMS):
        on = states[:, i] > 0
        level = (states[:, i] - 1).clamp_min(0)
        unit = module.a[i] + module.b[i, level]  # (S,)
        weight = module.D[i] + module.W[i, level]  # (S, F)
        out -= (on * unit)[:, None] + on[:, None] * (weight @ h.T)
    return out - (h @ module.c)[None, :]


def brute_free_energy(module: CRBMModule, states: torch.Tensor) -> torch.Tensor:
    return -torch.logsumexp(-energy(module, states, all_hidden()), dim=1)


def batch_of(states: torch.Tensor) -> CaseBatch:
    rows, items = torch.nonzero(states, as_tuple=True)
    return CaseBatch(len(states), rows, items, states[rows, items] - 1, rows, items)


# ------------------------------------------------------------------------------ energies
def test_joint_free_energy_matches_enumeration():
    module = tiny_module()
    states = all_states()
    with torch.no_grad():
        np.testing.assert_allclose(joint.free_energy(module, batch_of(states)),
                                   brute_free_energy(module, states), rtol=1e-10, atol=1e-10)


def test_activation_scores_are_the_exact_conditionals():
    module = tiny_module(seed=1)
    liked = torch.tensor([False, True])
    with torch.no_grad():
        for state in all_states()[::7]:
            for q in np.flatnonzero(state.numpy() == 0):
                # the states that differ from ``state`` only at q: unrated, level 0, level 1
                variants = state.repeat(K + 1, 1)
                variants[:, q] = torch.arange(K + 1)
                p = torch.softmax(-brute_free_energy(module, variants), 0)
                x = joint.hidden_input(module, batch_of(state[None]))
                g = joint.item_log_weights(module, x, torch.tensor([q]))[0, 0]
                assert float(joint.activation_scores(g, None).exp()) == pytest.approx(float(1 - p[0]), abs=1e-10)
                assert float(joint.activation_scores(g, liked).exp()) == pytest.approx(float(p[2]), abs=1e-10)
                np.testing.assert_allclose(torch.softmax(g, 0), p[1:] / p[1:].sum(), atol=1e-10)
                pairs = joint.pair_log_weights(module, x, torch.tensor([q]))
                np.testing.assert_allclose(pairs[0], g, atol=1e-10)


def test_model_scores_free_energies_and_rated_items_left_out():
    """CRBM.score / free_energy / predict_proba_all of a fitted joint model are the module's
    exact conditionals; a rated item is scored as if the user had not rated it."""
    rng = np.random.default_rng(0)
    dense = np.where(rng.random((12, 6)) < 0.5, rng.integers(1, 3, (12, 6)), 0).astype(np.float32)
    dense[:, 0] = 1  # every user rated item 0
    ratings = sp.csr_matrix(dense)
    model = CRBM(visible="joint", n_hidden=3, epochs=3, batch_size=4, val_fraction=0.0, seed=0)
    model.fit(ratings, show_progress=False)
    module = model.module
    levels = ratings.copy()
    levels.data = levels.data - 1  # levels 1, 2 -> 0, 1
    user = 5
    row = torch.from_numpy(np.where(dense[user] > 0, dense[user], 0).astype(np.int64))
    with torch.no_grad():
        assert model.free_energy([user])[0] == pytest.approx(float(joint.free_energy(module, batch_of(row[None]))[0]), rel=1e-6)
        without = row.clone()
        without[0] = 0  # item 0 left out of the user's state
        x = joint.hidden_input(module, batch_of(without[None]))
        g = joint.item_log_weights(module, x, torch.tensor([0]))[0, 0]
    assert model.score([user])[0, 0] == pytest.approx(float(joint.activation_scores(g, None)), abs=1e-5)
    np.testing.assert_allclose(model.predict_proba_all([user])[0, 0], torch.softmax(g, 0), atol=1e-5)
    np.testing.assert_allclose(model.score([user], ratings[user]), model.score([user]), atol=1e-5)


# ------------------------------------------------------------------------------ CD / PCD
def exact_gradient(module: CRBMModule, data: torch.Tensor) -> dict[str, torch.Tensor]:
    """d/dθ of the mean log-likelihood of the data states (S, N) by autograd over the full
    partition function."""
    module = module.requires_grad_(True)
    log_z = torch.logsumexp(-brute_free_energy(module, all_states()), 0)
    (-brute_free_energy(module, data) - log_z).mean().backward()
    grads = {name: p.grad.detach().clone() for name, p in module.named_parameters()}
    module.requires_grad_(False)
    return grads


@pytest.mark.parametrize("persistent", [False, True])
def test_long_chain_cd_and_pcd_estimate_the_exact_gradient(persistent: bool):
    module = tiny_module(seed=2, scale=0.5)
    data = all_states()[torch.tensor([5, 17, 40, 66, 79])]
    want = exact_gradient(module, data)
    gen = torch.Generator().manual_seed(0)
    reps = 2000
    batch = batch_of(data.repeat(reps, 1))
    fantasy = data.repeat(reps, 1) if persistent else None
    with torch.no_grad():
        got, chains, _ = joint.cd_gradients(module, batch, 30, gen, item_chunk=3, fantasy=fantasy)
    assert chains.shape == (len(data) * reps, N_ITEMS)
    for name in ("W", "b", "c", "D", "a"):
        np.testing.assert_allclose(got[name], want[name], atol=0.04, err_msg=name)
    # CD-1 from the data is biased but points the same way as the exact gradient
    with torch.no_grad():
        cd1, _, _ = joint.cd_gradients(module, batch, 1, gen, item_chunk=4)
    flat = lambda g: torch.cat([v.reshape(-1) for v in g.values()])  # noqa: E731
    assert float(torch.nn.functional.cosine_similarity(flat(cd1), flat(want), 0)) > 0.8


# ------------------------------------------------------------------------------ Gibbs chains
def set_distribution(module: CRBMModule, clamped: torch.Tensor, temperature: float) -> np.ndarray:
    """Exact p_T(item set of the free items | clamped items) over the 2^3 sets of items 1..3
    (item 0 clamped at ``clamped``), ratings and hiddens summed out."""
    free = all_states(N_ITEMS - 1)
    states = torch.cat([clamped.repeat(len(free), 1), free], 1)
    log_w = torch.logsumexp(-energy(module, states, all_hidden()) / temperature, 1)
    sets = ((free > 0).long() * torch.tensor([4, 2, 1])).sum(1)
    p = torch.zeros(8, dtype=torch.float64).index_add_(0, sets, torch.softmax(log_w, 0))
    return p.numpy()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_gibbs_chains_sample_the_exact_tempered_distribution(temperature: float):
    module = tiny_module(seed=3)
    chains = ChainModel(module)
    clamped = torch.tensor([2])  # item 0 rated at level 1
    n = 4000
    x = joint.hidden_input(module, batch_of(torch.cat([clamped, torch.zeros(3, dtype=torch.int64)])[None]))
    free = torch.tensor([[False, True, True, True]]).repeat(n, 1)
    final = run_chains(chains, x.repeat(n, 1), free, temperature, 25, np.random.default_rng(1))
    sets = ((final[:, 1:] > 0).long() * torch.tensor([4, 2, 1])).sum(1).numpy()
    observed = np.bincount(sets, minlength=8)
    expected = set_distribution(module, clamped, temperature) * n
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    # the same test rejects the distribution of another temperature: it can fail
    other = set_distribution(module, clamped, temperature * 3) * n
    assert stats.chisquare(observed, other).pvalue < 1e-6


def test_gibbs_lists_at_low_temperature_are_the_exact_ranking():
    module = tiny_module(seed=4)
    with torch.no_grad():
        module.a.sub_(6.0)  # sparse-data regime: no free item is rated in the ground state
    chains = ChainModel(module)
    x = joint.hidden_input(module, batch_of(torch.tensor([[1, 0, 0, 0]])))
    g = joint.item_log_weights(module, x, torch.arange(N_ITEMS))
    exact = joint.activation_scores(g, None).numpy().astype(np.float32)
    exact[:, 0] = -np.inf
    free = np.isfinite(exact)
    ranking = np.argsort(-exact[0])[:3]
    low = exploratory_lists(chains, x, free, exact, 3, 1e-3, 0, np.array([0]), n_chains=4,
                            burn_in=5, n_steps=20)
    np.testing.assert_array_equal(low[0], ranking)
    # at T = 1 the chains do activate items: the lists differ across seeds
    lists = {tuple(exploratory_lists(chains, x, free, exact, 2, 3.0, s, np.array([0]), n_chains=2,
                                     burn_in=0, n_steps=1)[0]) for s in range(20)}
    assert len(lists) > 1


def test_gibbs_lists_explore_more_as_the_temperature_rises():
    """On a model fitted to three taste clusters: the chains' lists tend to the exact ranking as
    T -> 0; as T rises they share fewer items with it and cover more of the catalog."""
    rng = np.random.default_rng(0)
    n_users, n_items, k = 300, 80, 5
    taste, genre = rng.integers(0, 3, n_users), rng.integers(0, 3, n_items)
    p = np.where(taste[:, None] == genre[None, :], 0.3, 0.03)
    dense = np.where(rng.random((n_users, n_items)) < p, rng.integers(3, 6, (n_users, n_items)), 0)
    model = CRBM(visible="joint", n_hidden=16, epochs=20, batch_size=32, lr=0.1, val_fraction=0.0,
                 seed=0).fit(sp.csr_matrix(dense.astype(np.float32)), show_progress=False)
    users = np.arange(n_users)
    exact = model.recommend(users, k=k)[0]
    overlap, coverage = [], []
    for temperature in (1e-3, 0.25, 1.0, 4.0):  # 1e-3: the chains run (T = 0 skips them)
        ids = model.recommend(users, k=k, temperature=temperature, rng=0)[0]
        assert (ids >= 0).all() and all(len(set(row)) == k for row in ids)
        assert not (dense[users[:, None], ids] > 0).any()  # never a rated item
        overlap.append(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, exact, strict=True)]))
        coverage.append(len(np.unique(ids)) / n_items)
    assert overlap[0] == 1.0
    assert overlap[1] < 0.8 and overlap[2] < min(0.35, overlap[1]) and overlap[3] < min(0.15, overlap[2])
    assert coverage[0] < 0.7 < 0.9 < coverage[1] <= coverage[2] <= coverage[3]


def test_shipped_defaults_depend_on_the_protocol_kind():
    from pathlib import Path

    from recsys_ebm.experiments import tuning
    from recsys_ebm.models.crbm import CRBMConfig

    here = Path(__file__).resolve().parents[1] / "pipelines"  # this checkout's, not an install's

    def tuned_defaults(name: str, kind: str) -> dict:
        return tuning.tuned_defaults(name, here, kind=kind)

    ranking = CRBMConfig.from_dict(tuned_defaults("crbm", kind="ranking"))
    rating = CRBMConfig.from_dict(tuned_defaults("crbm", kind="rating"))
    assert (ranking.visible, ranking.orientation, ranking.ranking_score) == ("joint", "user", "active")
    assert (rating.visible, rating.orientation, rating.ranking_score) == ("ratings", "item", "expected")
    # --set visible="ratings" on the ranking defaults: the rating-only item model again
    back = CRBMConfig.from_dict({**tuned_defaults("crbm", kind="ranking"), "visible": "ratings"})
    assert (back.visible, back.orientation) == ("ratings", "item")
    with pytest.raises(ValueError, match="score_type"):
        CRBMConfig(visible="ratings", score_type="active")


def test_faiss_retrieves_candidates_and_the_exact_score_reranks(tmp_path):
    pytest.importorskip("faiss")
    from recsys_ebm.models.indexed import IndexedRecommender
    from recsys_ebm.ranking.faiss_index import EnergyIndex

    rng = np.random.default_rng(1)
    n_users, n_items = 30, 40
    dense = np.where(rng.random((n_users, n_items)) < 0.3, rng.integers(1, 6, (n_users, n_items)), 0)
    ratings = sp.csr_matrix(dense.astype(np.float32))
    model = CRBM(visible="joint", n_hidden=6, epochs=5, batch_size=8, lr=0.05, val_fraction=0.0, seed=0)
    model.fit(ratings, show_progress=False)
    users = np.arange(n_users)
    exact_ids, exact_scores = model.recommend(users, k=5)
    # every unseen item a candidate: the re-ranked list is the exact ranking
    served = IndexedRecommender(model, n_candidates=n_items)
    served.index = EnergyIndex.build(served.model)
    ids, scores = served.recommend(users, k=5)
    np.testing.assert_array_equal(ids, exact_ids)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-5)
    # few candidates: the returned items are proxy candidates, scored exactly
    few = IndexedRecommender(model, served.index, n_candidates=5)
    ids, scores = few.recommend(users, k=5)
    np.testing.assert_allclose(scores, np.take_along_axis(model.score(users), ids, 1), rtol=1e-5, atol=1e-5)
    # saved beside the model and loaded back
    path = served.save(tmp_path / "crbm")
    again = IndexedRecommender.load(path, n_candidates=n_items)
    np.testing.assert_array_equal(again.recommend(users, k=5)[0], exact_ids)
    with pytest.raises(TypeError, match="joint"):
        IndexedRecommender(CRBM(n_hidden=4, epochs=1, val_fraction=0.0).fit(ratings, show_progress=False))


def test_epoch_monitors_reach_the_callback_and_early_stopping():
    """recon_error, the free-energy gap and validation NDCG@10 arrive every epoch (the
    experiments pass ``Tracker.log_epoch`` as the callback: that is how they reach MLflow)."""
    rng = np.random.default_rng(2)
    dense = np.where(rng.random((40, 30)) < 0.35, rng.integers(1, 6, (40, 30)), 0).astype(np.float32)
    seen = []
    model = CRBM(visible="joint", n_hidden=6, epochs=4, batch_size=8, lr=0.05, val_fraction=0.2,
                 persistent=True, seed=0)
    model.fit(sp.csr_matrix(dense), callback=lambda epoch, metrics: seen.append(metrics), show_progress=False)
    assert len(seen) == 4
    for metrics in seen:
        assert {"recon_error", "fe_train", "fe_val", "fe_gap", "val_ndcg@10", "val_rmse"} <= set(metrics)
        assert 0 < metrics["recon_error"] < 2 and np.isfinite(metrics["fe_gap"])
        assert metrics["fe_gap"] == pytest.approx(metrics["fe_val"] - metrics["fe_train"])
    assert model.history.best_value == max(m["val_ndcg@10"] for m in seen) > 0


def test_adam_updates_train_the_joint_layer():
    from model_contract import checkerboard
    from test_contract_crbm import rating_checkerboard

    model = CRBM(visible="joint", n_hidden=8, epochs=60, batch_size=4, lr=0.01, optimizer="adam",
                 weight_decay=0.001, cd_schedule=((1, 1),), val_fraction=0.0, seed=0)
    model.fit(rating_checkerboard(), show_progress=False)
    top1 = model.recommend(np.arange(16), k=1)[0][:, 0]
    assert (top1 == checkerboard().held_out).sum() >= 15
