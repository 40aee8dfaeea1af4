"""Recommendations for groups of users and for taste mixes, served through the ranking core.

:func:`recommend_groups` ranks (T = 0) or samples (T > 0) k items for each group of trained
users by a strategy of :mod:`recsys_ebm.ranking.compose`:

* the score strategies compose the members' ``score`` rows; for vector models (``user_vectors``
  with ``item_vectors`` / ``item_biases``) the product of experts is served as one mixed user
  vector through the factored kernel instead (exactly, also for a model served through a FAISS
  index);
* ``pseudo-user`` folds the union of the members' histories in as one new user (the model's own
  fold-in, as ``recommend(fold_in=True)``); for implicit-feedback models only.

A group's seen set is the union of its members' seen items (their rows of ``user_items`` when
given, else the model's seen set): an item any member already has is left out for everyone. A
member of weight 0 takes no part at all (so the mix λ = 0 of users u and v is u's own list).
Sampling draws from the composed distribution through the one sampler, keyed on
:func:`recsys_ebm.ranking.compose.group_key`. ``Recommender.recommend_group`` and
``recommend_mix`` are the one-group forms.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from recsys_ebm.ranking.compose import (
    check_strategy,
    compose_scores,
    group_key,
    member_weights,
    mixed_vectors,
)
from recsys_ebm.ranking.factored import rank_vectors
from recsys_ebm.ranking.select import select
from recsys_ebm.ranking.topk import check_k, check_temperature, item_mask, mask_rows

logger = logging.getLogger(__name__)

#: Groups composed per block of the score strategies (bounds the members' score rows held).
GROUP_BLOCK = 256


def _members(groups, n_users: int) -> list[np.ndarray]:
    """Each group's member ids as int64 arrays; errors name the group and the bad id."""
    if isinstance(groups, np.ndarray) and groups.ndim == 1:
        groups = [groups]
    out = []
    for g, group in enumerate(groups):
        ids = np.atleast_1d(np.asarray(group))
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"group {g} must be a non-empty list of integer user ids, got {group!r}")
        ids = ids.astype(np.int64)
        bad = (ids < 0) | (ids >= n_users)
        if np.any(bad):
            raise IndexError(f"group {g}: user id {int(ids[bad][0])} is not a trained user "
                             f"(0..{n_users - 1})")
        if np.unique(ids).size != ids.size:
            raise ValueError(f"group {g} names a member twice: {ids.tolist()}")
        out.append(ids)
    return out


def _seed(rng) -> int:
    """The sampling seed as ``recommend`` reads ``rng`` (an int, None = 0, or a Generator)."""
    if rng is None:
        return 0
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(0, 2**63 - 1))
    seed = int(rng)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return seed


def union_rows(members: list[np.ndarray], rows: sp.csr_matrix, *, mean: bool = False) -> sp.csr_matrix:
    """One row per group over the members' ``rows``: the union of their items (value 1), or
    with ``mean`` each item's mean value over the members who have it. float32 CSR."""
    n = len(members)
    membership = sp.csr_matrix((np.ones(sum(m.size for m in members), np.float32),
                                np.concatenate(members), np.cumsum([0] + [m.size for m in members])),
                               shape=(n, rows.shape[0]))
    pattern = rows.copy().astype(np.float32)
    pattern.data[:] = 1.0
    counts = (membership @ pattern).tocsr()
    if not mean:
        counts.data[:] = 1.0
        return counts
    totals = (membership @ rows.astype(np.float32)).tocsr()
    totals.data /= counts.data  # the same sparsity pattern, in the same order
    return totals


def _histories(model, user_items) -> sp.csr_matrix | None:
    """The members' histories: ``user_items`` (one row per trained user) or the seen set."""
    if user_items is None:
        return model.seen_items
    user_items = sp.csr_matrix(user_items, dtype=np.float32)
    if user_items.shape != (model.n_users, model.n_items):
        raise ValueError(f"user_items has shape {user_items.shape}; groups need one row per trained "
                         f"user ({model.n_users} x {model.n_items}), indexed by user id")
    return user_items


