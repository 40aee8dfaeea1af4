"""The shilling-attack detection protocol: the genuine user split, injecting attacks, fitting
and calibrating the registered detectors in both settings, the interaction-level evaluation and
the grid of attacks (the streams/anomaly protocol in docs/protocols.md).

Two settings. ``clean``: the detector is fitted on genuine users only and scores arriving
profiles (held-out genuine users and the injected ones) by fold-in, with no retraining.
``contaminated``: the detector is fitted on the data with the attack in it and scores its own
training users. In both, genuine users are split once (seeded) into training, calibration and
test users; the threshold is the conformal (1 - fpr) quantile of the calibration users' scores
(``recsys_ebm.anomaly.scoring.calibrate_threshold``), never of an injected profile.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from time import perf_counter

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys_ebm.anomaly.attacks import ATTACK_KINDS, Attack, AttackConfig, inject
from recsys_ebm.anomaly.corruption import CORRUPTIONS, corrupt_profiles
from recsys_ebm.anomaly.detectors import (
    CLASSIC_DETECTORS,
    DETECTORS,
    ENERGY_DETECTORS,
    Detector,
    ItemZDetector,
    build_model,
    default_crbm_config,
    default_dpebm_config,
    default_multvae_config,
    interaction_models,
    models_for,
)
from recsys_ebm.anomaly.knn import ShiftMeter
from recsys_ebm.anomaly.ratings import as_ratings, profile_lengths
from recsys_ebm.anomaly.scoring import calibrate_threshold, detection_metrics, normalize
from recsys_ebm.config import Config, check
from recsys_ebm.data.interactions import Interactions
from recsys_ebm.models.crbm import CRBMConfig
from recsys_ebm.models.dot_ebm import DotEBMConfig
from recsys_ebm.models.multvae import MultVAEConfig

logger = logging.getLogger(__name__)

SETTINGS = ("clean", "contaminated")
#: The headline cells: these attacks at 5% attack size and 5% filler, repeated over extra
#: attack seeds, where the best energy detector is compared with the classic baselines.
HEADLINE_ATTACKS = ("average", "random", "bandwagon")
HEADLINE_SIZE = 0.05
#: The ROC AUC an energy detector should reach on the headline cells.
TARGET_AUC = 0.95


# ----------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class AnomalyConfig(Config):
    """How detectors are fitted, calibrated and evaluated.

    Attributes
    ----------
    detectors : names from ``recsys_ebm.anomaly.detectors.DETECTORS``.
    settings : "clean" (fit on genuine training users, fold arriving profiles in) and/or
        "contaminated" (fit on the data with the attack in it, score in-sample).
    fpr : target false-positive rate of the calibrated threshold.
    calibration_share, test_share : genuine users held out for calibration / as clean-setting
        test users; the rest train the clean-setting models (contaminated: test = all genuine
        users outside the calibration set).
    knn_k : neighbours of the user-kNN recommender that prediction shift is measured on.
    interaction_share : share of a test user's ratings corrupted (at least 1) for the
        interaction-level evaluation.
    split_seed : seed of the user split, the corruptions and the seeded detectors.
    crbm, dpebm, multvae : model configs (the CRBM must be user-oriented).
    """

    detectors: tuple[str, ...] = ("crbm", "crbm_length_z", "crbm_per_rating", "crbm_raw",
                                  "dpebm", "multvae", "multvae_z", "multvae_raw", "rdma", "pca")
    settings: tuple[str, ...] = SETTINGS
    fpr: float = 0.01
    calibration_share: float = 0.2
    test_share: float = 0.2
    knn_k: int = 20
    interaction_share: float = 0.1
    split_seed: int = 0
    crbm: CRBMConfig = dataclasses.field(default_factory=default_crbm_config)
    dpebm: DotEBMConfig = dataclasses.field(default_factory=default_dpebm_config)
    multvae: MultVAEConfig = dataclasses.field(default_factory=default_multvae_config)

    def __post_init__(self) -> None:
        if isinstance(self.crbm, dict):
            object.__setattr__(self, "crbm", CRBMConfig.from_dict(self.crbm))
        if isinstance(self.dpebm, dict):
            object.__setattr__(self, "dpebm", DotEBMConfig.from_dict(self.dpebm))
        if isinstance(self.multvae, dict):
            object.__setattr__(self, "multvae", MultVAEConfig.from_dict(self.multvae))
        object.__setattr__(self, "detectors", tuple(self.detectors))
        object.__setattr__(self, "settings", tuple(self.settings))
        unknown = [d for d in self.detectors if d not in DETECTORS]
        check(not unknown, f"unknown detector(s) {unknown}; known: {sorted(DETECTORS)}")
        check(len(self.detectors) >= 1, "at least one detector is needed")
        check(len(self.settings) >= 1 and all(s in SETTINGS for s in self.settings),
              f"settings must be among {SETTINGS}, got {self.settings}")
        check(0 < self.fpr < 1, f"fpr must be in (0, 1), got {self.fpr}")
        check(0 < self.calibration_share < 1 and 0 < self.test_share < 1
              and self.calibration_share + self.test_share < 1,
              "calibration_share and test_share must be in (0, 1) and sum below 1")
        check(self.knn_k >= 1, f"knn_k must be >= 1, got {self.knn_k}")
        check(0 < self.interaction_share < 1,
              f"interaction_share must be in (0, 1), got {self.interaction_share}")
        check(self.crbm.orientation == "user", "the CRBM detector needs orientation='user'")

    @property
    def models(self) -> tuple[str, ...]:
        """The models the chosen detectors need, in registry order."""
        return models_for(self.detectors)


# ----------------------------------------------------------------------------- users


@dataclass(frozen=True)
class UserSplit:
    """Genuine users split once: int64 index arrays, disjoint, covering 0..n_genuine-1."""

    train: np.ndarray
    calibration: np.ndarray
    test: np.ndarray


def split_users(n_genuine: int, calibration_share: float = 0.2, test_share: float = 0.2,
                seed: int = 0) -> UserSplit:
    """Random split of the genuine users 0..n_genuine-1 (shares rounded down, >= 1 each)."""
    if n_genuine < 3:
        raise ValueError(f"need at least 3 genuine users to split, got {n_genuine}")
    perm = np.random.default_rng([seed, 10]).permutation(n_genuine)
    n_cal = max(1, int(calibration_share * n_genuine))
    n_test = max(1, int(test_share * n_genuine))
    if n_cal + n_test >= n_genuine:
        raise ValueError(f"{n_genuine} genuine users leave none to train on")
    return UserSplit(np.sort(perm[n_cal + n_test:]), np.sort(perm[:n_cal]),
                     np.sort(perm[n_cal:n_cal + n_test]))


# ----------------------------------------------------------------------------- one attack


@dataclass
class DetectorOutcome:
    """One detector in one setting on one attack.

    Attributes
    ----------
    metrics : auc, fpr, detection_rate, precision, recall, f1, n_flagged, threshold,
        shift_filtered (prediction shift once the flagged profiles are removed)
    scores : float64 (n_test,), the normalised scores of the test users; labels : bool (n_test,)
    """

    setting: str
    detector: str
    metrics: dict[str, float]
    scores: np.ndarray
    labels: np.ndarray


@dataclass
class CellResult:
    """Every detector and setting on one attack."""

    attack: AttackConfig
    n_fake: int
    n_filler: int
    targets: list
    shift_attacked: float
    outcomes: list[DetectorOutcome]
    seconds: float
    #: setting -> int64 rows of the attacked data that setting's thresholds were calibrated on
    calibration_users: dict[str, np.ndarray]

    def rows(self) -> list[dict]:
        """Flat table rows, one per (setting, detector)."""
        base = {"attack": self.attack.kind, "intent": self.attack.intent,
                "attack_size": self.attack.attack_size, "filler_size": self.attack.filler_size,
                "seed": self.attack.seed, "n_fake": self.n_fake, "n_filler": self.n_filler,
                "targets": " ".join(str(t) for t in self.targets),
                "shift_attacked": self.shift_attacked}
        return [{**base, "setting": o.setting, "detector": o.detector, **o.metrics}
                for o in self.outcomes]


class CleanSetting:
    """Detector models fitted once on the genuine training users, reused for every attack.

    The genuine calibration and test users are scored once (fold-in); each attack only needs
    its fake profiles scored.
    """

    def __init__(self, genuine_ratings: sp.csr_matrix, split: UserSplit, config: AnomalyConfig):
        genuine_ratings = as_ratings(genuine_ratings)
        train = genuine_ratings[split.train]
        self.models: dict[str, Detector] = {}
        for name in config.models:
            start = perf_counter()
            self.models[name] = build_model(name, config).fit(train)
            logger.info("clean setting: %s fitted on %d genuine users in %.1fs", name,
                        len(split.train), perf_counter() - start)
        self.item_z = ItemZDetector().fit(train)
        self.rows = np.concatenate([split.calibration, split.test])
        profiles = genuine_ratings[self.rows]
        self.lengths = profile_lengths(profiles)
        self.scores = {b: m.score(profiles) for b, m in self.models.items()}

    def scores_with(self, fake_profiles: sp.csr_matrix) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Raw scores of [calibration, test, fakes] per model, and their profile lengths."""
        fake_scores = {b: m.score(fake_profiles) for b, m in self.models.items()}
        scores = {b: np.concatenate([self.scores[b], fake_scores[b]]) for b in self.models}
        return scores, np.concatenate([self.lengths, profile_lengths(fake_profiles)])


