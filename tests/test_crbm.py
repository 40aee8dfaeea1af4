"""Conditional RBM: known answers on a tiny model by enumeration, CD-k, invariances, the wrapper."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys_ebm.models.crbm import CRBM, CaseData, CRBMConfig
from recsys_ebm.models.crbm.cases import CaseBatch, csr_lookup, ranges
from recsys_ebm.models.crbm.module import CRBMModule


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: thread start-up and contention on a shared machine dominate, so use one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------ a tiny model, in float64

N_UNITS, K, F = 3, 2, 3
HIDDEN_STATES = torch.tensor(list(itertools.product([0.0, 1.0], repeat=F)), dtype=torch.float64)


def tiny_module(seed: int = 0, scale: float = 1.0, conditional: bool = True) -> CRBMModule:
    gen = torch.Generator().manual_seed(seed)
    module = CRBMModule(N_UNITS, K, F, conditional, gen).double()
    with torch.no_grad():
        module.W.copy_(torch.randn(N_UNITS, K, F, generator=gen, dtype=torch.float64) * scale)
        module.b.copy_(torch.randn(N_UNITS, K, generator=gen, dtype=torch.float64) * 0.5)
        module.c.copy_(torch.randn(F, generator=gen, dtype=torch.float64) * 0.5)
        if conditional:
            module.D.copy_(torch.randn(N_UNITS, F, generator=gen, dtype=torch.float64) * 0.5)
    return module


def energy(module: CRBMModule, visible: dict[int, int], r: list[int], h: torch.Tensor) -> torch.Tensor:
    """E(v, h) written out from the definition, independent of the implementation."""
    e = -sum(module.b[s, lv] for s, lv in visible.items())
    x = module.c.clone()
    for s, lv in visible.items():
        x = x + module.W[s, lv]
    if module.D is not None:
        for i in r:
            x = x + module.D[i]
    return e - (h * x).sum()


def brute_log_unnormalised(module: CRBMModule, visible: dict[int, int], r: list[int]) -> torch.Tensor:
    """log sum_h exp(-E(v, h)) = -F(v), by enumerating the 2^F hidden states."""
    return torch.logsumexp(torch.stack([-energy(module, visible, r, h) for h in HIDDEN_STATES]), 0)


def brute_log_z(module: CRBMModule, units: list[int], r: list[int]) -> torch.Tensor:
    """log Z over every visible state of ``units`` and every hidden state."""
    terms = [brute_log_unnormalised(module, dict(zip(units, lv, strict=True)), r)
             for lv in itertools.product(range(K), repeat=len(units))]
    return torch.logsumexp(torch.stack(terms), 0)


# case A rates every unit; case B rates units 0 and 2, and unit 1 is in r (asked, not rated)
CASE_A = ({0: 1, 1: 0, 2: 1}, [0, 1, 2])
CASE_B = ({0: 0, 2: 1}, [0, 1, 2])


def test_free_energy_matches_enumeration():
    module = tiny_module()
    batch = CaseBatch.from_lists([CASE_A[0], CASE_B[0]], [CASE_A[1], CASE_B[1]])
    got = module.free_energy(batch)
    for b, (visible, r) in enumerate((CASE_A, CASE_B)):
        assert got[b].item() == pytest.approx(-brute_log_unnormalised(module, visible, r).item(), abs=1e-10)


def test_partition_function_and_log_likelihood_match_enumeration():
    module = tiny_module()
    batch = CaseBatch.from_lists([CASE_A[0], CASE_B[0]], [CASE_A[1], CASE_B[1]])
    got = module.exact_log_likelihood(batch)
    for b, (visible, r) in enumerate((CASE_A, CASE_B)):
        log_z = brute_log_z(module, sorted(visible), r)
        expected = brute_log_unnormalised(module, visible, r) - log_z
        assert got[b].item() == pytest.approx(expected.item(), abs=1e-10)
    # the probabilities of all K^3 states of case A's units sum to one
    states = [dict(zip(range(3), lv, strict=True)) for lv in itertools.product(range(K), repeat=3)]
    every = CaseBatch.from_lists(states, [CASE_A[1]] * len(states))
    assert module.exact_log_likelihood(every).exp().sum().item() == pytest.approx(1.0, abs=1e-12)


def test_predictive_distribution_matches_enumeration():
    """p(v_1 = k | v_0, v_2, r) by enumerating hidden states vs the O(K F) closed form."""
    module = tiny_module()
    visible, r = CASE_B
    batch = CaseBatch.from_lists([visible], [r])
    with torch.no_grad():
        got = module.log_proba_pairs(module.hidden_input(batch), torch.tensor([1]))[0].exp()
        joint = torch.stack([brute_log_unnormalised(module, {**visible, 1: k}, r) for k in range(K)])
    expected = torch.softmax(joint, 0)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    # the grid form agrees with the pair form
    with torch.no_grad():
        grid = module.log_proba_grid(module.hidden_input(batch), torch.arange(N_UNITS))[0, 1].exp()
    torch.testing.assert_close(grid, expected, atol=1e-12, rtol=0)


def _exact_gradient(module: CRBMModule, visible: dict[int, int], r: list[int]) -> dict[str, torch.Tensor]:
    """d log p(v) / d theta through the brute-force enumeration (autograd)."""
    module.zero_grad()
    log_p = brute_log_unnormalised(module, visible, r) - brute_log_z(module, sorted(visible), r)
    log_p.backward()
    return {name: p.grad.clone() for name, p in module.named_parameters()}


def test_exact_log_likelihood_gradient_matches_enumeration():
    module = tiny_module()
    expected = _exact_gradient(module, *CASE_A)
    module.zero_grad()
    module.exact_log_likelihood(CaseBatch.from_lists([CASE_A[0]], [CASE_A[1]])).sum().backward()
    for name, p in module.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], atol=1e-10, rtol=0)


def _cd_error(module: CRBMModule, k: int, exact: dict[str, torch.Tensor], n: int, seed: int,
              mean_field: bool = False) -> float:
    batch = CaseBatch.from_lists([CASE_A[0]] * n, [CASE_A[1]] * n)
    with torch.no_grad():
        grads, _, _ = module.cd_gradients(batch, k, torch.Generator().manual_seed(seed), mean_field=mean_field)
    return max(float((grads[name] / n - exact[name]).abs().max()) for name in exact)


def test_cd_k_approaches_the_exact_gradient_as_k_grows():
    """Statistical (seeded): CD-1 is badly biased on a slowly mixing model, CD-30 is not."""
    module = tiny_module(seed=3, scale=2.0)
    exact = _exact_gradient(module, *CASE_A)
    errors = {k: _cd_error(module, k, exact, n=10_000, seed=7) for k in (1, 3, 30)}
    # 10,000 chains: the Monte Carlo error of each entry is <= 0.5 / sqrt(10000) = 0.005 (1 sd)
    assert errors[30] < 0.03
    assert errors[1] > errors[3] > errors[30]
    assert errors[1] > 10 * errors[30]
    # the mean-field negative phase trades a small bias for less noise
    assert _cd_error(module, 30, exact, n=10_000, seed=7, mean_field=True) < errors[1] / 5


def test_unrated_units_do_not_change_the_energy():
    module = tiny_module()
    batch = CaseBatch.from_lists([CASE_B[0]], [[0, 2]])  # unit 1 neither rated nor in r
    before = module.free_energy(batch).detach()
    with torch.no_grad():
        module.W[1] += 100.0
        module.b[1] -= 50.0
        module.D[1] += 7.0
    torch.testing.assert_close(module.free_energy(batch).detach(), before, atol=0, rtol=0)


def test_conditional_term_only_shifts_hidden_biases():
    """A conditional RBM with r equals a plain one whose hidden biases are c + sum_{i in r} D[i]."""
    cond = tiny_module(conditional=True)
    plain = tiny_module(conditional=False)
    visible, r = CASE_B
    with torch.no_grad():
        plain.W.copy_(cond.W)
        plain.b.copy_(cond.b)
        plain.c.copy_(cond.c + cond.D[r].sum(0))
    with_r = CaseBatch.from_lists([visible], [r])
    without_r = CaseBatch.from_lists([visible], [[]])
    with torch.no_grad():
        torch.testing.assert_close(cond.free_energy(with_r), plain.free_energy(without_r), atol=1e-12, rtol=0)
        torch.testing.assert_close(cond.hidden_input(with_r), plain.hidden_input(without_r), atol=1e-12, rtol=0)
        # p(v | h) does not involve D at all
        h = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
        torch.testing.assert_close(cond.visible_logits(h, with_r), plain.visible_logits(h, without_r),
                                   atol=0, rtol=0)


def test_ranges_and_csr_lookup():
    np.testing.assert_array_equal(ranges(np.array([2, 5, 5]), np.array([4, 5, 8])), [2, 3, 5, 6, 7])
    m = sp.csr_matrix(np.array([[0, 3, 0], [1, 0, 2]]))
    got = csr_lookup(m.indptr, m.indices, m.data, np.array([0, 0, 1, 1]), np.array([1, 2, 0, 2]))
    np.testing.assert_array_equal(got, [3, -1, 1, 2])


def test_case_data_batch():
    levels = sp.csr_matrix(np.array([[0, 3, 1], [2, 0, 0], [0, 0, 0]], dtype=np.float32))
    data = CaseData.from_csr(levels, None)
    batch = data.batch(np.array([1, 0]))
    assert batch.case_of.tolist() == [0, 1, 1]
    assert batch.units.tolist() == [0, 1, 2]
    assert batch.levels.tolist() == [1, 2, 0]
    assert batch.r_units.tolist() == [0, 1, 2]


# ------------------------------------------------------------------------ the wrapper


def two_taste_ratings(n_users: int = 60, n_items: int = 30, density: float = 0.6, seed: int = 0
                      ) -> sp.csr_matrix:
    """Users and items of two kinds: 4-5 stars when the kinds match, 1-2 when they do not."""
    rng = np.random.default_rng(seed)
    user_kind = np.arange(n_users) % 2
    item_kind = np.arange(n_items) % 2
    match = user_kind[:, None] == item_kind[None, :]
    stars = np.where(match, rng.integers(4, 6, (n_users, n_items)), rng.integers(1, 3, (n_users, n_items)))
    mask = rng.random((n_users, n_items)) < density
    return sp.csr_matrix(np.where(mask, stars, 0).astype(np.float32))


def trained_cases(model: CRBM) -> sp.csr_matrix:
    """The ratings a fitted model trained on, cases x units (validation share excluded)."""
    data = model.data
    return sp.csr_matrix((model.levels[data.levels].astype(np.float32), data.indices, data.indptr),
                         shape=(data.n_cases, data.n_units))


SMALL = dict(n_hidden=8, epochs=15, batch_size=8, lr=0.05, cd_schedule=((1, 1), (8, 3)),
             levels=(1, 2, 3, 4, 5), val_fraction=0.1, patience=50)


@pytest.fixture(scope="module")
def ratings() -> sp.csr_matrix:
    return two_taste_ratings()


@pytest.fixture(scope="module", params=["item", "user"])
def fitted(request, ratings) -> CRBM:
    return CRBM(orientation=request.param, **SMALL).fit(ratings, show_progress=False)


def test_learns_the_two_tastes(fitted, ratings):
    hist = fitted.history.epochs
    assert {"val_rmse", "val_mae", "train_rmse", "recon_error", "fe_train", "fe_val", "fe_gap",
            "lr", "cd_k"} <= set(hist[-1])
    assert hist[-1]["cd_k"] == 3.0 and hist[0]["cd_k"] == 1.0
    assert min(e["val_rmse"] for e in hist) < 0.8  # the global mean scores ~1.6 here
    users, items = np.nonzero(np.ones((6, 30)))
    pred = fitted.predict(users, items)
    match = (users % 2) == (items % 2)
    assert pred[match].mean() > 3.5 > pred[~match].mean()
    mode = fitted.predict(users, items, kind="mode")
    assert set(np.unique(mode)) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_predict_proba_is_a_distribution_and_score_matches_predict(fitted):
    users = np.array([0, 1, 2, 3])
    proba = fitted.predict_proba(np.repeat(users, 30), np.tile(np.arange(30), 4))
    assert proba.shape == (120, 5)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-12)
    scores = fitted.score(users)
    assert scores.shape == (4, 30) and scores.dtype == np.float32
    # rated and unrated pairs alike: score is the expected rating predict() returns
    np.testing.assert_allclose(scores.ravel(), proba @ np.arange(1, 6), atol=1e-4)
    # batch == one user at a time
    np.testing.assert_allclose(fitted.score(users)[2], fitted.score([2])[0], rtol=1e-6)


@pytest.mark.parametrize("options", [{"persistent": True}, {"mean_field": True, "ema": 0.9},
                                     {"conditional": False}])
def test_training_variants_learn(ratings, options):
    model = CRBM(orientation="item", **{**SMALL, **options}).fit(ratings, show_progress=False)
    assert min(e["val_rmse"] for e in model.history.epochs) < 0.8
    assert (model.module.D is None) == (options.get("conditional") is False)


def test_recommend_filters_seen(fitted, ratings):
    ids, scores = fitted.recommend(np.arange(10), ratings, k=5)
    assert ids.shape == (10, 5)
    for u in range(10):
        assert not set(ids[u][ids[u] >= 0]) & set(ratings[u].indices)
        assert np.all(np.diff(scores[u][ids[u] >= 0]) <= 0)


def test_p_at_least_score(ratings):
    model = CRBM(orientation="item", score_type="p_at_least", score_threshold=4, **SMALL)
    model.fit(ratings, show_progress=False)
    scores = model.score([0, 1])
    proba = model.predict_proba_all([0, 1])
    np.testing.assert_allclose(scores, proba[:, :, 3:].sum(2), atol=1e-6)
    assert np.all((scores >= 0) & (scores <= 1 + 1e-6))


def test_free_energy_flags_anomalous_ratings(fitted, ratings):
    """Each case's real ratings have lower free energy than the same values shuffled."""
    cases = ratings if fitted.config.orientation == "user" else sp.csr_matrix(ratings.T)
    ids = np.arange(cases.shape[0])
    # default V: the case's training ratings (the validation share was carved out)
    np.testing.assert_allclose(fitted.free_energy(ids), fitted.free_energy(ids, trained_cases(fitted)),
                               rtol=1e-6)
    normal = fitted.free_energy(ids, cases)
    # the same values shuffled within each case: no longer one consistent taste
    rng = np.random.default_rng(0)
    shuffled = cases.copy()
    for row in range(cases.shape[0]):
        lo, hi = cases.indptr[row], cases.indptr[row + 1]
        shuffled.data[lo:hi] = rng.permutation(cases.data[lo:hi])
    assert np.mean(fitted.free_energy(ids, shuffled) > normal) > 0.9


