"""The `CRBM` recommender: fitting, exact rating predictions, ranking scores, free energies
and persistence on top of `CRBMModule` and the case data."""

from __future__ import annotations

import copy
import logging

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as fn

from recsys_ebm.io import save_model_dir
from recsys_ebm.models.base import EpochCallback, Recommender, check_user_ids, check_user_items
from recsys_ebm.models.crbm import joint
from recsys_ebm.models.crbm.cases import (
    CaseData,
    carve,
    check_item_ids,
    inferred_levels,
    pairs_to_cases,
    pattern,
    rating_levels,
    to_cases,
)
from recsys_ebm.models.crbm.config import CRBMConfig
from recsys_ebm.models.crbm.joint_model import JointCRBM, JointTrainer
from recsys_ebm.models.crbm.module import CRBMModule, initial_visible_bias
from recsys_ebm.models.crbm.threads import threaded as _threaded
from recsys_ebm.models.crbm.trainer import CDTrainer, Replicas, TrainingMonitor
from recsys_ebm.models.training import TrainingHistory, run_training

logger = logging.getLogger(__name__)

MODEL_NAME = "crbm"


class CRBM(JointCRBM, Recommender):
    """Conditional RBM recommender over a users x items ratings CSR.

    ``fit`` a ratings CSR (values are ratings), then ``predict`` ratings of (user, item) pairs,
    ``predict_proba`` their exact distributions, ``score`` / ``recommend`` for ranking and
    ``free_energy`` for anomaly scoring.
    """
    is_ebm = True
    trains_in_epochs = True

    config_class = CRBMConfig
    fits_ratings = True

    def __init__(self, config: CRBMConfig | None = None, **options):
        if config is not None and options:
            raise ValueError("pass either a config or keyword options, not both")
        self.config = config if config is not None else CRBMConfig(**options)
        self.n_users = 0
        self.n_items = 0
        self.levels: np.ndarray | None = None  # float64 (K,)
        self.module: CRBMModule | None = None
        self.data: CaseData | None = None  # the trained cases' ratings and r
        self._x: torch.Tensor | None = None  # (n_cases, F) hidden inputs of the trained cases
        self.history = TrainingHistory()
        self.meta: dict = {}

    @property
    def uses_query_pattern(self) -> bool:
        """True when ``fit(implicit=...)`` and ``predict`` condition on which pairs are asked."""
        return self.config.conditional and self.config.include_queries

    # ------------------------------------------------------------------ input handling
    def zeros_are_interactions(self) -> bool:
        """A stored zero is a rating when the scale includes 0 (a level <= 0)."""
        levels = self.levels if self.levels is not None else self.config.levels
        return levels is not None and levels[0] <= 0

    def _check_ratings(self, ratings, name: str = "ratings") -> sp.csr_matrix:
        """float32 CSR copy with duplicates summed; unless a rating level is <= 0, stored zeros
        are dropped (they are no ratings) and negative values raise."""
        ratings = check_user_items(ratings).copy()  # it may share the caller's arrays
        ratings.sum_duplicates()
        if not self.zeros_are_interactions():
            ratings.eliminate_zeros()
            if np.any(ratings.data < 0):
                raise ValueError(f"{name} holds negative values; the CRBM needs ratings as values "
                                 "(a zero or negative rating needs CRBMConfig.levels that include it)")
        return ratings

    # ------------------------------------------------------------------ training
    @_threaded
    def fit(self, user_items: sp.csr_matrix, *, validation: sp.csr_matrix | None = None,
            implicit: sp.csr_matrix | None = None, callback: EpochCallback | None = None,
            show_progress: bool = True) -> CRBM:
        """Train on a users x items CSR of ratings.

        Parameters
        ----------
        user_items : CSR (n_users, n_items), values are ratings (one of ``levels``); stored
            zeros are no ratings unless a level is <= 0.
        validation : CSR (n_users, n_items) of held-out ratings for early stopping; when None and
            ``val_fraction > 0``, that share of ``user_items`` is carved out at random (seeded).
        implicit : binary CSR (n_users, n_items) of pairs that will be asked about (their
            ratings unknown), added to r when ``conditional`` and ``include_queries``.
        callback : ``callback(epoch, metrics)`` after every epoch.

        Metrics per epoch: ``val_rmse``, ``val_mae``, ``train_rmse`` (each of up to 20,000
        training ratings predicted exactly from its case's other ratings), ``recon_error``
        (squared error of the one-step reconstruction per rating), ``fe_train`` / ``fe_val`` /
        ``fe_gap`` (free energy per rating of each case's validation ratings vs an equal-sized
        random subset of its training ratings: grows when the model overfits), ``lr``, ``cd_k``.
        """
        level_csr = self._set_levels(user_items)
        extra = None
        if implicit is not None:
            extra = check_user_items(implicit, n_rows=self.n_users, n_items=self.n_items)
        train_csr, val_csr = self._validation_split(level_csr, validation)
        queries = extra
        if self.uses_query_pattern and val_csr is not None:
            queries = pattern(val_csr) if queries is None else pattern(queries + pattern(val_csr))
        history = self._train(train_csr, val_csr, queries, self.config.epochs, callback, show_progress)
        self.history = history
        return self

    def _set_levels(self, user_items) -> sp.csr_matrix:
        """Check the training ratings, set the shape and rating levels; the level CSR."""
        cfg = self.config
        ratings = self._check_ratings(user_items)
        if ratings.nnz == 0:
            raise ValueError("user_items has no ratings to train on")
        self.n_users, self.n_items = ratings.shape
        levels = cfg.levels if cfg.levels is not None else inferred_levels(ratings)
        self.levels = np.asarray(levels, dtype=np.float64)
        self._remember_seen(ratings)
        if len(self.levels) < 2:
            raise ValueError(f"the ratings have a single value {self.levels.tolist()}; "
                             "the CRBM needs at least 2 rating levels (set CRBMConfig.levels)")
        return rating_levels(ratings, self.levels)

    def _validation_split(self, level_csr: sp.csr_matrix, validation: sp.csr_matrix | None
                          ) -> tuple[sp.csr_matrix, sp.csr_matrix | None]:
        """(train, validation) level CSRs: the given validation ratings, a seeded carve of
        ``val_fraction`` of the training ratings, or no validation (also when it would be empty)."""
        cfg = self.config
        if validation is not None:
            validation = self._check_ratings(validation, "validation")
            check_user_items(validation, n_rows=self.n_users, n_items=self.n_items)
            train_csr, val_csr = level_csr, rating_levels(validation, self.levels)
        elif cfg.val_fraction > 0:
            train_csr, val_csr = carve(level_csr, cfg.val_fraction, np.random.default_rng([cfg.seed, 1]))
        else:
            return level_csr, None
        if val_csr.nnz == 0:
            logger.info("no validation ratings: training %d epochs without early stopping", cfg.epochs)
            return level_csr, None
        return train_csr, val_csr

    def _training_cases(self, train_csr: sp.csr_matrix, queries: sp.csr_matrix | None) -> CaseData:
        """The cases of a level CSR; with ``include_queries`` the asked pairs join r."""
        cfg = self.config
        cases = to_cases(train_csr, cfg.orientation)
        r_csr = None
        if cfg.conditional and cfg.include_queries and queries is not None:
            r_csr = pattern(pattern(cases) + to_cases(pattern(queries), cfg.orientation))
        return CaseData.from_csr(cases, r_csr)

    def replica_trainer(self, user_items: sp.csr_matrix, replicas: Replicas | None
                        ) -> CDTrainer | JointTrainer:
        """Set the model up on a users x items ratings CSR for a training loop run elsewhere,
        as one of several data-parallel copies (``replicas``; None: the only copy): the rating
        levels, the initial weights (alike on every copy: they come from ``seed``) and the
        trainer, whose ``epoch(e)`` runs one epoch. No validation and no early stopping; the model predicts
        with the trained (or EMA) weights as they stand."""
        level_csr = self._set_levels(user_items)
        generator = torch.Generator().manual_seed(self.config.seed)
        if self.is_joint:
            module, average, data = self._initial_joint_parts(level_csr, generator)
            return JointTrainer(self.config, module, average, data, generator, replicas)
        module, average, data = self._initial_parts(level_csr, None, generator)
        return CDTrainer(self.config, module, average, data, generator, replicas)

    def _initial_parts(self, train_csr: sp.csr_matrix, queries: sp.csr_matrix | None,
                       generator: torch.Generator) -> tuple[CRBMModule, CRBMModule, CaseData]:
        """The rating-only model's initial module, its EMA copy and the training cases; the
        model serves with the copy from now on."""
        cfg = self.config
        data = self._training_cases(train_csr, queries)
        n_levels = len(self.levels)
        module = CRBMModule(data.n_units, n_levels, cfg.n_hidden, cfg.conditional, generator, cfg.init_std)
        module.requires_grad_(False)
        with torch.no_grad():
            module.b.copy_(initial_visible_bias(data, n_levels))
        # with ema the model predicts with (and early-stops on) the averaged weights
        average = copy.deepcopy(module) if cfg.ema > 0 else module
        self.module, self.data, self._x = average, data, None
        return module, average, data

    def _train(self, train_csr: sp.csr_matrix, val_csr: sp.csr_matrix | None,
               queries: sp.csr_matrix | None, epochs: int, callback: EpochCallback | None,
               show_progress: bool) -> TrainingHistory:
        """One training run on a level CSR (users x items, values level + 1)."""
        cfg = self.config
        if self.is_joint:
            return self._train_joint(train_csr, val_csr, epochs, callback, show_progress)
        generator = torch.Generator().manual_seed(cfg.seed)
        module, average, data = self._initial_parts(train_csr, queries, generator)
        trainer = CDTrainer(cfg, module, average, data, generator)
        monitor = TrainingMonitor(self, data, val_csr, np.random.default_rng([cfg.seed, 2]))

        def train_epoch(epoch: int) -> dict[str, float]:
            metrics = trainer.epoch(epoch)
            self._x = None  # the weights changed
            return metrics

        history = run_training(
            train_epoch,
            epochs=epochs,
            # validation first so that the progress display shows val_rmse
            validate=lambda: {**monitor.metrics(), **trainer.schedule},
            monitor="val_rmse" if val_csr is not None else None,
            mode="min",
            patience=cfg.patience,
            snapshot=lambda: {k: v.detach().clone() for k, v in average.state_dict().items()},
            restore=lambda state: (average.load_state_dict(state), setattr(self, "_x", None)),
            callback=callback,
            show_progress=show_progress,
            desc=f"crbm[{cfg.orientation}]",
        )
        self._x = None
        return history

    # ------------------------------------------------------------------ inference internals
    def _require_fitted(self) -> None:
        if self.module is None:
            raise RuntimeError("the model is not fitted: call fit() or load() first")

    @torch.no_grad()
    def _case_inputs(self) -> torch.Tensor:
        """Hidden inputs x (n_cases, F) of every trained case, cached until the weights change."""
        if self._x is None:
            data = self.data
            out = torch.empty(data.n_cases, self.module.n_hidden, dtype=self.module.c.dtype)
            step = 4096
            for start in range(0, data.n_cases, step):
                rows = np.arange(start, min(start + step, data.n_cases))
                batch = data.batch(rows)
                out[rows] = joint.hidden_input(self.module, batch) if self.is_joint else \
                    self.module.hidden_input(batch)
            self._x = out
        return self._x

    @torch.no_grad()
    def _log_proba_cases(self, cases: np.ndarray, units: np.ndarray, with_queries: bool) -> torch.Tensor:
        """log p(v_unit | case's training ratings, r) for trained (case, unit) pairs: (P, K).

        A pair the case rated in training is predicted from the case's *other* ratings; with
        ``with_queries`` (conditional + include_queries) every asked pair joins its case's r.
        """
        if self.is_joint:
            return self._joint_log_proba_cases(cases, units)
        module, data = self.module, self.data
        x = self._case_inputs()
        rows = x[torch.from_numpy(cases)].clone()
        rated = data.lookup(cases, units)
        own = np.flatnonzero(rated >= 0)
        if own.size:
            flat = module.W.reshape(-1, module.n_hidden)
            rows[own] -= flat[torch.from_numpy(units[own] * module.n_levels + rated[own])]
        if with_queries and module.D is not None:
            new = ~data.in_r(cases, units)
            if np.any(new):
                # each case gets every distinct asked unit not yet in its r, once
                key = np.unique(np.stack([cases[new], units[new]], 1), axis=0)
                delta = torch.zeros(data.n_cases, module.n_hidden, dtype=x.dtype)
                delta.index_add_(0, torch.from_numpy(key[:, 0]), module.D[torch.from_numpy(key[:, 1])])
                rows += delta[torch.from_numpy(cases)]
        return module.log_proba_pairs(rows, torch.from_numpy(units))

    # ------------------------------------------------------------------ public inference
    @_threaded
    def predict_proba(self, user_ids, item_ids) -> np.ndarray:
        """Exact p(rating = levels[k]) for aligned (user, item) pairs of the training data.

        A pair rated in training gets the distribution given the case's other ratings; with
        ``include_queries`` the asked pairs join r (all pairs of one call together).

        Returns
        -------
        float64 (n, K), rows sum to 1
        """
        self._require_fitted()
        users = check_user_ids(user_ids, self.n_users)
        items = check_item_ids(item_ids, self.n_items)
        if users.shape != items.shape:
            raise ValueError(f"user_ids {users.shape} and item_ids {items.shape} must align")
        cases, units = pairs_to_cases(users, items, self.config.orientation)
        proba = self._log_proba_cases(cases, units, self.uses_query_pattern).double().exp()
        return (proba / proba.sum(1, keepdim=True)).numpy()

    def predict(self, user_ids, item_ids, *, kind: str = "expected") -> np.ndarray:
        """Rating predictions for aligned (user, item) pairs: float64 (n,).

        ``kind="expected"`` is sum_k p_k levels[k] (minimises squared error); ``"mode"`` is
        the most likely level.
        """
        if kind not in ("expected", "mode"):
            raise ValueError(f"kind must be 'expected' or 'mode', got {kind!r}")
        proba = self.predict_proba(user_ids, item_ids)
        if kind == "mode":
            return self.levels[np.argmax(proba, axis=1)]
        return proba @ self.levels

    @_threaded
    @torch.no_grad()
    def predict_proba_all(self, user_ids, user_items: sp.csr_matrix | None = None) -> np.ndarray:
        """Exact rating distributions of every item for users: float32 (n, n_items, K).

        With ``user_items`` (CSR of ratings, rows aligned with ``user_ids``) the users are served
        from these ratings without retraining: directly for the user orientation; for the item
        orientation each new user's visible weights are fitted with the model frozen
        (``fold_in_steps`` Adam steps on the exact likelihood of their ratings). Items a user
        rated get the distribution given the user's other ratings.
        """
        self._require_fitted()
        if user_items is None:
            users = check_user_ids(user_ids, self.n_users)
            fold = None
        else:
            users = check_user_ids(user_ids, None)
            fold = self._level_rows(user_items, len(users))
        if self.is_joint:
            log_p = self._joint_log_proba_all(users, fold)
        elif self.config.orientation == "user":
            log_p = self._log_proba_all_user_cases(users, fold)
        elif fold is None:
            log_p = self._log_proba_all_trained_users(users)
        else:
            log_p = self._log_proba_all_new_users(fold)
        return log_p.exp().float().numpy()

    def _level_rows(self, user_items, n_rows: int | None = None) -> sp.csr_matrix:
        """A CSR of ratings (n_rows, n_items) as a sorted level CSR (values level + 1)."""
        fold = self._check_ratings(user_items, "user_items")
        check_user_items(fold, n_rows=n_rows, n_items=self.n_items)
        fold = rating_levels(fold, self.levels)
        fold.sort_indices()
        return fold

    def _training_levels(self) -> sp.csr_matrix:
        """The trained cases' ratings as a cases x units CSR of level + 1."""
        data = self.data
        return sp.csr_matrix((data.levels + 1, data.indices, data.indptr), shape=(data.n_cases, data.n_units))

    def _log_proba_all_user_cases(self, users: np.ndarray, fold: sp.csr_matrix | None) -> torch.Tensor:
        """User orientation: log p (n, n_items, K) from the trained cases or the fold-in rows."""
        module = self.module
        if fold is None:
            x = self._case_inputs()[torch.from_numpy(users)]
            ratings = self._training_levels()[users]
        else:
            case_data = CaseData.from_csr(fold, None)
            x = module.hidden_input(case_data.batch(np.arange(len(users))))
            ratings = fold
        log_p = module.log_proba_grid(x, torch.arange(self.n_items))
        rows = np.repeat(np.arange(len(users)), np.diff(ratings.indptr))
        if len(rows):
            # rated items: predicted from the user's other ratings
            levels = torch.from_numpy(np.rint(ratings.data).astype(np.int64) - 1)
            item_t = torch.from_numpy(ratings.indices.astype(np.int64))
            x_loo = x[torch.from_numpy(rows)] - module.W[item_t, levels]
            log_p[torch.from_numpy(rows), item_t] = module.log_proba_pairs(x_loo, item_t)
        return log_p

    def _log_proba_all_trained_users(self, users: np.ndarray) -> torch.Tensor:
        """Item orientation, trained users (visible units of the item cases): (n, n_items, K)."""
        x_items = self._case_inputs()
        log_p = self.module.log_proba_grid(x_items, torch.from_numpy(users)).transpose(0, 1)
        user_rows = self._training_levels().T.tocsr()[users]
        rows = np.repeat(np.arange(len(users)), np.diff(user_rows.indptr))
        if len(rows):
            items = user_rows.indices.astype(np.int64)
            log_p[torch.from_numpy(rows), torch.from_numpy(items)] = self._log_proba_cases(
                items, users[rows], with_queries=False)
        return log_p

    def _log_proba_all_new_users(self, fold: sp.csr_matrix) -> torch.Tensor:
        """Item orientation, users folded in from a level CSR ``fold``: (n, n_items, K)."""
        module = self.module
        x_items = self._case_inputs()
        weights, bias = self._fold_in_users(fold, x_items)
        out = module.log_proba_new_units(x_items, weights, bias)
        rows = np.repeat(np.arange(fold.shape[0]), np.diff(fold.indptr))
        if len(rows):
            items = torch.from_numpy(fold.indices.astype(np.int64))
            # new users are not in the trained item cases, so there is nothing to leave out
            act = fn.softplus(x_items[items][:, None, :] + weights[torch.from_numpy(rows)]).sum(2)
            out[torch.from_numpy(rows), items] = torch.log_softmax(act + bias[torch.from_numpy(rows)], 1)
        return out

    def _fold_in_users(self, fold: sp.csr_matrix, x_items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Visible weights (n, K, F) and biases (n, K) of new users (item orientation), fitted to
        maximise sum over their ratings of log p(v_{u,i} | item i's training ratings), model frozen."""
        cfg, module = self.config, self.module
        rows = torch.from_numpy(np.repeat(np.arange(fold.shape[0]), np.diff(fold.indptr)))
        items = torch.from_numpy(fold.indices.astype(np.int64))
        levels = torch.from_numpy(np.rint(fold.data).astype(np.int64) - 1)
        counts = torch.bincount(torch.from_numpy(self.data.levels), minlength=len(self.levels))
        prior = counts.to(module.c.dtype) + 1.0
        return module.fit_new_units(x_items[items], fold.shape[0], rows, levels, prior,
                                    cfg.fold_in_steps, cfg.fold_in_lr, cfg.weight_decay)

    @_threaded
    def score(self, user_ids, user_items: sp.csr_matrix | None = None) -> np.ndarray:
        """Ranking scores float32 (n, n_items): expected rating, or P(rating >= score_threshold)."""
        self._require_fitted()
        ids = np.atleast_1d(np.asarray(user_ids))
        if user_items is not None:
            user_items = check_user_items(user_items, n_items=self.n_items)
            if user_items.shape[0] != len(ids):
                raise ValueError(f"user_items has {user_items.shape[0]} rows for {len(ids)} user ids")
        if self.is_joint:
            users = ids if user_items is not None else check_user_ids(ids, self.n_users)
            fold = None if user_items is None else self._level_rows(user_items)
            return self._joint_scores(users, fold)
        if self.config.score_type == "p_at_least":
            weights = (self.levels >= self.config.score_threshold - 1e-9).astype(np.float32)
        else:
            weights = self.levels.astype(np.float32)
        out = np.empty((len(ids), self.n_items), dtype=np.float32)
        step = 256  # bounds the (users, items, K) distributions held at once
        for start in range(0, len(ids), step):
            rows = user_items[start:start + step] if user_items is not None else None
            out[start:start + step] = self.predict_proba_all(ids[start:start + step], rows) @ weights
        return out

    @_threaded
    @torch.no_grad()
    def free_energy(self, case_ids, ratings: sp.csr_matrix | None = None) -> np.ndarray:
        """Free energy F(V, r) of each case's RBM, for anomaly scoring: float64 (n,).

        Cases are users for ``orientation="user"`` and items for ``"item"``. By default V is
        the case's training ratings and r its conditioning set. ``ratings`` (a CSR of ratings,
        rows aligned with ``case_ids``, columns = the units: items for user cases, users for
        item cases) gives any other rating set V, with r = its rated units.
        """
        self._require_fitted()
        n_cases = self.data.n_cases
        if ratings is None:
            ids = check_user_ids(case_ids, n_cases)
            batch = self.data.batch(ids)
        else:
            ids = check_user_ids(case_ids, None)
            ratings = self._check_ratings(ratings)
            check_user_items(ratings, n_rows=len(ids), n_items=self.data.n_units)
            batch = CaseData.from_csr(rating_levels(ratings, self.levels), None).batch(np.arange(len(ids)))
        return joint.case_free_energy(self.module, batch).double().numpy()

    # ------------------------------------------------------------------ persistence
    def save(self, path, meta: dict | None = None):
        """Write weights, rating levels and the training ratings (needed to serve the trained
        cases) as plain tensors + JSON config to directory ``path``."""
        self._require_fitted()
        module, data = self.module, self.data
        tensors = {"W": module.W, "b": module.b, "c": module.c, "levels": self.levels,
                   "indptr": data.indptr, "indices": data.indices, "case_levels": data.levels,
                   "r_indptr": data.r_indptr, "r_indices": data.r_indices}
        for key in ("D", "a"):
            if getattr(module, key) is not None:
                tensors[key] = getattr(module, key)
        tensors.update(self._seen_tensors())
        info = {"n_users": self.n_users, "n_items": self.n_items, "best_epoch": self.history.best_epoch,
                **(meta or {})}
        return save_model_dir(path, MODEL_NAME, self.config.to_dict(), tensors, info)

    @classmethod
    def load(cls, path) -> CRBM:
        model, tensors, meta = cls._load_dir(path, MODEL_NAME)
        model.levels = tensors["levels"].numpy().astype(np.float64)
        n_units = model.n_items if model.config.orientation == "user" else model.n_users
        n_hidden = model.config.n_hidden
        tensors.expect("W", (n_units, len(model.levels), n_hidden))
        tensors.expect("b", (n_units, len(model.levels)))
        tensors.expect("c", (n_hidden,))
        if "D" in tensors:
            tensors.expect("D", (n_units, n_hidden))
        if "a" in tensors:
            tensors.expect("a", (n_units,))
        n_levels = len(model.levels)
        module = CRBMModule(n_units, n_levels, n_hidden, "D" in tensors, torch.Generator().manual_seed(0),
                            joint="a" in tensors)
        module.requires_grad_(False)
        with torch.no_grad():
            for key in ("W", "b", "c", "D", "a"):
                if key in tensors:
                    getattr(module, key).copy_(tensors[key])
        model.module = module
        model.data = CaseData(*(tensors[k].numpy() for k in ("indptr", "indices", "case_levels",
                                                               "r_indptr", "r_indices")), n_units)
        model.meta = meta
        return model

