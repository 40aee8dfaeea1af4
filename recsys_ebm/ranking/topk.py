"""The one exact top-k: mask excluded items, select k, sort. Used by recommend, evaluation, export."""

from __future__ import annotations

import operator

import numpy as np
import scipy.sparse as sp


def mask_items(scores: np.ndarray, exclude: sp.csr_matrix | None, allowed: np.ndarray | None = None) -> None:
    """Set excluded (and non-allowed) items to -inf in place.

    Parameters
    ----------
    scores : float32 (n, n_items)
    exclude : CSR (n, n_items) or None
        Nonzero entries are removed (e.g. the users' seen items).
    allowed : bool (n_items,) or int item ids, or None
        When given, only these items may be returned.
    """
    if exclude is not None:
        if exclude.shape != scores.shape:
            raise ValueError(f"exclude has shape {exclude.shape}, scores have {scores.shape}")
        exclude = sp.csr_matrix(exclude)
        rows = np.repeat(np.arange(exclude.shape[0]), np.diff(exclude.indptr))
        scores[rows, exclude.indices] = -np.inf
    if allowed is not None:
        allowed = np.asarray(allowed)
        if allowed.dtype != bool:
            allowed_ids = allowed.astype(np.int64).ravel()
            bad = (allowed_ids < 0) | (allowed_ids >= scores.shape[1])
            if np.any(bad):
                # a negative id would silently wrap around to the last items
                raise IndexError(
                    f"allowed item id {int(allowed_ids[bad][0])} is outside 0..{scores.shape[1] - 1}"
                )
            mask = np.zeros(scores.shape[1], dtype=bool)
            mask[allowed_ids] = True
            allowed = mask
        if allowed.shape != (scores.shape[1],):
            raise ValueError(f"allowed has shape {allowed.shape}, expected ({scores.shape[1]},)")
        scores[:, ~allowed] = -np.inf


def top_k(
    scores: np.ndarray,
    k: int,
    exclude: sp.csr_matrix | None = None,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Highest-scoring ``k`` items per row, best first.

    ``scores`` is modified in place when items are masked. Returns ``ids`` int64 (n, k) and
    ``values`` float32 (n, k); rows with fewer than ``k`` eligible items are padded with
    id -1 and value -inf. Ties are broken by the lower item id, so results are deterministic.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (n, n_items), got shape {scores.shape}")
    try:
        k = operator.index(k)
    except TypeError:
        raise ValueError(f"k must be an integer, got {k!r}") from None
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    mask_items(scores, exclude, allowed)
    n, n_items = scores.shape
    kk = min(k, n_items)
    if kk < n_items:
        cand = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        # argpartition may cut inside a tie: widen to every item tied with the k-th value
        kth = np.take_along_axis(scores, cand, axis=1).min(axis=1, keepdims=True)
        if np.any((scores >= kth).sum(axis=1) > kk):
            cand = _tie_aware_candidates(scores, kth, kk)
    else:
        cand = np.broadcast_to(np.arange(n_items), (n, n_items))
    cand_scores = np.take_along_axis(scores, cand, axis=1)
    order = np.lexsort((cand, -cand_scores), axis=1)[:, :kk]
    ids = np.take_along_axis(cand, order, axis=1).astype(np.int64)
    values = np.take_along_axis(cand_scores, order, axis=1)
    # decide padding before the float32 cast: a finite float64 score below -3.4e38 (e.g. the
    # Gumbel keys score / T at tiny T) would overflow to -inf and be mistaken for a masked item
    ids[np.isneginf(values)] = -1
    with np.errstate(over="ignore"):
        values = values.astype(np.float32)
    if kk < k:
        ids = np.pad(ids, ((0, 0), (0, k - kk)), constant_values=-1)
        values = np.pad(values, ((0, 0), (0, k - kk)), constant_values=-np.inf)
    return ids, values


def _tie_aware_candidates(scores: np.ndarray, kth: np.ndarray, kk: int) -> np.ndarray:
    """For rows with ties at the cut, take the ``kk`` lowest ids among items >= kth value."""
    above = scores > kth
    tied = scores == kth
    # rank key: strictly-above items first, then tied items by id; everything else last
    key = np.where(above, 0, np.where(tied, 1, 2)).astype(np.int64) * scores.shape[1] + np.arange(
        scores.shape[1]
    )
    return np.argpartition(key, kk - 1, axis=1)[:, :kk]
