"""One CRBM training run: CD-k epochs over minibatches of cases (`CDTrainer`) and the
per-epoch metrics early stopping watches (`TrainingMonitor`).

A trainer given ``replicas`` (:class:`Replicas`) is one of several data-parallel copies: every
copy draws the same order of cases, takes its own share of each minibatch, and the gradient sums
and counts are added over the copies before the (identical) update, so every copy takes the step
of the whole minibatch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np
import scipy.sparse as sp
import torch

from recsys_ebm.models.crbm.cases import CaseBatch, CaseData, to_cases
from recsys_ebm.models.crbm.config import CRBMConfig
from recsys_ebm.models.crbm.joint import case_free_energy
from recsys_ebm.models.crbm.module import CRBMModule

if TYPE_CHECKING:
    from recsys_ebm.models.crbm.model import CRBM


class Replicas(Protocol):
    """The data-parallel copies a trainer is one of: ``rank`` of ``world``, the generator of
    the case order (alike on every copy), and an in-place sum of tensors over the copies."""

    rank: int
    world: int
    order_generator: torch.Generator

    def all_sum(self, tensors: list[torch.Tensor]) -> None: ...


def share(rows: np.ndarray, replicas: Replicas | None) -> np.ndarray:
    """This copy's share of a minibatch: every ``world``-th case from ``rank`` on."""
    return rows if replicas is None else rows[replicas.rank::replicas.world]


def check_replicable(config: CRBMConfig) -> None:
    """Persistent chains are each copy's own state, which a checkpoint of rank 0 cannot hold."""
    if config.persistent:
        raise ValueError("data-parallel CRBM training uses CD from the data: persistent=False")


