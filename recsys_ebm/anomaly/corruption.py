"""Interaction-level anomalies: implausible ratings planted in genuine profiles (the ground
truth of the interaction-level evaluation, as injected profiles are for the user level)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys_ebm.anomaly.ratings import as_ratings, profile_lengths, row_of

CORRUPTIONS = ("flip", "insert")


def corrupt_profiles(profiles: sp.csr_matrix, kind: str, share: float, levels: np.ndarray,
                     rng: np.random.Generator) -> tuple[sp.csr_matrix, np.ndarray]:
    """Plant implausible ratings in genuine profiles, m_u = max(1, round(share * n_u)) per row.

    ``flip``: m_u of the user's ratings go to the far end of the scale (below the middle ->
    maximum, above -> minimum, the middle -> either at random). ``insert``: m_u items the user
    did not rate are added with uniformly random ratings.

    Returns the corrupted CSR (sorted indices) and bool (nnz,) flags of the corrupted entries.
    """
    profiles = as_ratings(profiles)
    levels = np.asarray(levels, dtype=np.float64)
    m = np.maximum(1, np.floor(share * profile_lengths(profiles) + 0.5)).astype(np.int64)
    if kind == "flip":
        return _flip(profiles, m, levels, rng)
    if kind == "insert":
        return _insert(profiles, m, levels, rng)
    raise ValueError(f"kind must be one of {CORRUPTIONS}, got {kind!r}")


def _flip(profiles: sp.csr_matrix, m: np.ndarray, levels: np.ndarray,
          rng: np.random.Generator) -> tuple[sp.csr_matrix, np.ndarray]:
    """``m[u]`` random ratings of each row moved to the far end of the scale."""
    lo, hi = levels[0], levels[-1]
    lengths = profile_lengths(profiles)
    rows = row_of(profiles)
    order = np.lexsort((rng.random(profiles.nnz), rows))
    rank = np.empty(profiles.nnz, dtype=np.int64)
    rank[order] = np.arange(profiles.nnz) - np.repeat(profiles.indptr[:-1], lengths)
    flagged = rank < m[rows]
    values = profiles.data.astype(np.float64)
    mid = (lo + hi) / 2.0
    new = np.where(values < mid, hi, np.where(values > mid, lo,
                                              np.where(rng.random(len(values)) < 0.5, lo, hi)))
    out = profiles.copy()
    out.data = np.where(flagged, new, values).astype(np.float32)
    return out, flagged


def _insert(profiles: sp.csr_matrix, m: np.ndarray, levels: np.ndarray,
            rng: np.random.Generator) -> tuple[sp.csr_matrix, np.ndarray]:
    """``m[u]`` unrated items of each row added with uniformly random ratings."""
    n, n_items = profiles.shape
    if np.any(m > n_items - profile_lengths(profiles)):
        raise ValueError("a profile has too few unrated items to insert into")
    rows = row_of(profiles)
    keys = rng.random((n, n_items))
    keys[rows, profiles.indices] = np.inf
    width = int(m.max())
    picked = np.argpartition(keys, width - 1, axis=1)[:, :width]
    picked_keys = np.take_along_axis(keys, picked, axis=1)
    picked = np.take_along_axis(picked, np.argsort(picked_keys, axis=1), axis=1)
    use = np.arange(width)[None, :] < m[:, None]
    new_rows = np.repeat(np.arange(n), width)[use.ravel()]
    new_items = picked.ravel()[use.ravel()]
    new_values = levels[rng.integers(0, len(levels), size=len(new_rows))]
    all_rows = np.concatenate([rows, new_rows])
    all_items = np.concatenate([profiles.indices.astype(np.int64), new_items])
    all_values = np.concatenate([profiles.data.astype(np.float64), new_values])
    all_flags = np.concatenate([np.zeros(profiles.nnz, bool), np.ones(len(new_rows), bool)])
    order = np.lexsort((all_items, all_rows))
    indptr = np.r_[0, np.cumsum(np.bincount(all_rows, minlength=n))]
    out = sp.csr_matrix((all_values[order].astype(np.float32), all_items[order], indptr),
                        shape=profiles.shape)
    return out, all_flags[order]