def test_same_seed_same_model_different_seed_different(ratings):
    a = CRBM(orientation="item", **SMALL).fit(ratings, show_progress=False)
    b = CRBM(orientation="item", **SMALL).fit(ratings, show_progress=False)
    c = CRBM(orientation="item", **{**SMALL, "seed": 1}).fit(ratings, show_progress=False)
    for name, tensor in a.module.state_dict().items():
        assert torch.equal(tensor, b.module.state_dict()[name]), name
    assert not torch.equal(a.module.W, c.module.W)
    np.testing.assert_array_equal(a.score([0, 5]), b.score([0, 5]))


def test_save_load_round_trip(fitted, tmp_path):
    fitted.save(tmp_path / "model")
    loaded = CRBM.load(tmp_path / "model")
    users, items = np.array([0, 3, 7, 7]), np.array([1, 4, 9, 2])
    np.testing.assert_array_equal(loaded.predict(users, items), fitted.predict(users, items))
    np.testing.assert_array_equal(loaded.score([0, 1, 2]), fitted.score([0, 1, 2]))
    np.testing.assert_array_equal(loaded.free_energy([0, 1]), fitted.free_energy([0, 1]))
    assert loaded.config == fitted.config


def test_conditional_with_queries(ratings):
    """include_queries: asked pairs join r, so predictions depend on what is asked together."""
    model = CRBM(orientation="user", include_queries=True, **SMALL)
    implicit = sp.csr_matrix(np.eye(60, 30, dtype=np.float32))
    model.fit(ratings, implicit=implicit, show_progress=False)
    assert model.uses_query_pattern
    unrated = np.setdiff1d(np.arange(1, 30), ratings[0].indices)[:3]  # item 0 is in implicit
    alone = model.predict([0], unrated[:1])
    together = model.predict([0, 0, 0], unrated)
    assert alone.shape == (1,) and together.shape == (3,)
    assert abs(alone[0] - together[0]) > 1e-6  # the other two asked items joined user 0's r
    # an asked pair already in r (from implicit) changes nothing
    np.testing.assert_allclose(model.predict([0, 0], [unrated[0], 0])[:1], alone, rtol=1e-9)
    plain = CRBM(orientation="user", conditional=False, **SMALL).fit(ratings, show_progress=False)
    assert not plain.uses_query_pattern and plain.module.D is None


