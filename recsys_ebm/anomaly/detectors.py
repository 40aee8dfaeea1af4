"""Anomaly detectors that score users (higher = more anomalous) from a users x items CSR of
ratings, and the registry :data:`DETECTORS` that names them.

Registered detectors:

- ``crbm*``: the free energy F(V, r) of a user's profile under a user-oriented RBM
  (``recsys_ebm.models.crbm``; by default its joint visible layer, F(r, v) of which items
  were rated and how). F grows with the number of ratings, so four versions are
  registered: ``crbm_raw`` (F), ``crbm_per_rating`` (F / n_u), ``crbm_length_z`` (F / n_u
  z-scored against genuine profiles of similar length, see ``recsys_ebm.anomaly.scoring``) and
  ``crbm``, the default, |z|: a two-sided typicality test. Trained on data that holds the
  attack, the model memorises the near-duplicate fake profiles and gives them energies far
  *below* genuine ones, which every one-sided score ranks as the least suspicious users (ROC AUC
  near 0 on ML-100K); |z| flags both tails. (This default was chosen after seeing that
  inversion; the one-sided versions stay in every report.)
- ``dpebm``: mean energy -1/n_u sum_{i in u} log p(i | u) of the profile's items under the
  dot-product EBM (``recsys_ebm.models.dot_ebm``): which items, not their ratings.
- ``multvae*``: the negative ELBO of the profile's items under Mult-VAE
  (``recsys_ebm.models.multvae``), the likelihood-based peer of the energies: which items, not
  their ratings, like ``dpebm``. -ELBO = E_q[-sum_i x_i log pi_i(z)] + KL(q(z | x) || p(z)) (beta
  = 1, the bound on -log p(x) up to the multinomial coefficient), estimated with seeded samples
  of z. Its encoder is amortised, so in-sample and fold-in scores coincide. Registered as
  ``multvae`` (-ELBO / n_u), ``multvae_raw`` (-ELBO) and ``multvae_z`` (|z| against genuine
  profiles of similar length, the two-sided test of ``crbm``).
- ``rdma``: Rating Deviation from Mean Agreement (Chirita, Nejdl & Zamfir 2005),
  1/n_u sum_{i in u} |r_ui - mean_i| / n_i.
- ``pca``: PCA-VarSelect (Mehta & Nejdl 2009): users' ratings z-scored per user (missing 0),
  users taken as the variables; the suspicion is minus the sum of a user's squared loadings on
  the first 3 principal components (attack profiles, highly correlated among themselves and
  with little of the variance, have the smallest).
- ``random``: i.i.d. uniform scores, the control (ROC AUC 0.5 by construction).

:class:`ItemZDetector` (|r_ui - mean_i| / std_i) is the classic baseline of the
interaction-level scores that the ``crbm`` and ``dpebm`` models also give.

Detectors use only the models' public methods (``DotEBM.score``, ``CRBM.free_energy``,
``CRBM.predict_proba_all``, ``MultVAE.negative_elbo``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from recsys_ebm.anomaly.attacks import ItemStats
from recsys_ebm.anomaly.ratings import CHUNK_USERS, as_ratings, row_means, row_of
from recsys_ebm.models.crbm import CRBM, CRBMConfig
from recsys_ebm.models.dot_ebm import DotEBM, DotEBMConfig
from recsys_ebm.models.multvae import MultVAE, MultVAEConfig

# ----------------------------------------------------------------------------- interface


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


# ----------------------------------------------------------------------------- classic detectors


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
        ratings = as_ratings(ratings)
        csc = ratings.tocsc()
        self.counts = np.diff(csc.indptr).astype(np.float64)
        sums = np.asarray(csc.sum(axis=0), dtype=np.float64).ravel()
        global_mean = float(ratings.data.mean()) if ratings.nnz else 0.0
        self.means = np.where(self.counts > 0, sums / np.maximum(self.counts, 1), global_mean)
        return self

    def score(self, profiles: sp.csr_matrix, user_ids: np.ndarray | None = None) -> np.ndarray:
        profiles = as_ratings(profiles)
        items = profiles.indices
        counts = self.counts[items] + (1.0 if user_ids is None else 0.0)
        dev = np.abs(profiles.data - self.means[items]) / np.maximum(counts, 1.0)
        return row_means(dev, row_of(profiles), profiles.shape[0])

    def interaction_scores(self, profiles: sp.csr_matrix,
                           user_ids: np.ndarray | None = None) -> sp.csr_matrix:
        """|r_ui - mean_i| / n_i per rating."""
        profiles = as_ratings(profiles)
        counts = self.counts[profiles.indices] + (1.0 if user_ids is None else 0.0)
        out = profiles.copy()
        out.data = (np.abs(profiles.data - self.means[profiles.indices]) / np.maximum(counts, 1.0))
        return out


class ItemZDetector(Detector):
    """|r_ui - mean_i| / std_i: how unusual a rating is for its item (interaction baseline)."""

    name = "item_z"

    def fit(self, ratings: sp.csr_matrix) -> ItemZDetector:
        stats = ItemStats.from_ratings(as_ratings(ratings))
        self.means, self.stds = stats.means, np.maximum(stats.stds, 1e-3)
        return self

    def interaction_scores(self, profiles: sp.csr_matrix,
                           user_ids: np.ndarray | None = None) -> sp.csr_matrix:
        profiles = as_ratings(profiles)
        out = profiles.copy()
        out.data = np.abs(profiles.data - self.means[profiles.indices]) / self.stds[profiles.indices]
        return out

    def score(self, profiles: sp.csr_matrix, user_ids: np.ndarray | None = None) -> np.ndarray:
        per = self.interaction_scores(profiles, user_ids)
        return row_means(per.data.astype(np.float64), row_of(per), per.shape[0])


def user_zscores(profiles: sp.csr_matrix) -> sp.csr_matrix:
    """Each row's ratings z-scored over the row's rated items (constant rows -> 0): CSR (n, m)."""
    profiles = as_ratings(profiles)
    rows = row_of(profiles)
    n = profiles.shape[0]
    values = profiles.data.astype(np.float64)
    means = row_means(values, rows, n)
    var = row_means((values - means[rows]) ** 2, rows, n)
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


# ----------------------------------------------------------------------------- energy detectors


def default_crbm_config() -> CRBMConfig:
    """The detector's CRBM: the joint visible layer (which items a profile rates, and how:
    the pattern of rated items is what injected profiles get wrong), short training (fixed
    epochs, no carved validation), since a detection grid fits one model per cell. The
    rating-only user RBM (``crbm.visible="ratings"``, lr 0.002, batch 32) scored ROC AUC 0.449 on
    the clean 5% / 5% average attack on ML-100K, this one 0.993."""
    return CRBMConfig(orientation="user", visible="joint", n_hidden=100, epochs=20, batch_size=16,
                      lr=0.1, val_fraction=0.0, seed=0)


def default_dpebm_config() -> DotEBMConfig:
    """The detector's dot-product EBM: the plain dot product with L2, not the ranking default
    (cosine energy, no L2). Cosine energies fit injected profiles as easily as genuine ones: the
    detector's AUC on a contaminated random attack (5% / 5%, ML-100K) fell from 1.00 to 0.63."""
    return DotEBMConfig(dim=64, similarity="dot", epochs=30, lr=3e-3, l2=0.01, fold_in_epochs=100,
                        seed=0)


