"""Energy as an anomaly score: shilling-profile and anomalous-rating detection.

Detectors score users (higher = more anomalous) from a users x items CSR of ratings:

- ``crbm*``: the free energy F(V, r) of a user's profile under a user-oriented conditional RBM
  (``recsys_ebm.models.crbm``). F grows with the number of ratings, so four versions are
  reported: ``crbm_raw`` (F), ``crbm_per_rating`` (F / n_u), ``crbm_length_z`` (F / n_u
  z-scored against genuine profiles of similar length, :class:`LengthNormalizer`) and ``crbm``,
  the default, |z|: a two-sided typicality test. Trained on data that holds the attack, the
  model memorises the near-duplicate fake profiles and gives them energies far *below* genuine
  ones, which every one-sided score ranks as the least suspicious users (ROC AUC near 0 on
  ML-100K); |z| flags both tails. (This default was chosen after seeing that inversion; the
  one-sided versions stay in every report.)
- ``dpebm``: mean energy -1/n_u sum_{i in u} log p(i | u) of the profile's items under the
  dot-product EBM (``recsys_ebm.models.dot_ebm``): which items, not their ratings.
- ``rdma``: Rating Deviation from Mean Agreement (Chirita, Nejdl & Zamfir 2005),
  1/n_u sum_{i in u} |r_ui - mean_i| / n_i.
- ``pca``: PCA-VarSelect (Mehta & Nejdl 2009): users' ratings z-scored per user (missing 0),
  users taken as the variables; the suspicion is minus the sum of a user's squared loadings on
  the first 3 principal components (attack profiles, highly correlated among themselves and
  with little of the variance, have the smallest).
- ``random``: i.i.d. uniform scores, the control (ROC AUC 0.5 by construction).

Two settings. ``clean``: the detector is fitted on genuine users only and scores arriving
profiles (held-out genuine users and the injected ones) by fold-in, with no retraining.
``contaminated``: the detector is fitted on the data with the attack in it and scores its own
training users. In both, genuine users are split once (seeded) into training, calibration and
test users; the threshold is the conformal (1 - fpr) quantile of the calibration users' scores
(:func:`calibrate_threshold`), never of an injected profile.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import svds
from scipy.stats import rankdata

from recsys_ebm.anomaly.attacks import ATTACK_KINDS, Attack, AttackConfig, ItemStats, inject
from recsys_ebm.config import Config, check
from recsys_ebm.data.interactions import Interactions
from recsys_ebm.models.crbm import CRBM, CaseData, CRBMConfig
from recsys_ebm.models.dot_ebm import DotEBM, DotEBMConfig

logger = logging.getLogger(__name__)

#: Users scored per chunk of dense (users x items) work.
_CHUNK_USERS = 512


# ----------------------------------------------------------------------------- helpers


def _as_ratings(matrix: sp.spmatrix) -> sp.csr_matrix:
    """float32 CSR with summed duplicates, explicit zeros dropped, sorted indices."""
    if not sp.issparse(matrix):
        raise ValueError(f"expected a scipy.sparse users x items matrix, got {type(matrix).__name__}")
    out = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    out.sum_duplicates()
    out.eliminate_zeros()
    out.sort_indices()
    return out


def profile_lengths(profiles: sp.csr_matrix) -> np.ndarray:
    """Number of ratings of each row: int64 (n,)."""
    return np.diff(sp.csr_matrix(profiles).indptr).astype(np.int64)


def _row_of(matrix: sp.csr_matrix) -> np.ndarray:
    """Row index of every stored entry: int64 (nnz,)."""
    return np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))


def _row_means(values: np.ndarray, rows: np.ndarray, n_rows: int) -> np.ndarray:
    counts = np.bincount(rows, minlength=n_rows)
    sums = np.bincount(rows, weights=values, minlength=n_rows)
    return sums / np.maximum(counts, 1)


# ----------------------------------------------------------------------------- detectors


class Detector(ABC):
    """Scores users; higher = more anomalous.

    ``fit(ratings)`` sees a users x items CSR of ratings. ``score(profiles, user_ids)`` scores
    rows of ratings: with ``user_ids`` (their rows in the fitted matrix) the users were part of
    the fit and are scored in-sample; with ``None`` they are new and folded in.
    """

    name: str = "detector"

    @abstractmethod
    def fit(self, ratings: sp.csr_matrix) -> Detector:
        """Fit on a users x items CSR of ratings (n_users, n_items)."""

    @abstractmethod
    def score(self, profiles: sp.csr_matrix, user_ids: np.ndarray | None = None) -> np.ndarray:
        """Anomaly scores float64 (n,) of the ``profiles`` rows (n, n_items)."""

    def interaction_scores(self, profiles: sp.csr_matrix,
                           user_ids: np.ndarray | None = None) -> sp.csr_matrix:
        """Per-rating anomaly scores, a CSR with the pattern of ``profiles`` (if supported)."""
        raise NotImplementedError(f"{self.name} has no interaction-level scores")


class RandomDetector(Detector):
    """I.i.d. uniform scores: the control detector (AUC 0.5 in expectation)."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def fit(self, ratings: sp.csr_matrix) -> RandomDetector:
        return self

    def score(self, profiles: sp.csr_matrix, user_ids: np.ndarray | None = None) -> np.ndarray:
        return self.rng.random(profiles.shape[0])


class RDMADetector(Detector):
    """Rating Deviation from Mean Agreement (Chirita et al. 2005).

    RDMA_u = 1/n_u sum_{i in u} |r_ui - mean_i| / n_i, with item means and counts of the fitted
    data; a folded-in profile counts itself (n_i + 1), as it would in-sample.
    """

    name = "rdma"

    def fit(self, ratings: sp.csr_matrix) -> RDMADetector:
        ratings = _as_ratings(ratings)
        csc = ratings.tocsc()
        self.counts = np.diff(csc.indptr).astype(np.float64)
        sums = np.asarray(csc.sum(axis=0), dtype=np.float64).ravel()
        global_mean = float(ratings.data.mean()) if ratings.nnz else 0.0
        self.means = np.where(self.counts > 0, sums / np.maximum(self.counts, 1), global_mean)
        return self

    def score(self, profiles: sp.csr_matrix, user_ids: np.ndarray | None = None) -> np.ndarray:
        profiles = _as_ratings(profiles)
        items = profiles.indices
        counts = self.counts[items] + (1.0 if user_ids is None else 0.0)
        dev = np.abs(profiles.data - self.means[items]) / np.maximum(counts, 1.0)
        return _row_means(dev, _row_of(profiles), profiles.shape[0])

    def interaction_scores(self, profiles: sp.csr_matrix,
                           user_ids: np.ndarray | None = None) -> sp.csr_matrix:
        """|r_ui - mean_i| / n_i per rating."""
        profiles = _as_ratings(profiles)
        counts = self.counts[profiles.indices] + (1.0 if user_ids is None else 0.0)
        out = profiles.copy()
        out.data = (np.abs(profiles.data - self.means[profiles.indices]) / np.maximum(counts, 1.0))
        return out


