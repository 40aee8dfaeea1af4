"""Groups and taste mixes on fitted models: a group of one is the user, the vector shortcut is
the composed product of experts, λ = 0 / 1 are each user's own list, the pseudo-user of
identical members is the member, the group's seen set is the members' union, and sampling is
seeded and draws from p_g (chi-square); then the CLI and the groups command end to end."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import chisquare

from recsys_ebm.cli import main
from recsys_ebm.experiments.groups import vector_gap
from recsys_ebm.models import EASE, DotEBM
from recsys_ebm.models.group import recommend_groups, union_rows
from recsys_ebm.ranking.compose import SCORE_STRATEGIES, compose_scores
from recsys_ebm.ranking.sampling import softmax_probabilities
from recsys_ebm.ranking.topk import top_k


def _interactions(n_users: int = 40, n_items: int = 30, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < 0.25).astype(np.float32)
    dense[:, 0] = 0  # an item nobody has: never in a seen set
    dense[1] = dense[0]  # users 0 and 1 have identical histories
    return sp.csr_matrix(dense)


@pytest.fixture(scope="module")
def data() -> sp.csr_matrix:
    return _interactions()


@pytest.fixture(scope="module")
def models(data):
    ease = EASE(l2=5.0).fit(data, show_progress=False)
    dpebm = DotEBM(dim=8, epochs=5, patience=5, batch_size=16, fold_in_epochs=30).fit(data, show_progress=False)
    return {"ease": ease, "dpebm": dpebm}


@pytest.mark.parametrize("name", ["ease", "dpebm"])
def test_a_group_of_one_is_the_user(models, name):
    model = models[name]
    for user in (3, 7):
        ids, scores = model.recommend([user], k=6)
        for strategy in SCORE_STRATEGIES:
            got, _ = model.recommend_group([user], 6, strategy=strategy)
            assert got.tolist() == ids[0].tolist(), strategy
        got, got_scores = model.recommend_group([user], 6)
        np.testing.assert_allclose(got_scores, scores[0], rtol=1e-5)
        sampled = model.recommend([user], k=6, temperature=0.7, rng=3)[0][0]
        assert model.recommend_group([user], 6, temperature=0.7, rng=3)[0].tolist() == sampled.tolist()


def test_the_vector_shortcut_is_the_composed_product_of_experts(models, data):
    model = models["dpebm"]
    groups = [np.array([2, 5, 9]), np.array([4, 11]), np.array([6, 8, 12, 20])]
    weights = [[1, 1, 1], [0.2, 0.8], [1, 2, 3, 4]]
    ids, scores = recommend_groups(model, groups, 8, weights=weights)
    seen = union_rows(groups, model.seen_items).toarray() > 0
    for g, (members, w) in enumerate(zip(groups, weights, strict=True)):
        rows = model.score(members).copy()
        rows[:, seen[g]] = -np.inf
        composed = compose_scores(rows, "poe", w)
        expected_ids, expected = top_k(composed[None], 8)
        assert ids[g].tolist() == expected_ids[0].tolist()
        np.testing.assert_allclose(scores[g], expected[0], rtol=1e-5, atol=1e-5)


def test_mix_endpoints_are_each_users_own_list(models):
    for model in models.values():
        u, v = 3, 10
        assert model.recommend_mix([u, v], 0.0, 7)[0].tolist() == model.recommend([u], k=7)[0][0].tolist()
        assert model.recommend_mix([u, v], 1.0, 7)[0].tolist() == model.recommend([v], k=7)[0][0].tolist()
        # weights (1 - λ, λ) and λ are the same request
        a = model.recommend_mix([u, v], 0.3, 7)
        b = model.recommend_group([u, v], 7, weights=[0.7, 0.3])
        assert a[0].tolist() == b[0].tolist()


def test_dpebm_energy_interpolation_is_user_vector_interpolation(models):
    model = models["dpebm"]
    pair = np.array([3, 10])
    for lam in (0.0, 0.25, 0.5, 0.9, 1.0):
        assert vector_gap(model, pair, lam) < 1e-5
    # and the mix's list is the list of the interpolated vector through the factored kernel
    from recsys_ebm.ranking.factored import rank_vectors

    p = 0.6 * model.user_vectors(pair[:1]) + 0.4 * model.user_vectors(pair[1:])
    exclude = union_rows([pair], model.seen_items)
    ids, _, _ = rank_vectors(p, model.item_vectors(), model.item_biases(), 9, exclude=exclude)
    assert model.recommend_mix(pair, 0.4, 9)[0].tolist() == ids[0].tolist()


def test_the_pseudo_user_of_identical_members_is_the_member(models, data):
    ease, dpebm = models["ease"], models["dpebm"]
    ids, scores = ease.recommend_group([0, 1], 8, strategy="pseudo-user")
    expected_ids, expected = ease.recommend([0], k=8)
    assert ids.tolist() == expected_ids[0].tolist()
    np.testing.assert_allclose(scores, expected[0], rtol=1e-5)
    # the dpebm folds the union in as a new user: the member's own history folded in
    ids, _ = dpebm.recommend_group([0, 1], 8, strategy="pseudo-user")
    folded, _ = dpebm.recommend([0], data[[0]], k=8, fold_in=True)
    assert ids.tolist() == folded[0].tolist()


def test_the_group_seen_set_is_the_union_of_the_members(models, data):
    model = models["ease"]
    members = [4, 9, 13]
    union = set(np.flatnonzero(data[members].toarray().sum(0) > 0).tolist())
    for strategy in ("poe", "borda", "pseudo-user"):
        ids, _ = model.recommend_group(members, 10, strategy=strategy)
        assert not set(ids[ids >= 0].tolist()) & union, strategy
    ids, _ = model.recommend_group(members, 25, filter_seen=False)
    assert set(ids.tolist()) & union


@pytest.mark.parametrize("strategy", ["poe", "average"])  # the vector path and the composed one
def test_group_sampling_is_seeded_and_draws_from_p_g(models, strategy):
    model, members, t = models["dpebm"], [2, 5, 9], 0.5
    a = model.recommend_group(members, 5, strategy=strategy, temperature=t, rng=11)
    b = model.recommend_group(list(reversed(members)), 5, strategy=strategy, temperature=t, rng=11)
    assert a[0].tolist() == b[0].tolist()  # the key depends on the members, not their order
    rows = model.score(np.array(members)).copy()
    rows[:, union_rows([np.array(members)], model.seen_items).toarray()[0] > 0] = -np.inf
    p_g = softmax_probabilities(compose_scores(rows, strategy, temperature=t)[None], t)[0]
    n = 1000
    first = np.array([model.recommend_group(members, 1, strategy=strategy, temperature=t, rng=s)[0][0]
                      for s in range(n)])
    eligible = p_g > 0
    assert np.all(eligible[first])
    observed = np.bincount(first, minlength=p_g.size)[eligible]
    assert chisquare(observed, p_g[eligible] * n).pvalue > 1e-3
    # the wrong distribution (the first member alone) is rejected
    alone = softmax_probabilities(rows[:1], t)[0][eligible]
    assert chisquare(observed, alone / alone.sum() * n).pvalue < 1e-6


def test_group_errors_name_the_problem(models):
    model = models["ease"]
    with pytest.raises(IndexError, match="user id 99"):
        model.recommend_group([1, 99])
    with pytest.raises(ValueError, match="twice"):
        model.recommend_group([1, 1])
    with pytest.raises(ValueError, match="unknown group strategy"):
        model.recommend_group([1, 2], strategy="dictator")
    with pytest.raises(ValueError, match="weights"):
        model.recommend_group([1, 2], weights=[1, 2, 3])


# ----------------------------------------------------------------------------- the CLI
def _run(argv: list[str]) -> tuple[int, str]:
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = main([*argv, "--quiet"])
    return code, buffer.getvalue()


@pytest.fixture(scope="module")
def ratings_file(tmp_path_factory, movielens_dir):
    frame = pd.read_csv(movielens_dir / "ml-100k" / "u.data", sep="\t",
                        names=["user_id", "item_id", "rating", "timestamp"])
    path = tmp_path_factory.mktemp("data") / "ratings.csv"
    frame[frame.user_id <= 150].to_csv(path, index=False)
    return path


def test_recommend_cli_serves_groups_and_mixes(tmp_path, ratings_file):
    from recsys_ebm.experiments.jobs import saved_id_maps
    from recsys_ebm.models import load_model

    out = tmp_path / "ease"
    assert _run(["train", "--dataset", str(ratings_file), "--model", "ease", "--output-dir", str(out),
                 "--no-mlflow"])[0] == 0
    model = load_model(out)
    user_map, item_map = saved_id_maps(model, out)
    members = user_map.to_index(np.array([1, 5, 42]))
    for strategy in ("poe", "borda", "pseudo-user"):
        code, text = _run(["recommend", "--model-path", str(out), "--group", "1,5,42", "--strategy", strategy])
        assert code == 0
        ids, _ = model.recommend_group(members, 10, strategy=strategy)
        listed = [int(entry.split(" (")[0]) for entry in text.split(": ", 1)[1].split(", ")]
        assert listed == item_map.to_raw(ids).tolist()
        assert text.startswith(f"group 1,5,42 ({strategy}):")
    code, text = _run(["recommend", "--model-path", str(out), "--user", "1", "--user", "5", "--mix", "0.3",
                       "--temperature", "0.5", "--seed", "4"])
    ids, _ = model.recommend_mix(members[:2], 0.3, 10, temperature=0.5, rng=4)
    assert code == 0 and [int(e.split(" (")[0]) for e in text.split(": ", 1)[1].split(", ")] == \
        item_map.to_raw(ids).tolist()
    assert _run(["recommend", "--model-path", str(out), "--user", "1", "--mix", "0.3"])[0] == 2
    assert _run(["recommend", "--model-path", str(out), "--user", "1", "--mix", "1.5", "--user", "5"])[0] == 2
    assert _run(["recommend", "--model-path", str(out), "--group", "1,999999"])[0] == 2


def test_groups_command_writes_every_cell(tmp_path, ratings_file):
    path = tmp_path / "groups.json"
    code, text = _run(["groups", "--dataset", str(ratings_file), "--model", "ease", "--n-groups", "20",
                       "--sizes", "2,3", "--no-crbm-paths", "--json", str(path), "--markdown", str(tmp_path / "groups.md")])
    assert code == 0
    results = json.loads(path.read_text())["results"]
    keys = {"model", "strategy", "group_type", "size", "ndcg@10_mean", "ndcg@10_min", "zero_hit_share", "n_groups"}
    assert len(results) == 6 * 3 * 2 and all(keys <= set(row) for row in results)
    random = [r for r in results if r["group_type"] == "random"]
    assert all(r["n_groups"] == 20 for r in random)
    for row in results:
        if row["n_groups"]:
            assert 0 <= row["ndcg@10_min"] <= row["ndcg@10_mean"] <= 1 and 0 <= row["zero_hit_share"] <= 1
        if row["strategy"] == "poe" and row["n_groups"]:
            assert row["ndcg@10_mean_vs_poe"]["diff"] == 0
    markdown = (tmp_path / "groups.md").read_text()
    assert "## Target 1" in markdown and "## Groups found" in markdown


# ----------------------------------------------------------------------------- the CRBM's two paths
def test_crbm_energy_path_and_data_path_differ():
    from recsys_ebm.models import CRBM
    from recsys_ebm.models.crbm_paths import crbm_paths, soft_free_energy, visible_state

    rng = np.random.default_rng(5)
    dense = np.where(rng.random((30, 20)) < 0.5, rng.integers(1, 6, (30, 20)), 0).astype(np.float32)
    model = CRBM(orientation="user", n_hidden=8, epochs=3, patience=3, init_std=0.3,
                 val_fraction=0.1).fit(sp.csr_matrix(dense), show_progress=False)
    # the soft free energy reads the parameters as the model does: equal on one-hot states
    for user in (0, 4):
        np.testing.assert_allclose(soft_free_energy(model, *visible_state(model, user)),
                                   model.free_energy([user])[0], rtol=1e-5)
    lambdas = np.linspace(0, 1, 6)
    paths = crbm_paths(model, 2, 7, lambdas, k=5)
    data, mix = np.array(paths["free_energy_data"]), np.array(paths["free_energy_mix"])
    np.testing.assert_allclose(data[[0, -1]], mix[[0, -1]], rtol=1e-5)  # the same ends
    assert np.all(data[1:-1] > mix[1:-1] + 1e-6)  # F is concave in V: the data path lies above
    assert paths["max_log_p_gap"][0] < 1e-5 and paths["max_log_p_gap"][-1] < 1e-5
    assert max(paths["max_log_p_gap"][1:-1]) > 1e-3  # and the predictions differ in between
    with pytest.raises(ValueError, match="orientation='user'"):
        crbm_paths(CRBM(orientation="item", n_hidden=4, epochs=1).fit(sp.csr_matrix(dense), show_progress=False),
                   0, 1, lambdas)
