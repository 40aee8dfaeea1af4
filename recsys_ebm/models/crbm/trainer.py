"""One CRBM training run: CD-k epochs over minibatches of cases (`CDTrainer`) and the
per-epoch metrics early stopping watches (`TrainingMonitor`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch

from recsys_ebm.models.crbm.cases import CaseBatch, CaseData, to_cases
from recsys_ebm.models.crbm.config import CRBMConfig
from recsys_ebm.models.crbm.joint import case_free_energy
from recsys_ebm.models.crbm.module import CRBMModule

if TYPE_CHECKING:
    from recsys_ebm.models.crbm.model import CRBM


class CDTrainer:
    """CD-k epochs: momentum updates, optional persistent chains and an EMA of the weights.

    ``module`` is trained; ``average`` is the EMA copy (or ``module`` itself without ``ema``).
    """

    def __init__(self, config: CRBMConfig, module: CRBMModule, average: CRBMModule,
                 data: CaseData, generator: torch.Generator):
        self.config, self.module, self.average, self.data = config, module, average, data
        self.generator = generator
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
        order = self.active[torch.randperm(len(self.active), generator=self.generator).numpy()]
        recon, n_entries = 0.0, 0
        for start in range(0, len(order), cfg.batch_size):
            batch = self.data.batch(order[start:start + cfg.batch_size])
            recon += self._step(batch, k, lr, momentum)
            n_entries += len(batch.units)
        self.schedule.update(lr=lr, cd_k=float(k))
        return {"recon_error": recon / max(n_entries, 1)}

    def _step(self, batch: CaseBatch, k: int, lr: float, momentum: float) -> float:
        """CD-k gradients of one minibatch, the update and the EMA: the reconstruction error."""
        cfg, module, fantasy = self.config, self.module, self.fantasy
        start_levels = fantasy[batch.positions] if fantasy is not None else None
        grads, chain, err = module.cd_gradients(batch, k, self.generator, start_levels, cfg.mean_field)
        if fantasy is not None:
            fantasy[batch.positions] = chain
        apply_update(module, grads, batch, self.velocity, lr, momentum, cfg.weight_decay)
        if self.average is not module:
            with torch.no_grad():
                for avg, param in zip(self.average.parameters(), module.parameters(), strict=True):
                    avg.mul_(cfg.ema).add_(param, alpha=1.0 - cfg.ema)
        return err


@torch.no_grad()
def apply_update(module: CRBMModule, grads: dict[str, torch.Tensor], batch: CaseBatch,
                 velocity: dict[str, torch.Tensor], lr: float, momentum: float,
                 weight_decay: float) -> None:
    """Momentum step on the CD gradients, each row divided by the cases that touched it."""
    touched = torch.bincount(batch.units, minlength=module.n_units).to(module.c.dtype)
    scale = 1.0 / touched.clamp_min(1.0)
    mask = (touched > 0).to(module.c.dtype)
    steps = {
        "W": grads["W"] * scale[:, None, None] - weight_decay * module.W * mask[:, None, None],
        "b": grads["b"] * scale[:, None],
        "c": grads["c"] / batch.n_cases,
    }
    if module.D is not None:
        r_touched = torch.bincount(batch.r_units, minlength=module.n_units).to(module.c.dtype)
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
