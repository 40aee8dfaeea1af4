"""Composed energies: one group's (or one taste mix's) scores from its members' scores.

Energies compose by addition: a group of users u with weights w_u (w_u >= 0, normalised to sum
to 1; equal by default) gets

* ``poe``, the product of experts: E_g(i) = Σ_u w_u E(u, i), so at temperature T
  p_g(i) ∝ Π_u p_u(i | T)^{w_u}. Weights sum to 1 so E_g stays on a single user's scale and a
  temperature means the same for a group as for a user. A taste mix E_λ = (1 − λ) E(u, ·) +
  λ E(v, ·) is the product of experts with weights (1 − λ, λ).
* ``average``, the mixture of experts: p_g(i) = Σ_u w_u p_u(i | T), served as the score
  T log p_g(i) so that softmax(score / T) is the mixture (T = 1, the models' own
  distributions, for the exact ranking at T = 0).
* ``least-misery`` / ``most-pleasure``: minus the largest / smallest member energy. A user's
  energies are defined up to a constant (p_u does not change when one is added), so members
  are put in one gauge first: each member's E(u, i) + log Z_u, i.e. -log p_u(i | T = 1).
* ``borda``: each member gives every eligible item as many points as it ranks above (ties
  share the average), points weighted by w_u and summed.
* ``pseudo-user`` is not a composition of scores: the model scores the union of the members'
  histories as one new user (``recsys_ebm.models.group``).

For vector models (-E(u, i) = <p_u, q_i> + b_i) the energy is linear in p_u, so the product
of experts is the single user vector Σ_u w_u p_u (:func:`mixed_vectors`): composition costs
one ranking, however large the group.

A group's sampling key (:func:`group_key`) is a function of its sorted member ids (and its
weights when they are not equal): the same group draws the same sample in any call.
"""

from __future__ import annotations

import hashlib

import numpy as np
from scipy.stats import rankdata

#: Every group strategy, in the order reports list them.
STRATEGIES = ("poe", "average", "least-misery", "most-pleasure", "borda", "pseudo-user")
#: The strategies composed from the members' scores alone.
SCORE_STRATEGIES = STRATEGIES[:-1]