class ItemZDetector(Detector):
    """|r_ui - mean_i| / std_i: how unusual a rating is for its item (interaction baseline)."""

    name = "item_z"

    def fit(self, ratings: sp.csr_matrix) -> ItemZDetector:
        stats = ItemStats.from_ratings(_as_ratings(ratings))
        self.means, self.stds = stats.means, np.maximum(stats.stds, 1e-3)
        return self

    def interaction_scores(self, profiles: sp.csr_matrix,
                           user_ids: np.ndarray | None = None) -> sp.csr_matrix:
        profiles = _as_ratings(profiles)
        out = profiles.copy()
        out.data = np.abs(profiles.data - self.means[profiles.indices]) / self.stds[profiles.indices]
        return out

    def score(self, profiles: sp.csr_matrix, user_ids: np.ndarray | None = None) -> np.ndarray:
        per = self.interaction_scores(profiles, user_ids)
        return _row_means(per.data.astype(np.float64), _row_of(per), per.shape[0])


def user_zscores(profiles: sp.csr_matrix) -> sp.csr_matrix:
    """Each row's ratings z-scored over the row's rated items (constant rows -> 0): CSR (n, m)."""
    profiles = _as_ratings(profiles)
    rows = _row_of(profiles)
    n = profiles.shape[0]
    values = profiles.data.astype(np.float64)
    means = _row_means(values, rows, n)
    var = _row_means((values - means[rows]) ** 2, rows, n)
    std = np.sqrt(var)
    out = sp.csr_matrix((np.zeros_like(values), profiles.indices, profiles.indptr),
                        shape=profiles.shape, dtype=np.float64)
    safe = std[rows] > 1e-12
    out.data[safe] = (values[safe] - means[rows][safe]) / std[rows][safe]
    return out


class PCAVarSelectDetector(Detector):
    """PCA-VarSelect (Mehta & Nejdl 2009) with users as the variables.

    Z (users x items) holds per-user z-scores (0 where unrated); Z = U S V^T truncated to
    ``n_components``. A user's loadings are U_u = Z_u V / S (for a folded-in profile too), and
    the score is -sum_k U_uk^2: the least-contributing users are the suspects.
    """

    name = "pca"

    def __init__(self, n_components: int = 3, seed: int = 0):
        self.n_components = n_components
        self.seed = seed

    def fit(self, ratings: sp.csr_matrix) -> PCAVarSelectDetector:
        z = user_zscores(ratings)
        k = min(self.n_components, min(z.shape) - 1)
        if k < 1:
            raise ValueError(f"PCA-VarSelect needs at least 2 users and items, got {z.shape}")
        v0 = np.random.default_rng(self.seed).standard_normal(min(z.shape))
        _, s, vt = svds(z, k=k, v0=v0)
        self.components = vt.T / np.maximum(s, 1e-12)  # (n_items, k): V / S
        return self

    def score(self, profiles: sp.csr_matrix, user_ids: np.ndarray | None = None) -> np.ndarray:
        loadings = user_zscores(profiles) @ self.components
        return -(loadings**2).sum(axis=1)


class DotEBMDetector(Detector):
    """Mean energy (NLL under p(i | u)) of a profile's items under the dot-product EBM."""

    name = "dpebm"

    def __init__(self, config: DotEBMConfig | None = None):
        self.config = config or _default_dpebm()
        self.model: DotEBM | None = None

    def fit(self, ratings: sp.csr_matrix) -> DotEBMDetector:
        self.model = DotEBM(self.config).fit(_as_ratings(ratings), show_progress=False)
        return self

    def _nll(self, profiles: sp.csr_matrix, user_ids: np.ndarray | None) -> sp.csr_matrix:
        """-log p(i | u) at each stored entry of ``profiles``: CSR like ``profiles``."""
        profiles = _as_ratings(profiles)
        out = profiles.copy()
        out.data = out.data.astype(np.float32)
        for start in range(0, profiles.shape[0], _CHUNK_USERS):
            stop = min(start + _CHUNK_USERS, profiles.shape[0])
            rows = profiles[start:stop]
            if user_ids is None:
                logits = self.model.score(np.arange(stop - start), rows).astype(np.float64)
            else:
                logits = self.model.score(np.asarray(user_ids)[start:stop]).astype(np.float64)
            logits /= self.model.config.temperature
            peak = logits.max(axis=1, keepdims=True)
            log_z = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
            local = _row_of(rows)
            entry = slice(profiles.indptr[start], profiles.indptr[stop])
            out.data[entry] = log_z[local] - logits[local, rows.indices]
        return out

    def score(self, profiles: sp.csr_matrix, user_ids: np.ndarray | None = None) -> np.ndarray:
        nll = self._nll(profiles, user_ids)
        return _row_means(nll.data.astype(np.float64), _row_of(nll), nll.shape[0])

    def interaction_scores(self, profiles: sp.csr_matrix,
                           user_ids: np.ndarray | None = None) -> sp.csr_matrix:
        """-log p(i | u) of each rated item (the rating value plays no part)."""
        return self._nll(profiles, user_ids)


class CRBMDetector(Detector):
    """Free energy F(V, r) of each profile under a user-oriented conditional RBM.

    ``score`` returns F itself; length normalisation is applied on top (:func:`normalize`).
    ``interaction_scores`` gives -log p(v_ui = r_ui | the user's other ratings, r), exact.
    """

    name = "crbm"

    def __init__(self, config: CRBMConfig | None = None):
        config = config or CRBMConfig(orientation="user")
        if config.orientation != "user":
            raise ValueError("the CRBM detector scores user profiles: it needs orientation='user'")
        self.config = config
        self.model: CRBM | None = None

    def fit(self, ratings: sp.csr_matrix) -> CRBMDetector:
        self.model = CRBM(self.config).fit(_as_ratings(ratings), show_progress=False)
        return self

    def score(self, profiles: sp.csr_matrix, user_ids: np.ndarray | None = None) -> np.ndarray:
        # For the user orientation F is a function of the profile alone, so in-sample and
        # fold-in coincide; passing the profile also covers ratings carved out for validation.
        profiles = _as_ratings(profiles)
        return self.model.free_energy(np.arange(profiles.shape[0]), profiles)

    @torch.no_grad()
    def interaction_scores(self, profiles: sp.csr_matrix,
                           user_ids: np.ndarray | None = None) -> sp.csr_matrix:
        """-log p(v_ui = r_ui | V_u without i, r_u) for every rating of ``profiles``.

        The profile is conditioned on as given (in-sample and fold-in coincide for the user
        orientation: a user's hidden input is a function of their ratings).
        """
        model = self.model
        module = model.module
        profiles = _as_ratings(profiles)
        levels = model.levels
        pos = np.clip(np.searchsorted(levels, profiles.data.astype(np.float64)), 0, len(levels) - 1)
        if np.any(np.abs(levels[pos] - profiles.data) > 1e-4):
            raise ValueError(f"ratings must be among the model's levels {levels.tolist()}")
        level_csr = sp.csr_matrix(((pos + 1).astype(np.float32), profiles.indices, profiles.indptr),
                                  shape=profiles.shape)
        data = CaseData.from_csr(level_csr, None)
        out = profiles.copy()
        out.data = np.empty(profiles.nnz, dtype=np.float32)
        for start in range(0, profiles.shape[0], _CHUNK_USERS):
            rows = np.arange(start, min(start + _CHUNK_USERS, profiles.shape[0]))
            batch = data.batch(rows)
            x = module.hidden_input(batch)
            x_loo = x[batch.case_of] - module.W[batch.units, batch.levels]
            log_p = module.log_proba_pairs(x_loo, batch.units)
            nll = -log_p.gather(1, batch.levels[:, None])[:, 0]
            out.data[batch.positions] = nll.float().numpy()
        return out


