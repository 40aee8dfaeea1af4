"""The joint visible layer of the CRBM: which items a user rates *and* how, one RBM per user.

Every item i has a binary unit r_i (rated or not) and, when r_i = 1, a K-way rating softmax
v_i; an unrated item has r_i = 0 and no rating units (missing ratings are marginalised). One
layer of F binary hiddens is shared. With the parameters of `CRBMModule` (W, b, c, D) and the
rating-unit biases ``a``::

    E(r, v, h) = -sum_i r_i (a_i + b[i, v_i]) - sum_f h_f (c_f + sum_i r_i (D[i, f] + W[i, v_i, f]))
    F(r, v)    = -sum_{i: r_i = 1} (a_i + b[i, v_i]) - sum_f softplus(x_f),
    x_f        = c_f + sum_{i: r_i = 1} (D[i, f] + W[i, v_i, f])

so the joint free energy is the conditional model's with r visible, plus the ``a`` terms.

**Exact scores.** Adding one unrated item q with rating k to a state changes the free energy by
-(a_q + b[q, k] + sum_f softplus(x_f + D[q, f] + W[q, k, f]) - softplus(x_f)) =: -g[q, k], so

    log p(r_q = 1 | everything else) = log-sigmoid(L_q),  L_q = logsumexp_k g[q, k]
    p(v_q = k | r_q = 1, everything else) = softmax_k g[q, k]

L_q = F(state without q) - F(state with q, rating marginalised), a difference of two free
energies: O(K F) per item once x is known, vectorised over the catalog in chunks
(:func:`item_log_weights`).

**Training** (:func:`cd_gradients`): CD-k (or persistent CD) on (r, v). The positive phase is
sparse (the rated entries); the negative phase samples every item's (K + 1)-way state from
p(r_i, v_i | h): a users x items x K x F product per Gibbs step, done in item chunks so the
memory is batch x chunk x K. States are int64 codes: 0 = unrated, k + 1 = rated at level k.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as fn

from recsys_ebm.models.crbm.cases import CaseBatch
from recsys_ebm.models.crbm.module import CHUNK_ELEMENTS, CRBMModule


def effective_weights(module: CRBMModule, items: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
    """V[i, k] = D[i] + W[i, k] (n, K, F) and e[i, k] = a_i + b[i, k] (n, K) of ``items``."""
    return module.W[items] + module.D[items][:, None, :], module.b[items] + module.a[items][:, None]


def hidden_input(module: CRBMModule, batch: CaseBatch) -> torch.Tensor:
    """x = c + sum over rated (i, v_i) of V[i, v_i]: (B, F) (r = the rated items)."""
    flat = module.W.reshape(-1, module.n_hidden)
    x = module.c.expand(batch.n_cases, -1).clone()
    x = x.index_add(0, batch.case_of, flat[batch.units * module.n_levels + batch.levels])
    return x.index_add(0, batch.case_of, module.D[batch.units])


def free_energy(module: CRBMModule, batch: CaseBatch) -> torch.Tensor:
    """F(r, v) of each case of ``batch``, r = its rated items: (B,)."""
    bias = torch.zeros(batch.n_cases, dtype=module.c.dtype)
    bias = bias.index_add(0, batch.case_of, module.b[batch.units, batch.levels] + module.a[batch.units])
    return -bias - fn.softplus(hidden_input(module, batch)).sum(1)


def case_free_energy(module: CRBMModule, batch: CaseBatch) -> torch.Tensor:
    """The free energy of each case under the joint layer (a module with ``a``) or the
    rating-only one: (B,)."""
    return free_energy(module, batch) if module.a is not None else module.free_energy(batch)


def item_log_weights(module: CRBMModule, x: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """g[c, q, k] = log p(r_q = 1, v_q = k | x_c) - log p(r_q = 0 | x_c) for hidden inputs x
    (C, F) of states where q is unrated: (C, U, K), chunked to ``CHUNK_ELEMENTS``."""
    n_cases, n_items, K, F = x.shape[0], len(items), module.n_levels, module.n_hidden
    out = torch.empty(n_cases, n_items, K, dtype=module.c.dtype)
    base = fn.softplus(x).sum(1)  # (C,)
    item_step = max(1, min(n_items, CHUNK_ELEMENTS // (K * F)))
    case_step = max(1, CHUNK_ELEMENTS // (K * F * item_step))
    for i0 in range(0, n_items, item_step):
        weights, bias = effective_weights(module, items[i0:i0 + item_step])
        for c0 in range(0, n_cases, case_step):
            xs = x[c0:c0 + case_step, None, None, :]
            act = fn.softplus(xs + weights).sum(3) - base[c0:c0 + case_step, None, None]
            out[c0:c0 + case_step, i0:i0 + item_step] = act + bias
    return out


def pair_log_weights(module: CRBMModule, x: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """g of P (hidden input, item) pairs: x (P, F), items (P,) -> (P, K)."""
    out = torch.empty(len(items), module.n_levels, dtype=module.c.dtype)
    step = max(1, CHUNK_ELEMENTS // (module.n_levels * module.n_hidden))
    for start in range(0, len(items), step):
        q, xs = items[start:start + step], x[start:start + step]
        weights, bias = effective_weights(module, q)
        act = fn.softplus(xs[:, None, :] + weights).sum(2) - fn.softplus(xs).sum(1, keepdim=True)
        out[start:start + step] = act + bias
    return out


def activation_scores(g: torch.Tensor, liked: torch.Tensor | None) -> torch.Tensor:
    """From g (..., K): log p(r = 1) (``liked`` None) or log p(r = 1, level in ``liked``)
    (bool (K,)) of each item: (...)."""
    total = torch.logsumexp(g, dim=-1)
    if liked is None:
        return fn.logsigmoid(total)
    return torch.logsumexp(g[..., liked], dim=-1) - fn.softplus(total)


# -------------------------------------------------------------------------- sampling
def sample_states(module: CRBMModule, h: torch.Tensor, generator: torch.Generator,
                  item_chunk: int, data_states: torch.Tensor | None = None,
                  keep_probs: bool = False) -> tuple[torch.Tensor, float, torch.Tensor | None]:
    """One draw of every item's state code from p(r_i, v_i | h): int64 (B, N); with
    ``data_states`` (B, N) also the squared error sum ||onehot(data) - p||^2 over (user, item);
    with ``keep_probs`` the probabilities p(r_i = 1, v_i = k | h) (B, N, K) too."""
    n, K, F = module.n_units, module.n_levels, module.n_hidden
    states = torch.empty(h.shape[0], n, dtype=torch.int64)
    kept = torch.empty(h.shape[0], n, K, dtype=module.c.dtype) if keep_probs else None
    recon = 0.0
    for i0 in range(0, n, item_chunk):
        weights, bias = effective_weights(module, slice(i0, i0 + item_chunk))
        m = weights.shape[0]
        logits = (h @ weights.reshape(m * K, F).T).reshape(-1, m, K) + bias
        logits = torch.cat([torch.zeros_like(logits[..., :1]), logits], dim=2)
        probs = torch.softmax(logits, dim=2)
        u = torch.rand(probs.shape[:2] + (1,), generator=generator, dtype=probs.dtype)
        states[:, i0:i0 + m] = (torch.cumsum(probs, 2) < u).sum(2).clamp_max(K)
        if kept is not None:
            kept[:, i0:i0 + m] = probs[..., 1:]
        if data_states is not None:
            onehot = fn.one_hot(data_states[:, i0:i0 + m], K + 1).to(probs.dtype)
            recon += float(((onehot - probs) ** 2).sum())
    return states, recon, kept


def states_input(module: CRBMModule, states: torch.Tensor) -> torch.Tensor:
    """Hidden input x (B, F) of dense state codes (B, N)."""
    rows, items = torch.nonzero(states, as_tuple=True)
    flat = module.W.reshape(-1, module.n_hidden)
    levels = states[rows, items] - 1
    contrib = flat[items * module.n_levels + levels] + module.D[items]
    return module.c.expand(states.shape[0], -1).clone().index_add(0, rows, contrib)


def dense_states(batch: CaseBatch, n_items: int) -> torch.Tensor:
    """The state codes (B, N) of a batch's ratings (0 unrated, level + 1 rated)."""
    states = torch.zeros(batch.n_cases, n_items, dtype=torch.int64)
    states[batch.case_of, batch.units] = batch.levels + 1
    return states


