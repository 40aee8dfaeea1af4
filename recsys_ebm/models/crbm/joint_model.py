"""The `CRBM` recommender's joint-visible-layer path (``visible="joint"``): training, exact
scores and rating distributions, free energies and the Gibbs exploratory lists.

`JointCRBM` is a mixin of `CRBM`; every method here assumes user cases (the joint layer is one
RBM per user). Exact scores are the joint module's (:mod:`recsys_ebm.models.crbm.joint`); an
item the user rated is scored given the user's *other* items (leave one out), like the
rating-only model's predictions.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import scipy.sparse as sp
import torch
from scipy.special import logsumexp

from recsys_ebm.models.base import RankRequest
from recsys_ebm.models.crbm import joint
from recsys_ebm.models.crbm.cases import CaseData, pattern
from recsys_ebm.models.crbm.gibbs import ChainModel, exploratory_lists
from recsys_ebm.models.crbm.module import CRBMModule, initial_visible_bias
from recsys_ebm.models.crbm.trainer import Replicas, TrainingMonitor, check_replicable, share
from recsys_ebm.models.training import TrainingHistory, ranking_validator, run_training
from recsys_ebm.ranking.topk import mask_rows

logger = logging.getLogger(__name__)

#: users per block of exact scores (bounds the (users, items, K) log-weights held at once)
SCORE_BLOCK = 256
#: validation users whose NDCG@10 early stopping watches (a seeded subset: exact scores cost
#: users x items x K x F softplus terms, ~13 s for all of ML-100K at F = 200 on one core)
MONITOR_USERS = 300


class JointTrainer:
    """CD-k / persistent-CD epochs of the joint layer: momentum updates, optional EMA copy.

    Persistent chains are a pool of ``batch_size`` fantasy users (the joint layer has no
    conditioning input, so chains need not belong to users), started at random users' data.
    ``replicas``: one of several data-parallel copies (:mod:`recsys_ebm.models.crbm.trainer`);
    each copy's mean gradients are weighted by its share of the minibatch before the sum.
    """

    def __init__(self, config, module: CRBMModule, average: CRBMModule, data: CaseData,
                 generator: torch.Generator, replicas: Replicas | None = None):
        self.config, self.module, self.average, self.data = config, module, average, data
        self.generator, self.replicas = generator, replicas
        if replicas is not None:
            check_replicable(config)
        self.velocity = {name: torch.zeros_like(p) for name, p in module.named_parameters()}
        self.adam = joint.Adam(module) if config.optimizer == "adam" else None
        self.active = np.flatnonzero(np.diff(data.indptr) > 0)
        self.fantasy = None
        if config.persistent:
            start = torch.randint(len(self.active), (config.batch_size,), generator=generator).numpy()
            self.fantasy = joint.dense_states(data.batch(self.active[start]), data.n_units)
        self.schedule: dict[str, float] = {}

    def epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the users in a random order: the mean one-step reconstruction error
        per (user, item) of the (K + 1)-way states."""
        cfg, module, replicas = self.config, self.module, self.replicas
        k = cfg.cd_k(epoch)
        lr = cfg.lr * cfg.lr_decay ** (epoch - 1)
        momentum = cfg.momentum_start if epoch <= cfg.momentum_epochs else cfg.momentum
        shuffle = self.generator if replicas is None else replicas.order_generator
        order = self.active[torch.randperm(len(self.active), generator=shuffle).numpy()]
        recon = torch.zeros(1, dtype=torch.float64)
        for start in range(0, len(order), cfg.batch_size):
            rows = order[start:start + cfg.batch_size]
            grads, err = self._gradients(self.data.batch(share(rows, replicas)), k, len(rows))
            if self.adam is not None:
                self.adam.step(module, grads, lr, cfg.weight_decay)
            else:
                joint.apply_update(module, grads, self.velocity, lr, momentum, cfg.weight_decay)
            recon += err
            if self.average is not module:
                with torch.no_grad():
                    for avg, param in zip(self.average.parameters(), module.parameters(), strict=True):
                        avg.mul_(cfg.ema).add_(param, alpha=1.0 - cfg.ema)
        if replicas is not None:
            replicas.all_sum([recon])
        self.schedule.update(lr=lr, cd_k=float(k))
        return {"recon_error": float(recon) / max(len(order) * self.data.n_units, 1)}

    def _gradients(self, batch, k: int, n_batch: int) -> tuple[dict[str, torch.Tensor], float]:
        """The minibatch's mean ascent directions (summed over the copies, each weighted by its
        share of the ``n_batch`` cases) and this copy's reconstruction error."""
        module, replicas = self.module, self.replicas
        if batch.n_cases:
            grads, chains, err = joint.cd_gradients(module, batch, k, self.generator,
                                                    self.config.item_chunk, self.fantasy,
                                                    self.config.mean_field)
            if self.fantasy is not None:
                self.fantasy = chains
        else:  # no share of the last, smaller minibatch: still part of the sum
            grads, err = {name: torch.zeros_like(p) for name, p in module.named_parameters()}, 0.0
        if replicas is not None:
            for grad in grads.values():
                grad.mul_(batch.n_cases / n_batch)
            replicas.all_sum([grads[name] for name, _ in module.named_parameters()])
        return grads, err