# ----------------------------------------------------------------------------- normalisation

#: ``none``: the score as is; ``per_rating``: score / n_u; ``length_z``: score / n_u z-scored against
#: genuine profiles of similar length (one-sided, high = anomalous); ``length_z_abs``: |z|, the two-sided
#: typicality test (Nalisnick et al. 2019): a profile whose energy is far *below* genuine ones
#: of its length is just as atypical (the contaminated setting, where the model memorises the
#: attack's near-duplicate profiles, is exactly that case).
NORMALIZATIONS = ("none", "per_rating", "length_z", "length_z_abs")


@dataclass(frozen=True)
class LengthNormalizer:
    """Scores z-scored against genuine reference profiles of similar length.

    With x = log(n_u), the reference mean at x is a local-linear kernel regression of the
    reference scores on x, and the reference variance a kernel-weighted mean of the squared
    residuals (Gaussian kernel, Silverman's bandwidth on the reference x unless given): a z-score
    among the genuine profiles whose length is within about ``bandwidth`` (x 1.4 at the default
    0.33 on ML-100K) of the scored one, with no assumed shape for how energy grows with length.

    Attributes
    ----------
    x, scores, residuals : float64 (n_ref,), the reference log lengths, scores and residuals
    bandwidth : float
    """

    x: np.ndarray
    scores: np.ndarray
    residuals: np.ndarray
    bandwidth: float

    @classmethod
    def fit(cls, scores: np.ndarray, lengths: np.ndarray,
            bandwidth: float | None = None) -> LengthNormalizer:
        """scores float (n,), lengths int (n,) of genuine reference users (n >= 6)."""
        scores = np.asarray(scores, dtype=np.float64)
        x = np.log(np.maximum(np.asarray(lengths, dtype=np.float64), 1.0))
        if len(scores) < 6 or len(x) != len(scores):
            raise ValueError(f"length normalisation needs >= 6 reference users with lengths, "
                             f"got {len(scores)} scores and {len(x)} lengths")
        if bandwidth is None:
            spread = min(x.std(), (np.quantile(x, 0.75) - np.quantile(x, 0.25)) / 1.34) or x.std()
            bandwidth = 1.06 * max(spread, 1e-3) * len(x) ** -0.2
        fitted = cls(x, scores, np.zeros_like(scores), float(bandwidth))
        mean, _ = fitted._local(x, exclude=np.arange(len(x)))
        return cls(x, scores, scores - mean, float(bandwidth))

    def _local(self, xq: np.ndarray, exclude: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Local-linear mean and local residual variance at xq (q,): float64 (q,), (q,).

        ``exclude`` (q,) leaves reference point ``exclude[j]`` out of query j (-1: none).
        """
        mean = np.empty(len(xq))
        var = np.empty(len(xq))
        for start in range(0, len(xq), 4096):
            q = xq[start:start + 4096, None]
            d = self.x[None, :] - q
            logw = -0.5 * (d / self.bandwidth) ** 2
            w = np.exp(logw - logw.max(axis=1, keepdims=True))  # no underflow far from the data
            if exclude is not None:
                rows = np.flatnonzero(exclude[start:start + 4096] >= 0)
                w[rows, exclude[start:start + 4096][rows]] = 0.0
            s0, s1, s2 = w.sum(1), (w * d).sum(1), (w * d * d).sum(1)
            t0, t1 = w @ self.scores, (w * d) @ self.scores
            det = s0 * s2 - s1 * s1
            flat = det <= 1e-9 * s0 * np.maximum(s2, 1e-300)  # one distinct length nearby
            mean[start:start + 4096] = np.where(flat, t0 / s0, (s2 * t0 - s1 * t1)
                                                / np.where(flat, 1.0, det))
            var[start:start + 4096] = (w @ self.residuals**2) / s0
        return mean, var

    def __call__(self, scores: np.ndarray, lengths: np.ndarray,
                 exclude: np.ndarray | None = None) -> np.ndarray:
        """z-scores float64 (n,) of scores (n,) of profiles with ``lengths`` (n,); ``exclude``
        (n,) names the reference point each one is (-1: none), left out of its own z-score."""
        xq = np.log(np.maximum(np.asarray(lengths, dtype=np.float64), 1.0))
        mean, var = self._local(xq, exclude)
        floor = 1e-12 * max(float(np.mean(self.residuals**2)), 1e-300)
        return (np.asarray(scores, dtype=np.float64) - mean) / np.sqrt(np.maximum(var, floor))


def normalize(scores: np.ndarray, lengths: np.ndarray, method: str, n_ref: int = 0) -> np.ndarray:
    """Apply a length normalisation (:data:`NORMALIZATIONS`).

    scores float (n,), lengths int (n,). ``length_z*`` z-score the per-rating score against the
    first ``n_ref`` rows, the genuine reference users (:class:`LengthNormalizer`); each of them
    is z-scored leave-one-out, so that calibrating a threshold on them is not optimistic.
    Returns float64 (n,).
    """
    scores = np.asarray(scores, dtype=np.float64)
    lengths = np.asarray(lengths)
    if method == "none":
        return scores
    if method == "per_rating":
        return scores / np.maximum(lengths.astype(np.float64), 1.0)
    if method in ("length_z", "length_z_abs"):
        # z-score the per-rating score: it varies little with length, so the kernel smoother's
        # bias (h^2/2 times the curvature of the mean in log n) stays negligible; a sum such as F
        # grows ~linearly in n, i.e. exponentially in log n, and would be biased
        per_rating = scores / np.maximum(lengths.astype(np.float64), 1.0)
        normalizer = LengthNormalizer.fit(per_rating[:n_ref], lengths[:n_ref])
        exclude = np.full(len(scores), -1, dtype=np.int64)
        exclude[:n_ref] = np.arange(n_ref)
        z = normalizer(per_rating, lengths, exclude)
        return np.abs(z) if method == "length_z_abs" else z
    raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {method!r}")


# ----------------------------------------------------------------------------- calibration, metrics


def calibrate_threshold(genuine_scores: np.ndarray, fpr: float = 0.01) -> float:
    """Threshold flagging ``score > t`` at false-positive rate at most ``fpr``.

    The conformal quantile: t is the ceil((n + 1)(1 - fpr))-th smallest of the n genuine
    calibration scores, so a new genuine user exchangeable with them exceeds t with probability
    floor(fpr (n + 1)) / (n + 1) <= fpr (ties aside). With fewer than 1/fpr - 1 calibration
    users no finite threshold has that guarantee and +inf (flag nobody) is returned.
    """
    scores = np.sort(np.asarray(genuine_scores, dtype=np.float64))
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError("calibration needs a non-empty 1-D array of genuine scores")
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("calibration scores contain NaN or inf")
    n = scores.size
    rank = math.ceil((n + 1) * (1.0 - fpr) - 1e-9)
    if rank > n:
        logger.warning("%d calibration users are too few for fpr=%g: flagging nobody", n, fpr)
        return math.inf
    return float(scores[rank - 1])


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count 1/2); labels True = anomalous."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def detection_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """ROC AUC and, flagging ``score > threshold``: achieved FPR, detection rate (= recall),
    precision and F1 (0 when nothing is flagged). scores float (n,), labels bool (n,)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    flagged = scores > threshold
    tp = int((flagged & labels).sum())
    fp = int((flagged & ~labels).sum())
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    recall = tp / n_pos if n_pos else math.nan
    precision = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"auc": roc_auc(scores, labels), "fpr": fp / n_neg if n_neg else math.nan,
            "detection_rate": recall, "precision": precision, "recall": recall, "f1": f1,
            "n_flagged": float(tp + fp), "threshold": float(threshold)}