def check_strategy(strategy: str) -> str:
    """``strategy`` if known; ``ValueError`` lists the known ones."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown group strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    return strategy


def member_weights(weights, n_members: int) -> np.ndarray:
    """Weights of a group's members as float64 (n_members,) summing to 1 (equal when None).

    ``ValueError`` for a wrong count, a negative or non-finite weight, or weights summing to 0.
    """
    if n_members < 1:
        raise ValueError("a group needs at least one member")
    if weights is None:
        return np.full(n_members, 1.0 / n_members)
    w = np.asarray(weights, dtype=np.float64).ravel()
    if w.shape != (n_members,):
        raise ValueError(f"got {w.size} weights for {n_members} members")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"member weights must be finite and >= 0, got {w.tolist()}")
    if w.sum() <= 0:
        raise ValueError(f"member weights must not all be 0, got {w.tolist()}")
    return w / w.sum()


def mix_weights(lam: float) -> np.ndarray:
    """The weights (1 − λ, λ) of the taste mix of two users; ``ValueError`` outside [0, 1]."""
    lam = float(lam)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"the mix λ must be in [0, 1], got {lam}")
    return np.array([1.0 - lam, lam])


def log_softmax_rows(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """log softmax(scores / T) per row over the finite entries, float64; -inf stays -inf."""
    z = np.asarray(scores, dtype=np.float64) / temperature
    top = np.max(z, axis=1, keepdims=True, initial=-np.inf)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return z - top - np.log(np.exp(z - top).sum(axis=1, keepdims=True))


def borda_points(scores: np.ndarray) -> np.ndarray:
    """Borda points per row, float64: how many eligible items an item ranks above (ties share
    the average); -inf for ineligible (-inf) items."""
    scores = np.asarray(scores, dtype=np.float64)
    eligible = np.isfinite(scores)
    # rankdata ranks the lowest 1; -inf entries all rank below every eligible item
    ranks = rankdata(scores, method="average", axis=1)
    n_ineligible = (~eligible).sum(axis=1, keepdims=True)
    return np.where(eligible, ranks - 1.0 - n_ineligible, -np.inf)


def compose_scores(scores: np.ndarray, strategy: str, weights=None, temperature: float = 0.0
                   ) -> np.ndarray:
    """The group's score of every item from its members' scores.

    Parameters
    ----------
    scores : float (n_members, n_items), higher is better (-E), -inf where the group may not
        receive an item (the same items in every row).
    strategy : one of :data:`SCORE_STRATEGIES`.
    weights : member weights (see :func:`member_weights`), equal when None.
    temperature : the sampling temperature; only ``average`` depends on it (T = 1 at T = 0).

    Returns
    -------
    float32 (n_items,), -inf for items no member may receive.
    """
    if strategy not in SCORE_STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is not a composition of scores; choose one of "
                         f"{', '.join(SCORE_STRATEGIES)}")
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"member scores must be 2-D (n_members, n_items), got shape {scores.shape}")
    w = member_weights(weights, scores.shape[0])
    with np.errstate(invalid="ignore"):
        if strategy == "poe":
            # a weight of 0 drops the member: 0 * -inf would be NaN
            out = w[w > 0] @ scores[w > 0].astype(np.float64)
        elif strategy == "average":
            t = temperature if temperature > 0 else 1.0
            log_p = log_softmax_rows(scores[w > 0], t) + np.log(w[w > 0])[:, None]
            top = np.max(log_p, axis=0, initial=-np.inf)
            safe = np.where(np.isfinite(top), top, 0.0)
            with np.errstate(divide="ignore"):
                out = t * (safe + np.log(np.exp(log_p - safe).sum(axis=0)))
        elif strategy in ("least-misery", "most-pleasure"):
            gauged = log_softmax_rows(scores[w > 0])
            out = gauged.min(axis=0) if strategy == "least-misery" else gauged.max(axis=0)
        else:
            out = w[w > 0] @ np.where(np.isfinite(scores[w > 0]), borda_points(scores[w > 0]), 0.0)
            out[~np.isfinite(scores).all(axis=0)] = -np.inf
    out = np.where(np.isnan(out), -np.inf, out)
    return out.astype(np.float32)


def mixed_vectors(user_vectors: np.ndarray, weights=None) -> np.ndarray:
    """The product of experts of vector models: Σ_u w_u p_u, float32 (dim,).

    -E_g(i) = Σ_u w_u (<p_u, q_i> + b_i) = <Σ_u w_u p_u, q_i> + b_i since the weights sum to 1.
    """
    vectors = np.asarray(user_vectors, dtype=np.float64)
    if vectors.ndim != 2:
        raise ValueError(f"user vectors must be 2-D (n_members, dim), got shape {vectors.shape}")
    return (member_weights(weights, vectors.shape[0]) @ vectors).astype(np.float32)


#: Group keys live above every user key of a model (2^40 users is far beyond any catalog).
_KEY_OFFSET = 1 << 40


def group_key(member_ids, weights=None) -> int:
    """The sampling key of a group: a member alone (at full weight) keeps its own user key, so a
    group of one samples exactly like the user. Otherwise a hash of the sorted member ids, with
    the normalised weights (rounded to 12 digits, in member-id order) when they are not equal,
    offset above 2^40 so it never meets a user's key."""
    ids = np.asarray(member_ids, dtype=np.int64).ravel()
    w = member_weights(weights, ids.size)
    if ids.size == 1:
        return int(ids[0])
    order = np.argsort(ids, kind="stable")
    text = "group:" + ",".join(str(int(u)) for u in ids[order])
    if not np.allclose(w, w[0], rtol=0, atol=1e-12):
        text += ";weights:" + ",".join(f"{x:.12f}" for x in w[order])
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return _KEY_OFFSET + int.from_bytes(digest, "little") % ((1 << 62) - _KEY_OFFSET)
