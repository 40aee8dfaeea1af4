"""Training one CRBM run: the per-epoch metrics watched for early stopping."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch

from recsys_ebm.models.crbm.cases import CaseBatch, CaseData

if TYPE_CHECKING:
    from recsys_ebm.models.crbm.model import CRBM


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
            val_cases = model._to_cases(val_csr)
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
            fe_train = float(model.module.free_energy(sub).double().sum()) / n
            fe_val = float(model.module.free_energy(val_batch).double().sum()) / n
            out.update(fe_train=fe_train, fe_val=fe_val, fe_gap=fe_val - fe_train)
        return out
