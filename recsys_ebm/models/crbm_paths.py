"""Interpolating energies is not interpolating data: the two taste paths of a user-oriented CRBM.

For the dot-product EBM the energy is linear in the user vector, so mixing two users' energies
and mixing their vectors are one path. A CRBM's free energy is not linear in the visible state
V (K-way one-hot rating units, conditioning set r)::

    F(V) = -Σ_{s,k} V[s, k] b[s, k] - Σ_f softplus(x_f(V)),
    x_f(V) = c_f + Σ_{s,k} V[s, k] W[s, k, f] + Σ_s r_s D[s, f]

Between users u and v (λ in [0, 1]) there are two paths:

* **energy path**: F_E(λ) = (1 − λ) F(V_u) + λ F(V_v), and the item energies
  -log p(v_i = k | ·) mixed the same way: a product of the two users' predictive distributions;
* **data path**: the mixed visible state V_λ = (1 − λ) V_u + λ V_v (soft one-hots, r_λ mixed
  alike), F(V_λ), and the predictive distribution given V_λ.

softplus is convex, so F is concave in V: F(V_λ) >= F_E(λ), with equality only at the ends.
Only ``orientation="user"`` has one visible state per user (item-oriented CRBMs spread a user
over every item's RBM), so only it has these paths. This module reads the CRBM's parameters
and never changes them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as fn


def _check_user_crbm(model) -> None:
    if getattr(model, "module", None) is None:
        raise RuntimeError("the model is not fitted: call fit() or load() first")
    if model.config.orientation != "user":
        raise ValueError("the data path needs one visible state per user: a CRBM with "
                         f"orientation='user' (this one has {model.config.orientation!r})")


def visible_state(model, user: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A trained user's visible state V (n_items, K) one-hot over the rated items (zero rows
    elsewhere) and conditioning set r (n_items,), in the module's dtype."""
    _check_user_crbm(model)
    module, batch = model.module, model.data.batch(np.array([user]))
    v = torch.zeros(module.n_units, module.n_levels, dtype=module.c.dtype)
    v[batch.units, batch.levels] = 1.0
    r = torch.zeros(module.n_units, dtype=module.c.dtype)
    r[batch.r_units] = 1.0
    return v, r


def hidden_input(model, v: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """x(V) = c + Σ V[s, k] W[s, k] + r D for a (soft) visible state: (F,)."""
    module = model.module
    x = module.c + torch.einsum("sk,skf->f", v, module.W)
    if module.D is not None:
        x = x + r @ module.D
    return x


def soft_free_energy(model, v: torch.Tensor, r: torch.Tensor) -> float:
    """F(V) of a (soft) visible state, float."""
    x = hidden_input(model, v, r)
    return float(-(v * model.module.b).sum() - fn.softplus(x).sum())


def item_log_proba(model, x: torch.Tensor) -> torch.Tensor:
    """log p(v_i = k | x) for every item: (n_items, K)."""
    module = model.module
    return module.log_proba_grid(x[None], torch.arange(module.n_units))[0]


@torch.no_grad()
def crbm_paths(model, u: int, v: int, lambdas, k: int = 10) -> dict:
    """Both paths between users u and v: free energies, the top-k of each path's item scores
    (expected rating under the path's distribution; the users' rated items left out), and the
    overlap of the two lists per λ."""
    v_u, r_u = visible_state(model, u)
    v_v, r_v = visible_state(model, v)
    levels = torch.as_tensor(model.levels, dtype=model.module.c.dtype)
    log_u = item_log_proba(model, hidden_input(model, v_u, r_u))
    log_v = item_log_proba(model, hidden_input(model, v_v, r_v))
    f_u, f_v = soft_free_energy(model, v_u, r_u), soft_free_energy(model, v_v, r_v)
    seen = ((r_u + r_v) > 0).numpy()
    out = {"users": [int(u), int(v)], "lambdas": [float(x) for x in lambdas], "free_energy_data": [],
           "free_energy_mix": [], "overlap_paths": [], "max_log_p_gap": []}
    for lam in lambdas:
        v_lam, r_lam = (1 - lam) * v_u + lam * v_v, (1 - lam) * r_u + lam * r_v
        out["free_energy_data"].append(soft_free_energy(model, v_lam, r_lam))
        out["free_energy_mix"].append((1 - lam) * f_u + lam * f_v)
        data_log = item_log_proba(model, hidden_input(model, v_lam, r_lam))
        mixed = torch.log_softmax((1 - lam) * log_u + lam * log_v, dim=1)  # a product of experts
        lists = [_top(torch.exp(p) @ levels, seen, k) for p in (data_log, mixed)]
        out["overlap_paths"].append(len(set(lists[0]) & set(lists[1])) / k)
        out["max_log_p_gap"].append(float((data_log - mixed).abs().max()))
    return out


def _top(scores: torch.Tensor, seen: np.ndarray, k: int) -> list[int]:
    values = scores.numpy().astype(np.float64).copy()
    values[seen] = -np.inf
    order = np.lexsort((np.arange(values.size), -values))  # ties to the lower item id
    return order[:k].tolist()