def _sample_hidden(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(probs.shape, generator=generator, dtype=probs.dtype) < probs).to(probs.dtype)


# -------------------------------------------------------------------------- CD-k / PCD
def cd_gradients(module: CRBMModule, batch: CaseBatch, k: int, generator: torch.Generator,
                 item_chunk: int, fantasy: torch.Tensor | None = None, mean_field: bool = False
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor, float]:
    """CD-k (``fantasy`` None: chains start at the data) or persistent-CD ascent directions
    of the mean log-likelihood of the batch's users, each phase averaged over its chains.
    With ``mean_field`` (CD from the data only) the last step's negative statistics use the
    visible probabilities instead of a sample (less noise; Hinton's guide, section 3).

    Returns ``(grads, chains, recon)``: grads for W, b, c, D, a; the final chain states
    (the persistent chains' next state); the one-step reconstruction's summed squared error
    over every (user, item) of the batch (``sample_states``).
    """
    data = dense_states(batch, module.n_units)
    ph_data = torch.sigmoid(hidden_input(module, batch))
    h = _sample_hidden(ph_data, generator)
    mean_field = mean_field and fantasy is None
    states, recon, probs = sample_states(module, h, generator, item_chunk, data, mean_field and k == 1)
    if fantasy is not None:  # the data's reconstruction only measured the error
        states = fantasy
        k += 1
    ph_model = torch.sigmoid(states_input(module, states))
    for step in range(k - 1):
        states, _, probs = sample_states(module, _sample_hidden(ph_model, generator), generator,
                                         item_chunk, keep_probs=mean_field and step == k - 2)
        ph_model = torch.sigmoid(states_input(module, states))
    grads = _statistics(module, data, ph_data, 1.0)
    negative = _statistics(module, states, ph_model, -1.0) if probs is None else \
        _mean_field_statistics(module, probs)
    return {name: grads[name] + negative[name] for name in grads}, states, recon