def _judge(setting: str, raw: dict[str, np.ndarray], lengths: np.ndarray, rows: np.ndarray,
           labels: np.ndarray, n_cal: int, config: AnomalyConfig, meter: ShiftMeter
           ) -> list[DetectorOutcome]:
    """Normalise, calibrate on the first ``n_cal`` rows (genuine), evaluate on the rest."""
    if np.any(labels[:n_cal]):
        raise RuntimeError("an injected profile reached the calibration set")
    outcomes = []
    for name in config.detectors:
        spec = DETECTORS[name]
        scores = normalize(raw[spec.model], lengths, spec.normalization, n_cal)
        threshold = calibrate_threshold(scores[:n_cal], config.fpr)
        test_scores, test_labels = scores[n_cal:], labels[n_cal:]
        metrics = detection_metrics(test_scores, test_labels, threshold)
        flagged = rows[n_cal:][test_scores > threshold]
        metrics["shift_filtered"] = meter.shift(flagged)
        outcomes.append(DetectorOutcome(setting, name, metrics, test_scores, test_labels))
    return outcomes


def _contaminated_scores(genuine: Interactions, attack: Attack, split: UserSplit,
                         config: AnomalyConfig) -> tuple[dict[str, np.ndarray], np.ndarray,
                                                         np.ndarray]:
    """Fresh models fitted on the attacked data; raw in-sample scores of [calibration, the
    other genuine users, fakes] per model, those rows and their profile lengths."""
    attacked = attack.interactions.rating_matrix
    test = np.setdiff1d(np.arange(genuine.n_users), split.calibration)
    rows = np.concatenate([split.calibration, test, attack.fake_users])
    profiles = attacked[rows]
    raw = {name: build_model(name, config).fit(attacked).score(profiles, rows)
           for name in config.models}
    return raw, rows, profile_lengths(profiles)


