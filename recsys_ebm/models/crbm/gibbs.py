"""Temperature-controlled block Gibbs chains of the joint CRBM and the exploratory lists they make.

At temperature T the chains sample p_T(r, v, h) ∝ exp(-E(r, v, h) / T) with the user's own
items clamped (their r_i = 1 and ratings fixed) and every item that may not be returned clamped
unrated. One block step draws all hiddens given the items, then every free item's (K + 1)-way
state (unrated or rated at level k) given the hiddens::

    p_T(h_f = 1 | r, v) = sigmoid(x_f / T),   p_T(r_i = 1, v_i = k | h) ∝ exp((a_i + b[i, k] + h . V[i, k]) / T)

against exp(0) for r_i = 0 (V[i, k] = D[i] + W[i, k]). Each chain starts from the user's own
state (no free item rated).

**The exploratory list** (:func:`exploratory_lists`): ``n_chains`` chains per user run
``burn_in`` steps, then up to ``n_steps`` more; after each of those steps, the free items that
are rated in some chain and not yet listed join the list, until the list has k distinct items.
Items activated by the same step join in a seeded random order (one random priority per user
and item, from its own stream): when a step activates more than the list has room for, which
of them join is left to chance, not to the exact score. Ordering them by exact score gave back
the exact top k whenever the chains activated many items, at any T. If the chains
activate fewer than k items, the list is completed from the exact ranking (the exact score of
``CRBM.score``). The k items are returned best exact score first.

As T -> 0 the chains freeze in the ground state (hiddens
h* = [x > 0]); the list is then the exact ranking whenever the free items the ground state
rates (a_i + b[i, k] + h* . V[i, k] > 0 for some k) are among the exact top k, in particular
when it rates none, as in models trained on sparse data.

**Seeding**: the random numbers of a user's chains come from its own generator
(``block_generator(seed, user key, GIBBS_STREAM)``), drawn in the same order whatever the batch,
and the arithmetic is float64 per row: a user's list depends only on (seed, user, model).
"""

from __future__ import annotations

import numpy as np
import torch

from recsys_ebm.models.crbm.module import CRBMModule
from recsys_ebm.ranking.sampling import block_generator

#: the random stream of the Gibbs chains (apart from the serving core's samplers' streams)
GIBBS_STREAM = 11
#: the stream of the order in which items activated by the same step join a list
ORDER_STREAM = 12