class CDTrainer:
    """CD-k epochs: momentum updates, optional persistent chains and an EMA of the weights.

    ``module`` is trained; ``average`` is the EMA copy (or ``module`` itself without ``ema``);
    ``replicas``: this trainer is one of several data-parallel copies (module docstring).
    """

    def __init__(self, config: CRBMConfig, module: CRBMModule, average: CRBMModule,
                 data: CaseData, generator: torch.Generator, replicas: Replicas | None = None):
        self.config, self.module, self.average, self.data = config, module, average, data
        self.generator, self.replicas = generator, replicas
        if replicas is not None:
            check_replicable(config)
        self.velocity = {name: torch.zeros_like(p) for name, p in module.named_parameters()}
        self.active = np.flatnonzero(np.diff(data.indptr) > 0)
        self.fantasy = torch.from_numpy(data.levels.copy()) if config.persistent else None
        #: learning rate and CD steps of the last epoch, reported with its metrics
        self.schedule: dict[str, float] = {}

    def epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the cases in a random order (``epoch`` is 1-based): the mean
        one-step reconstruction error per rating."""
        cfg = self.config
        k = cfg.cd_k(epoch)
        lr = cfg.lr * cfg.lr_decay ** (epoch - 1)
        momentum = cfg.momentum_start if epoch <= cfg.momentum_epochs else cfg.momentum
        replicas = self.replicas
        shuffle = self.generator if replicas is None else replicas.order_generator
        order = self.active[torch.randperm(len(self.active), generator=shuffle).numpy()]
        totals = torch.zeros(2, dtype=torch.float64)  # reconstruction error, rated entries
        for start in range(0, len(order), cfg.batch_size):
            batch = self.data.batch(share(order[start:start + cfg.batch_size], replicas))
            totals += torch.tensor([self._step(batch, k, lr, momentum), len(batch.units)],
                                   dtype=torch.float64)
        if replicas is not None:
            replicas.all_sum([totals])
        self.schedule.update(lr=lr, cd_k=float(k))
        return {"recon_error": float(totals[0] / totals[1].clamp_min(1))}

    def _step(self, batch: CaseBatch, k: int, lr: float, momentum: float) -> float:
        """CD-k gradients of one minibatch, the update and the EMA: the reconstruction error."""
        cfg, module, fantasy = self.config, self.module, self.fantasy
        if batch.n_cases:
            start_levels = fantasy[batch.positions] if fantasy is not None else None
            grads, chain, err = module.cd_gradients(batch, k, self.generator, start_levels, cfg.mean_field)
            if fantasy is not None:
                fantasy[batch.positions] = chain
        else:  # a copy with no share of the last, smaller minibatch still takes part in the sum
            grads, err = {name: torch.zeros_like(p) for name, p in module.named_parameters()}, 0.0
        counts = update_counts(module, batch)
        if self.replicas is not None:
            # in the parameters' order on every replica, whichever branch built the grads
            self.replicas.all_sum([*(grads[name] for name, _ in module.named_parameters()), *counts.values()])
        apply_update(module, grads, counts, self.velocity, lr, momentum, cfg.weight_decay)
        if self.average is not module:
            with torch.no_grad():
                for avg, param in zip(self.average.parameters(), module.parameters(), strict=True):
                    avg.mul_(cfg.ema).add_(param, alpha=1.0 - cfg.ema)
        return err


def update_counts(module: CRBMModule, batch: CaseBatch) -> dict[str, torch.Tensor]:
    """What the update divides by: the cases that rated each unit (``touched``), that have it
    in r (``r_touched``), and the cases of the batch."""
    dtype = module.c.dtype
    counts = {"touched": torch.bincount(batch.units, minlength=module.n_units).to(dtype),
              "cases": torch.tensor([float(batch.n_cases)], dtype=dtype)}
    if module.D is not None:
        counts["r_touched"] = torch.bincount(batch.r_units, minlength=module.n_units).to(dtype)
    return counts


@torch.no_grad()
def apply_update(module: CRBMModule, grads: dict[str, torch.Tensor], counts: dict[str, torch.Tensor],
                 velocity: dict[str, torch.Tensor], lr: float, momentum: float,
                 weight_decay: float) -> None:
    """Momentum step on the CD gradients, each row divided by the cases that touched it
    (``counts``: :func:`update_counts`)."""
    touched = counts["touched"]
    scale = 1.0 / touched.clamp_min(1.0)
    mask = (touched > 0).to(module.c.dtype)
    steps = {
        "W": grads["W"] * scale[:, None, None] - weight_decay * module.W * mask[:, None, None],
        "b": grads["b"] * scale[:, None],
        "c": grads["c"] / counts["cases"],
    }
    if module.D is not None:
        r_touched = counts["r_touched"]
        r_mask = (r_touched > 0).to(module.c.dtype)
        steps["D"] = grads["D"] / r_touched.clamp_min(1.0)[:, None] - weight_decay * module.D * r_mask[:, None]
    for name, param in module.named_parameters():
        v = velocity[name]
        v.mul_(momentum).add_(steps[name], alpha=lr)
        param.add_(v)



class TrainingMonitor:
    """Per-epoch validation RMSE/MAE, leave-one-out training RMSE and the free-energy gap."""

    def __init__(self, model: CRBM, data: CaseData, val_csr: sp.csr_matrix | None,
                 rng: np.random.Generator, max_train: int = 20_000):
        self.model, self.data = model, data
        nnz = len(data.indices)
        pick = np.sort(rng.choice(nnz, size=min(max_train, nnz), replace=False))
        case_of = np.repeat(np.arange(data.n_cases), np.diff(data.indptr))
        self.train_cases, self.train_units = case_of[pick], data.indices[pick]
        self.train_truth = model.levels[data.levels[pick]]
        self.val = None
        if val_csr is not None and val_csr.nnz:
            val_cases = to_cases(val_csr, model.config.orientation)
            val_cases.sort_indices()
            cases = np.repeat(np.arange(val_cases.shape[0]), np.diff(val_cases.indptr))
            levels = np.rint(val_cases.data).astype(np.int64) - 1
            self.val = (cases, val_cases.indices.astype(np.int64), model.levels[levels])
            self.gap = self._gap_batches(val_cases, rng)

    def _gap_batches(self, val_cases: sp.csr_matrix, rng: np.random.Generator
                     ) -> tuple[CaseBatch, CaseBatch, int] | None:
        """Each case's validation ratings and an equal-sized random subset of its training ones."""
        data = self.data
        n_val = np.diff(val_cases.indptr)
        n_train = np.diff(data.indptr)
        cases = np.flatnonzero((n_val > 0) & (n_train >= n_val))
        if cases.size == 0:
            return None
        val_data = CaseData.from_csr(val_cases, None)
        val_batch = val_data.batch(cases)
        # random subset: sort each case's entries by a random key, keep the first n_val
        full = data.batch(cases)
        key = rng.random(len(full.units))
        order = np.lexsort((key, full.case_of.numpy()))
        rank = np.empty(len(order), dtype=np.int64)
        starts = np.r_[0, np.cumsum(n_train[cases])[:-1]]
        rank[order] = np.arange(len(order)) - np.repeat(starts, n_train[cases])
        keep = torch.from_numpy(rank < np.repeat(n_val[cases], n_train[cases]))
        sub = CaseBatch(len(cases), full.case_of[keep], full.units[keep], full.levels[keep],
                        full.r_case_of, full.r_units)
        # both sets are scored with the case's own conditioning set r
        val_batch.r_case_of, val_batch.r_units = full.r_case_of, full.r_units
        return sub, val_batch, int(n_val[cases].sum())

    @torch.no_grad()
    def metrics(self) -> dict[str, float]:
        model = self.model
        use_q = model.uses_query_pattern
        out: dict[str, float] = {}
        if self.val is not None:
            cases, units, truth = self.val
            pred = model._log_proba_cases(cases, units, use_q).double().exp().numpy() @ model.levels
            out["val_rmse"] = float(np.sqrt(np.mean((pred - truth) ** 2)))
            out["val_mae"] = float(np.mean(np.abs(pred - truth)))
        pred = model._log_proba_cases(self.train_cases, self.train_units, False).double().exp().numpy()
        out["train_rmse"] = float(np.sqrt(np.mean((pred @ model.levels - self.train_truth) ** 2)))
        if self.val is not None and self.gap is not None:
            sub, val_batch, n = self.gap
            fe_train = float(case_free_energy(model.module, sub).double().sum()) / n
            fe_val = float(case_free_energy(model.module, val_batch).double().sum()) / n
            out.update(fe_train=fe_train, fe_val=fe_val, fe_gap=fe_val - fe_train)
        return out
