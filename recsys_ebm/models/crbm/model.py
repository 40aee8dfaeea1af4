"""The `CRBM` recommender: fitting, exact rating predictions, ranking scores, free energies
and persistence on top of `CRBMModule` and the case data."""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as fn

from recsys_ebm.io import save_model_dir
from recsys_ebm.models.base import EpochCallback, Recommender, check_user_ids, check_user_items
from recsys_ebm.models.crbm.cases import CaseBatch, CaseData, carve, pattern
from recsys_ebm.models.crbm.config import CRBMConfig
from recsys_ebm.models.crbm.module import CHUNK_ELEMENTS, CRBMModule, initial_visible_bias
from recsys_ebm.models.crbm.trainer import TrainingMonitor
from recsys_ebm.models.training import TrainingHistory, run_training

logger = logging.getLogger(__name__)

MODEL_NAME = "crbm"


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads (0: unchanged), restoring the caller's setting."""
    before = torch.get_num_threads()
    if n and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _threaded(method):
    """Run a ``CRBM`` method under its config's ``num_threads``."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with _torch_threads(self.config.num_threads):
            return method(self, *args, **kwargs)

    return wrapper


class CRBM(Recommender):
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
    def _to_cases(self, matrix: sp.csr_matrix) -> sp.csr_matrix:
        """users x items -> cases x units for the configured orientation."""
        return sp.csr_matrix(matrix.T) if self.config.orientation == "item" else sp.csr_matrix(matrix)

    def _pairs_to_cases(self, user_ids: np.ndarray, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (item_ids, user_ids) if self.config.orientation == "item" else (user_ids, item_ids)

    def _rating_levels(self, ratings: sp.csr_matrix) -> sp.csr_matrix:
        """Copy of ``ratings`` with values replaced by level index + 1 (so no level is a zero)."""
        values = ratings.data.astype(np.float64)
        pos = np.clip(np.searchsorted(self.levels, values), 0, len(self.levels) - 1)
        left = np.clip(pos - 1, 0, len(self.levels) - 1)
        pos = np.where(np.abs(self.levels[left] - values) < np.abs(self.levels[pos] - values), left, pos)
        bad = np.abs(self.levels[pos] - values) > 1e-4
        if np.any(bad):
            raise ValueError(f"rating {values[bad][0]:g} is not one of the model's levels "
                             f"{self.levels.tolist()}; set CRBMConfig.levels")
        out = ratings.copy()
        out.data = (pos + 1).astype(np.float32)
        return out

    def _check_ratings(self, ratings, name: str = "ratings") -> sp.csr_matrix:
        ratings = check_user_items(ratings)
        ratings.sum_duplicates()
        levels = self.levels if self.levels is not None else self.config.levels
        if ratings.nnz and np.any(ratings.data <= 0) and (levels is None or levels[0] > 0):
            raise ValueError(f"{name} holds zero or negative values; the CRBM needs ratings as values "
                             "(an explicit zero rating needs levels that include 0)")
        return ratings

    # ------------------------------------------------------------------ training
    @_threaded
    def fit(self, user_items: sp.csr_matrix, *, validation: sp.csr_matrix | None = None,
            implicit: sp.csr_matrix | None = None, callback: EpochCallback | None = None,
            show_progress: bool = True) -> CRBM:
        """Train on a users x items CSR of ratings.

        Parameters
        ----------
        user_items : CSR (n_users, n_items), values are ratings (one of ``levels``).
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
        cfg = self.config
        ratings = self._check_ratings(user_items)
        if ratings.nnz == 0:
            raise ValueError("user_items has no ratings to train on")
        self.n_users, self.n_items = ratings.shape
        levels = cfg.levels if cfg.levels is not None else np.unique(ratings.data.astype(np.float64))
        self.levels = np.asarray(levels, dtype=np.float64)
        if len(self.levels) < 2:
            raise ValueError(f"the ratings have a single value {self.levels.tolist()}; "
                             "the CRBM needs at least 2 rating levels (set CRBMConfig.levels)")
        level_csr = self._rating_levels(ratings)
        extra = None
        if implicit is not None:
            extra = check_user_items(implicit, n_rows=self.n_users, n_items=self.n_items)
        if validation is not None:
            validation = self._check_ratings(validation, "validation")
            check_user_items(validation, n_rows=self.n_users, n_items=self.n_items)
            train_csr, val_csr = level_csr, self._rating_levels(validation)
        elif cfg.val_fraction > 0:
            train_csr, val_csr = carve(level_csr, cfg.val_fraction, np.random.default_rng([cfg.seed, 1]))
        else:
            train_csr, val_csr = level_csr, None
        queries = extra
        if self.uses_query_pattern and val_csr is not None:
            queries = pattern(val_csr) if queries is None else pattern(queries + pattern(val_csr))
        history = self._train(train_csr, val_csr, queries, cfg.epochs, callback, show_progress)
        if cfg.refit and val_csr is not None and validation is None:
            logger.info("refitting on all %d ratings for %d epochs", level_csr.nnz, history.best_epoch)
            history = self._train(level_csr, None, extra, history.best_epoch, callback, show_progress)
        self.history = history
        return self

    def _train(self, train_csr: sp.csr_matrix, val_csr: sp.csr_matrix | None,
               queries: sp.csr_matrix | None, epochs: int, callback: EpochCallback | None,
               show_progress: bool) -> TrainingHistory:
        """One training run on a level CSR (users x items, values level + 1)."""
        cfg = self.config
        generator = torch.Generator().manual_seed(cfg.seed)
        cases = self._to_cases(train_csr)
        r_csr = None
        if cfg.conditional and cfg.include_queries and queries is not None:
            r_csr = pattern(pattern(cases) + self._to_cases(pattern(queries)))
        data = CaseData.from_csr(cases, r_csr)
        n_levels = len(self.levels)
        module = CRBMModule(data.n_units, n_levels, cfg.n_hidden, cfg.conditional, generator, cfg.init_std)
        module.requires_grad_(False)
        with torch.no_grad():
            module.b.copy_(initial_visible_bias(data, n_levels))
        # with ema the model predicts with (and early-stops on) the averaged weights
        average = copy.deepcopy(module) if cfg.ema > 0 else module
        self.module, self.data = average, data
        velocity = {name: torch.zeros_like(p) for name, p in module.named_parameters()}
        active = np.flatnonzero(np.diff(data.indptr) > 0)
        fantasy = torch.from_numpy(data.levels.copy()) if cfg.persistent else None
        monitor = TrainingMonitor(self, data, val_csr, np.random.default_rng([cfg.seed, 2]))

        def train_epoch(epoch: int) -> dict[str, float]:
            k = cfg.cd_k(epoch)
            lr = cfg.lr * cfg.lr_decay ** (epoch - 1)
            momentum = cfg.momentum_start if epoch <= cfg.momentum_epochs else cfg.momentum
            order = active[torch.randperm(len(active), generator=generator).numpy()]
            recon, n_entries = 0.0, 0
            for start in range(0, len(order), cfg.batch_size):
                batch = data.batch(order[start:start + cfg.batch_size])
                start_levels = fantasy[batch.positions] if fantasy is not None else None
                grads, chain, err = module.cd_gradients(batch, k, generator, start_levels, cfg.mean_field)
                if fantasy is not None:
                    fantasy[batch.positions] = chain
                recon += err
                n_entries += len(batch.units)
                self._apply_update(module, grads, batch, velocity, lr, momentum)
                if average is not module:
                    with torch.no_grad():
                        for avg, param in zip(average.parameters(), module.parameters(), strict=True):
                            avg.mul_(cfg.ema).add_(param, alpha=1.0 - cfg.ema)
            self._x = None
            schedule.update(lr=lr, cd_k=float(k))
            return {"recon_error": recon / max(n_entries, 1)}

        schedule: dict[str, float] = {}

        def validate() -> dict[str, float]:
            # validation first so that the progress bar shows val_rmse
            return {**monitor.metrics(), **schedule}

        history = run_training(
            train_epoch,
            epochs=epochs,
            validate=validate,
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

    @torch.no_grad()
    def _apply_update(self, module: CRBMModule, grads: dict[str, torch.Tensor], batch: CaseBatch,
                      velocity: dict[str, torch.Tensor], lr: float, momentum: float) -> None:
        """Momentum step on the CD gradients, each row divided by the cases that touched it."""
        cfg = self.config
        touched = torch.bincount(batch.units, minlength=module.n_units).to(module.c.dtype)
        scale = 1.0 / touched.clamp_min(1.0)
        mask = (touched > 0).to(module.c.dtype)
        steps = {
            "W": grads["W"] * scale[:, None, None] - cfg.weight_decay * module.W * mask[:, None, None],
            "b": grads["b"] * scale[:, None],
            "c": grads["c"] / batch.n_cases,
        }
        if module.D is not None:
            r_touched = torch.bincount(batch.r_units, minlength=module.n_units).to(module.c.dtype)
            r_mask = (r_touched > 0).to(module.c.dtype)
            steps["D"] = grads["D"] / r_touched.clamp_min(1.0)[:, None] - cfg.weight_decay * module.D * r_mask[:, None]
        for name, param in module.named_parameters():
            v = velocity[name]
            v.mul_(momentum).add_(steps[name], alpha=lr)
            param.add_(v)

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
                out[rows] = self.module.hidden_input(data.batch(rows))
            self._x = out
        return self._x

    @torch.no_grad()
    def _log_proba_cases(self, cases: np.ndarray, units: np.ndarray, with_queries: bool) -> torch.Tensor:
        """log p(v_unit | case's training ratings, r) for trained (case, unit) pairs: (P, K).

        A pair the case rated in training is predicted from the case's *other* ratings; with
        ``with_queries`` (conditional + include_queries) every asked pair joins its case's r.
        """
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
        items = _check_item_ids(item_ids, self.n_items)
        if users.shape != items.shape:
            raise ValueError(f"user_ids {users.shape} and item_ids {items.shape} must align")
        cases, units = self._pairs_to_cases(users, items)
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
        module = self.module
        if user_items is None:
            users = check_user_ids(user_ids, self.n_users)
            fold = None
        else:
            users = check_user_ids(user_ids, None)
            fold = self._check_ratings(user_items, "user_items")
            check_user_items(fold, n_rows=len(users), n_items=self.n_items)
            fold = self._rating_levels(fold)
            fold.sort_indices()
        all_items = torch.arange(self.n_items)
        if self.config.orientation == "user":
            if fold is None:
                x = self._case_inputs()[torch.from_numpy(users)]
                ratings = sp.csr_matrix(
                    (self.data.levels + 1, self.data.indices, self.data.indptr),
                    shape=(self.data.n_cases, self.n_items))[users]
            else:
                case_data = CaseData.from_csr(fold, None)
                x = module.hidden_input(case_data.batch(np.arange(len(users))))
                ratings = fold
            log_p = module.log_proba_grid(x, all_items)
            rows = np.repeat(np.arange(len(users)), np.diff(ratings.indptr))
            if len(rows):
                # rated items: predicted from the user's other ratings
                levels = torch.from_numpy(np.rint(ratings.data).astype(np.int64) - 1)
                item_t = torch.from_numpy(ratings.indices.astype(np.int64))
                x_loo = x[torch.from_numpy(rows)] - module.W[item_t, levels]
                log_p[torch.from_numpy(rows), item_t] = module.log_proba_pairs(x_loo, item_t)
            return log_p.exp().float().numpy()
        # item orientation: cases are items, the users are visible units
        x_items = self._case_inputs()
        if fold is None:
            log_p = module.log_proba_grid(x_items, torch.from_numpy(users)).transpose(0, 1)
            user_rows = sp.csr_matrix(
                (self.data.levels + 1, self.data.indices, self.data.indptr),
                shape=(self.data.n_cases, self.n_users)).T.tocsr()[users]
            rows = np.repeat(np.arange(len(users)), np.diff(user_rows.indptr))
            if len(rows):
                items = user_rows.indices.astype(np.int64)
                log_p[torch.from_numpy(rows), torch.from_numpy(items)] = self._log_proba_cases(
                    items, users[rows], with_queries=False)
            return log_p.exp().float().numpy()
        weights, bias = self._fold_in_users(fold, x_items)
        out = torch.empty(len(users), self.n_items, len(self.levels), dtype=module.c.dtype)
        F = module.n_hidden
        step = max(1, CHUNK_ELEMENTS // (self.n_items * len(self.levels) * F))
        for start in range(0, len(users), step):
            w = weights[start:start + step]  # (u, K, F)
            act = fn.softplus(x_items[None, :, None, :] + w[:, None]).sum(3) + bias[start:start + step, None]
            out[start:start + step] = torch.log_softmax(act, dim=2)
        rows = np.repeat(np.arange(len(users)), np.diff(fold.indptr))
        if len(rows):
            items = torch.from_numpy(fold.indices.astype(np.int64))
            # new users are not in the trained item cases, so there is nothing to leave out
            act = fn.softplus(x_items[items][:, None, :] + weights[torch.from_numpy(rows)]).sum(2)
            out[torch.from_numpy(rows), items] = torch.log_softmax(act + bias[torch.from_numpy(rows)], 1)
        return out.exp().float().numpy()

    def _fold_in_users(self, fold: sp.csr_matrix, x_items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Visible weights (n, K, F) and biases (n, K) of new users (item orientation), fitted to
        maximise sum over their ratings of log p(v_{u,i} | item i's training ratings), model frozen."""
        cfg, module = self.config, self.module
        n, K = fold.shape[0], len(self.levels)
        rows = torch.from_numpy(np.repeat(np.arange(n), np.diff(fold.indptr)))
        items = torch.from_numpy(fold.indices.astype(np.int64))
        levels = torch.from_numpy(np.rint(fold.data).astype(np.int64) - 1)
        prior = torch.bincount(torch.from_numpy(self.data.levels), minlength=K).to(module.c.dtype) + 1.0
        weights = torch.zeros(n, K, module.n_hidden, dtype=module.c.dtype, requires_grad=True)
        bias = (prior / prior.sum()).log().expand(n, K).clone().requires_grad_(True)
        if len(rows) == 0:
            return weights.detach(), bias.detach()
        optimizer = torch.optim.Adam([weights, bias], lr=cfg.fold_in_lr)
        x = x_items[items]
        with torch.enable_grad():
            for _ in range(cfg.fold_in_steps):
                act = fn.softplus(x[:, None, :] + weights[rows]).sum(2) + bias[rows]
                nll = -torch.log_softmax(act, 1).gather(1, levels[:, None]).sum()
                loss = nll + cfg.weight_decay * (weights**2).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return weights.detach(), bias.detach()

    @_threaded
    def score(self, user_ids, user_items: sp.csr_matrix | None = None) -> np.ndarray:
        """Ranking scores float32 (n, n_items): expected rating, or P(rating >= score_threshold)."""
        self._require_fitted()
        ids = np.atleast_1d(np.asarray(user_ids))
        if user_items is not None:
            user_items = check_user_items(user_items, n_items=self.n_items)
            if user_items.shape[0] != len(ids):
                raise ValueError(f"user_items has {user_items.shape[0]} rows for {len(ids)} user ids")
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
            batch = CaseData.from_csr(self._rating_levels(ratings), None).batch(np.arange(len(ids)))
        return self.module.free_energy(batch).double().numpy()

    # ------------------------------------------------------------------ persistence
    def save(self, path, meta: dict | None = None):
        """Write weights, rating levels and the training ratings (needed to serve the trained
        cases) as plain tensors + JSON config to directory ``path``."""
        self._require_fitted()
        module, data = self.module, self.data
        tensors = {"W": module.W, "b": module.b, "c": module.c, "levels": self.levels,
                   "indptr": data.indptr, "indices": data.indices, "case_levels": data.levels,
                   "r_indptr": data.r_indptr, "r_indices": data.r_indices}
        if module.D is not None:
            tensors["D"] = module.D
        info = {"n_users": self.n_users, "n_items": self.n_items, "best_epoch": self.history.best_epoch,
                **(meta or {})}
        return save_model_dir(path, MODEL_NAME, self.config.to_dict(), tensors, info)

    @classmethod
    def load(cls, path) -> CRBM:
        model, tensors, meta = cls._load_dir(path, MODEL_NAME)
        model.levels = tensors["levels"].numpy().astype(np.float64)
        n_units, n_levels, n_hidden = tensors["W"].shape
        module = CRBMModule(n_units, n_levels, n_hidden, "D" in tensors, torch.Generator().manual_seed(0))
        module.requires_grad_(False)
        with torch.no_grad():
            for key in ("W", "b", "c", "D"):
                if key in tensors:
                    getattr(module, key).copy_(tensors[key])
        model.module = module
        model.data = CaseData(*(tensors[k].numpy() for k in ("indptr", "indices", "case_levels",
                                                               "r_indptr", "r_indices")), n_units)
        model.meta = meta
        return model


def _check_item_ids(item_ids, n_items: int) -> np.ndarray:
    ids = np.atleast_1d(np.asarray(item_ids))
    if ids.ndim != 1:
        raise ValueError(f"item_ids must be 1-D, got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"item_ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    bad = (ids < 0) | (ids >= n_items)
    if np.any(bad):
        raise IndexError(f"item id {int(ids[bad][0])} is not a trained item (0..{n_items - 1})")
    return ids
