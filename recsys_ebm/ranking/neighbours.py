"""Neighbour-list bookkeeping for the energy index, in numpy: the MIPS-to-L2 transform of
item vectors, how many items each user may still receive, and the seen-item filtering of
over-fetched neighbour lists."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def mips_to_l2(items: np.ndarray) -> np.ndarray:
    """Append ``sqrt(R^2 - |x|^2)`` so that nearest L2 neighbour = maximum inner product."""
    norms = np.einsum("nd,nd->n", items.astype(np.float64), items.astype(np.float64))
    extra = np.sqrt(np.maximum(norms.max() - norms, 0.0)).astype(np.float32)
    return np.ascontiguousarray(np.hstack([items, extra[:, None]]))


def next_pow2(values: np.ndarray) -> np.ndarray:
    values = np.maximum(np.asarray(values, dtype=np.int64), 1)
    return (1 << np.ceil(np.log2(values)).astype(np.int64)).astype(np.int64)


def eligible_counts(exclude: sp.csr_matrix | None, mask: np.ndarray | None, n_items: int,
                     n: int) -> np.ndarray:
    """Items each row may still receive: allowed items minus allowed seen items."""
    n_allowed = n_items if mask is None else int(mask.sum())
    if exclude is None:
        return np.full(n, n_allowed, dtype=np.int64)
    if mask is None:
        return n_allowed - np.diff(exclude.indptr)
    rows = np.repeat(np.arange(n), np.diff(exclude.indptr))
    return n_allowed - np.bincount(rows, weights=mask[exclude.indices], minlength=n).astype(np.int64)


def filter_seen(ids: np.ndarray, rows: np.ndarray, exclude: sp.csr_matrix | None, n_items: int,
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """First ``k`` returned ids per row that are valid and not seen; and how many were found."""
    valid = ids >= 0
    if exclude is not None:
        sub = exclude[rows]
        seen_keys = np.repeat(np.arange(len(rows), dtype=np.int64) * n_items, np.diff(sub.indptr)) + sub.indices
        keys = np.arange(len(rows), dtype=np.int64)[:, None] * n_items + ids
        if seen_keys.size:
            pos = np.minimum(np.searchsorted(seen_keys, keys), seen_keys.size - 1)
            valid &= seen_keys[pos] != keys
    rank = np.cumsum(valid, axis=1) - 1
    take = valid & (rank < k)
    out = np.full((len(rows), k), -1, dtype=np.int64)
    r, c = np.nonzero(take)
    out[r, rank[r, c]] = ids[r, c]
    return out, take.sum(axis=1)