def recommend_groups(model, groups: Sequence, k: int = 10, *, strategy: str = "poe",
                     weights: Sequence | None = None, user_items: sp.csr_matrix | None = None,
                     filter_seen: bool = True, items=None, filter_items=None,
                     temperature: float = 0.0, rng=None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (T = 0) or sampled (T > 0) items for each group of trained users.

    Parameters
    ----------
    groups : a sequence of groups, each a sequence of trained user ids (no repeats).
    strategy : ``poe`` (default), ``average``, ``least-misery``, ``most-pleasure``, ``borda``
        or ``pseudo-user`` (:mod:`recsys_ebm.ranking.compose`).
    weights : one weight sequence per group (normalised to sum 1), equal when None.
    user_items : CSR (n_users, n_items) of the members' histories; default the model's seen set.
    filter_seen : leave out every item a member has (the union of their histories).
    items, filter_items, temperature, rng : as for ``Recommender.recommend``; a group's sample
        depends only on (seed, its :func:`group_key`).

    Returns
    -------
    ids int64 (n_groups, k) and the groups' scores float32 (n_groups, k), padded with -1 / -inf.
    """
    k, temperature, strategy = check_k(k), check_temperature(temperature), check_strategy(strategy)
    members = _members(groups, model.n_users)
    if weights is None:
        weights = [None] * len(members)
    if len(weights) != len(members):
        raise ValueError(f"got {len(weights)} weight lists for {len(members)} groups")
    w = [member_weights(wg, m.size) for wg, m in zip(weights, members, strict=True)]
    # a member of weight 0 takes no part: neither its energies nor its seen items
    members = [m[wg > 0] for m, wg in zip(members, w, strict=True)]
    w = [wg[wg > 0] for wg in w]
    keys = np.array([group_key(m, wg) for m, wg in zip(members, w, strict=True)], dtype=np.int64)
    histories = _histories(model, user_items)
    if histories is None and (filter_seen or strategy == "pseudo-user"):
        if strategy == "pseudo-user":
            raise ValueError("the pseudo-user needs the members' histories: pass user_items "
                             "(the model has no seen set)")
        logger.warning("the model has no seen set: items the members already have are not left out")
    exclude = None
    if filter_seen and histories is not None and members:
        exclude = model._interaction_pattern(union_rows(members, histories))
    mask = item_mask(model.n_items, items, filter_items)
    seed = _seed(rng)
    if not members:
        return np.empty((0, k), np.int64), np.empty((0, k), np.float32)
    if strategy == "pseudo-user":
        if getattr(model, "fits_ratings", False):
            raise ValueError("the pseudo-user strategy folds in a union of implicit histories; "
                             f"{type(model).__name__} fits ratings: use a score strategy")
        # fold-in ids are labels only: the groups' keys, so each group samples by its own key
        return model.recommend(keys, union_rows(members, histories), k, filter_seen=filter_seen,
                               items=mask, temperature=temperature, rng=seed, fold_in=True)
    if strategy == "poe" and _has_vectors(model):
        vectors = np.stack([mixed_vectors(model.user_vectors(m), wg) for m, wg in zip(members, w, strict=True)])
        ids, values, _ = rank_vectors(vectors, model.item_vectors(), model.item_biases(), k,
                                      temperature, seed, keys=keys, exclude=exclude, mask=mask)
        return ids, values.astype(np.float32)
    return _rank_composed(model, members, w, keys, exclude, mask, k, strategy, temperature, seed)


def _has_vectors(model) -> bool:
    return all(callable(getattr(model, name, None))
               for name in ("user_vectors", "item_vectors", "item_biases"))


def _rank_composed(model, members, weights, keys, exclude, mask, k, strategy, temperature, seed):
    """Compose the members' score rows block by block of groups and select from them."""
    n = len(members)
    ids, values = np.empty((n, k), np.int64), np.empty((n, k), np.float32)
    for start in range(0, n, GROUP_BLOCK):
        stop = min(start + GROUP_BLOCK, n)
        block = members[start:stop]
        unique, inverse = np.unique(np.concatenate(block), return_inverse=True)
        member_scores = np.asarray(model.score(unique), dtype=np.float32)
        composed = np.empty((stop - start, model.n_items), np.float32)
        offset = 0
        for row, group in enumerate(block):
            rows = np.array(member_scores[inverse[offset:offset + group.size]], order="C")
            offset += group.size
            if exclude is not None:
                mask_rows(rows, exclude[[start + row] * group.size])
            if mask is not None:
                rows[:, ~mask] = -np.inf
            composed[row] = compose_scores(rows, strategy, weights[start + row], temperature)
        block_ids, block_values, _ = select(composed, k, temperature, seed, keys[start:stop])
        ids[start:stop], values[start:stop] = block_ids, block_values
    return ids, values
