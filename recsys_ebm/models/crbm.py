"""Conditional RBM for collaborative filtering (Salakhutdinov, Mnih & Hinton, ICML 2007).

One RBM per *case*, all sharing weights. A case is a user whose visible units are the items
they rated (``orientation="user"``, as in the paper) or an item whose visible units are the
users who rated it (``orientation="item"``, the I-RBM of the AutoRec paper: better on
MovieLens). Below, "units" are the items of a user-case or the users of an item-case.

Each rated unit s is a K-way softmax v_s (K rating levels); unrated units have no visible unit
at all, so missing ratings are marginalised, never imputed. With F binary hiddens h::

    E(V, h) = -sum_s b[s, v_s] - sum_f h_f (c_f + d_f + sum_s W[s, v_s, f])
    d_f     = sum_i r_i D[i, f]        (conditional variant; r = the units the case rated)
    F(V)    = -sum_s b[s, v_s] - sum_f softplus(c_f + d_f + sum_s W[s, v_s, f])

The conditional term only shifts the hidden biases. The predictive distribution of an unrated
unit q is exact and needs no sampling (eq. 9 of the paper, in log space)::

    log p(v_q = k | V, r) = b[q, k] + sum_f softplus(x_f + W[q, k, f]) - log-normaliser,
    x_f = c_f + d_f + sum_{s in V} W[s, v_s, f]

Everything is gathered/scattered over the rated entries of a batch of cases, so the cost of
training and of the hidden inputs grows with the number of ratings, not cases x units x K.
Training is CD-k (k on a schedule, optionally persistent) with each weight's gradient divided
by the number of cases in the minibatch that touched it, momentum, weight decay, learning-rate
decay and early stopping on the RMSE of a validation split carved from the training ratings.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as fn
from torch import nn

from recsys_ebm.config import Config, check
from recsys_ebm.io import save_model_dir
from recsys_ebm.models.base import EpochCallback, Recommender, check_user_ids, check_user_items
from recsys_ebm.models.training import TrainingHistory, run_training

logger = logging.getLogger(__name__)

MODEL_NAME = "crbm"

#: Largest number of float elements materialised by one chunk of exact predictions.
_CHUNK_ELEMENTS = 1 << 22


@dataclasses.dataclass(frozen=True)
class CRBMConfig(Config):
    """Hyperparameters of the (conditional) RBM; defaults tuned on ML-100K validation splits
    (the same values as ``pipelines/crbm.toml``).

    Attributes
    ----------
    orientation : "item" (one RBM per item over its raters) or "user" (one per user).
    n_hidden : F, binary hidden units.
    conditional : add the D[i, f] term from the binary "which units rated" vector r.
    include_queries : with ``conditional``, also put the queried pairs in r (the paper's use of
        the Netflix qualifying set): ``predict`` adds the asked pairs, ``fit(implicit=...)``
        adds known future queries, and the carved validation pairs stay in r while training.
    epochs, batch_size : at most ``epochs`` passes over minibatches of ``batch_size`` cases.
    lr, lr_decay : learning rate lr * lr_decay ** (epoch - 1).
    momentum, momentum_start, momentum_epochs : momentum_start for the first
        ``momentum_epochs`` epochs, then momentum (Hinton's guide).
    weight_decay : L2 on W and D, applied to the rows a minibatch touches.
    cd_schedule : ((first_epoch, k), ...): CD-k with k switching at those epochs.
    persistent : persistent CD (chains carried over between epochs) instead of CD from the data.
    mean_field : negative statistics from the last reconstruction's probabilities, not a sample
        (CD from the data only; persistent chains always sample).
    ema : > 0 predicts with an exponential moving average of the weights (decay per minibatch).
    init_std : W ~ N(0, init_std^2); b starts at the log frequencies of each unit's levels.
    val_fraction : share of the training ratings carved out for early stopping (0: none).
    patience : epochs without a better validation RMSE before stopping.
    refit : after early stopping, retrain from scratch on all ratings for the best epoch count.
    score_type, score_threshold : ``score`` ranks by the expected rating ("expected") or by
        P(rating >= score_threshold) ("p_at_least").
    levels : the K rating values; None infers them from the training ratings.
    fold_in_steps, fold_in_lr : item orientation only: Adam steps / lr fitting a new user's
        visible weights (model frozen) when scoring users unseen in training.
    num_threads : torch intra-op threads while fitting and predicting (the caller's setting is
        restored afterwards; 0 leaves it alone). The model runs many small gather/scatter ops,
        where threads only add overhead: on 2 shared cores, 2 threads took 6x the wall time and
        5x the CPU time of 1 thread for the same (bit-identical) ML-100K fit.
    seed : seeds the one ``torch.Generator`` and the validation split.
    """

    orientation: str = "item"
    n_hidden: int = 200
    conditional: bool = True
    include_queries: bool = False
    epochs: int = 120
    batch_size: int = 32
    lr: float = 0.002
    lr_decay: float = 0.98
    momentum: float = 0.9
    momentum_start: float = 0.5
    momentum_epochs: int = 5
    weight_decay: float = 0.05
    cd_schedule: tuple[tuple[int, int], ...] = ((1, 1), (20, 3), (40, 5))
    persistent: bool = False
    mean_field: bool = True
    ema: float = 0.0
    init_std: float = 0.01
    val_fraction: float = 0.05
    patience: int = 10
    refit: bool = False
    score_type: str = "expected"
    score_threshold: float = 4.0
    levels: tuple[float, ...] | None = None
    fold_in_steps: int = 200
    fold_in_lr: float = 0.05
    num_threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        # TOML / JSON give lists; keep tuples so the config stays hashable and frozen
        schedule = tuple(tuple(int(v) for v in step) for step in self.cd_schedule)
        object.__setattr__(self, "cd_schedule", schedule)
        if self.levels is not None:
            object.__setattr__(self, "levels", tuple(float(v) for v in self.levels))
        check(self.orientation in ("item", "user"),
              f"orientation must be 'item' or 'user', got {self.orientation!r}")
        check(self.n_hidden >= 1, f"n_hidden must be >= 1, got {self.n_hidden}")
        check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(0 < self.lr_decay <= 1, f"lr_decay must be in (0, 1], got {self.lr_decay}")
        check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        check(0 <= self.momentum_start < 1, f"momentum_start must be in [0, 1), got {self.momentum_start}")
        check(self.momentum_epochs >= 0, f"momentum_epochs must be >= 0, got {self.momentum_epochs}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(len(schedule) >= 1 and all(len(s) == 2 for s in schedule),
              f"cd_schedule must be ((first_epoch, k), ...), got {self.cd_schedule!r}")
        check(schedule[0][0] == 1, f"cd_schedule must start at epoch 1, got {schedule!r}")
        check(all(a[0] < b[0] for a, b in zip(schedule, schedule[1:], strict=False)),
              f"cd_schedule epochs must increase, got {schedule!r}")
        check(all(k >= 1 for _, k in schedule), f"cd_schedule k must be >= 1, got {schedule!r}")
        check(0 <= self.ema < 1, f"ema must be in [0, 1), got {self.ema}")
        check(self.init_std > 0, f"init_std must be > 0, got {self.init_std}")
        check(0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1), got {self.val_fraction}")
        check(self.patience >= 1, f"patience must be >= 1, got {self.patience}")
        check(self.score_type in ("expected", "p_at_least"),
              f"score_type must be 'expected' or 'p_at_least', got {self.score_type!r}")
        check(self.levels is None or (len(self.levels) >= 2 and all(
            a < b for a, b in zip(self.levels, self.levels[1:], strict=False))),
              f"levels must be >= 2 increasing rating values, got {self.levels!r}")
        check(self.fold_in_steps >= 1, f"fold_in_steps must be >= 1, got {self.fold_in_steps}")
        check(self.fold_in_lr > 0, f"fold_in_lr must be > 0, got {self.fold_in_lr}")
        check(self.num_threads >= 0, f"num_threads must be >= 0, got {self.num_threads}")

    def cd_k(self, epoch: int) -> int:
        """Number of Gibbs steps used at ``epoch`` (1-based)."""
        k = self.cd_schedule[0][1]
        for first, steps in self.cd_schedule:
            if epoch >= first:
                k = steps
        return k


# ---------------------------------------------------------------------------------- batches


def _ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(starts[j], stops[j])`` over j, int64, without a Python loop."""
    lengths = (stops - starts).astype(np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(starts.astype(np.int64) - np.r_[0, np.cumsum(lengths)[:-1]], lengths)
    return np.arange(total, dtype=np.int64) + offsets


@dataclass
class CaseBatch:
    """Rated entries of a batch of cases, flattened (entry j belongs to case ``case_of[j]``).

    Attributes
    ----------
    n_cases : B
    case_of, units, levels : int64 (nnz,), the batch row, unit and level index 0..K-1 of each rating
    r_case_of, r_units : int64 (nr,), the conditioning set r as (batch row, unit) pairs
    positions : int64 (nnz,) or None, the entries' positions in the source ``CaseData``
    """

    n_cases: int
    case_of: torch.Tensor
    units: torch.Tensor
    levels: torch.Tensor
    r_case_of: torch.Tensor
    r_units: torch.Tensor
    positions: np.ndarray | None = None

    @classmethod
    def from_lists(cls, visible: list[dict[int, int]], r: list[list[int]] | None = None) -> CaseBatch:
        """Small batches by hand: ``visible[b] = {unit: level}``, ``r[b] = [units]``."""
        case_of = [b for b, row in enumerate(visible) for _ in row]
        units = [u for row in visible for u in row]
        levels = [lv for row in visible for lv in row.values()]
        r = r if r is not None else [[] for _ in visible]
        as_long = lambda values: torch.tensor(values, dtype=torch.int64)  # noqa: E731
        return cls(len(visible), as_long(case_of), as_long(units), as_long(levels),
                   as_long([b for b, row in enumerate(r) for _ in row]), as_long([u for row in r for u in row]))


@dataclass
class CaseData:
    """Cases x units ratings (levels) and conditioning sets, as CSR arrays.

    Attributes
    ----------
    indptr : int64 (n_cases + 1,); indices, levels : int64 (nnz,), sorted units per case
    r_indptr : int64 (n_cases + 1,); r_indices : int64 (nr,), the conditioning set of each case
    n_units : int
    """

    indptr: np.ndarray
    indices: np.ndarray
    levels: np.ndarray
    r_indptr: np.ndarray
    r_indices: np.ndarray
    n_units: int

    @property
    def n_cases(self) -> int:
        return len(self.indptr) - 1

    @classmethod
    def from_csr(cls, level_csr: sp.csr_matrix, r_csr: sp.csr_matrix | None) -> CaseData:
        """From a CSR whose values are level + 1 and a binary CSR of r (None: r = rated set)."""
        level_csr = sp.csr_matrix(level_csr)
        level_csr.sort_indices()
        r_csr = level_csr if r_csr is None else sp.csr_matrix(r_csr)
        r_csr.sort_indices()
        return cls(level_csr.indptr.astype(np.int64), level_csr.indices.astype(np.int64),
                   np.rint(level_csr.data).astype(np.int64) - 1, r_csr.indptr.astype(np.int64),
                   r_csr.indices.astype(np.int64), level_csr.shape[1])

    def batch(self, rows: np.ndarray) -> CaseBatch:
        """The entries of cases ``rows`` (B,) as a :class:`CaseBatch` (row b = case rows[b])."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, stops = self.indptr[rows], self.indptr[rows + 1]
        pos = _ranges(starts, stops)
        r_starts, r_stops = self.r_indptr[rows], self.r_indptr[rows + 1]
        r_pos = _ranges(r_starts, r_stops)
        b = np.arange(len(rows), dtype=np.int64)
        return CaseBatch(
            n_cases=len(rows),
            case_of=torch.from_numpy(np.repeat(b, stops - starts)),
            units=torch.from_numpy(self.indices[pos]),
            levels=torch.from_numpy(self.levels[pos]),
            r_case_of=torch.from_numpy(np.repeat(b, r_stops - r_starts)),
            r_units=torch.from_numpy(self.r_indices[r_pos]),
            positions=pos,
        )

    def lookup(self, cases: np.ndarray, units: np.ndarray) -> np.ndarray:
        """Level (0..K-1) of each (case, unit) pair, -1 where the case did not rate the unit."""
        return _csr_lookup(self.indptr, self.indices, self.levels, cases, units)

    def in_r(self, cases: np.ndarray, units: np.ndarray) -> np.ndarray:
        """Whether each unit is in its case's conditioning set r: bool (n,)."""
        ones = np.ones(len(self.r_indices), dtype=np.int64)
        return _csr_lookup(self.r_indptr, self.r_indices, ones, cases, units) >= 0


def _csr_lookup(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray,
                rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """values[row, col] for sorted-index CSR arrays, -1 where absent; vectorised searchsorted."""
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    out = np.full(len(rows), -1, dtype=np.int64)
    if len(indices) == 0 or len(rows) == 0:
        return out
    n_cols = int(max(indices.max(initial=0), cols.max(initial=0))) + 1
    row_of = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
    keys = row_of * n_cols + indices  # strictly increasing for sorted CSR
    query = rows * n_cols + cols
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    found = keys[pos] == query
    out[found] = values[pos[found]]
    return out


# ---------------------------------------------------------------------------------- module


class CRBMModule(nn.Module):
    """Parameters W (n_units, K, F), b (n_units, K), c (F,), D (n_units, F); energies and CD.

    Works in any floating dtype (``.double()`` for exact checks on tiny models).
    """

    def __init__(self, n_units: int, n_levels: int, n_hidden: int, conditional: bool,
                 generator: torch.Generator, init_std: float = 0.01):
        super().__init__()
        self.n_units, self.n_levels, self.n_hidden = n_units, n_levels, n_hidden
        self.W = nn.Parameter(torch.randn(n_units, n_levels, n_hidden, generator=generator) * init_std)
        self.b = nn.Parameter(torch.zeros(n_units, n_levels))
        self.c = nn.Parameter(torch.zeros(n_hidden))
        self.D = nn.Parameter(torch.zeros(n_units, n_hidden)) if conditional else None

    @property
    def conditional(self) -> bool:
        return self.D is not None

    # -------------------------------------------------------------- energies
    def hidden_input(self, batch: CaseBatch, levels: torch.Tensor | None = None) -> torch.Tensor:
        """x = c + d + sum_s W[s, v_s]: (B, F); ``levels`` (nnz,) replaces the batch's ratings."""
        levels = batch.levels if levels is None else levels
        flat = self.W.reshape(-1, self.n_hidden)
        x = self.c.expand(batch.n_cases, -1).clone()
        x = x.index_add(0, batch.case_of, flat[batch.units * self.n_levels + levels])
        return x + self.conditional_input(batch)

    def conditional_input(self, batch: CaseBatch) -> torch.Tensor:
        """d = sum_{i in r} D[i]: (B, F), zeros for the plain RBM."""
        d = torch.zeros(batch.n_cases, self.n_hidden, dtype=self.c.dtype)
        if self.D is None or len(batch.r_units) == 0:
            return d
        return d.index_add(0, batch.r_case_of, self.D[batch.r_units])

    def free_energy(self, batch: CaseBatch) -> torch.Tensor:
        """F(V, r) = -sum_s b[s, v_s] - sum_f softplus(x_f): (B,)."""
        bias = torch.zeros(batch.n_cases, dtype=self.c.dtype)
        bias = bias.index_add(0, batch.case_of, self.b[batch.units, batch.levels])
        return -bias - fn.softplus(self.hidden_input(batch)).sum(1)

    def visible_logits(self, h: torch.Tensor, batch: CaseBatch) -> torch.Tensor:
        """b[s, k] + sum_f h_f W[s, k, f] for every rated entry: (nnz, K); h is (B, F)."""
        nnz = len(batch.units)
        if batch.n_cases * self.n_units <= 32 * nnz:
            # one GEMM over all units beats gathering (nnz, K, F) weights unless the batch is
            # very sparse in the units (measured ~3x faster on ML-100K)
            full = (h @ self.W.reshape(-1, self.n_hidden).T).reshape(batch.n_cases, self.n_units, -1)
            return self.b[batch.units] + full[batch.case_of, batch.units]
        weights = self.W[batch.units]  # (nnz, K, F)
        return self.b[batch.units] + torch.bmm(weights, h[batch.case_of].unsqueeze(2)).squeeze(2)

    # -------------------------------------------------------------- predictions
    def log_proba_pairs(self, x: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """log p(v_q = k | x) for P (hidden input, query unit) pairs: x (P, F), units (P,) -> (P, K)."""
        out = torch.empty(len(units), self.n_levels, dtype=self.c.dtype)
        step = max(1, _CHUNK_ELEMENTS // (self.n_levels * self.n_hidden))
        for start in range(0, len(units), step):
            q = units[start:start + step]
            act = fn.softplus(x[start:start + step, None, :] + self.W[q]).sum(2) + self.b[q]
            out[start:start + step] = torch.log_softmax(act, dim=1)
        return out

    def log_proba_grid(self, x: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """log p(v_q = k | x_c) for every case c and unit q: x (C, F), units (U,) -> (C, U, K)."""
        n_cases, n_units = x.shape[0], len(units)
        out = torch.empty(n_cases, n_units, self.n_levels, dtype=self.c.dtype)
        per_unit = self.n_levels * self.n_hidden
        unit_step = max(1, min(n_units, _CHUNK_ELEMENTS // per_unit))
        case_step = max(1, _CHUNK_ELEMENTS // (per_unit * unit_step))
        for u0 in range(0, n_units, unit_step):
            q = units[u0:u0 + unit_step]
            weights, bias = self.W[q], self.b[q]  # (u, K, F), (u, K)
            for c0 in range(0, n_cases, case_step):
                xs = x[c0:c0 + case_step, None, None, :]
                act = fn.softplus(xs + weights).sum(3) + bias
                out[c0:c0 + case_step, u0:u0 + unit_step] = torch.log_softmax(act, dim=2)
        return out

    # -------------------------------------------------------------- contrastive divergence
    def cd_gradients(self, batch: CaseBatch, k: int, generator: torch.Generator,
                     start_levels: torch.Tensor | None = None, mean_field: bool = False
                     ) -> tuple[dict[str, torch.Tensor], torch.Tensor, float]:
        """CD-k estimate of d log p(V) / d theta, summed over the batch's cases.

        The positive phase uses p(h | V) of the data; the negative phase runs k alternating
        Gibbs steps on the cases' own rated units, from the data or (persistent CD) from
        ``start_levels`` (nnz,), and uses p(h | V') of the final visible sample V'. With
        ``mean_field`` the final visible state is the softmax probabilities instead of a sample
        (less noise, slightly more bias; Hinton's guide, section 3).

        Returns
        -------
        grads : {"W": (n_units, K, F), "b": (n_units, K), "c": (F,), "D": (n_units, F)} ascent
            directions, dense, summed over cases (D only for the conditional model)
        levels : int64 (nnz,), the final visible sample (the persistent chains' next state)
        recon_sq_error : sum over entries of ||onehot(v) - p(v | h ~ p(h | V))||^2, the
            one-step reconstruction error of the data
        """
        K, F = self.n_levels, self.n_hidden
        d = self.conditional_input(batch)
        flat = self.W.reshape(-1, F)
        data_idx = batch.units * K + batch.levels

        def hidden_probs(levels: torch.Tensor) -> torch.Tensor:
            x = self.c.expand(batch.n_cases, -1).clone()
            x = x.index_add(0, batch.case_of, flat[batch.units * K + levels]) + d
            return torch.sigmoid(x)

        ph_data = hidden_probs(batch.levels)
        h = (torch.rand(ph_data.shape, generator=generator, dtype=ph_data.dtype) < ph_data).to(ph_data.dtype)
        probs = torch.softmax(self.visible_logits(h, batch), dim=1)
        onehot = fn.one_hot(batch.levels, K).to(probs.dtype)
        recon = float(((onehot - probs) ** 2).sum())
        if start_levels is None:
            levels = _sample_categorical(probs, generator)
            ph_model = hidden_probs(levels)
        else:
            levels, ph_model = start_levels, hidden_probs(start_levels)
            k += 1  # the first step from the data above only measured the reconstruction
        for _ in range(k - 1):
            h = (torch.rand(ph_model.shape, generator=generator, dtype=ph_model.dtype) < ph_model)
            probs = torch.softmax(self.visible_logits(h.to(ph_model.dtype), batch), dim=1)
            levels = _sample_categorical(probs, generator)
            ph_model = hidden_probs(levels)

        grad_w = torch.zeros(self.n_units * K, F, dtype=flat.dtype)
        grad_w.index_add_(0, data_idx, ph_data[batch.case_of])
        grad_b = torch.zeros(self.n_units * K, dtype=flat.dtype)
        ones = torch.ones(len(data_idx), dtype=flat.dtype)
        grad_b.index_add_(0, data_idx, ones)
        if mean_field and start_levels is None:
            # visible state = probabilities of the last step: x = c + d + sum_{s,k} p_sk W[s, k]
            x = torch.einsum("nk,nkf->nf", probs, self.W[batch.units])
            x = self.c.expand(batch.n_cases, -1).clone().index_add(0, batch.case_of, x) + d
            ph_model = torch.sigmoid(x)
            every = (batch.units * K)[:, None] + torch.arange(K)
            stats = probs[:, :, None] * ph_model[batch.case_of][:, None, :]
            grad_w.index_add_(0, every.reshape(-1), stats.reshape(-1, F), alpha=-1.0)
            grad_b.index_add_(0, every.reshape(-1), probs.reshape(-1), alpha=-1.0)
        else:
            grad_w.index_add_(0, batch.units * K + levels, ph_model[batch.case_of], alpha=-1.0)
            grad_b.index_add_(0, batch.units * K + levels, ones, alpha=-1.0)
        delta_h = ph_data - ph_model
        grads = {"W": grad_w.reshape(self.n_units, K, F), "b": grad_b.reshape(self.n_units, K),
                 "c": delta_h.sum(0)}
        if self.D is not None:
            grads["D"] = torch.zeros_like(self.D).index_add_(0, batch.r_units, delta_h[batch.r_case_of])
        return grads, levels, recon

    # -------------------------------------------------------------- exact, tiny models only
    def exact_log_likelihood(self, batch: CaseBatch, max_states: int = 1 << 20) -> torch.Tensor:
        """log p(V | r) = -F(V, r) - log Z_S(r) per case, Z_S by enumerating the K^|S| visible
        states of the case's rated units S (differentiable; for tests on tiny models): (B,)."""
        out = []
        case_of = batch.case_of.numpy()
        for b in range(batch.n_cases):
            sel = torch.from_numpy(np.flatnonzero(case_of == b))
            units, n = batch.units[sel], len(sel)
            if self.n_levels ** n > max_states:
                raise ValueError(f"case {b} has {self.n_levels ** n} visible states (> {max_states})")
            states = torch.cartesian_prod(*[torch.arange(self.n_levels)] * n).reshape(-1, n) if n else \
                torch.zeros(1, 0, dtype=torch.int64)
            m = states.shape[0]
            r_sel = batch.r_case_of == b
            all_states = CaseBatch(
                m, torch.arange(m).repeat_interleave(n), units.repeat(m), states.reshape(-1),
                torch.arange(m).repeat_interleave(int(r_sel.sum())), batch.r_units[r_sel].repeat(m))
            log_z = torch.logsumexp(-self.free_energy(all_states), dim=0)
            own = CaseBatch(1, torch.zeros(n, dtype=torch.int64), units, batch.levels[sel],
                            torch.zeros(int(r_sel.sum()), dtype=torch.int64), batch.r_units[r_sel])
            out.append(-self.free_energy(own)[0] - log_z)
        return torch.stack(out)


def _sample_categorical(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One level per row of probs (n, K) by inverse CDF: int64 (n,)."""
    u = torch.rand(probs.shape[0], 1, generator=generator, dtype=probs.dtype)
    return (torch.cumsum(probs, dim=1) < u).sum(1).clamp_max(probs.shape[1] - 1)


# ---------------------------------------------------------------------------------- wrapper


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
            train_csr, val_csr = _carve(level_csr, cfg.val_fraction, np.random.default_rng([cfg.seed, 1]))
        else:
            train_csr, val_csr = level_csr, None
        queries = extra
        if self.uses_query_pattern and val_csr is not None:
            queries = _pattern(val_csr) if queries is None else _pattern(queries + _pattern(val_csr))
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
            r_csr = _pattern(_pattern(cases) + self._to_cases(_pattern(queries)))
        data = CaseData.from_csr(cases, r_csr)
        n_levels = len(self.levels)
        module = CRBMModule(data.n_units, n_levels, cfg.n_hidden, cfg.conditional, generator, cfg.init_std)
        module.requires_grad_(False)
        with torch.no_grad():
            module.b.copy_(_initial_visible_bias(data, n_levels))
        # with ema the model predicts with (and early-stops on) the averaged weights
        average = copy.deepcopy(module) if cfg.ema > 0 else module
        self.module, self.data = average, data
        velocity = {name: torch.zeros_like(p) for name, p in module.named_parameters()}
        active = np.flatnonzero(np.diff(data.indptr) > 0)
        fantasy = torch.from_numpy(data.levels.copy()) if cfg.persistent else None
        monitor = _Monitor(self, data, val_csr, np.random.default_rng([cfg.seed, 2]))

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
        step = max(1, _CHUNK_ELEMENTS // (self.n_items * len(self.levels) * F))
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


# ---------------------------------------------------------------------------------- helpers


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


def _pattern(matrix: sp.spmatrix) -> sp.csr_matrix:
    """Binary float32 CSR of the stored entries of ``matrix``."""
    out = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    out.sum_duplicates()
    out.data[:] = 1.0
    return out


def _carve(level_csr: sp.csr_matrix, fraction: float, rng: np.random.Generator
           ) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split the entries at random: ``fraction`` of them (floor) to validation, the rest train."""
    coo = level_csr.tocoo()
    n_val = int(math.floor(fraction * coo.nnz))
    is_val = np.zeros(coo.nnz, dtype=bool)
    is_val[rng.permutation(coo.nnz)[:n_val]] = True

    def part(mask: np.ndarray) -> sp.csr_matrix:
        out = sp.csr_matrix((coo.data[mask], (coo.row[mask], coo.col[mask])), shape=coo.shape)
        out.sort_indices()
        return out

    return part(~is_val), part(is_val)


def _initial_visible_bias(data: CaseData, n_levels: int) -> torch.Tensor:
    """b[s, k] = log of unit s's smoothed level frequencies (Hinton's guide): (n_units, K)."""
    counts = np.zeros((data.n_units, n_levels))
    np.add.at(counts, (data.indices, data.levels), 1.0)
    overall = np.bincount(data.levels, minlength=n_levels) + 1.0
    smoothed = counts + 2.0 * overall / overall.sum()
    return torch.from_numpy(np.log(smoothed / smoothed.sum(1, keepdims=True)).astype(np.float32))


class _Monitor:
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