# ----------------------------------------------------------------------------- configuration

#: Detector name -> (fitted model, normalisation). One model serves all its variants.
DETECTOR_SPECS: dict[str, tuple[str, str]] = {
    "crbm": ("crbm", "length_z_abs"),
    "crbm_length_z": ("crbm", "length_z"),
    "crbm_per_rating": ("crbm", "per_rating"),
    "crbm_raw": ("crbm", "none"),
    "dpebm": ("dpebm", "none"),
    "rdma": ("rdma", "none"),
    "pca": ("pca", "none"),
    "random": ("random", "none"),
}
#: Detectors built on an energy-based model, and the classic baselines they are compared with.
ENERGY_DETECTORS = ("crbm", "crbm_length_z", "crbm_per_rating", "crbm_raw", "dpebm")
CLASSIC_DETECTORS = ("rdma", "pca")
SETTINGS = ("clean", "contaminated")
CORRUPTIONS = ("flip", "insert")
#: Models that give interaction-level scores, and the classic per-rating baseline.
INTERACTION_DETECTORS = ("crbm", "dpebm", "item_z")


def _default_crbm() -> CRBMConfig:
    # short training (fixed epochs, no carved validation): the grid fits one model per cell
    return CRBMConfig(orientation="user", n_hidden=100, epochs=20, val_fraction=0.0, seed=0)


def _default_dpebm() -> DotEBMConfig:
    # the plain dot product with L2, not the ranking default (cosine energy, no L2): cosine
    # energies fit injected profiles as easily as genuine ones, and the detector's AUC on a
    # contaminated random attack (5% / 5%, ML-100K) fell from 1.00 to 0.63 with them
    return DotEBMConfig(dim=64, similarity="dot", epochs=30, lr=3e-3, l2=0.01, fold_in_epochs=100, seed=0)


@dataclasses.dataclass(frozen=True)
class AnomalyConfig(Config):
    """How detectors are fitted, calibrated and evaluated.

    Attributes
    ----------
    detectors : names from :data:`DETECTOR_SPECS`.
    settings : "clean" (fit on genuine training users, fold arriving profiles in) and/or
        "contaminated" (fit on the data with the attack in it, score in-sample).
    fpr : target false-positive rate of the calibrated threshold.
    calibration_share, test_share : genuine users held out for calibration / as clean-setting
        test users; the rest train the clean-setting models (contaminated: test = all genuine
        users outside the calibration set).
    knn_k : neighbours of the user-kNN recommender that prediction shift is measured on.
    interaction_share : share of a test user's ratings corrupted (at least 1) for the
        interaction-level evaluation.
    split_seed : seed of the user split, the corruptions and the random detector.
    crbm, dpebm : model configs (the CRBM must be user-oriented).
    """

    detectors: tuple[str, ...] = ("crbm", "crbm_length_z", "crbm_per_rating", "crbm_raw",
                                  "dpebm", "rdma", "pca")
    settings: tuple[str, ...] = SETTINGS
    fpr: float = 0.01
    calibration_share: float = 0.2
    test_share: float = 0.2
    knn_k: int = 20
    interaction_share: float = 0.1
    split_seed: int = 0
    crbm: CRBMConfig = dataclasses.field(default_factory=_default_crbm)
    dpebm: DotEBMConfig = dataclasses.field(default_factory=_default_dpebm)

    def __post_init__(self) -> None:
        if isinstance(self.crbm, dict):
            object.__setattr__(self, "crbm", CRBMConfig.from_dict(self.crbm))
        if isinstance(self.dpebm, dict):
            object.__setattr__(self, "dpebm", DotEBMConfig.from_dict(self.dpebm))
        object.__setattr__(self, "detectors", tuple(self.detectors))
        object.__setattr__(self, "settings", tuple(self.settings))
        unknown = [d for d in self.detectors if d not in DETECTOR_SPECS]
        check(not unknown, f"unknown detector(s) {unknown}; known: {sorted(DETECTOR_SPECS)}")
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
    def bases(self) -> tuple[str, ...]:
        """The models the chosen detectors need, in a fixed order."""
        needed = {DETECTOR_SPECS[d][0] for d in self.detectors}
        return tuple(b for b in ("crbm", "dpebm", "rdma", "pca", "random") if b in needed)

    def make(self, base: str) -> Detector:
        """A fresh, unfitted detector model."""
        if base == "crbm":
            return CRBMDetector(self.crbm)
        if base == "dpebm":
            return DotEBMDetector(self.dpebm)
        if base == "rdma":
            return RDMADetector()
        if base == "pca":
            return PCAVarSelectDetector(seed=self.split_seed)
        if base == "random":
            return RandomDetector(seed=self.split_seed)
        if base == "item_z":
            return ItemZDetector()
        raise ValueError(f"unknown detector model {base!r}")


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


# ----------------------------------------------------------------------------- prediction shift


def _centred_unit_rows(matrix: sp.csr_matrix) -> tuple[sp.csr_matrix, np.ndarray]:
    """Rows mean-centred over their ratings and scaled to unit norm; and the row means."""
    matrix = _as_ratings(matrix)
    rows = _row_of(matrix)
    means = _row_means(matrix.data.astype(np.float64), rows, matrix.shape[0])
    centred = matrix.data - means[rows]
    norms = np.sqrt(np.bincount(rows, weights=centred**2, minlength=matrix.shape[0]))
    data = np.where(norms[rows] > 0, centred / np.maximum(norms[rows], 1e-12), 0.0)
    unit = sp.csr_matrix((data, matrix.indices, matrix.indptr), shape=matrix.shape)
    return unit, means


