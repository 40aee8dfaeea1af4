"""Mult-VAE: the multinomial log-likelihood and the Gaussian KL against hand computations, the
ELBO against a numpy re-computation from the saved weights, the annealing schedule, seeds,
persistence, and its negative ELBO as a shilling detector beside the energies."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from test_attacks import synthetic_ratings

from recsys_ebm.anomaly.attacks import AttackConfig, inject
from recsys_ebm.anomaly.detectors import DETECTORS, VAE_DETECTORS, MultVAEDetector
from recsys_ebm.anomaly.protocol import (
    AnomalyConfig,
    CleanSetting,
    GridResult,
    evaluate_attack,
    split_users,
)
from recsys_ebm.anomaly.report import write_report
from recsys_ebm.anomaly.versus import ebm_vs_vae, tally
from recsys_ebm.models import MODELS, load_model
from recsys_ebm.models.dot_ebm import DotEBMConfig
from recsys_ebm.models.multvae import (
    MultVAE,
    MultVAEConfig,
    gaussian_kl,
    multinomial_log_likelihood,
)

TINY = MultVAEConfig(hidden=16, latent=4, dropout=0.2, total_anneal_steps=40, epochs=40,
                     batch_size=16, lr=0.01, seed=0)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def two_blocks(n_users: int = 40, n_items: int = 20, seed: int = 0) -> sp.csr_matrix:
    """Half the users pick 6 items of the first half of the catalog, the others of the second."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((n_users, n_items), np.float32)
    half = n_items // 2
    for u in range(n_users):
        block = (u % 2) * half
        dense[u, block + rng.choice(half, 6, replace=False)] = 1.0
    return sp.csr_matrix(dense)


@pytest.fixture(scope="module")
def fitted() -> MultVAE:
    return MultVAE(TINY).fit(two_blocks(), show_progress=False)


# ----------------------------------------------------------------------------- known answers
def test_multinomial_log_likelihood_hand_example():
    logits = torch.log(torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 2.0]]))  # pi = [1,2,3]/6, [1,1,2]/4
    x = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]])
    expected = [math.log(1 / 6) + 2 * math.log(1 / 2), math.log(1 / 4) + math.log(1 / 2)]
    np.testing.assert_allclose(multinomial_log_likelihood(logits, x).numpy(), expected, rtol=1e-6)
    # shifting the logits changes nothing (it is a softmax)
    np.testing.assert_allclose(multinomial_log_likelihood(logits + 7.0, x).numpy(), expected, rtol=1e-5)


def test_gaussian_kl_hand_example():
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    # 0.5 * sum(sigma^2 + mu^2 - 1 - log sigma^2): (1 + 1 - 1 - 0) + (2 + 0 - 1 - ln 2)
    expected = [0.5 * (1.0 + 1.0 - math.log(2.0)), 0.0]
    np.testing.assert_allclose(gaussian_kl(mu, logvar).numpy(), expected, rtol=1e-6, atol=1e-7)