class DotEBMDetector(Detector):
    """Mean energy (NLL under p(i | u)) of a profile's items under the dot-product EBM."""

    name = "dpebm"

    def __init__(self, config: DotEBMConfig | None = None):
        self.config = config or default_dpebm_config()
        self.model: DotEBM | None = None

    def fit(self, ratings: sp.csr_matrix) -> DotEBMDetector:
        self.model = DotEBM(self.config).fit(as_ratings(ratings), show_progress=False)
        return self

    def _nll(self, profiles: sp.csr_matrix, user_ids: np.ndarray | None) -> sp.csr_matrix:
        """-log p(i | u) at each stored entry of ``profiles``: CSR like ``profiles``."""
        profiles = as_ratings(profiles)
        out = profiles.copy()
        out.data = out.data.astype(np.float32)
        for start in range(0, profiles.shape[0], CHUNK_USERS):
            stop = min(start + CHUNK_USERS, profiles.shape[0])
            rows = profiles[start:stop]
            if user_ids is None:
                logits = self.model.score(np.arange(stop - start), rows).astype(np.float64)
            else:
                logits = self.model.score(np.asarray(user_ids)[start:stop]).astype(np.float64)
            logits /= self.model.config.temperature
            peak = logits.max(axis=1, keepdims=True)
            log_z = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
            local = row_of(rows)
            entry = slice(profiles.indptr[start], profiles.indptr[stop])
            out.data[entry] = log_z[local] - logits[local, rows.indices]
        return out

    def score(self, profiles: sp.csr_matrix, user_ids: np.ndarray | None = None) -> np.ndarray:
        nll = self._nll(profiles, user_ids)
        return row_means(nll.data.astype(np.float64), row_of(nll), nll.shape[0])

    def interaction_scores(self, profiles: sp.csr_matrix,
                           user_ids: np.ndarray | None = None) -> sp.csr_matrix:
        """-log p(i | u) of each rated item (the rating value plays no part)."""
        return self._nll(profiles, user_ids)