def knn_predict(pool: sp.csr_matrix, queries: sp.csr_matrix, items: np.ndarray, k: int = 20,
                scale: tuple[float, float] = (1.0, 5.0)) -> np.ndarray:
    """User-kNN rating predictions (Resnick), the classic victim of shilling attacks.

    Similarity is the cosine of mean-centred rating vectors; for each (query, item) the ``k``
    most similar users of ``pool`` who rated the item with positive similarity vote
    mean_q + sum sim (r_v,item - mean_v) / sum sim (mean_q when there is none), clipped to
    ``scale``. Queries should not be pool users who rated ``items``.

    pool (n_pool, n_items), queries (n_q, n_items) rating CSRs; items int (t,).
    Returns float64 (n_q, t).
    """
    pool_unit, pool_means = _centred_unit_rows(pool)
    query_unit, query_means = _centred_unit_rows(queries)
    pool_csc = _as_ratings(pool).tocsc()
    items = np.atleast_1d(np.asarray(items, dtype=np.int64))
    out = np.empty((queries.shape[0], len(items)), dtype=np.float64)
    for j, item in enumerate(items):  # a handful of target items, each one vectorized
        span = slice(pool_csc.indptr[item], pool_csc.indptr[item + 1])
        raters = pool_csc.indices[span]
        deviation = pool_csc.data[span] - pool_means[raters]
        sims = np.asarray((query_unit @ pool_unit[raters].T).todense())
        sims = np.where(sims > 0, sims, 0.0)
        if sims.shape[1] > k:
            cut = np.partition(sims, -k, axis=1)[:, -k][:, None]
            # ties at the cut-off could keep more than k: keep the first k of them by column
            keep = sims > cut
            ties = (sims == cut) & (cut > 0)
            room = k - keep.sum(1, keepdims=True)
            keep |= ties & (np.cumsum(ties, axis=1) <= room)
            sims = np.where(keep, sims, 0.0)
        weight = sims.sum(1)
        vote = sims @ deviation
        out[:, j] = query_means + np.where(weight > 0, vote / np.maximum(weight, 1e-12), 0.0)
    return np.clip(out, *scale)


# ----------------------------------------------------------------------------- corruption


def corrupt_profiles(profiles: sp.csr_matrix, kind: str, share: float, levels: np.ndarray,
                     rng: np.random.Generator) -> tuple[sp.csr_matrix, np.ndarray]:
    """Plant implausible ratings in genuine profiles, m_u = max(1, round(share * n_u)) per row.

    ``flip``: m_u of the user's ratings go to the far end of the scale (below the middle ->
    maximum, above -> minimum, the middle -> either at random). ``insert``: m_u items the user
    did not rate are added with uniformly random ratings.

    Returns the corrupted CSR (sorted indices) and bool (nnz,) flags of the corrupted entries.
    """
    profiles = _as_ratings(profiles)
    levels = np.asarray(levels, dtype=np.float64)
    lo, hi = levels[0], levels[-1]
    n, n_items = profiles.shape
    lengths = profile_lengths(profiles)
    m = np.maximum(1, np.floor(share * lengths + 0.5)).astype(np.int64)
    rows = _row_of(profiles)
    if kind == "flip":
        order = np.lexsort((rng.random(profiles.nnz), rows))
        rank = np.empty(profiles.nnz, dtype=np.int64)
        rank[order] = np.arange(profiles.nnz) - np.repeat(profiles.indptr[:-1], lengths)
        flagged = rank < m[rows]
        values = profiles.data.astype(np.float64)
        mid = (lo + hi) / 2.0
        new = np.where(values < mid, hi, np.where(values > mid, lo,
                                                  np.where(rng.random(len(values)) < 0.5, lo, hi)))
        out = profiles.copy()
        out.data = np.where(flagged, new, values).astype(np.float32)
        return out, flagged
    if kind == "insert":
        if np.any(m > n_items - lengths):
            raise ValueError("a profile has too few unrated items to insert into")
        keys = rng.random((n, n_items))
        keys[rows, profiles.indices] = np.inf
        width = int(m.max())
        picked = np.argpartition(keys, width - 1, axis=1)[:, :width]
        picked_keys = np.take_along_axis(keys, picked, axis=1)
        picked = np.take_along_axis(picked, np.argsort(picked_keys, axis=1), axis=1)
        use = np.arange(width)[None, :] < m[:, None]
        new_rows = np.repeat(np.arange(n), width)[use.ravel()]
        new_items = picked.ravel()[use.ravel()]
        new_values = levels[rng.integers(0, len(levels), size=len(new_rows))]
        all_rows = np.concatenate([rows, new_rows])
        all_items = np.concatenate([profiles.indices.astype(np.int64), new_items])
        all_values = np.concatenate([profiles.data.astype(np.float64), new_values])
        all_flags = np.concatenate([np.zeros(profiles.nnz, bool), np.ones(len(new_rows), bool)])
        order = np.lexsort((all_items, all_rows))
        indptr = np.r_[0, np.cumsum(np.bincount(all_rows, minlength=n))]
        out = sp.csr_matrix((all_values[order].astype(np.float32), all_items[order], indptr),
                            shape=profiles.shape)
        return out, all_flags[order]
    raise ValueError(f"kind must be one of {CORRUPTIONS}, got {kind!r}")


# ----------------------------------------------------------------------------- evaluation


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
    calibration_users: np.ndarray  # int64, the users every threshold was calibrated on

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
        genuine_ratings = _as_ratings(genuine_ratings)
        train = genuine_ratings[split.train]
        self.models: dict[str, Detector] = {}
        for base in config.bases:
            start = _now()
            self.models[base] = config.make(base).fit(train)
            logger.info("clean setting: %s fitted on %d genuine users in %.1fs", base,
                        len(split.train), _now() - start)
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


def _now() -> float:
    import time

    return time.perf_counter()


class ShiftMeter:
    """Prediction shift of the targets for genuine users who rated none of them.

    shift = mean over those users and targets of (prediction with ``pool`` - prediction on the
    genuine data alone), by :func:`knn_predict`.
    """

    def __init__(self, genuine_ratings: sp.csr_matrix, attacked_ratings: sp.csr_matrix,
                 targets: np.ndarray, k: int, scale: tuple[float, float]):
        genuine_ratings = _as_ratings(genuine_ratings)
        self.attacked = _as_ratings(attacked_ratings)
        self.targets, self.k, self.scale = np.asarray(targets), k, scale
        rated_target = np.asarray(genuine_ratings[:, self.targets].sum(axis=1)).ravel() > 0
        self.queries = genuine_ratings[np.flatnonzero(~rated_target)]
        self.clean = knn_predict(genuine_ratings, self.queries, self.targets, k, scale)

    def shift(self, removed: np.ndarray | None = None) -> float:
        """Mean shift with the users ``removed`` (indices into the attacked data) left out."""
        keep = np.ones(self.attacked.shape[0], dtype=bool)
        if removed is not None:
            keep[np.asarray(removed, dtype=np.int64)] = False
        pred = knn_predict(self.attacked[keep], self.queries, self.targets, self.k, self.scale)
        return float(np.mean(pred - self.clean))


def _judge(setting: str, raw: dict[str, np.ndarray], lengths: np.ndarray, rows: np.ndarray,
           labels: np.ndarray, n_cal: int, config: AnomalyConfig, meter: ShiftMeter
           ) -> list[DetectorOutcome]:
    """Normalise, calibrate on the first ``n_cal`` rows (genuine), evaluate on the rest."""
    if np.any(labels[:n_cal]):
        raise RuntimeError("an injected profile reached the calibration set")
    outcomes = []
    for name in config.detectors:
        base, method = DETECTOR_SPECS[name]
        scores = normalize(raw[base], lengths, method, n_cal)
        threshold = calibrate_threshold(scores[:n_cal], config.fpr)
        test_scores, test_labels = scores[n_cal:], labels[n_cal:]
        metrics = detection_metrics(test_scores, test_labels, threshold)
        flagged = rows[n_cal:][test_scores > threshold]
        metrics["shift_filtered"] = meter.shift(flagged)
        outcomes.append(DetectorOutcome(setting, name, metrics, test_scores, test_labels))
    return outcomes