def _mean_field_statistics(module: CRBMModule, probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Minus the mean statistics of visible probabilities (B, N, K) and their p(h)."""
    n, K, F = module.n_units, module.n_levels, module.n_hidden
    flat_probs = probs.reshape(len(probs), n * K)
    weights = (module.W + module.D[:, None, :]).reshape(n * K, F)
    ph = torch.sigmoid(module.c + flat_probs @ weights)
    alpha = -1.0 / len(probs)
    grad_w = (alpha * flat_probs.T @ ph).reshape(n, K, F)
    counts = alpha * probs.sum(0)
    return {"W": grad_w, "b": counts, "c": alpha * ph.sum(0), "D": grad_w.sum(1), "a": counts.sum(1)}


def _statistics(module: CRBMModule, states: torch.Tensor, ph: torch.Tensor, sign: float
                ) -> dict[str, torch.Tensor]:
    """sign * mean over chains of the sufficient statistics of states (B, N) with p(h) (B, F)."""
    K, F = module.n_levels, module.n_hidden
    rows, items = torch.nonzero(states, as_tuple=True)
    idx = items * K + states[rows, items] - 1
    alpha = sign / states.shape[0]
    grad_w = torch.zeros(module.n_units * K, F, dtype=module.c.dtype).index_add_(0, idx, ph[rows], alpha=alpha)
    counts = torch.zeros(module.n_units * K, dtype=module.c.dtype)
    counts.index_add_(0, idx, torch.full((len(idx),), alpha, dtype=module.c.dtype))
    grad_w = grad_w.reshape(module.n_units, K, F)
    counts = counts.reshape(module.n_units, K)
    return {"W": grad_w, "b": counts, "c": alpha * ph.sum(0), "D": grad_w.sum(1), "a": counts.sum(1)}


@torch.no_grad()
def apply_update(module: CRBMModule, grads: dict[str, torch.Tensor], velocity: dict[str, torch.Tensor],
                 lr: float, momentum: float, weight_decay: float) -> None:
    """Momentum ascent on the mean gradients; L2 ``weight_decay`` on W and D."""
    for name, param in module.named_parameters():
        step = grads[name] - weight_decay * param if name in ("W", "D") else grads[name]
        velocity[name].mul_(momentum).add_(step, alpha=lr)
        param.add_(velocity[name])


class Adam:
    """Adam steps (Kingma & Ba 2015) on CD ascent directions, L2 ``weight_decay`` on W and D:
    per-parameter step sizes suit the joint layer, whose rare items get tiny mean gradients."""

    def __init__(self, module: CRBMModule, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.m = {name: torch.zeros_like(p) for name, p in module.named_parameters()}
        self.v = {name: torch.zeros_like(p) for name, p in module.named_parameters()}
        self.betas, self.eps, self.t = betas, eps, 0

    @torch.no_grad()
    def step(self, module: CRBMModule, grads: dict[str, torch.Tensor], lr: float, weight_decay: float) -> None:
        self.t += 1
        b1, b2 = self.betas
        scale = lr * (1 - b2 ** self.t) ** 0.5 / (1 - b1 ** self.t)
        for name, param in module.named_parameters():
            g = grads[name] - weight_decay * param if name in ("W", "D") else grads[name]
            self.m[name].mul_(b1).add_(g, alpha=1 - b1)
            self.v[name].mul_(b2).addcmul_(g, g, value=1 - b2)
            param.addcdiv_(self.m[name], self.v[name].sqrt().add_(self.eps), value=scale)


def initial_rating_bias(n_rated: np.ndarray, n_cases: int) -> torch.Tensor:
    """a_i = log-odds of item i being rated (smoothed): (n_items,)."""
    p = (n_rated + 0.5) / (n_cases + 1.0)
    return torch.from_numpy(np.log(p / (1 - p)).astype(np.float32))