class CRBMDetector(Detector):
    """Free energy F(V, r) of each profile under a user-oriented conditional RBM.

    ``score`` returns F itself; length normalisation is applied on top
    (``recsys_ebm.anomaly.scoring.normalize``). ``interaction_scores`` gives
    -log p(v_ui = r_ui | the user's other ratings, r), exact.
    """

    name = "crbm"

    def __init__(self, config: CRBMConfig | None = None):
        config = config or CRBMConfig(orientation="user")
        if config.orientation != "user":
            raise ValueError("the CRBM detector scores user profiles: it needs orientation='user'")
        self.config = config
        self.model: CRBM | None = None

    def fit(self, ratings: sp.csr_matrix) -> CRBMDetector:
        self.model = CRBM(self.config).fit(as_ratings(ratings), show_progress=False)
        return self

    def score(self, profiles: sp.csr_matrix, user_ids: np.ndarray | None = None) -> np.ndarray:
        # For the user orientation F is a function of the profile alone, so in-sample and
        # fold-in coincide; passing the profile also covers ratings carved out for validation.
        profiles = as_ratings(profiles)
        return self.model.free_energy(np.arange(profiles.shape[0]), profiles)

    def interaction_scores(self, profiles: sp.csr_matrix,
                           user_ids: np.ndarray | None = None) -> sp.csr_matrix:
        """-log p(v_ui = r_ui | V_u without i, r_u) for every rating of ``profiles``.

        The profile is conditioned on as given (in-sample and fold-in coincide for the user
        orientation: a user's hidden input is a function of their ratings). The probabilities
        are ``CRBM.predict_proba_all`` of the profiles, which gives a rated item the
        distribution given the user's other ratings.
        """
        profiles = as_ratings(profiles)
        levels = self.model.levels
        pos = np.clip(np.searchsorted(levels, profiles.data.astype(np.float64)), 0, len(levels) - 1)
        if np.any(np.abs(levels[pos] - profiles.data) > 1e-4):
            raise ValueError(f"ratings must be among the model's levels {levels.tolist()}")
        out = profiles.copy()
        out.data = np.empty(profiles.nnz, dtype=np.float32)
        for start in range(0, profiles.shape[0], CHUNK_USERS):
            stop = min(start + CHUNK_USERS, profiles.shape[0])
            rows = profiles[start:stop]
            proba = self.model.predict_proba_all(np.arange(stop - start), rows)
            entry = slice(profiles.indptr[start], profiles.indptr[stop])
            out.data[entry] = -np.log(proba[row_of(rows), rows.indices, pos[entry]])
        return out


def default_multvae_config() -> MultVAEConfig:
    """The detector's Mult-VAE: the paper's architecture (600 -> 200), short training without
    validation (one model per cell, as for the CRBM and the dot-product EBM): 30 epochs in
    mini-batches of 100 users, beta annealed to 0.2 over the first 100 updates (10 epochs of
    ML-100K). On the 5% / 5% average attack 30 and 60 epochs both gave ROC AUC 1.000."""
    return MultVAEConfig(epochs=30, batch_size=100, total_anneal_steps=100, beta_max=0.2, seed=0)