def evaluate_attack(genuine: Interactions, attack: Attack, config: AnomalyConfig,
                    split: UserSplit, clean: CleanSetting | None = None) -> CellResult:
    """Every configured detector and setting on one attack.

    ``clean`` (fitted on ``genuine``'s training users) is required for the clean setting; the
    contaminated setting fits fresh models on ``attack.interactions``.
    """
    start = _now()
    if attack.interactions.n_users != genuine.n_users + len(attack.fake_users) or np.any(
            attack.is_fake[:genuine.n_users]):
        raise ValueError("attack must be built from `genuine` by recsys_ebm.anomaly.attacks.inject")
    genuine_ratings = genuine.rating_matrix
    attacked = attack.interactions.rating_matrix
    fakes = attack.fake_users
    levels = np.unique(genuine.ratings)
    meter = ShiftMeter(genuine_ratings, attacked, attack.targets, config.knn_k,
                       (float(levels[0]), float(levels[-1])))
    outcomes: list[DetectorOutcome] = []
    n_cal = len(split.calibration)
    if "clean" in config.settings:
        if clean is None:
            raise ValueError("the clean setting needs a CleanSetting fitted on the genuine users")
        raw, lengths = clean.scores_with(attacked[fakes])
        rows = np.concatenate([clean.rows, fakes])
        outcomes += _judge("clean", raw, lengths, rows, attack.is_fake[rows], n_cal, config, meter)
    if "contaminated" in config.settings:
        test = np.setdiff1d(np.arange(genuine.n_users), split.calibration)
        rows = np.concatenate([split.calibration, test, fakes])
        profiles = attacked[rows]
        raw = {}
        for base in config.bases:
            model = config.make(base).fit(attacked)
            raw[base] = model.score(profiles, rows)
        outcomes += _judge("contaminated", raw, profile_lengths(profiles), rows,
                           attack.is_fake[rows], n_cal, config, meter)
    seconds = _now() - start
    cfg = attack.config
    logger.info("%s %s attack %.0f%% / filler %.0f%% (seed %d) in %.1fs: %s", cfg.kind, cfg.intent,
                100 * cfg.attack_size, 100 * cfg.filler_size, cfg.seed, seconds,
                ", ".join(f"{o.setting[:5]}/{o.detector} {o.metrics['auc']:.3f}" for o in outcomes))
    return CellResult(cfg, len(fakes), attack.n_filler,
                      genuine.item_map.to_raw(attack.targets).tolist(), meter.shift(None),
                      outcomes, seconds, split.calibration.copy())


def evaluate_interactions(genuine_ratings: sp.csr_matrix, split: UserSplit, clean: CleanSetting,
                          config: AnomalyConfig) -> list[dict]:
    """Interaction-level detection in the clean setting: corrupt the test users' profiles
    (:func:`corrupt_profiles`), score every rating, calibrate on the calibration users'
    (uncorrupted) ratings. One row per (corruption, detector)."""
    genuine_ratings = _as_ratings(genuine_ratings)
    levels = np.unique(genuine_ratings.data)
    models: dict[str, Detector] = {"item_z": clean.item_z}
    models.update({b: clean.models[b] for b in ("crbm", "dpebm") if b in clean.models})
    calibration = genuine_ratings[split.calibration]
    cal_scores = {name: m.interaction_scores(calibration).data for name, m in models.items()}
    out = []
    for kind in CORRUPTIONS:
        rng = np.random.default_rng([config.split_seed, 20, CORRUPTIONS.index(kind)])
        corrupted, flags = corrupt_profiles(genuine_ratings[split.test], kind,
                                            config.interaction_share, levels, rng)
        for name in INTERACTION_DETECTORS:
            if name not in models:
                continue
            scores = models[name].interaction_scores(corrupted).data.astype(np.float64)
            threshold = calibrate_threshold(cal_scores[name], config.fpr)
            metrics = detection_metrics(scores, flags, threshold)
            out.append({"corruption": kind, "detector": name, "n_ratings": int(len(flags)),
                        "n_corrupted": int(flags.sum()), **metrics})
        logger.info("interaction-level, %s: %s", kind, ", ".join(
            f"{r['detector']} {r['auc']:.3f}" for r in out if r["corruption"] == kind))
    return out


# ----------------------------------------------------------------------------- grid and report

#: The cells the issue's bar is judged on: 5% attack, 5% filler.
BAR_ATTACKS = ("average", "random", "bandwagon")
BAR_SIZE = 0.05
BAR_AUC = 0.95
#: (setting, detector) pairs whose score histograms the report plots.
PLOTTED = (("clean", "crbm_raw"), ("clean", "crbm_per_rating"), ("clean", "dpebm"),
           ("contaminated", "crbm_raw"), ("contaminated", "crbm"), ("contaminated", "dpebm"))


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


def run_grid(genuine: Interactions, config: AnomalyConfig | None = None, *,
             kinds: tuple[str, ...] = ATTACK_KINDS, attack_sizes: tuple[float, ...] = (0.01, 0.05, 0.1),
             filler_sizes: tuple[float, ...] = (0.03, 0.05, 0.1), intent: str = "push",
             seed: int = 0, bar_seeds: tuple[int, ...] = (1, 2),
             on_cell=None) -> GridResult:
    """Every attack cell x setting x detector, plus extra attack seeds for the bar cells.

    The clean-setting models are fitted once; the contaminated ones once per cell.
    ``on_cell(CellResult)`` is called after each cell (e.g. to log it).
    """
    config = config or AnomalyConfig()
    start = _now()
    split = split_users(genuine.n_users, config.calibration_share, config.test_share,
                        config.split_seed)
    genuine_ratings = genuine.rating_matrix
    clean = CleanSetting(genuine_ratings, split, config) if "clean" in config.settings else None
    cells = [(k, a, f, seed) for k in kinds for a in attack_sizes for f in filler_sizes]
    cells += [(k, BAR_SIZE, BAR_SIZE, s) for k in kinds if k in BAR_ATTACKS
              and BAR_SIZE in attack_sizes and BAR_SIZE in filler_sizes
              for s in bar_seeds if s != seed]
    rows: list[dict] = []
    histograms: dict = {}
    for kind, size, filler, cell_seed in cells:
        attack_config = AttackConfig(kind=kind, intent=intent, attack_size=size,
                                     filler_size=filler, seed=cell_seed)
        cell = evaluate_attack(genuine, inject(genuine, attack_config), config, split, clean)
        rows += cell.rows()
        if math.isclose(size, BAR_SIZE) and math.isclose(filler, BAR_SIZE) and cell_seed == seed:
            for o in cell.outcomes:
                histograms[(o.setting, kind, o.detector)] = (o.scores, o.labels,
                                                             o.metrics["threshold"])
        if on_cell is not None:
            on_cell(cell)
    interactions = (evaluate_interactions(genuine_ratings, split, clean, config)
                    if clean is not None else [])
    info = {"n_users": genuine.n_users, "n_items": genuine.n_items, "n_ratings": len(genuine),
            "n_train": len(split.train), "n_calibration": len(split.calibration),
            "n_test": len(split.test), "seconds": _now() - start, "intent": intent, "seed": seed,
            "bar_seeds": sorted({seed, *bar_seeds})}
    return GridResult(pd.DataFrame(rows), pd.DataFrame(interactions), histograms, config, info)


