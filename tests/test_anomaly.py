"""Anomaly detection: calibration against known answers, detectors against hand computations
and brute force, the planted-attack separation, the calibration set's purity, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from scipy.special import logsumexp, ndtr, ndtri
from test_attacks import synthetic_ratings

from recsys_ebm.anomaly import protocol
from recsys_ebm.anomaly.attacks import AttackConfig, inject
from recsys_ebm.anomaly.corruption import corrupt_profiles
from recsys_ebm.anomaly.detectors import (
    ENERGY_DETECTORS,
    CRBMDetector,
    DotEBMDetector,
    PCAVarSelectDetector,
    RDMADetector,
    user_zscores,
)
from recsys_ebm.anomaly.knn import ShiftMeter, knn_predict
from recsys_ebm.anomaly.protocol import (
    AnomalyConfig,
    CleanSetting,
    GridResult,
    evaluate_attack,
    evaluate_interactions,
    headline_comparison,
    split_users,
)
from recsys_ebm.anomaly.report import write_report
from recsys_ebm.anomaly.scoring import (
    LengthNormalizer,
    calibrate_threshold,
    detection_metrics,
    normalize,
    roc_auc,
)
from recsys_ebm.models.crbm import CRBMConfig
from recsys_ebm.models.dot_ebm import DotEBMConfig

SMALL = AnomalyConfig(
    detectors=("crbm", "crbm_raw", "crbm_per_rating", "dpebm", "rdma", "pca", "random"),
    fpr=0.05,  # 60 calibration users cannot calibrate 1% (conformal needs >= 99)
    crbm=CRBMConfig(orientation="user", n_hidden=20, epochs=5, val_fraction=0.0, seed=0),
    dpebm=DotEBMConfig(dim=16, epochs=40, lr=0.01, l2=1e-3, fold_in_epochs=50, seed=0),
)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # small models: extra intra-op threads only add OpenMP spin-waits on a shared machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def genuine():
    return synthetic_ratings(n_users=300, n_items=200, seed=1)


@pytest.fixture(scope="module")
def planted(genuine):
    """A 10% random attack with 10% filler, every SMALL detector in both settings."""
    split = split_users(genuine.n_users, 0.2, 0.2, seed=0)
    clean = CleanSetting(genuine.rating_matrix, split, SMALL)
    attack = inject(genuine, AttackConfig(kind="random", attack_size=0.1, filler_size=0.1, seed=0))
    cell = evaluate_attack(genuine, attack, SMALL, split, clean)
    return {"split": split, "clean": clean, "attack": attack, "cell": cell}


# ----------------------------------------------------------------------------- calibration


def test_conformal_threshold_hits_the_target_fpr_exactly_in_expectation():
    # n = 199, fpr = 0.01: t is the 198th of 199 scores, so P(new genuine > t) = 2/200 = 0.01
    # exactly; 1 - Phi(t) ~ Beta(2, 198) per draw (sd 0.0070), averaged over 4000 draws.
    rng = np.random.default_rng(0)
    draws = rng.standard_normal((4000, 199))
    thresholds = np.array([calibrate_threshold(row, 0.01) for row in draws])
    true_fpr = 1.0 - ndtr(thresholds)
    sd = math.sqrt(2 * 198 / (200**2 * 201)) / math.sqrt(len(draws))
    assert abs(true_fpr.mean() - 0.01) < 4 * sd  # an off-by-one rank gives 0.005 or 0.015


def test_calibrated_threshold_achieves_target_fpr_within_binomial_error():
    rng = np.random.default_rng(1)
    n_cal, n_test, fpr = 20_000, 200_000, 0.01
    threshold = calibrate_threshold(rng.standard_normal(n_cal), fpr)
    assert abs(threshold - ndtri(1 - fpr)) < 0.05  # 2.326
    achieved = float((rng.standard_normal(n_test) > threshold).mean())
    error = 3 * math.sqrt(fpr * (1 - fpr) * (1 / n_cal + 1 / n_test))
    assert abs(achieved - fpr) < error
    assert detection_metrics(np.r_[rng.standard_normal(n_test), [9.0]],
                             np.r_[np.zeros(n_test, bool), [True]], threshold)["fpr"] == pytest.approx(
        achieved, abs=error)


def test_calibration_edge_cases(caplog):
    assert calibrate_threshold(np.arange(50.0), 0.01) == math.inf  # 50 < 1/0.01 - 1
    assert "too few" in caplog.text
    assert calibrate_threshold(np.arange(1.0, 100.0), 0.01) == 99.0  # n = 99: the maximum
    with pytest.raises(ValueError, match="fpr"):
        calibrate_threshold(np.arange(10.0), 1.5)
    with pytest.raises(ValueError, match="NaN"):
        calibrate_threshold(np.array([0.0, np.nan]), 0.1)


# ----------------------------------------------------------------------------- metrics


def test_roc_auc_known_answers():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert roc_auc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0
    assert roc_auc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5
    assert math.isnan(roc_auc([1, 2], [0, 0]))


def test_detection_metrics_hand_example():
    scores = np.array([0.1, 0.2, 0.9, 0.95, 0.3, 0.8])
    labels = np.array([0, 0, 0, 1, 1, 1], dtype=bool)
    m = detection_metrics(scores, labels, threshold=0.5)  # flags 0.9 (FP), 0.95, 0.8 (TP)
    assert m["fpr"] == pytest.approx(1 / 3) and m["detection_rate"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3)
    assert m["auc"] == pytest.approx(7 / 9)
    assert detection_metrics(scores, labels, 5.0)["f1"] == 0.0


# ----------------------------------------------------------------------------- detectors


def test_rdma_hand_computation():
    #           item 0  1  2
    ratings = sp.csr_matrix(np.array([[5, 3, 0],
                                      [3, 0, 1],
                                      [1, 3, 0]], dtype=np.float32))
    rdma = RDMADetector().fit(ratings)
    # item means 3, 3, 1; counts 3, 2, 1
    expected = [(2 / 3 + 0 / 2) / 2, (0 / 3 + 0 / 1) / 2, (2 / 3 + 0 / 2) / 2]
    np.testing.assert_allclose(rdma.score(ratings, np.arange(3)), expected)
    # a new profile counts itself in n_i
    new = sp.csr_matrix(np.array([[1, 5, 5]], dtype=np.float32))
    np.testing.assert_allclose(rdma.score(new), [(2 / 4 + 2 / 3 + 4 / 2) / 3])


def test_user_zscores_and_pca_varselect_match_dense_eigendecomposition(genuine):
    np.testing.assert_allclose(user_zscores(sp.csr_matrix(np.array([[1.0, 0, 3.0]]))).toarray(),
                               [[-1.0, 0, 1.0]])
    ratings = genuine.rating_matrix
    z = user_zscores(ratings).toarray()
    values, vectors = np.linalg.eigh(z @ z.T)  # users x users covariance of the z-scores
    top = vectors[:, np.argsort(values)[::-1][:3]]
    expected = -(top**2).sum(1)
    pca = PCAVarSelectDetector(n_components=3).fit(ratings)
    np.testing.assert_allclose(pca.score(ratings, np.arange(ratings.shape[0])), expected, atol=1e-8)
    np.testing.assert_allclose(pca.score(ratings), expected, atol=1e-8)  # fold-in == in-sample


def test_dpebm_interaction_scores_are_minus_log_probabilities(genuine):
    ratings = genuine.rating_matrix
    detector = DotEBMDetector(DotEBMConfig(dim=8, epochs=3, fold_in_epochs=5)).fit(ratings)
    users = np.arange(5)
    nll = detector.interaction_scores(ratings[users], users)
    probs = detector.model.probabilities(users)
    rows = np.repeat(users, np.diff(nll.indptr))
    np.testing.assert_allclose(nll.data, -np.log(probs[rows, nll.indices]), rtol=1e-4)
    np.testing.assert_allclose(detector.score(ratings[users], users),
                               [nll.data[nll.indptr[u]:nll.indptr[u + 1]].mean() for u in users],
                               rtol=1e-6)


def test_crbm_interaction_scores_match_free_energy_differences(genuine):
    # -log p(v_q = r | rest) = F(V) + log sum_k exp(-F(V with v_q = k)), by the public free_energy
    ratings = genuine.rating_matrix
    detector = CRBMDetector(CRBMConfig(orientation="user", n_hidden=8, epochs=3,
                                       val_fraction=0.0)).fit(ratings)
    profiles = ratings[:3]
    scores = detector.interaction_scores(profiles)
    variants, owner = [], []
    for row in range(3):
        for pos in range(profiles.indptr[row], profiles.indptr[row + 1]):
            for level in range(1, 6):
                one = profiles[row].copy()
                one.data[pos - profiles.indptr[row]] = level
                variants.append(one)
                owner.append((pos, level))
    free = detector.model.free_energy(np.arange(len(variants)), sp.vstack(variants).tocsr())
    free = free.reshape(-1, 5)
    observed = np.rint(profiles.data).astype(int) - 1
    expected = free[np.arange(len(free)), observed] + logsumexp(-free, axis=1)
    np.testing.assert_allclose(scores.data, expected, rtol=1e-4, atol=1e-4)
    assert np.all(scores.data > 0)


def test_length_normalizer_removes_the_length_effect():
    rng = np.random.default_rng(0)
    n = rng.integers(20, 400, 2000)
    scores = 2.0 * n + rng.standard_normal(len(n)) * np.sqrt(n)  # mean and spread grow with n
    assert abs(np.corrcoef(scores, n)[0, 1]) > 0.9
    z = normalize(scores, n, "length_z", n_ref=1000)[1000:]
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.1
    assert abs(np.corrcoef(z, n[1000:])[0, 1]) < 0.1
    assert abs(np.corrcoef(np.abs(z), n[1000:])[0, 1]) < 0.1  # the spread is modelled too
    # the kernel smoother itself: a local z-score whose spread follows the data
    x = rng.uniform(0, 3, 3000)
    y = np.sin(x) + rng.standard_normal(3000) * (0.1 + 0.2 * x)
    local = LengthNormalizer.fit(y[:2000], np.exp(x[:2000]))(y[2000:], np.exp(x[2000:]))
    assert abs(local.mean()) < 0.1 and abs(local.std() - 1) < 0.1
    assert abs(np.corrcoef(np.abs(local), x[2000:])[0, 1]) < 0.1
    # an outlier for its length stands out after normalisation, not before
    high, low = 2.0 * 30 + 5 * np.sqrt(30), 2.0 * 30 - 5 * np.sqrt(30)
    both = normalize(np.r_[scores, high, low], np.r_[n, 30, 30], "length_z", n_ref=len(n))
    assert both[-2] > 4 and high < np.median(scores)
    assert normalize(np.r_[scores, low], np.r_[n, 30], "length_z_abs", n_ref=len(n))[-1] > 4
    np.testing.assert_allclose(normalize(np.array([10.0]), np.array([4]), "per_rating"), [2.5])
    with pytest.raises(ValueError, match="normalization"):
        normalize(np.zeros(1), np.ones(1), "log")


def test_length_z_calibration_keeps_the_target_fpr():
    # reference users are z-scored leave-one-out, so the threshold calibrated on them holds for
    # new genuine users: the average achieved FPR over 40 replicates matches the conformal 5%
    rng = np.random.default_rng(3)
    n_ref, n_new, reps = 400, 2000, 40
    achieved = []
    for _ in range(reps):
        n = rng.integers(20, 400, n_ref + n_new)
        scores = 2.0 * n + rng.standard_normal(len(n)) * np.sqrt(n)
        z = normalize(scores, n, "length_z_abs", n_ref=n_ref)
        threshold = calibrate_threshold(z[:n_ref], 0.05)
        achieved.append(float((z[n_ref:] > threshold).mean()))
    expected = math.floor(0.05 * (n_ref + 1)) / (n_ref + 1)
    # per replicate: the conformal threshold's Beta spread (0.011) and the binomial one (0.005)
    per_rep = math.sqrt(expected * (1 - expected) / (n_ref + 2) + expected * (1 - expected) / n_new)
    assert abs(np.mean(achieved) - expected) < 3 * per_rep / math.sqrt(reps)


# ----------------------------------------------------------------------------- planted attack


def test_random_detector_is_at_chance_and_energy_detectors_are_not(planted):
    cell = planted["cell"]
    auc = {(o.setting, o.detector): o.metrics["auc"] for o in cell.outcomes}
    n_pos = cell.n_fake
    for setting in ("clean", "contaminated"):
        labels = next(o.labels for o in cell.outcomes if o.setting == setting)
        n_neg = int((~labels).sum())
        null_sd = math.sqrt((n_pos + n_neg + 1) / (12 * n_pos * n_neg))  # AUC under H0
        assert abs(auc[(setting, "random")] - 0.5) < 4 * null_sd
        assert auc[(setting, "dpebm")] > 0.9
        assert auc[(setting, "dpebm")] > 0.5 + 6 * null_sd
    # a 5-epoch, 20-hidden CRBM: about 0.76 over model seeds (0.5 + 4 null sd is 0.76 too)
    assert auc[("clean", "crbm_per_rating")] > 0.7


def test_injected_users_are_never_in_the_calibration_set(planted, genuine):
    cell, attack, split = planted["cell"], planted["attack"], planted["split"]
    # the rows each setting's thresholds were actually calibrated on
    assert set(cell.calibration_users) == {"clean", "contaminated"}
    for calibrated in cell.calibration_users.values():
        assert not set(calibrated) & set(attack.fake_users)
        assert np.all(calibrated < genuine.n_users)
        np.testing.assert_array_equal(calibrated, split.calibration)
    parts = [split.train, split.calibration, split.test]
    assert sum(map(len, parts)) == genuine.n_users
    assert len(np.unique(np.concatenate(parts))) == genuine.n_users
    # test users + injected = everyone scored beside the calibration users
    clean = [o for o in cell.outcomes if o.setting == "clean"]
    assert all(len(o.labels) == len(split.test) + cell.n_fake for o in clean)
    contaminated = [o for o in cell.outcomes if o.setting == "contaminated"]
    assert all(len(o.labels) == genuine.n_users - len(split.calibration) + cell.n_fake
               for o in contaminated)
    with pytest.raises(RuntimeError, match="calibration"):
        protocol._judge("clean", {"rdma": np.zeros(4)}, np.ones(4, int), np.arange(4),
                       np.array([True, False, False, True]), 2,
                       AnomalyConfig(detectors=("rdma",)), None)


def test_filtering_detected_profiles_undoes_the_prediction_shift(planted, genuine):
    cell, attack = planted["cell"], planted["attack"]
    assert cell.shift_attacked > 0.2  # a push attack raises the target's predictions
    meter = ShiftMeter(genuine.rating_matrix, attack.interactions.rating_matrix, attack.targets,
                       20, (1.0, 5.0))
    assert meter.shift(attack.fake_users) == pytest.approx(0.0, abs=1e-12)
    dpebm = next(o for o in cell.outcomes if o.setting == "clean" and o.detector == "dpebm")
    assert abs(dpebm.metrics["shift_filtered"]) < 0.5 * cell.shift_attacked


def test_knn_predict_hand_example():
    pool = sp.csr_matrix(np.array([[5, 1, 5],     # similar to the query, rated item 2 high
                                   [1, 5, 1],     # opposite taste
                                   [5, 2, 0]], dtype=np.float32))
    query = sp.csr_matrix(np.array([[4, 2, 0]], dtype=np.float32))
    # query centred: (1, -1); user 0 centred (4/3, -8/3, 4/3): cos > 0; user 1: cos < 0
    pred = knn_predict(pool, query, np.array([2]), k=5)
    np.testing.assert_allclose(pred, [[3.0 + (5 - 11 / 3)]])  # only user 0 votes


def test_corruptions(genuine):
    profiles = genuine.rating_matrix[:50]
    rng = np.random.default_rng(0)
    m = np.maximum(1, np.floor(0.1 * np.diff(profiles.indptr) + 0.5))
    flipped, flags = corrupt_profiles(profiles, "flip", 0.1, np.arange(1.0, 6.0), rng)
    assert np.array_equal(flipped.indices, profiles.indices)
    np.testing.assert_array_equal(np.add.reduceat(flags, profiles.indptr[:-1]), m)
    assert np.all(np.isin(flipped.data[flags], [1.0, 5.0]))
    assert np.all(np.abs(flipped.data[flags] - profiles.data[flags]) >= 2)
    np.testing.assert_array_equal(flipped.data[~flags], profiles.data[~flags])
    inserted, flags = corrupt_profiles(profiles, "insert", 0.1, np.arange(1.0, 6.0), rng)
    np.testing.assert_array_equal(np.diff(inserted.indptr) - np.diff(profiles.indptr), m)
    kept = inserted.copy()
    kept.data = (~flags).astype(np.float32)
    kept.eliminate_zeros()
    assert (kept != (profiles > 0)).nnz == 0  # the original entries are all still there
    assert flags.sum() == m.sum()


def test_interaction_level_detection_finds_flipped_ratings(planted, genuine):
    rows = evaluate_interactions(genuine.rating_matrix, planted["split"], planted["clean"], SMALL)
    auc = {(r["corruption"], r["detector"]): r["auc"] for r in rows}
    assert auc[("flip", "item_z")] > 0.7 and auc[("flip", "crbm")] > 0.6
    assert auc[("insert", "dpebm")] > 0.6
    assert abs(auc[("flip", "dpebm")] - 0.5) < 0.1  # dpebm never sees rating values


def test_report_is_written(planted, tmp_path):
    cell = planted["cell"]
    table = pd.DataFrame(cell.rows())
    table["attack_size"] = table["filler_size"] = 0.05  # pose as the headline cell
    histograms = {(o.setting, "random", o.detector): (o.scores, o.labels, o.metrics["threshold"])
                  for o in cell.outcomes}
    result = GridResult(table, pd.DataFrame(), histograms, SMALL, {
        "n_users": 300, "n_items": 200, "n_ratings": 8434, "n_train": 180, "n_calibration": 60,
        "n_test": 60, "seconds": 1.0, "intent": "push", "seed": 0, "headline_seeds": [0]})
    text = write_report(result, tmp_path / "anomaly.md", tmp_path / "anomaly.png")
    assert "## Energy vs classic detectors at 5% attack, 5% filler" in text and "| contaminated | random | 5% | 5% | 0 | dpebm |" in text
    assert (tmp_path / "anomaly.png").stat().st_size > 10_000
    headline = headline_comparison(table)
    assert set(headline["setting"]) == {"clean", "contaminated"}
    assert set(headline["attack"]) == {"random"}
    assert set(headline["best_energy"]) <= set(ENERGY_DETECTORS)


def test_cli_anomaly_writes_json_and_logs_to_mlflow(movielens_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    from recsys_ebm.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "anomaly.json"
    code = main(["anomaly", "--data-dir", str(movielens_dir), "--attack", "random",
                 "--attack-size", "0.05", "--filler-size", "0.05", "--detector", "dpebm",
                 "--setting", "contaminated", "--fpr", "0.01", "--json", str(out),
                 "--set", "dpebm.epochs=3", "--set", "dpebm.dim=16", "--tracking-uri", uri,
                 "--experiment", "anomaly-e2e", "--quiet"])
    assert code == 0
    document = json.loads(out.read_text())
    rows = {r["detector"]: r for r in document["results"]}
    assert set(rows) == {"dpebm", "rdma", "pca"}  # the classic baselines always run
    assert all(r["n_fake"] == 47 and r["n_filler"] == 84 for r in rows.values())
    assert rows["dpebm"]["auc"] > 0.9
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("anomaly-e2e").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["anomaly.dpebm.epochs"] == "3"
    assert run.data.metrics["contaminated.dpebm.auc"] == pytest.approx(rows["dpebm"]["auc"])
