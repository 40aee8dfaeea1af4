"""Temperature-controlled Gibbs softmax sampling over items.

p(i | u, T) ∝ exp(score(u, i) / T) = exp(-E(u, i) / T). Adding i.i.d. Gumbel noise to
score / T and keeping the k largest draws k distinct items exactly as sequential sampling
without replacement would (the Gumbel-top-k trick, Kool et al. 2019).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys_ebm.topk import mask_items, top_k


def gumbel_top_k(
    scores: np.ndarray,
    k: int,
    temperature: float,
    rng: np.random.Generator,
    *,
    exclude: sp.csr_matrix | None = None,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample k distinct items per row from softmax(scores / T) over eligible items.

    ``temperature == 0`` is the exact top-k. Returns ids int64 (n, k) and the items'
    original scores float32 (n, k) in sampled order, padded with -1 / -inf.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return top_k(scores, k, exclude=exclude, allowed=allowed)
    mask_items(scores, exclude, allowed)
    perturbed = scores.astype(np.float64) / temperature + rng.gumbel(size=scores.shape)
    ids, _ = top_k(perturbed, k)
    values = np.full(ids.shape, -np.inf, dtype=np.float32)
    valid = ids >= 0
    values[valid] = np.take_along_axis(scores, np.where(valid, ids, 0), axis=1)[valid]
    return ids, values


def softmax_probabilities(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax(scores / T) in float64, -inf entries get probability 0."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for probabilities, got {temperature}")
    z = scores.astype(np.float64) / temperature
    z -= np.max(z, axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)