@pytest.mark.parametrize("orientation", ["user", "item"])
def test_users_unseen_in_training_are_served_from_their_ratings(orientation):
    full = two_taste_ratings(n_users=80, seed=1)
    train, new = full[:60], full[60:]
    model = CRBM(orientation=orientation, **SMALL).fit(train, show_progress=False)
    # give each new user half of their ratings, predict the other half
    given, hidden = new.copy().tolil(), new.copy().tolil()
    for u in range(new.shape[0]):
        cols = new[u].indices
        given[u, cols[len(cols) // 2:]] = 0
        hidden[u, cols[:len(cols) // 2]] = 0
    given, hidden = sp.csr_matrix(given), sp.csr_matrix(hidden)
    given.eliminate_zeros()
    hidden.eliminate_zeros()
    scores = model.score(np.arange(60, 80), given)
    rows, cols = hidden.nonzero()
    err = np.sqrt(np.mean((scores[rows, cols] - hidden.data) ** 2))
    baseline = np.sqrt(np.mean((hidden.data - train.data.mean()) ** 2))
    assert err < 0.6 * baseline
    if orientation == "user":  # folding in a trained user's own ratings changes nothing
        own = trained_cases(model)[:2]
        np.testing.assert_allclose(model.score([0, 1], own), model.score([0, 1]), atol=1e-5)


def test_stored_zeros_and_duplicates_leave_the_input_alone():
    # duplicates are summed and stored zeros dropped on a copy: the caller's matrix is unchanged
    values = np.array([1, 2, 3, 0, 4, 5, 1], dtype=np.float32)
    given = sp.csr_matrix((values, np.array([0, 1, 0, 3, 1, 2, 0]), np.array([0, 4, 7])), shape=(2, 4))
    before = [a.copy() for a in (given.indptr, given.indices, given.data)]
    model = CRBM(**{**SMALL, "val_fraction": 0.0, "epochs": 2}).fit(given, show_progress=False)
    for a, b in zip(before, (given.indptr, given.indices, given.data), strict=True):
        np.testing.assert_array_equal(a, b)
    clean = sp.csr_matrix(np.array([[4, 2, 0, 0], [1, 4, 5, 0]], dtype=np.float32))
    again = CRBM(**{**SMALL, "val_fraction": 0.0, "epochs": 2}).fit(clean, show_progress=False)
    np.testing.assert_array_equal(model.score([0, 1]), again.score([0, 1]))


def test_too_few_ratings_to_carve_a_validation_split_train_without_one():
    # 0.05 of 7 ratings is none: no early stopping, every epoch runs
    few = sp.csr_matrix(np.array([[1, 2, 0], [2, 1, 1], [0, 1, 2]], dtype=np.float32))
    model = CRBM(n_hidden=2, epochs=3, val_fraction=0.05).fit(few, show_progress=False)
    assert len(model.history.epochs) == 3 and "val_rmse" not in model.history.epochs[-1]
    assert model.data.levels.size == few.nnz


def test_bad_input_raises_clear_errors(ratings, fitted):
    with pytest.raises(ValueError, match="scipy.sparse"):
        CRBM(**SMALL).fit([[1, 2], [3, 4]], show_progress=False)
    with pytest.raises(ValueError, match="not one of the model's levels"):
        CRBM(**SMALL).fit(sp.csr_matrix(np.array([[1.0, 3.5]])), show_progress=False)
    with pytest.raises(ValueError, match="zero or negative"):
        CRBM(**SMALL).fit(sp.csr_matrix(np.array([[1.0, -2.0]])), show_progress=False)
    with pytest.raises(ValueError, match="no ratings"):
        CRBM(**SMALL).fit(sp.csr_matrix((3, 4), dtype=np.float32), show_progress=False)
    with pytest.raises(ValueError, match="at least 2 rating levels"):
        CRBM(n_hidden=4).fit(sp.csr_matrix(np.ones((3, 4), np.float32)), show_progress=False)
    with pytest.raises(ValueError, match="NaN"):
        CRBM(**SMALL).fit(sp.csr_matrix(np.array([[1.0, np.nan]])), show_progress=False)
    with pytest.raises(ValueError, match="rows"):
        CRBM(**SMALL).fit(ratings, validation=ratings[:5], show_progress=False)
    with pytest.raises(ValueError, match="orientation"):
        CRBMConfig(orientation="both")
    with pytest.raises(ValueError, match="cd_schedule"):
        CRBMConfig(cd_schedule=((2, 1),))
    with pytest.raises(ValueError, match="unknown option"):
        CRBMConfig.from_dict({"hidden": 10})
    with pytest.raises(ValueError, match="must align"):
        fitted.predict([0, 1], [0])
    with pytest.raises(IndexError, match="user id 999"):
        fitted.predict([999], [0])
    with pytest.raises(IndexError, match="item id 30"):
        fitted.predict([0], [30])
    with pytest.raises(ValueError, match="columns"):
        fitted.score([0], sp.csr_matrix((1, 7), dtype=np.float32))
    with pytest.raises(RuntimeError, match="not fitted"):
        CRBM().score([0])


def test_fit_uses_its_thread_setting_and_restores_the_callers(ratings):
    seen = []
    torch.set_num_threads(2)
    try:
        CRBM(num_threads=1, **{**SMALL, "epochs": 2}).fit(
            ratings, callback=lambda epoch, m: seen.append(torch.get_num_threads()), show_progress=False)
        assert seen == [1, 1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_pipeline_file_holds_the_defaults():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "pipelines" / "crbm.toml"
    assert CRBMConfig.from_toml(path, "model") == CRBMConfig()


def test_config_from_toml_lists(tmp_path):
    path = tmp_path / "crbm.toml"
    path.write_text("[model]\ncd_schedule = [[1, 1], [10, 3]]\nlevels = [1, 2, 3]\nlr = 1\n")
    cfg = CRBMConfig.from_toml(path, "model")
    assert cfg.cd_schedule == ((1, 1), (10, 3)) and cfg.levels == (1.0, 2.0, 3.0) and cfg.lr == 1.0
    assert [cfg.cd_k(e) for e in (1, 9, 10, 50)] == [1, 1, 3, 3]
    assert CRBMConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.slow
def test_end_to_end_ml100k_u1(movielens_dir):
    """A few epochs of the item-based conditional RBM on the official u1 fold beat 1.0 RMSE."""
    from recsys_ebm.experiments.rating_data import evaluate_rating_folds

    config = CRBMConfig(epochs=8, lr=0.01, mean_field=True, momentum_epochs=0, cd_schedule=((1, 1),))
    result = evaluate_rating_folds(lambda: CRBM(config), "100k", movielens_dir, folds=[1],
                                   download=False)
    fold = result["folds"][0]
    assert fold["n_test"] == 20_000 and fold["n_fallback"] == 32
    assert 0.85 < result["rmse"] < 1.0
    assert result["mae"] < 0.8


def test_a_rating_off_the_inferred_scale_is_refused_naming_it():
    dense = np.array([[1, 2, 0, 5], [3, 4, 5, 0], [0, 1, 2, 1e30]], dtype=np.float32)
    with pytest.raises(ValueError, match=r"1e\+30 \(user row 2\) is off the scale from 1 in steps of 1"):
        CRBM(n_hidden=2, epochs=1, val_fraction=0.0).fit(sp.csr_matrix(dense), show_progress=False)
    # half stars with some levels absent are still a scale; the levels are the values present
    halves = sp.csr_matrix(np.array([[0.5, 1.0, 0, 5], [3, 4.5, 5, 0], [0, 1, 2, 1]], np.float32))
    model = CRBM(n_hidden=2, epochs=1, val_fraction=0.0).fit(halves, show_progress=False)
    assert model.levels.tolist() == [0.5, 1.0, 2.0, 3.0, 4.5, 5.0]
    with pytest.raises(ValueError, match=r"is off the scale from 1 in steps of 0.3"):
        CRBM(n_hidden=2, epochs=1, val_fraction=0.0).fit(
            sp.csr_matrix(np.array([[1, 2, 0], [2.3, 3, 1]], np.float32)), show_progress=False)