def bar_check(table: pd.DataFrame) -> pd.DataFrame:
    """The issue's bar per setting: the energy detector with the best mean AUC over the 5% / 5%
    average, random and bandwagon cells (each averaged over seeds) against the better classic
    baseline on each attack. One row per (setting, attack)."""
    cells = table[np.isclose(table["attack_size"], BAR_SIZE)
                  & np.isclose(table["filler_size"], BAR_SIZE)
                  & table["attack"].isin(BAR_ATTACKS)]
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
                        "pass": bool(value >= BAR_AUC and (not classic or value >= best_classic))})
    return pd.DataFrame(out)


def _fmt(value, digits: int = 3) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "**no**"
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub markdown table of ``frame`` (index dropped)."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(_fmt(v, digits) for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _pivot(table: pd.DataFrame, setting: str, metric: str, seed: int) -> pd.DataFrame:
    sub = table[(table["setting"] == setting) & (table["seed"] == seed)]
    pivot = sub.pivot_table(index=["attack", "attack_size", "filler_size"], columns="detector",
                            values=metric, sort=False)
    order = [d for d in DETECTOR_SPECS if d in pivot.columns]
    pivot = pivot[order].reset_index()
    pivot["attack_size"] = (100 * pivot["attack_size"]).round(0).astype(int).astype(str) + "%"
    pivot["filler_size"] = (100 * pivot["filler_size"]).round(0).astype(int).astype(str) + "%"
    return pivot


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _summary_lines(table: pd.DataFrame, seed: int) -> list[str]:
    """Means over the grid's cells and the facts the notes below them rest on."""
    grid = table[table["seed"] == seed]
    settings = [s for s in SETTINGS if (grid["setting"] == s).any()]
    detectors = [d for d in DETECTOR_SPECS if (grid["detector"] == d).any()]
    n_cells = grid.groupby(["attack", "attack_size", "filler_size"]).ngroups
    auc = grid.pivot_table(index="detector", columns="setting", values="auc").reindex(detectors)
    dr = grid.pivot_table(index="detector", columns="setting", values="detection_rate")
    shift = grid.pivot_table(index="detector", columns="setting", values="shift_filtered")
    frame = pd.DataFrame({"detector": detectors})
    for setting in settings:
        frame[f"AUC {setting}"] = auc[setting].to_numpy()
        frame[f"detection rate {setting}"] = dr[setting].reindex(detectors).to_numpy()
        frame[f"shift after filtering {setting}"] = shift[setting].reindex(detectors).to_numpy()
    lines = [f"## Summary: means over the {n_cells} attack cells (attack seed {seed})", "",
             markdown_table(frame), "",
             f"Mean prediction shift of the target with the attack and no defence: "
             f"{grid.groupby(['attack', 'attack_size', 'filler_size'])['shift_attacked'].first().mean():+.3f} "
             "stars (per attack: " + ", ".join(
                 f"{k} {v:+.3f}" for k, v in
                 grid.groupby("attack")["shift_attacked"].mean().items()) + ").", ""]
    cells = grid.pivot_table(index=["setting", "attack", "attack_size", "filler_size"],
                             columns="detector", values="auc")
    energy = [d for d in ENERGY_DETECTORS if d in cells.columns]
    classic = [d for d in CLASSIC_DETECTORS if d in cells.columns]
    notes = []
    if energy and classic:
        wins = cells[energy].max(axis=1) >= cells[classic].max(axis=1)
        counts = wins.groupby(level="setting").agg(["sum", "count"])
        notes.append("Cells where the best energy detector's AUC is at least the better classic "
                     "baseline's: " + ", ".join(f"{s} {int(r['sum'])}/{int(r['count'])}"
                                                for s, r in counts.iterrows()) + ".")
        losses = cells[~wins]
        if len(losses):
            notes.append("Cells where it loses: " + "; ".join(
                f"{s} {a} {100 * z:g}%/{100 * f:g}% ({cells.loc[(s, a, z, f), energy].max():.4f} vs "
                f"{cells.loc[(s, a, z, f), classic].max():.4f})" for s, a, z, f in losses.index) + ".")
    if "contaminated" in settings and {"crbm", "crbm_per_rating", "crbm_raw"} <= set(detectors):
        notes.append(
            "Contaminated setting: the one-sided CRBM scores average AUC "
            f"{auc.loc['crbm_per_rating', 'contaminated']:.3f} (per rating) and "
            f"{auc.loc['crbm_raw', 'contaminated']:.3f} (raw); below 0.5 means the model, trained "
            "on the attack, gives the injected profiles *lower* free energy than genuine ones. "
            f"The two-sided `crbm` averages {auc.loc['crbm', 'contaminated']:.3f}.")
    if "clean" in settings and {"crbm_per_rating", "dpebm"} <= set(detectors):
        avg = grid[(grid["setting"] == "clean") & (grid["attack"] == "average")]
        if len(avg):
            by = avg.groupby("detector")["auc"].mean()
            best_crbm = max((d for d in by.index if d.startswith("crbm")), key=lambda d: by[d])
            notes.append(
                f"Clean setting, average attack: the best CRBM score ({best_crbm}) averages AUC "
                f"{by[best_crbm]:.3f}, dpebm {by['dpebm']:.3f}. Average-attack ratings sit at "
                "each item's mean, the most typical values there are, and the conditional RBM "
                "models the ratings *given* which items were rated, so the giveaway (filler items "
                "drawn uniformly from the catalog, mostly obscure) is invisible to its free "
                "energy; the dot-product EBM models exactly which items a user picks.")
    if notes:
        lines += ["Notes:", "", *[f"- {n}" for n in notes], ""]
    return lines