def evaluate_attack(genuine: Interactions, attack: Attack, config: AnomalyConfig,
                    split: UserSplit, clean: CleanSetting | None = None) -> CellResult:
    """Every configured detector and setting on one attack.

    ``clean`` (fitted on ``genuine``'s training users) is required for the clean setting; the
    contaminated setting fits fresh models on ``attack.interactions``.
    """
    start = perf_counter()
    if attack.interactions.n_users != genuine.n_users + len(attack.fake_users) or np.any(
            attack.is_fake[:genuine.n_users]):
        raise ValueError("attack must be built from `genuine` by recsys_ebm.anomaly.attacks.inject")
    attacked = attack.interactions.rating_matrix
    fakes = attack.fake_users
    levels = np.unique(genuine.ratings)
    meter = ShiftMeter(genuine.rating_matrix, attacked, attack.targets, config.knn_k,
                       (float(levels[0]), float(levels[-1])))
    outcomes: list[DetectorOutcome] = []
    calibrated: dict[str, np.ndarray] = {}
    n_cal = len(split.calibration)
    if "clean" in config.settings:
        if clean is None:
            raise ValueError("the clean setting needs a CleanSetting fitted on the genuine users")
        raw, lengths = clean.scores_with(attacked[fakes])
        rows = np.concatenate([clean.rows, fakes])
        calibrated["clean"] = rows[:n_cal].copy()
        outcomes += _judge("clean", raw, lengths, rows, attack.is_fake[rows], n_cal, config, meter)
    if "contaminated" in config.settings:
        raw, rows, lengths = _contaminated_scores(genuine, attack, split, config)
        calibrated["contaminated"] = rows[:n_cal].copy()
        outcomes += _judge("contaminated", raw, lengths, rows, attack.is_fake[rows], n_cal,
                           config, meter)
    seconds = perf_counter() - start
    cfg = attack.config
    logger.info("%s %s attack %.0f%% / filler %.0f%% (seed %d) in %.1fs: %s", cfg.kind, cfg.intent,
                100 * cfg.attack_size, 100 * cfg.filler_size, cfg.seed, seconds,
                ", ".join(f"{o.setting[:5]}/{o.detector} {o.metrics['auc']:.3f}" for o in outcomes))
    return CellResult(cfg, len(fakes), attack.n_filler,
                      genuine.item_map.to_raw(attack.targets).tolist(), meter.shift(None),
                      outcomes, seconds, calibrated)


