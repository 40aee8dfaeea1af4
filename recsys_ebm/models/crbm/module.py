"""The CRBM as a torch module: parameters, energies, exact predictive distributions and CD-k.

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
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as fn
from torch import nn

from recsys_ebm.models.crbm.cases import CaseBatch, CaseData

#: Largest number of float elements materialised by one chunk of exact predictions.
CHUNK_ELEMENTS = 1 << 22


class CRBMModule(nn.Module):
    """Parameters W (n_units, K, F), b (n_units, K), c (F,), D (n_units, F); energies and CD.

    ``joint`` adds the rating units' biases a (n_units,) of the joint visible layer
    (:mod:`recsys_ebm.models.crbm.joint`, which needs D). Works in any floating dtype
    (``.double()`` for exact checks on tiny models).
    """

    def __init__(self, n_units: int, n_levels: int, n_hidden: int, conditional: bool,
                 generator: torch.Generator, init_std: float = 0.01, joint: bool = False):
        super().__init__()
        if joint and not conditional:
            raise ValueError("the joint visible layer needs the D weights (conditional=True)")
        self.n_units, self.n_levels, self.n_hidden = n_units, n_levels, n_hidden
        self.W = nn.Parameter(torch.randn(n_units, n_levels, n_hidden, generator=generator) * init_std)
        self.b = nn.Parameter(torch.zeros(n_units, n_levels))
        self.c = nn.Parameter(torch.zeros(n_hidden))
        self.D = nn.Parameter(torch.zeros(n_units, n_hidden)) if conditional else None
        self.a = nn.Parameter(torch.zeros(n_units)) if joint else None

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
        step = max(1, CHUNK_ELEMENTS // (self.n_levels * self.n_hidden))
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
        unit_step = max(1, min(n_units, CHUNK_ELEMENTS // per_unit))
        case_step = max(1, CHUNK_ELEMENTS // (per_unit * unit_step))
        for u0 in range(0, n_units, unit_step):
            q = units[u0:u0 + unit_step]
            weights, bias = self.W[q], self.b[q]  # (u, K, F), (u, K)
            for c0 in range(0, n_cases, case_step):
                xs = x[c0:c0 + case_step, None, None, :]
                act = fn.softplus(xs + weights).sum(3) + bias
                out[c0:c0 + case_step, u0:u0 + unit_step] = torch.log_softmax(act, dim=2)
        return out

    def fit_new_units(self, x: torch.Tensor, n_new: int, unit_of: torch.Tensor, levels: torch.Tensor,
                      prior: torch.Tensor, steps: int, lr: float, weight_decay: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Visible weights (n_new, K, F) and biases (n_new, K) of units outside the model (new
        users of item cases), fitted by Adam with the module frozen to maximise the sum over
        their ratings j of log p(v = levels[j] | x[j]); x (m, F) is the hidden input of rating
        j's case, unit_of (m,) its new unit, prior (K,) level counts giving the first biases."""
        K = self.n_levels
        weights = torch.zeros(n_new, K, self.n_hidden, dtype=self.c.dtype, requires_grad=True)
        bias = (prior / prior.sum()).log().expand(n_new, K).clone().requires_grad_(True)
        if len(unit_of) == 0:
            return weights.detach(), bias.detach()
        optimizer = torch.optim.Adam([weights, bias], lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                act = fn.softplus(x[:, None, :] + weights[unit_of]).sum(2) + bias[unit_of]
                nll = -torch.log_softmax(act, 1).gather(1, levels[:, None]).sum()
                loss = nll + weight_decay * (weights**2).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return weights.detach(), bias.detach()

    def log_proba_new_units(self, x: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor
                            ) -> torch.Tensor:
        """log p(v_{u,c} = k | x_c) of units u with their own weights (n, K, F) and biases
        (n, K) in every case c: x (C, F) -> (n, C, K)."""
        n, n_cases = weights.shape[0], x.shape[0]
        out = torch.empty(n, n_cases, self.n_levels, dtype=self.c.dtype)
        step = max(1, CHUNK_ELEMENTS // (n_cases * self.n_levels * self.n_hidden))
        for start in range(0, n, step):
            w = weights[start:start + step]  # (u, K, F)
            act = fn.softplus(x[None, :, None, :] + w[:, None]).sum(3) + bias[start:start + step, None]
            out[start:start + step] = torch.log_softmax(act, dim=2)
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
        d = self.conditional_input(batch)
        ph_data = self._hidden_probs(batch, batch.levels, d)
        h = _sample_hidden(ph_data, generator)
        probs = torch.softmax(self.visible_logits(h, batch), dim=1)
        onehot = fn.one_hot(batch.levels, self.n_levels).to(probs.dtype)
        recon = float(((onehot - probs) ** 2).sum())
        if start_levels is None:
            levels = _sample_categorical(probs, generator)
            ph_model = self._hidden_probs(batch, levels, d)
        else:
            levels, ph_model = start_levels, self._hidden_probs(batch, start_levels, d)
            k += 1  # the first step from the data above only measured the reconstruction
        for _ in range(k - 1):
            probs = torch.softmax(self.visible_logits(_sample_hidden(ph_model, generator), batch), dim=1)
            levels = _sample_categorical(probs, generator)
            ph_model = self._hidden_probs(batch, levels, d)
        if mean_field and start_levels is None:
            return self._cd_statistics(batch, d, ph_data, levels, probs), levels, recon
        return self._cd_statistics(batch, d, ph_data, levels, None, ph_model), levels, recon

    def _hidden_probs(self, batch: CaseBatch, levels: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """p(h = 1 | V, r) for the batch's units at ``levels`` (nnz,), d = its conditional input."""
        flat = self.W.reshape(-1, self.n_hidden)
        x = self.c.expand(batch.n_cases, -1).clone()
        x = x.index_add(0, batch.case_of, flat[batch.units * self.n_levels + levels]) + d
        return torch.sigmoid(x)

    def _cd_statistics(self, batch: CaseBatch, d: torch.Tensor, ph_data: torch.Tensor,
                       levels: torch.Tensor, probs: torch.Tensor | None,
                       ph_model: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Data minus model statistics: the model side is the sample ``levels`` with
        ``ph_model``, or (``probs`` given, mean field) the last step's probabilities."""
        K, F = self.n_levels, self.n_hidden
        data_idx = batch.units * K + batch.levels
        grad_w = torch.zeros(self.n_units * K, F, dtype=self.W.dtype)
        grad_w.index_add_(0, data_idx, ph_data[batch.case_of])
        grad_b = torch.zeros(self.n_units * K, dtype=self.W.dtype)
        ones = torch.ones(len(data_idx), dtype=self.W.dtype)
        grad_b.index_add_(0, data_idx, ones)
        if probs is not None:
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
        return grads

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


def _sample_hidden(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A binary sample of hiddens with p(h = 1) = ``probs``, in the dtype of ``probs``."""
    return (torch.rand(probs.shape, generator=generator, dtype=probs.dtype) < probs).to(probs.dtype)


def _sample_categorical(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One level per row of probs (n, K) by inverse CDF: int64 (n,)."""
    u = torch.rand(probs.shape[0], 1, generator=generator, dtype=probs.dtype)
    return (torch.cumsum(probs, dim=1) < u).sum(1).clamp_max(probs.shape[1] - 1)


def initial_visible_bias(data: CaseData, n_levels: int) -> torch.Tensor:
    """b[s, k] = log of unit s's smoothed level frequencies (Hinton's guide): (n_units, K)."""
    counts = np.zeros((data.n_units, n_levels))
    np.add.at(counts, (data.indices, data.levels), 1.0)
    overall = np.bincount(data.levels, minlength=n_levels) + 1.0
    smoothed = counts + 2.0 * overall / overall.sum()
    return torch.from_numpy(np.log(smoothed / smoothed.sum(1, keepdims=True)).astype(np.float32))