class JointCRBM:
    """The ``visible="joint"`` methods of `CRBM` (a mixin; ``self`` is the `CRBM`)."""

    @property
    def is_joint(self) -> bool:
        return self.config.visible == "joint"

    def retrieval_model(self):
        """This model as FAISS retrieval sees it (:mod:`recsys_ebm.models.crbm.retrieval`):
        proxy vectors for the candidates, the exact score to re-rank them."""
        from recsys_ebm.models.crbm.retrieval import CRBMRetrieval

        return CRBMRetrieval(self)

    # ------------------------------------------------------------------ training
    def _initial_joint_parts(self, train_csr: sp.csr_matrix, generator: torch.Generator
                             ) -> tuple[CRBMModule, CRBMModule, CaseData]:
        """The joint model's initial module, its EMA copy and the training cases; the model
        serves with the copy from now on."""
        cfg = self.config
        data = CaseData.from_csr(train_csr, None)
        n_levels = len(self.levels)
        module = CRBMModule(data.n_units, n_levels, cfg.n_hidden, True, generator, cfg.init_std, joint=True)
        module.requires_grad_(False)
        with torch.no_grad():
            module.b.copy_(initial_visible_bias(data, n_levels))
            n_rated = np.bincount(data.indices, minlength=data.n_units)
            module.a.copy_(joint.initial_rating_bias(n_rated, data.n_cases))
        average = copy.deepcopy(module) if cfg.ema > 0 else module
        self.module, self.data, self._x = average, data, None
        return module, average, data

    def _train_joint(self, train_csr: sp.csr_matrix, val_csr: sp.csr_matrix | None, epochs: int,
                     callback, show_progress: bool) -> TrainingHistory:
        """One joint training run on a users x items level CSR; early stopping on the
        validation items' NDCG@10 (ranked among the user's unrated items)."""
        cfg = self.config
        generator = torch.Generator().manual_seed(cfg.seed)
        module, average, data = self._initial_joint_parts(train_csr, generator)
        trainer = JointTrainer(cfg, module, average, data, generator)
        monitor = TrainingMonitor(self, data, val_csr, np.random.default_rng([cfg.seed, 2]))
        rank = None
        if val_csr is not None:
            watched = _monitor_rows(val_csr, np.random.default_rng([cfg.seed, 3]))
            seen = pattern(train_csr)  # the seen set also holds carved validation ratings
            rank = ranking_validator(lambda users: self.recommend(users, seen, k=10)[0], watched, k=10)

        def train_epoch(epoch: int) -> dict[str, float]:
            metrics = trainer.epoch(epoch)
            self._x = None  # the weights changed
            return metrics

        def validate() -> dict[str, float]:
            return {**(rank() if rank is not None else {}), **monitor.metrics(), **trainer.schedule}

        history = run_training(
            train_epoch, epochs=epochs, validate=validate,
            monitor="val_ndcg@10" if val_csr is not None else None, mode="max",
            patience=cfg.patience,
            snapshot=lambda: {k: v.detach().clone() for k, v in average.state_dict().items()},
            restore=lambda state: (average.load_state_dict(state), setattr(self, "_x", None)),
            callback=callback, show_progress=show_progress, desc="crbm[joint]")
        self._x = None
        return history

    # ------------------------------------------------------------------ exact scores
    def _joint_inputs(self, users: np.ndarray, fold: sp.csr_matrix | None
                      ) -> tuple[torch.Tensor, sp.csr_matrix]:
        """Hidden inputs (n, F) and the level CSR (n, N) of trained users or fold-in rows."""
        if fold is None:
            return self._case_inputs()[torch.from_numpy(users)], self._training_levels()[users]
        batch = CaseData.from_csr(fold, None).batch(np.arange(fold.shape[0]))
        return joint.hidden_input(self.module, batch), fold

    def _joint_log_weights(self, x: torch.Tensor, ratings: sp.csr_matrix) -> torch.Tensor:
        """g (n, N, K) of every item; a rated item's from the user's other items."""
        module = self.module
        g = joint.item_log_weights(module, x, torch.arange(self.n_items))
        rows = np.repeat(np.arange(ratings.shape[0]), np.diff(ratings.indptr))
        if len(rows):
            levels = torch.from_numpy(np.rint(ratings.data).astype(np.int64) - 1)
            items = torch.from_numpy(ratings.indices.astype(np.int64))
            rows_t = torch.from_numpy(rows)
            x_loo = x[rows_t] - module.W[items, levels] - module.D[items]
            g[rows_t, items] = joint.pair_log_weights(module, x_loo, items)
        return g

    def _liked_levels(self) -> torch.Tensor | None:
        if self.config.ranking_score != "active_liked":
            return None
        return torch.from_numpy(self.levels >= self.config.score_threshold - 1e-9)

    @torch.no_grad()
    def _joint_scores(self, users: np.ndarray, fold: sp.csr_matrix | None) -> np.ndarray:
        """Exact ranking scores (n, N) float32 (``score_type``; rating kinds from the joint
        layer's rating distributions)."""
        kind = self.config.ranking_score
        out = np.empty((len(users), self.n_items), dtype=np.float32)
        for start in range(0, len(users), SCORE_BLOCK):
            stop = min(start + SCORE_BLOCK, len(users))
            x, ratings = self._joint_inputs(users[start:stop], None if fold is None else fold[start:stop])
            g = self._joint_log_weights(x, ratings)
            if kind in ("active", "active_liked"):
                out[start:stop] = joint.activation_scores(g, self._liked_levels()).numpy()
            else:
                p = torch.softmax(g.double(), dim=2).numpy()
                weights = self.levels if kind == "expected" else (self.levels >= self.config.score_threshold - 1e-9)
                out[start:stop] = p @ weights
        return out

    @torch.no_grad()
    def _joint_log_proba_all(self, users: np.ndarray, fold: sp.csr_matrix | None) -> torch.Tensor:
        """log p(v_i = k | r_i = 1, the user's other items) of every item: (n, N, K)."""
        x, ratings = self._joint_inputs(users, fold)
        return torch.log_softmax(self._joint_log_weights(x, ratings), dim=2)

    def _joint_log_proba_cases(self, cases: np.ndarray, units: np.ndarray) -> torch.Tensor:
        """log p(v = k | r = 1, the rest) for trained (user, item) pairs: (P, K)."""
        module, data = self.module, self.data
        rows = self._case_inputs()[torch.from_numpy(cases)].clone()
        rated = data.lookup(cases, units)
        own = np.flatnonzero(rated >= 0)
        if own.size:
            items = torch.from_numpy(units[own])
            rows[own] -= module.W[items, torch.from_numpy(rated[own])] + module.D[items]
        return torch.log_softmax(joint.pair_log_weights(module, rows, torch.from_numpy(units)), dim=1)

    # ------------------------------------------------------------------ ranking
    def _rank(self, request: RankRequest) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """T = 0: the exact ranking through the serving core; T > 0 (joint layer): the block
        Gibbs chains' exploratory lists (:mod:`recsys_ebm.models.crbm.gibbs`)."""
        r = request
        if not self.is_joint or r.temperature == 0:
            return super()._rank(r)
        self._require_fitted()
        cfg, chains = self.config, ChainModel(self.module)
        n, step = len(r.user_ids), r.batch_size or SCORE_BLOCK
        ids, values = np.empty((n, r.k), np.int64), np.empty((n, r.k), np.float32)
        log_p = np.empty((n, r.k)) if r.with_log_p else None
        for start in range(0, n, step):
            stop = min(start + step, n)
            users = r.user_ids[start:stop]
            fold = None if r.history is None else self._level_rows(r.history[start:stop])
            with torch.no_grad():
                x, ratings = self._joint_inputs(users, fold)
            scores = self.score(users, None if r.history is None else r.history[start:stop])
            mask_rows(scores, r.exclude, start)
            if r.mask is not None:
                scores[:, ~r.mask] = -np.inf
            free = np.isfinite(scores) & (ratings.toarray() == 0)
            block = exploratory_lists(chains, x, free, scores, r.k, r.temperature, r.seed,
                                      r.keys[start:stop], n_chains=cfg.gibbs_chains,
                                      burn_in=cfg.gibbs_burn_in, n_steps=cfg.gibbs_steps)
            ids[start:stop] = block
            values[start:stop] = np.where(block >= 0, np.take_along_axis(scores, np.maximum(block, 0), 1), -np.inf)
            if log_p is not None:
                log_p[start:stop] = _softmax_log_p(scores, values[start:stop], r.temperature)
        return ids, values, log_p


def _monitor_rows(val_csr: sp.csr_matrix, rng: np.random.Generator) -> sp.csr_matrix:
    """``val_csr`` with only ``MONITOR_USERS`` of its users with validation items kept."""
    users = np.flatnonzero(np.diff(val_csr.indptr) > 0)
    if len(users) <= MONITOR_USERS:
        return val_csr
    keep = np.zeros(val_csr.shape[0])
    keep[rng.choice(users, MONITOR_USERS, replace=False)] = 1.0
    return sp.csr_matrix(sp.diags(keep) @ val_csr)


def _softmax_log_p(scores: np.ndarray, values: np.ndarray, temperature: float) -> np.ndarray:
    """log p(i | u, T) of ``values`` under softmax(scores / T) over the returnable items (the
    serving core's Gibbs distribution of the exact scores; the chains' lists have none in
    closed form): (n, k), -inf for padding."""
    z = scores.astype(np.float64) / temperature
    log_norm = logsumexp(np.where(np.isfinite(z), z, -np.inf), axis=1)
    with np.errstate(invalid="ignore"):
        out = values.astype(np.float64) / temperature - log_norm[:, None]
    out[~np.isfinite(values)] = -np.inf
    return np.minimum(out, 0.0)