def evaluate_interactions(genuine_ratings: sp.csr_matrix, split: UserSplit, clean: CleanSetting,
                          config: AnomalyConfig) -> list[dict]:
    """Interaction-level detection in the clean setting: corrupt the test users' profiles
    (``recsys_ebm.anomaly.corruption.corrupt_profiles``), score every rating, calibrate on the
    calibration users' (uncorrupted) ratings. One row per (corruption, detector)."""
    genuine_ratings = as_ratings(genuine_ratings)
    levels = np.unique(genuine_ratings.data)
    models: dict[str, Detector] = {m: clean.models[m]
                                   for m in interaction_models(tuple(clean.models))}
    models["item_z"] = clean.item_z
    calibration = genuine_ratings[split.calibration]
    cal_scores = {name: m.interaction_scores(calibration).data for name, m in models.items()}
    out = []
    for kind in CORRUPTIONS:
        rng = np.random.default_rng([config.split_seed, 20, CORRUPTIONS.index(kind)])
        corrupted, flags = corrupt_profiles(genuine_ratings[split.test], kind,
                                            config.interaction_share, levels, rng)
        for name, model in models.items():
            scores = model.interaction_scores(corrupted).data.astype(np.float64)
            threshold = calibrate_threshold(cal_scores[name], config.fpr)
            metrics = detection_metrics(scores, flags, threshold)
            out.append({"corruption": kind, "detector": name, "n_ratings": int(len(flags)),
                        "n_corrupted": int(flags.sum()), **metrics})
        logger.info("interaction-level, %s: %s", kind, ", ".join(
            f"{r['detector']} {r['auc']:.3f}" for r in out if r["corruption"] == kind))
    return out


# ----------------------------------------------------------------------------- the grid


@dataclass
class GridResult:
    """Everything the report needs.

    Attributes
    ----------
    table : one row per (attack cell, seed, setting, detector); see :meth:`CellResult.rows`
    interactions : one row per (corruption, detector)
    histograms : {(setting, attack, detector): (scores, labels, threshold)} of the 5% / 5% cells
    info : dataset and timing facts for the report header
    """

    table: pd.DataFrame
    interactions: pd.DataFrame
    histograms: dict
    config: AnomalyConfig
    info: dict


def _grid_cells(kinds: tuple[str, ...], attack_sizes: tuple[float, ...],
                filler_sizes: tuple[float, ...], seed: int,
                headline_seeds: tuple[int, ...]) -> list[tuple[str, float, float, int]]:
    """(kind, attack size, filler size, seed) of every cell, then the headline cells' extra
    seeds (when the grid holds the headline sizes)."""
    cells = [(k, a, f, seed) for k in kinds for a in attack_sizes for f in filler_sizes]
    if HEADLINE_SIZE in attack_sizes and HEADLINE_SIZE in filler_sizes:
        cells += [(k, HEADLINE_SIZE, HEADLINE_SIZE, s) for k in kinds if k in HEADLINE_ATTACKS
                  for s in headline_seeds if s != seed]
    return cells


