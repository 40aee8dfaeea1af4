"""Shilling (profile-injection) attacks: seeded generators of fake user profiles.

The standard attack models of Lam & Riedl (2004) and Mobasher et al. (2007). A fake profile
rates three groups of items:

- the **target** item(s): the maximum rating (``push``) or the minimum (``nuke``);
- the **selected** items, which give the attack its shape: none (random, average), the
  ``n_selected`` most-rated items at the maximum (bandwagon), or a segment of ``n_selected``
  items similar to the target at the maximum (segment);
- the **filler** items, ``n_filler = round(filler_size * n_items)`` distinct items drawn uniformly
  from the rest of the catalog, rated

  ========== ==================================================================
  random     N(global mean, global std) rounded to the nearest rating level
  average    N(item mean, item std) rounded (items with < 2 ratings: global std)
  bandwagon  as random
  segment    the minimum rating
  ========== ==================================================================

  (the normal draw is rounded to the nearest level and clipped to the scale, so a level's
  probability is the normal mass of its rounding interval, the end levels taking the tails).

The intent changes only the target's rating. ``n_fake = round(attack_size * n_users)`` fake
users are added (ML-100K: 1%, 5%, 10% give 9, 47, 94 profiles; 3%, 5%, 10% filler give 50, 84,
168 items).

Target rule (documented, seeded): for ``push``, the candidates are items with at least
``min_target_ratings`` ratings, at most the median number of ratings per item, and a mean
rating below the global mean (items the attacker has a reason to push); for ``nuke``, items with
at least the median number of ratings and a mean above the global mean. ``n_targets`` of them
are drawn uniformly without replacement with ``np.random.default_rng([seed, 0])``. The segment
of a target is the ``n_selected`` items, among items with at least the median number of ratings,
with the highest cosine similarity of their binary rater vectors to the target's raters (the
items its audience also rates); with several targets, to the targets' summed rater vector.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import ndtr

from recsys_ebm.config import Config, check
from recsys_ebm.data.ids import IdMap
from recsys_ebm.data.interactions import Interactions

logger = logging.getLogger(__name__)

ATTACK_KINDS = ("random", "average", "bandwagon", "segment")
INTENTS = ("push", "nuke")


@dataclasses.dataclass(frozen=True)
class AttackConfig(Config):
    """One attack: model, intent, sizes, and the seed of every random choice it makes.

    Attributes
    ----------
    kind : "random", "average", "bandwagon" or "segment".
    intent : "push" (targets at the maximum rating) or "nuke" (at the minimum).
    attack_size : fake profiles as a share of the genuine users.
    filler_size : filler items per profile as a share of the catalog.
    n_targets : target items, rated by every fake profile.
    n_selected : popular items (bandwagon) or segment items (segment); unused otherwise.
    min_target_ratings : fewest genuine ratings a push target may have.
    seed : seeds targets (stream 0) and profiles (stream 1).
    """

    kind: str = "average"
    intent: str = "push"
    attack_size: float = 0.05
    filler_size: float = 0.05
    n_targets: int = 1
    n_selected: int = 5
    min_target_ratings: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.kind in ATTACK_KINDS, f"kind must be one of {ATTACK_KINDS}, got {self.kind!r}")
        check(self.intent in INTENTS, f"intent must be one of {INTENTS}, got {self.intent!r}")
        for name in ("attack_size", "filler_size"):
            value = getattr(self, name)
            check(isinstance(value, (int, float)) and not isinstance(value, bool)
                  and math.isfinite(value) and 0 < value < 1,
                  f"{name} must be a share in (0, 1), got {value!r}")
        for name in ("n_targets", "n_selected", "min_target_ratings", "seed"):
            value = getattr(self, name)
            check(isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0,
                  f"{name} must be an integer >= 0, got {value!r}")
        check(self.n_targets >= 1, f"n_targets must be >= 1, got {self.n_targets}")
        check(self.kind not in ("bandwagon", "segment") or self.n_selected >= 1,
              f"a {self.kind} attack needs n_selected >= 1")


def share_count(share: float, n: int) -> int:
    """``round(share * n)`` (halves up), at least 1: the number of profiles or filler items."""
    return max(1, int(math.floor(share * n + 0.5)))


@dataclass(frozen=True)
class ItemStats:
    """Per-item rating statistics of the genuine data.

    Attributes
    ----------
    counts : int64 (n_items,); means, stds : float64 (n_items,), the global values where an
        item has too few ratings (no rating: global mean; fewer than 2: global std)
    global_mean, global_std : float
    levels : float64 (K,), the rating levels observed, increasing
    raters : CSR bool (n_items, n_users), who rated each item
    """

    counts: np.ndarray
    means: np.ndarray
    stds: np.ndarray
    global_mean: float
    global_std: float
    levels: np.ndarray
    raters: sp.csr_matrix

    @classmethod
    def from_ratings(cls, ratings: sp.csr_matrix) -> ItemStats:
        """Statistics of a users x items CSR of ratings (stored entries are the ratings)."""
        ratings = sp.csr_matrix(ratings, dtype=np.float64)
        ratings.sum_duplicates()
        if ratings.nnz < 2:
            raise ValueError("the genuine ratings need at least 2 entries to define an attack")
        csc = ratings.tocsc()
        counts = np.diff(csc.indptr).astype(np.int64)
        sums = np.asarray(csc.sum(axis=0)).ravel()
        squares = np.asarray(csc.multiply(csc).sum(axis=0)).ravel()
        global_mean = float(ratings.data.mean())
        global_std = float(ratings.data.std())
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(counts > 0, sums / np.maximum(counts, 1), global_mean)
            variances = (squares - counts * means**2) / np.maximum(counts - 1, 1)
        stds = np.where(counts >= 2, np.sqrt(np.clip(variances, 0.0, None)), global_std)
        raters = sp.csr_matrix(csc.T.astype(bool))
        return cls(counts, means, stds, global_mean, global_std,
                   np.unique(ratings.data), raters)


@dataclass(frozen=True, eq=False)
class Attack:
    """A contaminated data set and its ground truth.

    Attributes
    ----------
    interactions : Interactions
        Genuine interactions followed by the injected ones; the genuine users keep their indices
        (fake raw ids are larger than every genuine one) and the item map is unchanged.
    is_fake : bool (n_users,)
        Ground-truth label of every user of ``interactions``.
    targets, selected : int64 (n_targets,), (n_selected,)
        Item indices of the targets and of the bandwagon/segment items (empty otherwise).
    n_filler : int
        Filler items per fake profile.
    role : int8 (n_injected,)
        Role of each injected rating (``interactions``' tail): 0 filler, 1 selected, 2 target.
    config : AttackConfig
    """

    interactions: Interactions
    is_fake: np.ndarray
    targets: np.ndarray
    selected: np.ndarray
    n_filler: int
    role: np.ndarray
    config: AttackConfig

    FILLER, SELECTED, TARGET = 0, 1, 2

    @property
    def fake_users(self) -> np.ndarray:
        """Indices of the injected users: int64 (n_fake,)."""
        return np.flatnonzero(self.is_fake)

    @property
    def n_injected(self) -> int:
        return len(self.role)

    def injected_frame(self) -> pd.DataFrame:
        """The injected ratings with raw ids (``user_id, item_id, rating, timestamp, role``)."""
        data = self.interactions
        tail = slice(len(data) - self.n_injected, len(data))
        names = np.array(["filler", "selected", "target"])
        return pd.DataFrame({
            "user_id": data.user_map.to_raw(data.user_idx[tail]),
            "item_id": data.item_map.to_raw(data.item_idx[tail]),
            "rating": data.ratings[tail],
            "timestamp": data.timestamps[tail],
            "role": names[self.role],
        })


def to_levels(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Round each value to the nearest rating level (ties to the lower), clipping to the scale.

    values : float (...,); levels : float (K,), increasing. Returns float32 like ``values``.
    """
    levels = np.asarray(levels, dtype=np.float64)
    mids = (levels[1:] + levels[:-1]) / 2.0
    return levels[np.searchsorted(mids, values, side="left")].astype(np.float32)


def level_probabilities(mean: np.ndarray, std: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """P(level) of N(mean, std) rounded by :func:`to_levels`: float64 (..., K).

    The exact distribution of the random / average filler ratings (used by the tests and to
    document the generator); ``std == 0`` puts all mass on the rounded mean.
    """
    mean = np.asarray(mean, dtype=np.float64)[..., None]
    std = np.asarray(std, dtype=np.float64)[..., None]
    levels = np.asarray(levels, dtype=np.float64)
    mids = (levels[1:] + levels[:-1]) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        cdf = np.where(std > 0, ndtr((mids - mean) / np.where(std > 0, std, 1.0)),
                       (mids >= mean).astype(np.float64))  # ties go to the lower level
    upper = np.concatenate([cdf, np.ones(cdf.shape[:-1] + (1,))], axis=-1)
    lower = np.concatenate([np.zeros(cdf.shape[:-1] + (1,)), cdf], axis=-1)
    return upper - lower


def choose_targets(stats: ItemStats, intent: str, n_targets: int, min_ratings: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Target items by the documented rule (module docstring): int64 (n_targets,), sorted."""
    median = float(np.median(stats.counts))
    if intent == "push":
        ok = ((stats.counts >= min_ratings) & (stats.counts <= median)
              & (stats.means < stats.global_mean))
    else:
        ok = (stats.counts >= max(median, 1)) & (stats.means > stats.global_mean)
    candidates = np.flatnonzero(ok)
    if len(candidates) < n_targets:
        raise ValueError(f"only {len(candidates)} items fit the {intent} target rule, "
                         f"{n_targets} requested")
    return np.sort(rng.choice(candidates, size=n_targets, replace=False)).astype(np.int64)


def choose_selected(stats: ItemStats, kind: str, n_selected: int, targets: np.ndarray) -> np.ndarray:
    """Bandwagon: the most-rated items; segment: the items nearest the targets (docstring).

    Returns int64 (n_selected,) item indices, disjoint from ``targets``; empty for random and
    average attacks. Ties are broken by the lower index.
    """
    if kind not in ("bandwagon", "segment"):
        return np.zeros(0, dtype=np.int64)
    n_items = len(stats.counts)
    if kind == "bandwagon":
        key = stats.counts.astype(np.float64)
        allowed = np.ones(n_items, dtype=bool)
    else:
        raters = stats.raters.astype(np.float64)
        audience = np.asarray(raters[targets].sum(axis=0)).ravel()
        overlap = raters @ audience  # (n_items,) co-ratings with the targets' raters
        norms = np.sqrt(stats.counts * max(float(audience @ audience), 1.0))
        key = np.where(norms > 0, overlap / np.maximum(norms, 1e-12), 0.0)
        allowed = stats.counts >= np.median(stats.counts)
    allowed[targets] = False
    candidates = np.flatnonzero(allowed)
    if len(candidates) < n_selected:
        raise ValueError(f"only {len(candidates)} items can be {kind} items, {n_selected} requested")
    order = np.lexsort((candidates, -key[candidates]))  # highest key first, then lowest index
    return np.sort(candidates[order[:n_selected]]).astype(np.int64)


def generate_profiles(stats: ItemStats, config: AttackConfig, n_fake: int, n_filler: int,
                      targets: np.ndarray, selected: np.ndarray, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fake profiles as flat arrays, profile by profile (targets, selected, filler).

    Returns
    -------
    profile : int64 (m,), 0..n_fake-1; items : int64 (m,); ratings : float32 (m,);
    role : int8 (m,), 0 filler / 1 selected / 2 target; m = n_fake * (n_targets + n_selected +
    n_filler).
    """
    n_items = len(stats.counts)
    lo, hi = float(stats.levels[0]), float(stats.levels[-1])
    pool = np.ones(n_items, dtype=bool)
    pool[targets] = False
    pool[selected] = False
    pool = np.flatnonzero(pool)
    if len(pool) < n_filler:
        raise ValueError(f"filler size {n_filler} exceeds the {len(pool)} items available")
    # n_filler distinct items per profile: the smallest of i.i.d. uniform keys (vectorized)
    keys = rng.random((n_fake, len(pool)))
    filler = pool[np.argpartition(keys, n_filler - 1, axis=1)[:, :n_filler]]
    filler.sort(axis=1)
    if config.kind == "segment":
        filler_ratings = np.full(filler.shape, lo, dtype=np.float32)
    else:
        if config.kind == "average":
            mean, std = stats.means[filler], stats.stds[filler]
        else:  # random, bandwagon
            mean, std = stats.global_mean, stats.global_std
        filler_ratings = to_levels(rng.normal(mean, std, size=filler.shape), stats.levels)
    target_rating = hi if config.intent == "push" else lo
    blocks_items = [np.broadcast_to(targets, (n_fake, len(targets))),
                    np.broadcast_to(selected, (n_fake, len(selected))), filler]
    blocks_ratings = [np.full((n_fake, len(targets)), target_rating, dtype=np.float32),
                      np.full((n_fake, len(selected)), hi, dtype=np.float32), filler_ratings]
    blocks_role = [np.full((n_fake, len(targets)), Attack.TARGET, dtype=np.int8),
                   np.full((n_fake, len(selected)), Attack.SELECTED, dtype=np.int8),
                   np.full(filler.shape, Attack.FILLER, dtype=np.int8)]
    items = np.concatenate(blocks_items, axis=1)
    width = items.shape[1]
    return (np.repeat(np.arange(n_fake, dtype=np.int64), width), items.ravel().astype(np.int64),
            np.concatenate(blocks_ratings, axis=1).ravel(), np.concatenate(blocks_role, axis=1).ravel())


def _fake_raw_ids(user_map: IdMap, n_fake: int) -> np.ndarray:
    raw = user_map.raw_ids
    if len(raw) and not np.issubdtype(raw.dtype, np.number):
        raise ValueError(f"fake users need numeric raw user ids to sort after the genuine ones; "
                         f"got dtype {raw.dtype}")
    start = (raw.max() + 1) if len(raw) else 0
    return (start + np.arange(n_fake)).astype(raw.dtype if len(raw) else np.int64)


def inject(genuine: Interactions, config: AttackConfig, *, targets: np.ndarray | None = None,
           selected: np.ndarray | None = None) -> Attack:
    """Add ``round(attack_size * n_users)`` fake profiles to ``genuine`` (explicit ratings).

    Parameters
    ----------
    genuine : Interactions with ratings as values (numeric raw user ids).
    config : AttackConfig
    targets, selected : optional int item indices overriding the documented rules.

    Returns
    -------
    Attack : the contaminated interactions (genuine indices unchanged, fakes appended) + labels.
    """
    rating_matrix = genuine.rating_matrix
    stats = ItemStats.from_ratings(rating_matrix)
    if len(stats.levels) < 2:
        raise ValueError(f"the ratings have a single level {stats.levels.tolist()}: shilling "
                         "attacks need explicit ratings")
    target_rng = np.random.default_rng([config.seed, 0])
    profile_rng = np.random.default_rng([config.seed, 1])
    if targets is None:
        targets = choose_targets(stats, config.intent, config.n_targets, config.min_target_ratings,
                                 target_rng)
    targets = np.unique(np.asarray(targets, dtype=np.int64))
    if selected is None:
        selected = choose_selected(stats, config.kind, config.n_selected, targets)
    selected = np.setdiff1d(np.asarray(selected, dtype=np.int64), targets)
    for name, ids in (("target", targets), ("selected", selected)):
        if np.any((ids < 0) | (ids >= genuine.n_items)):
            raise IndexError(f"{name} item index outside 0..{genuine.n_items - 1}")
    n_fake = share_count(config.attack_size, genuine.n_users)
    n_filler = share_count(config.filler_size, genuine.n_items)
    profile, items, ratings, role = generate_profiles(stats, config, n_fake, n_filler, targets,
                                                      selected, profile_rng)
    fake_raw = _fake_raw_ids(genuine.user_map, n_fake)
    user_map = IdMap(np.concatenate([genuine.user_map.raw_ids, fake_raw]))
    stamp = (int(genuine.timestamps.max()) + 1) if len(genuine) else 0
    contaminated = Interactions(
        user_idx=np.concatenate([genuine.user_idx, genuine.n_users + profile]),
        item_idx=np.concatenate([genuine.item_idx, items]),
        ratings=np.concatenate([genuine.ratings.astype(np.float32), ratings]),
        timestamps=np.concatenate([genuine.timestamps, np.full(len(items), stamp, dtype=np.int64)]),
        user_map=user_map,
        item_map=genuine.item_map,
    )
    is_fake = np.zeros(len(user_map), dtype=bool)
    is_fake[genuine.n_users:] = True
    logger.info("%s %s attack: %d fake profiles x (%d target + %d selected + %d filler) items, "
                "targets %s", config.kind, config.intent, n_fake, len(targets), len(selected),
                n_filler, genuine.item_map.to_raw(targets).tolist())
    return Attack(contaminated, is_fake, targets, selected, n_filler, role, config)