def plot_histograms(result: GridResult, path) -> None:
    """Score histograms, genuine test users vs injected profiles, of the 5% / 5% cells."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kinds = [k for k in ATTACK_KINDS if any(key[1] == k for key in result.histograms)]
    panels = [p for p in PLOTTED if any(key[0] == p[0] and key[2] == p[1] for key in result.histograms)]
    if not kinds or not panels:
        raise ValueError("no 5% / 5% cell to plot")
    figure = Figure(figsize=(3.0 * len(panels), 2.3 * len(kinds)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(kinds), len(panels), squeeze=False)
    for i, kind in enumerate(kinds):
        for j, (setting, detector) in enumerate(panels):
            ax = axes[i][j]
            key = (setting, kind, detector)
            if key not in result.histograms:
                ax.set_axis_off()
                continue
            scores, labels, threshold = result.histograms[key]
            bins = np.histogram_bin_edges(scores[np.isfinite(scores)], bins=40)
            ax.hist(scores[~labels], bins=bins, density=True, alpha=0.6, label="genuine")
            ax.hist(scores[labels], bins=bins, density=True, alpha=0.6, label="injected")
            if np.isfinite(threshold):
                ax.axvline(threshold, color="black", linestyle="--", linewidth=1)
            ax.set_title(f"{kind}: {setting} {detector}\nAUC {roc_auc(scores, labels):.3f}",
                         fontsize=8)
            ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=7)
    figure.suptitle("Anomaly scores of genuine test users vs injected profiles (5% attack, "
                    "5% filler; dashed: threshold at the target FPR)", fontsize=9)
    figure.savefig(path, dpi=110)


def write_report(result: GridResult, markdown_path, plot_path, *, dataset: str = "ml-100k",
                 command: str = "make anomaly") -> str:
    """Write the markdown report and the histogram plot; returns the markdown text."""
    from pathlib import Path

    markdown_path, plot_path = Path(markdown_path), Path(plot_path)
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    plot_histograms(result, plot_path)
    config, info, table = result.config, result.info, result.table
    seed = info["seed"]
    lines = [
        f"# Shilling-attack detection on {dataset}: energy vs classic detectors", "",
        f"Generated by `{command}` (`recsys_ebm.anomaly.run_grid`) in {info['seconds'] / 60:.1f} "
        "min; every number below comes from that run.", "",
        "## Setup", "",
        f"- Data: {info['n_users']} genuine users, {info['n_items']} items, {info['n_ratings']} "
        f"ratings. Genuine users split once (seed {config.split_seed}): {info['n_train']} train "
        f"(clean-setting models only), {info['n_calibration']} calibration, {info['n_test']} test.",
        f"- Attacks (`recsys_ebm.anomaly.attacks`, {info['intent']} intent, one target item chosen by the "
        "documented rule, attack seed "
        f"{seed}): random, average, bandwagon (5 most-rated items at the maximum), segment (5 "
        "items nearest the target at the maximum, filler at the minimum); attack size = fake "
        "profiles as a share of genuine users, filler size = share of the catalog rated as filler.",
        "- Settings. **clean**: models fitted on the genuine training users only; calibration, "
        "test and injected profiles arrive later and are scored by fold-in. **contaminated**: "
        "models fitted on all genuine users plus the attack, everyone scored in-sample; test "
        "users are all genuine users outside the calibration set plus the injected ones.",
        f"- Threshold: conformal (1 - {config.fpr:g}) quantile of the calibration users' scores "
        "(injected users are never in the calibration set). Reported at that threshold: achieved "
        "FPR and detection rate on the test users, precision, F1; ROC AUC is threshold-free. "
        f"With {info['n_calibration']} calibration users the threshold is their "
        f"{_ordinal(math.ceil((info['n_calibration'] + 1) * (1 - config.fpr) - 1e-9))} smallest "
        "score and a new genuine user exceeds it with probability "
        f"{math.floor(config.fpr * (info['n_calibration'] + 1)) / (info['n_calibration'] + 1):.4f}"
        " (conformal guarantee: at most the target). In the clean setting the genuine test users "
        "and their scores are the same in every cell, so its achieved FPR is one draw per "
        f"detector on {info['n_test']} users (binomial sd about "
        f"{math.sqrt(config.fpr * (1 - config.fpr) / max(info['n_test'], 1)):.3f}), repeated "
        "down the column.",
        f"- Models, short training (one per cell in the contaminated setting): CRBM user-oriented, "
        f"F={config.crbm.n_hidden} hiddens, {config.crbm.epochs} epochs CD, conditional="
        f"{config.crbm.conditional}; dot-product EBM dim {config.dpebm.dim}, {config.dpebm.epochs} "
        f"epochs exact softmax, fold-in {config.dpebm.fold_in_epochs} steps.",
        "- Detectors: `crbm` = |z|, z = the free energy per rating F / n_u z-scored against the "
        "genuine calibration profiles of similar length (local-linear kernel fit in log n_u, "
        "each calibration user left out of its own z; two-sided typicality test, the default); "
        "`crbm_length_z` = z, one-sided; `crbm_per_rating` = F / n_u; `crbm_raw` = F; "
        "`dpebm` = mean -log p(i|u) of "
        "the profile's items; `rdma` = RDMA (Chirita et al. 2005); `pca` = PCA-VarSelect "
        "(Mehta & Nejdl 2009, 3 components).",
        f"- Prediction shift: mean change of the target's predicted rating by a user-kNN "
        f"recommender (k={config.knn_k}, mean-centred cosine) for genuine users who did not rate "
        "it, relative to the genuine data alone: `shift_attacked` with the attack, "
        "`shift_filtered` after removing the profiles the detector flagged.", "",
    ]
    bar = bar_check(table)
    if len(bar):
        lines += ["## The bar (5% attack, 5% filler)", "",
                  f"Best energy detector per setting (highest mean AUC over the three attacks; "
                  f"attack seeds {info['bar_seeds']}, mean ± std) against the better of RDMA and "
                  f"PCA-VarSelect; pass = AUC >= {BAR_AUC} and >= the classic one.", "",
                  markdown_table(bar), ""]
    lines += _summary_lines(table, seed)
    for setting in config.settings:
        if not (table["setting"] == setting).any():
            continue
        lines += [f"## ROC AUC, {setting} setting (attack seed {seed})", "",
                  markdown_table(_pivot(table, setting, "auc", seed)), ""]
    for setting in config.settings:
        if not (table["setting"] == setting).any():
            continue
        lines += [f"## Detection rate at {config.fpr:g} target FPR, {setting} setting", "",
                  markdown_table(_pivot(table, setting, "detection_rate", seed)), "",
                  f"Achieved FPR on the genuine test users, {setting} setting:", "",
                  markdown_table(_pivot(table, setting, "fpr", seed)), ""]
    if len(result.interactions):
        lines += ["## Interaction-level scores (clean setting)", "",
                  f"{100 * config.interaction_share:g}% of each test user's ratings (at least one) "
                  "corrupted: `flip` moves a rating to the far end of the scale, `insert` adds an "
                  "unrated item with a uniformly random rating. `crbm` = -log p(v_ui | the rest of "
                  "the profile) (exact), `dpebm` = -log p(i | u) (sees the item, not the rating), "
                  "`item_z` = |r_ui - mean_i| / std_i. Threshold calibrated on the calibration "
                  "users' uncorrupted ratings.", "",
                  markdown_table(result.interactions[["corruption", "detector", "n_ratings",
                                                      "n_corrupted", "auc", "fpr",
                                                      "detection_rate", "precision", "f1"]]), ""]
    lines += [f"![score histograms]({plot_path.name})", "",
              "## Every cell", "",
              "One row per attack cell, seed, setting and detector.", ""]
    full = table[["setting", "attack", "attack_size", "filler_size", "seed", "detector", "auc",
                  "fpr", "detection_rate", "precision", "f1", "shift_attacked",
                  "shift_filtered"]].copy()
    full["attack_size"] = (100 * full["attack_size"]).round(0).astype(int).astype(str) + "%"
    full["filler_size"] = (100 * full["filler_size"]).round(0).astype(int).astype(str) + "%"
    lines += [markdown_table(full), ""]
    text = "\n".join(lines)
    markdown_path.write_text(text)
    logger.info("report written to %s (plot %s)", markdown_path, plot_path)
    return text