def run_grid(genuine: Interactions, config: AnomalyConfig | None = None, *,
             kinds: tuple[str, ...] = ATTACK_KINDS, attack_sizes: tuple[float, ...] = (0.01, 0.05, 0.1),
             filler_sizes: tuple[float, ...] = (0.03, 0.05, 0.1), intent: str = "push",
             seed: int = 0, headline_seeds: tuple[int, ...] = (1, 2),
             on_cell=None) -> GridResult:
    """Every attack cell x setting x detector, plus extra attack seeds for the headline cells.

    The clean-setting models are fitted once; the contaminated ones once per cell.
    ``on_cell(CellResult)`` is called after each cell (e.g. to log it).
    """
    config = config or AnomalyConfig()
    start = perf_counter()
    split = split_users(genuine.n_users, config.calibration_share, config.test_share,
                        config.split_seed)
    genuine_ratings = genuine.rating_matrix
    clean = CleanSetting(genuine_ratings, split, config) if "clean" in config.settings else None
    rows: list[dict] = []
    histograms: dict = {}
    for kind, size, filler, cell_seed in _grid_cells(kinds, attack_sizes, filler_sizes, seed,
                                                     headline_seeds):
        attack_config = AttackConfig(kind=kind, intent=intent, attack_size=size,
                                     filler_size=filler, seed=cell_seed)
        cell = evaluate_attack(genuine, inject(genuine, attack_config), config, split, clean)
        rows += cell.rows()
        if (math.isclose(size, HEADLINE_SIZE) and math.isclose(filler, HEADLINE_SIZE)
                and cell_seed == seed):
            for o in cell.outcomes:
                histograms[(o.setting, kind, o.detector)] = (o.scores, o.labels,
                                                             o.metrics["threshold"])
        if on_cell is not None:
            on_cell(cell)
    interactions = (evaluate_interactions(genuine_ratings, split, clean, config)
                    if clean is not None else [])
    info = {"n_users": genuine.n_users, "n_items": genuine.n_items, "n_ratings": len(genuine),
            "n_train": len(split.train), "n_calibration": len(split.calibration),
            "n_test": len(split.test), "seconds": perf_counter() - start, "intent": intent,
            "seed": seed, "headline_seeds": sorted({seed, *headline_seeds})}
    return GridResult(pd.DataFrame(rows), pd.DataFrame(interactions), histograms, config, info)


def headline_comparison(table: pd.DataFrame, target_auc: float = TARGET_AUC) -> pd.DataFrame:
    """Per setting, the energy detector with the best mean AUC over the headline cells (each
    attack averaged over seeds) against the better classic baseline on each attack; ``pass``
    when its AUC reaches ``target_auc`` and the classic one's. One row per (setting, attack)."""
    cells = table[np.isclose(table["attack_size"], HEADLINE_SIZE)
                  & np.isclose(table["filler_size"], HEADLINE_SIZE)
                  & table["attack"].isin(HEADLINE_ATTACKS)]
    mean_auc = cells.groupby(["setting", "attack", "detector"])["auc"].agg(["mean", "std", "count"])
    out = []
    for setting in cells["setting"].unique():
        auc = mean_auc.loc[setting]["mean"].unstack("detector")
        energy = [d for d in ENERGY_DETECTORS if d in auc.columns]
        classic = [d for d in CLASSIC_DETECTORS if d in auc.columns]
        if not energy:
            continue
        best = auc[energy].mean(axis=0).idxmax()
        for attack in auc.index:
            best_classic = auc.loc[attack, classic].max() if classic else math.nan
            classic_name = auc.loc[attack, classic].idxmax() if classic else ""
            value = auc.loc[attack, best]
            out.append({"setting": setting, "attack": attack, "best_energy": best, "auc": value,
                        "auc_std": mean_auc.loc[(setting, attack, best), "std"],
                        "n_seeds": int(mean_auc.loc[(setting, attack, best), "count"]),
                        "best_classic": classic_name, "classic_auc": best_classic,
                        "pass": bool(value >= target_auc
                                     and (not classic or value >= best_classic))})
    return pd.DataFrame(out)