class ChainModel:
    """The joint layer's weights in float64, for chains: V (N, K, F) flattened, e (N, K), c (F,),
    and the same per rating level as planes (K, F, N) and (K, 1, N) for the item step."""

    def __init__(self, module: CRBMModule):
        with torch.no_grad():
            self.V = (module.W + module.D[:, None, :]).double()
            self.e = (module.b + module.a[:, None]).double()
        self.n_items, self.n_levels, self.n_hidden = self.V.shape
        self.flat = self.V.reshape(-1, self.n_hidden)
        self.planes = self.V.permute(1, 2, 0).contiguous()  # (K, F, N)
        self.plane_bias = self.e.T.contiguous()[:, None, :]  # (K, 1, N)

    def states_input(self, x_clamped: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """x (R, F) of the clamped input plus the chains' rated free items."""
        rows, items = torch.nonzero(states, as_tuple=True)
        contrib = self.flat[items * self.n_levels + states[rows, items] - 1]
        return x_clamped.clone().index_add(0, rows, contrib)

    def step(self, x_clamped: torch.Tensor, states: torch.Tensor, free: torch.Tensor, temperature: float,
             u_hidden: torch.Tensor, u_items: torch.Tensor) -> torch.Tensor:
        """One block Gibbs step at T from ``states`` (R, N) (codes: 0 unrated, k + 1 level k):
        hiddens then items, with uniforms u_hidden (R, F) and u_items (R, N); free (R, N) bool.

        An item's state is drawn by inverting its cumulative weights over (unrated, level 1 ..
        K) at u * total; the K levels are kept as separate (R, N) planes, so every operation is
        elementwise over whole planes (a softmax over a trailing axis of K + 1 is many times
        slower)."""
        x = self.states_input(x_clamped, states)
        h = (u_hidden < torch.sigmoid(x / temperature)).double()
        logits = torch.matmul(h, self.planes).add_(self.plane_bias).div_(temperature)  # (K, R, N)
        top = logits.amax(0).clamp_min_(0.0)  # the unrated state's logit is 0
        weights = logits.sub_(top).exp_()
        cumulative = torch.exp(-top)  # the unrated state's weight
        target = u_items * (cumulative + weights.sum(0))
        codes = (cumulative < target).long()
        for level in range(self.n_levels - 1):  # the last level takes the rest of the mass
            cumulative += weights[level]
            codes += cumulative < target
        return torch.where(free, codes, torch.zeros_like(codes))


def run_chains(chains: ChainModel, x_clamped: torch.Tensor, free: torch.Tensor, temperature: float,
               n_steps: int, rng: np.random.Generator) -> torch.Tensor:
    """The states (R, N) after ``n_steps`` block steps of R chains from the clamped states (each
    row its own chain: x_clamped (R, F), free (R, N)), uniforms from ``rng``."""
    states = torch.zeros(free.shape, dtype=torch.int64)
    for _ in range(n_steps):
        u_hidden = torch.from_numpy(rng.random((len(states), chains.n_hidden)))
        u_items = torch.from_numpy(rng.random(free.shape))
        states = chains.step(x_clamped, states, free, temperature, u_hidden, u_items)
    return states


def exploratory_lists(chains: ChainModel, x_user: torch.Tensor, free: np.ndarray, exact: np.ndarray,
                      k: int, temperature: float, seed: int, keys: np.ndarray, *, n_chains: int,
                      burn_in: int, n_steps: int) -> np.ndarray:
    """The first k distinct newly activated free items of each user's chains (see the module
    docstring), completed from the exact ranking: int64 (n, k), -1 where fewer items are free.

    x_user (n, F) is each user's clamped hidden input, free (n, N) bool its returnable unrated
    items, exact (n, N) its exact scores (-inf where not returnable), keys (n,) its sampling keys.
    """
    n, n_items = free.shape
    generators = [block_generator(seed, int(key), GIBBS_STREAM) for key in keys]
    priority = np.stack([block_generator(seed, int(key), ORDER_STREAM).random(n_items) for key in keys])
    x_rows = x_user.double().repeat_interleave(n_chains, dim=0)
    free_rows = torch.from_numpy(np.repeat(free, n_chains, axis=0))
    states = torch.zeros(free_rows.shape, dtype=torch.int64)
    listed = np.zeros((n, n_items), dtype=bool)
    lists: list[list[int]] = [[] for _ in range(n)]
    for step in range(burn_in + n_steps):
        u_hidden = np.concatenate([g.random((n_chains, chains.n_hidden)) for g in generators])
        u_items = np.concatenate([g.random((n_chains, n_items)) for g in generators])
        states = chains.step(x_rows, states, free_rows, temperature, torch.from_numpy(u_hidden),
                             torch.from_numpy(u_items))
        if step < burn_in:
            continue
        active = (states.numpy() > 0).reshape(n, n_chains, n_items).any(1) & ~listed
        for u in np.flatnonzero(active.any(1)):
            if len(lists[u]) >= k:
                continue
            new = np.flatnonzero(active[u])
            new = new[np.argsort(priority[u, new], kind="stable")]  # the seeded order
            lists[u].extend(new[:k - len(lists[u])].tolist())
            listed[u, new] = True
        if all(len(row) >= k for row in lists):
            break
    return _complete(lists, listed, exact, k)


def _complete(lists: list[list[int]], listed: np.ndarray, exact: np.ndarray, k: int) -> np.ndarray:
    """Fill short lists from the exact ranking (unlisted returnable items, best first), then
    order each list by exact score (ties to the lower id)."""
    out = np.full((len(lists), k), -1, dtype=np.int64)
    for u, row in enumerate(lists):
        if len(row) < k:
            rest = np.flatnonzero(np.isfinite(exact[u]) & ~listed[u])
            rest = rest[np.lexsort((rest, -exact[u, rest]))]
            row = row + rest[:k - len(row)].tolist()
        row = np.asarray(row, dtype=np.int64)
        row = row[np.lexsort((row, -exact[u, row]))] if len(row) else row
        out[u, :len(row)] = row
    return out
