"""Seeded synthetic interaction data shaped like MovieLens-20M, and synthetic item catalogs.

``generate(SyntheticConfig())`` gives about 138,000 users x 27,000 items and ~20M interactions:

* power-law item popularity: item weights follow Zipf's law, rank^-a over a random permutation;
* lognormal user activity: interactions per user ~ exp(N(mu, sigma)), at least 20 (as in
  ML-20M), at most half the catalog, mu set so that the total hits ``n_interactions``;
* low-rank structure: each user belongs to one of ``n_tastes`` taste clusters with a vector
  theta_c in R^rank; the user's items are drawn from p_c(i) ∝ pop_i * exp(affinity <theta_c, phi_i>).

Items are drawn with replacement, repeats dropped and short users topped up for a few rounds
(the heaviest users of the most popular items may still end slightly short); the result is a
binary users x items CSR. Everything is a function of
the seed. ``SyntheticConfig.scaled(f)`` shrinks users, items and interactions by ``f`` for
quick runs; tests build small configs directly.

``catalog(n_items, dim)`` makes the clustered item vectors, biases and query vectors the
retrieval benchmark indexes (1M items, dim 64 there).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class SyntheticConfig:
    """Shape of the synthetic data; the defaults mimic MovieLens-20M."""

    n_users: int = 138_000
    n_items: int = 27_000
    n_interactions: int = 20_000_000
    rank: int = 16
    n_tastes: int = 256
    popularity_exponent: float = 0.9
    activity_sigma: float = 1.0
    min_activity: int = 20
    affinity: float = 1.5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_users", "n_items", "n_interactions", "rank", "n_tastes", "min_activity"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_interactions < self.n_users:
            raise ValueError("n_interactions must be at least n_users")

    def scaled(self, factor: float) -> SyntheticConfig:
        """Users, items and interactions multiplied by ``factor`` (at least 1 each)."""
        if factor <= 0:
            raise ValueError(f"factor must be > 0, got {factor}")
        n_users = max(1, round(self.n_users * factor))
        return dataclasses.replace(
            self, n_users=n_users, n_items=max(2, round(self.n_items * factor)),
            n_interactions=max(n_users, round(self.n_interactions * factor)),
            n_tastes=max(1, min(self.n_tastes, n_users)))


@dataclass(frozen=True, eq=False)
class SyntheticData:
    """Interactions and the latent structure that generated them.

    Attributes
    ----------
    user_items : CSR float32 (n_users, n_items), ones.
    user_tastes : int64 (n_users,) taste cluster of each user.
    taste_vectors : float32 (n_tastes, rank)
    item_vectors : float32 (n_items, rank)
    item_popularity : float64 (n_items,) Zipf weights (sum 1).
    """

    user_items: sp.csr_matrix
    user_tastes: np.ndarray
    taste_vectors: np.ndarray
    item_vectors: np.ndarray
    item_popularity: np.ndarray

    @property
    def n_interactions(self) -> int:
        return int(self.user_items.nnz)


def _activity(config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Interactions per user: lognormal, clipped to [min_activity, n_items / 2], summing ~ target."""
    cap = max(1, config.n_items // 2)
    low = min(config.min_activity, cap)
    raw = rng.lognormal(0.0, config.activity_sigma, config.n_users)
    scale = config.n_interactions / raw.sum()
    for _ in range(30):  # clipping moves the total: adjust the scale a few times
        counts = np.clip(np.round(raw * scale), low, cap)
        total = counts.sum()
        if abs(total - config.n_interactions) <= 0.001 * config.n_interactions:
            break
        scale *= config.n_interactions / total
    return counts.astype(np.int64)


def generate(config: SyntheticConfig | None = None) -> SyntheticData:
    """Draw a synthetic data set (seconds and ~1 GB of memory at the full ML-20M shape)."""
    config = config if config is not None else SyntheticConfig()
    rng = np.random.default_rng(config.seed)
    n_users, n_items = config.n_users, config.n_items
    ranks = rng.permutation(n_items) + 1.0
    popularity = ranks ** -config.popularity_exponent
    popularity /= popularity.sum()
    item_vectors = (rng.standard_normal((n_items, config.rank)) / np.sqrt(config.rank)).astype(np.float32)
    taste_vectors = rng.standard_normal((config.n_tastes, config.rank)).astype(np.float32)
    tastes = rng.integers(0, config.n_tastes, n_users)
    counts = _activity(config, rng)
    log_pop = np.log(popularity)
    cdfs = None if config.n_tastes * n_items > 50_000_000 else [None] * config.n_tastes

    def taste_cdf(taste: int) -> np.ndarray:
        if cdfs is not None and cdfs[taste] is not None:
            return cdfs[taste]
        logits = log_pop + config.affinity * (item_vectors @ taste_vectors[taste]).astype(np.float64)
        cdf = np.cumsum(np.exp(logits - logits.max()))
        if cdfs is not None:
            cdfs[taste] = cdf
        return cdf

    # Draw with replacement, drop repeats, and top up the users still short of their activity
    # (a few rounds: heavy users of popular items repeat a lot).
    keys = np.empty(0, dtype=np.int64)
    for round_ in range(10):
        have = np.bincount(keys // n_items, minlength=n_users)
        deficit = counts - have
        if deficit[deficit > 0].sum() <= 0.002 * counts.sum():
            break
        draws = np.where(deficit > 0, np.ceil(np.maximum(deficit, 0) * (1.25 if round_ == 0 else 2.0)) + 2, 0)
        user_of_draw = np.repeat(np.arange(n_users, dtype=np.int64), draws.astype(np.int64))
        taste_of_draw = tastes[user_of_draw]
        items = np.empty(user_of_draw.size, dtype=np.int64)
        order = np.argsort(taste_of_draw, kind="stable")
        bounds = np.searchsorted(taste_of_draw[order], np.arange(config.n_tastes + 1))
        for taste in range(config.n_tastes):
            sel = order[bounds[taste]:bounds[taste + 1]]
            if sel.size:
                cdf = taste_cdf(taste)
                items[sel] = np.minimum(np.searchsorted(cdf, rng.random(sel.size) * cdf[-1], side="right"),
                                        n_items - 1)
        new = np.unique(user_of_draw * n_items + items)
        if keys.size:
            pos = np.minimum(np.searchsorted(keys, new), keys.size - 1)
            new = new[keys[pos] != new]
        keys = np.sort(np.concatenate([keys, new]))
    users, items = keys // n_items, keys % n_items
    # keep a random subset of each user's distinct items, up to the user's activity
    priority = rng.random(keys.size)
    order = np.lexsort((priority, users))
    users, items = users[order], items[order]
    starts = np.searchsorted(users, np.arange(n_users))
    position = np.arange(users.size) - starts[users]
    keep = position < counts[users]
    users, items = users[keep], items[keep]
    user_items = sp.csr_matrix((np.ones(users.size, dtype=np.float32), (users, items)),
                               shape=(n_users, n_items))
    user_items.sort_indices()
    return SyntheticData(user_items, tastes, taste_vectors, item_vectors, popularity)


def catalog(n_items: int = 1_000_000, dim: int = 64, n_queries: int = 2000, *, n_clusters: int = 2048,
            noise: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered item vectors (n_items, dim), biases (n_items,) and query vectors (n_queries, dim).

    Items are cluster centres plus isotropic noise (``noise`` relative to the centres' scale),
    with Zipf-popularity log-biases; queries are noisy centres of random clusters. Learned
    embeddings are clustered like this; isotropic Gaussian vectors in 64 dimensions are not,
    and no index does well on them.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    cluster = rng.integers(0, n_clusters, n_items)
    items = centres[cluster] + noise * rng.standard_normal((n_items, dim)).astype(np.float32)
    items /= np.sqrt(dim)
    ranks = rng.permutation(n_items) + 1.0
    biases = (0.25 * np.log(1.0 / ranks)).astype(np.float32)
    biases -= biases.mean()
    queries = centres[rng.integers(0, n_clusters, n_queries)]
    queries = queries + noise * rng.standard_normal(queries.shape).astype(np.float32)
    return (np.ascontiguousarray(items, dtype=np.float32), biases,
            np.ascontiguousarray(queries / np.sqrt(dim), dtype=np.float32))