def _numpy_elbo_at_mean(model: MultVAE, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-log-likelihood at z = mu and KL, recomputed in float64 numpy from the weights."""
    w = {k: v.detach().double().numpy() for k, v in model.module.state_dict().items()}

    def layer(name, h):
        return h @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    h = x / np.linalg.norm(x, axis=1, keepdims=True)
    out = layer("enc_out", np.tanh(layer("enc_hidden", h)))
    mu, logvar = out[:, :model.config.latent], out[:, model.config.latent:]
    logits = layer("dec_out", np.tanh(layer("dec_hidden", mu)))
    log_pi = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    kl = 0.5 * (np.exp(logvar) + mu**2 - 1 - logvar).sum(1)
    return -(x * log_pi).sum(1), kl


def test_elbo_and_scores_match_a_numpy_recomputation(fitted):
    train = two_blocks()
    x = train.toarray().astype(np.float64)
    neg_ll, kl = _numpy_elbo_at_mean(fitted, x)
    got_ll, got_kl = fitted.elbo_terms(train, samples=0)
    np.testing.assert_allclose(got_ll, neg_ll, rtol=1e-4)
    np.testing.assert_allclose(got_kl, kl, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fitted.negative_elbo(train, samples=0), neg_ll + kl, rtol=1e-4)
    # scores are log pi at the mean: a log-distribution over the catalog
    scores = fitted.score(np.arange(train.shape[0]))
    np.testing.assert_allclose(np.exp(scores.astype(np.float64)).sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(-(x * scores).sum(1), neg_ll, rtol=1e-4)
    # Monte Carlo samples of z: E_q[-log p(x | z)] >= its value at the mean is not guaranteed,
    # but many samples must agree with few up to sampling noise and be seeded
    mc = fitted.negative_elbo(train, samples=64, seed=3)
    np.testing.assert_array_equal(mc, fitted.negative_elbo(train, samples=64, seed=3))
    assert not np.array_equal(mc, fitted.negative_elbo(train, samples=64, seed=4))
    np.testing.assert_allclose(mc, neg_ll + kl, rtol=0.2)


def test_beta_is_annealed_linearly_to_beta_max():
    model = MultVAE(beta_max=0.3, total_anneal_steps=100)
    np.testing.assert_allclose([model.beta(u) for u in (0, 10, 30, 100, 1000)], [0, 0.1, 0.3, 0.3, 0.3])
    history = MultVAE(TINY).fit(two_blocks(), show_progress=False).history.epochs
    # 40 users in batches of 16: 3 updates per epoch, beta = min(0.2, 3 * epoch / 40)
    np.testing.assert_allclose([e["beta"] for e in history[:4]], [0.075, 0.15, 0.2, 0.2])
    assert all(e["train_kl"] > 0 for e in history)


def test_config_rejects_bad_options():
    for bad, message in [({"dropout": 1.0}, "dropout"), ({"beta_max": -0.1}, "beta_max"),
                         ({"total_anneal_steps": 0}, "total_anneal_steps"), ({"hidden": 2.5}, "hidden"),
                         ({"lr": float("inf")}, "lr")]:
        with pytest.raises(ValueError, match=message):
            MultVAEConfig(**bad)


# ----------------------------------------------------------------------------- seeds and files
def test_same_seed_same_model_and_load_round_trip(fitted, tmp_path):
    train = two_blocks()
    again = MultVAE(TINY).fit(train, show_progress=False)
    np.testing.assert_array_equal(again.negative_elbo(train, samples=4), fitted.negative_elbo(train, samples=4))
    other = MultVAE(TINY.replace(seed=1)).fit(train, show_progress=False)
    assert np.abs(other.score(np.arange(40)) - fitted.score(np.arange(40))).max() > 1e-3
    fitted.save(tmp_path / "vae")
    loaded = load_model(tmp_path / "vae")
    assert isinstance(loaded, MultVAE) and MODELS["multvae"] is MultVAE
    np.testing.assert_array_equal(loaded.score(np.arange(40)), fitted.score(np.arange(40)))
    np.testing.assert_array_equal(loaded.negative_elbo(train, samples=4), fitted.negative_elbo(train, samples=4))
    assert loaded.config == fitted.config


def test_early_stopping_restores_the_best_epoch():
    train, validation = two_blocks(seed=0), two_blocks(seed=1)
    validation = sp.csr_matrix(validation.multiply(train.toarray() == 0))
    model = MultVAE(TINY.replace(epochs=30, patience=5)).fit(train, validation=validation,
                                                              show_progress=False)
    best = model.history.best_epoch
    values = [e["val_ndcg@10"] for e in model.history.epochs]
    assert values[best - 1] == max(values)
    ids, _ = model.recommend(np.arange(40), train, k=10)
    from recsys_ebm.models.training import ranking_validator

    assert ranking_validator(lambda users: ids[users], validation)()["val_ndcg@10"] == pytest.approx(max(values))


# ----------------------------------------------------------------------------- the detector
def test_negative_elbo_ranks_an_odd_profile_above_genuine_ones():
    """Genuine users pick items of one block; a profile spread over both blocks is odd."""
    train = two_blocks(n_users=60, seed=0)
    detector = MultVAEDetector(TINY.replace(epochs=60)).fit(train)
    genuine = two_blocks(n_users=20, seed=5)
    odd = np.zeros((1, 20), np.float32)
    odd[0, [0, 3, 6, 11, 14, 17]] = 1.0  # three items of each block
    scores = detector.score(sp.vstack([genuine, sp.csr_matrix(odd)]).tocsr())
    assert scores[-1] > scores[:-1].max()
    # the registry's variants: per rated item, raw and the two-sided length test, family "vae"
    assert VAE_DETECTORS == ("multvae", "multvae_z", "multvae_raw")
    assert {DETECTORS[d].normalization for d in VAE_DETECTORS} == {"per_rating", "length_z_abs", "none"}


@pytest.fixture(scope="module")
def planted_cell():
    genuine = synthetic_ratings(n_users=300, n_items=200, seed=1)
    config = AnomalyConfig(detectors=("dpebm", "multvae", "multvae_z", "multvae_raw", "rdma", "pca"),
                           fpr=0.05, dpebm=DotEBMConfig(dim=16, epochs=40, lr=0.01, l2=1e-3,
                                                        fold_in_epochs=50, seed=0),
                           multvae={"hidden": 64, "latent": 16, "epochs": 30, "batch_size": 50,
                                    "total_anneal_steps": 60, "lr": 0.003})
    split = split_users(genuine.n_users, 0.2, 0.2, seed=0)
    clean = CleanSetting(genuine.rating_matrix, split, config)
    attack = inject(genuine, AttackConfig(kind="random", attack_size=0.1, filler_size=0.1, seed=0))
    return config, evaluate_attack(genuine, attack, config, split, clean)


def test_vae_detector_runs_in_both_settings_and_is_compared_with_the_energy(planted_cell, tmp_path):
    config, cell = planted_cell
    auc = {(o.setting, o.detector): o.metrics["auc"] for o in cell.outcomes}
    for setting in ("clean", "contaminated"):
        assert auc[(setting, "multvae")] > 0.9, auc
    table = pd.DataFrame(cell.rows())
    versus = ebm_vs_vae(table)
    assert len(versus) == 2 and set(versus["setting"]) == {"clean", "contaminated"}
    for row in versus.itertuples():
        assert row.ebm_auc == auc[(row.setting, "dpebm")]  # the only energy detector here
        assert row.vae_auc == max(auc[(row.setting, d)] for d in VAE_DETECTORS)
    table["attack_size"] = table["filler_size"] = 0.05  # pose as the headline cell
    histograms = {(o.setting, "random", o.detector): (o.scores, o.labels, o.metrics["threshold"])
                  for o in cell.outcomes}
    result = GridResult(table, pd.DataFrame(), histograms, config, {
        "n_users": 300, "n_items": 200, "n_ratings": 8434, "n_train": 180, "n_calibration": 60,
        "n_test": 60, "seconds": 1.0, "intent": "push", "seed": 0, "headline_seeds": [0]})
    text = write_report(result, tmp_path / "anomaly.md", tmp_path / "anomaly.png")
    assert "## Energy-based models vs the VAE, cell by cell" in text
    assert "dpebm vs multvae" in text


def test_ebm_vs_vae_hand_table():
    rows = []
    for setting, aucs in [("clean", {"dpebm": 0.99, "crbm": 0.80, "multvae": 0.90}),
                          ("contaminated", {"dpebm": 0.70, "crbm": 0.75, "multvae": 0.95}),
                          ("clean2", {"dpebm": 0.900, "multvae": 0.903, "multvae_raw": 0.5})]:
        rows += [{"setting": setting, "attack": "random", "attack_size": 0.05, "filler_size": 0.05,
                  "seed": 0, "detector": d, "auc": a} for d, a in aucs.items()]
    versus = ebm_vs_vae(pd.DataFrame(rows)).set_index("setting")
    assert versus.loc["clean", "winner"] == "EBM" and versus.loc["clean", "best_ebm"] == "dpebm"
    assert versus.loc["contaminated", "winner"] == "VAE" and versus.loc["contaminated", "best_ebm"] == "crbm"
    assert versus.loc["contaminated", "dpebm vs multvae"] == "VAE"
    assert versus.loc["clean2", "winner"] == "tie"  # 0.003 is within the margin
    assert versus.loc["contaminated", "difference"] == pytest.approx(0.75 - 0.95)
    assert tally(versus.reset_index())["clean"] == {"EBM": 1, "VAE": 0, "tie": 0}
    assert ebm_vs_vae(pd.DataFrame(rows).query("detector != 'multvae'").query(
        "detector != 'multvae_raw'")).empty


def test_cli_anomaly_headline_on_movielens(movielens_dir, tmp_path, caplog):
    """``recsys-ebm anomaly --headline``: the three headline attacks at 5% / 5% over attack
    seeds 0-2 on the real ML-100K, the VAE beside the energy, the report with the comparison."""
    import json

    from recsys_ebm.cli import main

    out = tmp_path / "headline.json"
    code = main(["anomaly", "--data-dir", str(movielens_dir), "--no-download", "--headline",
                 "--setting", "clean", "--detector", "dpebm", "--detector", "multvae",
                 "--set", "dpebm.epochs=3", "--set", "dpebm.dim=16", "--set", "dpebm.fold_in_epochs=20",
                 "--set", "multvae.epochs=3", "--set", "multvae.hidden=64", "--set", "multvae.latent=16",
                 "--report-dir", str(tmp_path), "--json", str(out), "--no-mlflow", "--quiet"])
    assert code == 0
    document = json.loads(out.read_text())
    cells = {(r["attack"], r["seed"]) for r in document["results"]}
    assert cells == {(a, s) for a in ("average", "random", "bandwagon") for s in (0, 1, 2)}
    assert {r["winner"] for r in document["ebm_vs_vae"]} <= {"EBM", "VAE", "tie"}
    assert len(document["ebm_vs_vae"]) == 9
    text = (tmp_path / "anomaly-headline.md").read_text()
    assert "## Energy-based models vs the VAE, cell by cell" in text
    assert (tmp_path / "anomaly-headline.png").is_file()
    assert main(["anomaly", "--data-dir", str(movielens_dir), "--grid", "--headline", "--no-mlflow"]) == 2
    assert "--grid and --headline are alternatives" in caplog.text