class MultVAEDetector(Detector):
    """Negative ELBO of each profile (its binary pattern of rated items) under Mult-VAE.

    ``samples`` draws of z (seeded) estimate the expected log-likelihood; the KL is exact.
    """

    name = "multvae"

    def __init__(self, config: MultVAEConfig | None = None, samples: int = 8, seed: int = 0):
        self.config = config or default_multvae_config()
        self.samples = samples
        self.seed = seed
        self.model: MultVAE | None = None

    def fit(self, ratings: sp.csr_matrix) -> MultVAEDetector:
        self.model = MultVAE(self.config).fit(as_ratings(ratings), show_progress=False)
        return self

    def score(self, profiles: sp.csr_matrix, user_ids: np.ndarray | None = None) -> np.ndarray:
        # the encoder is amortised: a profile's ELBO is a function of the profile alone
        return self.model.negative_elbo(as_ratings(profiles), samples=self.samples, seed=self.seed)


# ----------------------------------------------------------------------------- registry


class DetectorOptions(Protocol):
    """What the registry's builders read: the model configs and the seed of the seeded
    classic detectors (``recsys_ebm.anomaly.protocol.AnomalyConfig`` has them)."""

    crbm: CRBMConfig
    dpebm: DotEBMConfig
    multvae: MultVAEConfig
    split_seed: int


@dataclass(frozen=True)
class DetectorSpec:
    """One registered detector.

    Attributes
    ----------
    model : name of the fitted model it scores with; the variants of one model share it, so
        it is fitted once for all of them.
    build : a fresh, unfitted model from the options.
    normalization : applied to the model's raw scores (``recsys_ebm.anomaly.scoring``).
    family : "energy" (an energy-based model), "vae" (the variational autoencoder the energies
        are compared with), "classic" (a published baseline) or "control".
    interaction : the model also scores single ratings (``Detector.interaction_scores``).
    """

    model: str
    build: Callable[[DetectorOptions], Detector]
    normalization: str = "none"
    family: str = "classic"
    interaction: bool = False


def _crbm(options: DetectorOptions) -> Detector:
    return CRBMDetector(options.crbm)


def _dpebm(options: DetectorOptions) -> Detector:
    return DotEBMDetector(options.dpebm)


def _multvae(options: DetectorOptions) -> Detector:
    return MultVAEDetector(options.multvae, seed=options.split_seed)


#: Detector name -> spec, in report order.
DETECTORS: dict[str, DetectorSpec] = {
    "crbm": DetectorSpec("crbm", _crbm, "length_z_abs", "energy", interaction=True),
    "crbm_length_z": DetectorSpec("crbm", _crbm, "length_z", "energy", interaction=True),
    "crbm_per_rating": DetectorSpec("crbm", _crbm, "per_rating", "energy", interaction=True),
    "crbm_raw": DetectorSpec("crbm", _crbm, "none", "energy", interaction=True),
    "dpebm": DetectorSpec("dpebm", _dpebm, "none", "energy", interaction=True),
    "multvae": DetectorSpec("multvae", _multvae, "per_rating", "vae"),
    "multvae_z": DetectorSpec("multvae", _multvae, "length_z_abs", "vae"),
    "multvae_raw": DetectorSpec("multvae", _multvae, "none", "vae"),
    "rdma": DetectorSpec("rdma", lambda options: RDMADetector()),
    "pca": DetectorSpec("pca", lambda options: PCAVarSelectDetector(seed=options.split_seed)),
    "random": DetectorSpec("random", lambda options: RandomDetector(seed=options.split_seed),
                           family="control"),
}
#: Detectors built on an energy-based model, and the classic baselines they are compared with.
ENERGY_DETECTORS = tuple(name for name, spec in DETECTORS.items() if spec.family == "energy")
CLASSIC_DETECTORS = tuple(name for name, spec in DETECTORS.items() if spec.family == "classic")
VAE_DETECTORS = tuple(name for name, spec in DETECTORS.items() if spec.family == "vae")


def models_for(detectors: tuple[str, ...]) -> tuple[str, ...]:
    """The models the named detectors need, once each, in registry order."""
    return tuple(dict.fromkeys(spec.model for name, spec in DETECTORS.items() if name in detectors))


def interaction_models(models: tuple[str, ...]) -> tuple[str, ...]:
    """Those of ``models`` that give interaction-level scores, in registry order."""
    return tuple(dict.fromkeys(spec.model for spec in DETECTORS.values()
                               if spec.interaction and spec.model in models))


def build_model(model: str, options: DetectorOptions) -> Detector:
    """A fresh, unfitted detector model by its name (a :attr:`DetectorSpec.model`)."""
    for spec in DETECTORS.values():
        if spec.model == model:
            return spec.build(options)
    raise ValueError(f"unknown detector model {model!r}")
