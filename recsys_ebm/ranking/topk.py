"""What a ranking may contain and the reference top-k: the one ``k`` check, item masks
(allowed, blocked, seen), row alignment of ``user_items`` with user ids, and an exact top-k.

Every ranking path of the toolkit checks its arguments here, so a bad ``k``, an item id out of
range or a ``user_items`` with the wrong number of rows gets the same message everywhere.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys_ebm.data.sparse import canonical_csr


def check_k(k: Any) -> int:
    """``k`` as an int; ``ValueError`` unless it is an integer >= 1."""
    try:
        k = operator.index(k)
    except TypeError:
        raise ValueError(f"k must be an integer, got {k!r}") from None
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return k


def check_temperature(temperature: Any) -> float:
    """``temperature`` as a float; ``ValueError`` unless it is finite and >= 0 (NaN too)."""
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a number, got {temperature!r}") from None
    if not 0 <= value < np.inf:
        raise ValueError(f"temperature must be finite and >= 0, got {temperature!r}")
    return value


def _id_mask(ids: Any, n_items: int, name: str) -> np.ndarray:
    """bool (n_items,) from item ids or a bool mask; ids outside the catalog raise ``IndexError``."""
    array = np.asarray(ids)
    if array.dtype == bool:
        if array.shape != (n_items,):
            raise ValueError(f"{name} has shape {array.shape}, expected ({n_items},)")
        return array
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be item ids (integers) or a bool mask, got dtype {array.dtype}")
    ids = array.astype(np.int64).ravel()
    bad = (ids < 0) | (ids >= n_items)
    if np.any(bad):
        # a negative id would silently wrap around to the last items
        raise IndexError(f"{name} item id {int(ids[bad][0])} is outside 0..{n_items - 1}")
    mask = np.zeros(n_items, dtype=bool)
    mask[ids] = True
    return mask


def item_mask(n_items: int, items: Any = None, filter_items: Any = None) -> np.ndarray | None:
    """Which items may be returned: ``items`` (allowed) minus ``filter_items`` (blocked).

    Each is item ids or a bool mask over the catalog; None means no restriction. Returns a bool
    (n_items,) mask, or None when neither is given.
    """
    if items is None and filter_items is None:
        return None
    mask = np.ones(n_items, dtype=bool) if items is None else _id_mask(items, n_items, "allowed").copy()
    if filter_items is not None:
        mask &= ~_id_mask(filter_items, n_items, "filter_items")
    return mask


def align_rows(user_items: sp.csr_matrix | None, user_ids: np.ndarray, n_users: int | None,
               aligned: bool = False) -> sp.csr_matrix | None:
    """The rows of ``user_items`` that belong to ``user_ids``, one per id, in order.

    ``user_items`` is either (n_users, n_items), one row per trained user, indexed by the ids,
    or (len(user_ids), n_items), already aligned with them. When both counts agree the matrix
    is taken as indexed, unless ``aligned`` (fold-in: the rows are the users' histories).
    Any other row count raises ``ValueError`` (indexing would silently use other users' rows).
    """
    if user_items is None:
        return None
    n_rows = user_items.shape[0]
    if n_rows == len(user_ids) and (aligned or n_rows != n_users):
        return user_items
    if n_rows == n_users:
        bad = (user_ids < 0) | (user_ids >= n_rows)
        if np.any(bad):
            raise IndexError(f"user id {int(user_ids[bad][0])} has no row in user_items ({n_rows} rows)")
        return user_items[user_ids]
    expected = f"{len(user_ids)} (aligned with user_ids)"
    if n_users is not None:
        expected += f" or {n_users} (one per trained user, indexed by user_ids)"
    raise ValueError(f"user_items has {n_rows} rows: expected {expected}")


def mask_rows(scores: np.ndarray, exclude: sp.csr_matrix | None, start: int = 0) -> None:
    """Set the stored entries of ``exclude`` rows ``start .. start + len(scores)`` to -inf.

    Parameters
    ----------
    scores : float (b, n_items), C-contiguous; modified in place.
    exclude : canonical CSR (n_rows, n_items) or None.
    """
    if exclude is None or scores.shape[0] == 0:
        return
    if not scores.flags.c_contiguous:  # a flat view of anything else would be a silent copy
        raise ValueError("scores must be C-contiguous to be masked in place")
    stop = start + scores.shape[0]
    indptr = exclude.indptr[start:stop + 1]
    cols = exclude.indices[indptr[0]:indptr[-1]]
    if cols.size == 0:
        return
    offsets = np.repeat(np.arange(scores.shape[0], dtype=np.int64) * scores.shape[1], np.diff(indptr))
    scores.reshape(-1)[offsets + cols] = -np.inf


def apply_masks(scores: np.ndarray, exclude: sp.csr_matrix | None, mask: np.ndarray | None) -> None:
    """-inf in place for the seen items of ``exclude`` (rows aligned) and outside ``mask``."""
    if exclude is not None:
        if exclude.shape != scores.shape:
            raise ValueError(f"exclude has shape {exclude.shape}, scores have {scores.shape}")
        mask_rows(scores, canonical_csr(exclude, name="exclude"))
    if mask is not None:
        scores[:, ~mask] = -np.inf


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference exact top-k per row, best first (argpartition; any float dtype).

    -inf entries are never returned; rows with fewer than ``k`` eligible items are padded with
    id -1 and value -inf. Ties are broken by the lower item id, so results are deterministic.
    Returns ``ids`` int64 (n, k) and ``values`` float32 (n, k).
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (n, n_items), got shape {scores.shape}")
    k = check_k(k)
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
    # decide padding before the float32 cast: a finite float64 score below -3.4e38 (the Gumbel
    # keys score / T at tiny T) would overflow to -inf and be mistaken for a masked item
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
