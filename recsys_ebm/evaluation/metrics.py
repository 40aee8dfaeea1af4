"""Ranking and rating metrics, vectorized over users (definitions: docs/protocols.md).

Ranking metrics work on a hit matrix ``hits`` bool (n_users, k_max): row ``u`` is user ``u``'s
recommendation list, best first, True where the item is one of the user's test items. Each
metric takes ``k <= k_max`` so one hit matrix built at the largest cut-off serves every k.
Per-user functions return float64 (n_users,); average them over users yourself.

Recall and MAP come in two definitions. ``recall_at_k`` / ``map_at_k`` divide by
min(k, n_relevant) (Liang et al. 2018), so a perfect top-k list scores 1 even when the user has
more than k test items; ``recall_allrel_at_k`` / ``map_allrel_at_k`` divide by n_relevant, all
of the user's test items (the standard definitions, as in ranx).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys_ebm.data.sparse import canonical_csr

__all__ = [
    "hit_matrix",
    "precision_at_k",
    "recall_at_k",
    "recall_allrel_at_k",
    "ndcg_at_k",
    "map_at_k",
    "map_allrel_at_k",
    "mrr",
    "hit_rate_at_k",
    "coverage_at_k",
    "target_ranks",
    "next_item_metrics",
    "rmse",
    "mae",
]


def _check_hits(hits: np.ndarray, k: int | None) -> tuple[np.ndarray, int]:
    """Validate ``hits`` (n, k_max) and ``k``; return ``hits[:, :k]`` as bool and ``k``."""
    hits = np.asarray(hits)
    if hits.ndim != 2:
        raise ValueError(f"hits must be 2-D (n_users, k), got shape {hits.shape}")
    if hits.dtype != bool:
        if not np.all((hits == 0) | (hits == 1)):
            raise ValueError(f"hits must be boolean (or 0/1), got dtype {hits.dtype}")
        hits = hits.astype(bool)
    if k is None:
        k = hits.shape[1]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer, got {k!r}")
    if not 1 <= k <= hits.shape[1]:
        raise ValueError(f"k must be in 1..{hits.shape[1]} (the hit matrix width), got {k}")
    return hits[:, :k], int(k)


def _check_relevant(n_relevant: np.ndarray, hits: np.ndarray) -> np.ndarray:
    """Validate ``n_relevant`` int (n,) against ``hits`` bool (n, k)."""
    n_relevant = np.asarray(n_relevant)
    if n_relevant.shape != (hits.shape[0],):
        raise ValueError(
            f"n_relevant has shape {n_relevant.shape}, expected ({hits.shape[0]},) "
            "(one count per row of hits)"
        )
    if n_relevant.size and not np.issubdtype(n_relevant.dtype, np.integer):
        raise ValueError(f"n_relevant must be integers, got dtype {n_relevant.dtype}")
    n_relevant = n_relevant.astype(np.int64)
    if np.any(n_relevant < 0):
        raise ValueError("n_relevant must be >= 0")
    too_many = hits.sum(axis=1) > n_relevant
    if np.any(too_many):
        row = int(np.flatnonzero(too_many)[0])
        raise ValueError(
            f"row {row} has more hits than relevant items ({n_relevant[row]}): "
            "duplicate recommendations or a wrong n_relevant"
        )
    return n_relevant


def _norm(n_relevant: np.ndarray, k: int) -> np.ndarray:
    """min(k, n_relevant) as float64, with 0 where the user has no relevant item."""
    return np.minimum(n_relevant, k).astype(np.float64)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den == 0 (a user without relevant items scores 0)."""
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def precision_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """Hits in the top k / k.

    Parameters
    ----------
    hits : bool (n, k_max)
    k : int, 1 <= k <= k_max

    Returns
    -------
    float64 (n,)
    """
    top, k = _check_hits(hits, k)
    return top.sum(axis=1) / float(k)


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Hits in the top k / min(k, n_relevant) (Liang et al. 2018); 0 for n_relevant == 0.

    Parameters
    ----------
    hits : bool (n, k_max)
    n_relevant : int (n,), number of test items per user
    k : int, 1 <= k <= k_max

    Returns
    -------
    float64 (n,)
    """
    top, k = _check_hits(hits, k)
    n_relevant = _check_relevant(n_relevant, top)
    return _safe_divide(top.sum(axis=1).astype(np.float64), _norm(n_relevant, k))


def recall_allrel_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Hits in the top k / n_relevant (standard recall, as in ranx); 0 for n_relevant == 0.

    Never above :func:`recall_at_k`; equal to it where n_relevant <= k.

    Parameters
    ----------
    hits : bool (n, k_max)
    n_relevant : int (n,), number of test items per user
    k : int, 1 <= k <= k_max

    Returns
    -------
    float64 (n,)
    """
    top, _ = _check_hits(hits, k)
    n_relevant = _check_relevant(n_relevant, top)
    return _safe_divide(top.sum(axis=1).astype(np.float64), n_relevant.astype(np.float64))


def _discounts(k: int) -> np.ndarray:
    """1 / log2(r + 1) for ranks r = 1..k, float64 (k,)."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Binary NDCG@k: DCG = Σ_r rel_r / log2(r + 1), ideal DCG from min(k, n_relevant) hits.

    Parameters
    ----------
    hits : bool (n, k_max)
    n_relevant : int (n,)
    k : int, 1 <= k <= k_max

    Returns
    -------
    float64 (n,), 0 where n_relevant == 0
    """
    top, k = _check_hits(hits, k)
    n_relevant = _check_relevant(n_relevant, top)
    disc = _discounts(k)
    dcg = top @ disc
    # ideal[j] = DCG of j leading hits, j = 0..k
    ideal = np.concatenate(([0.0], np.cumsum(disc)))
    return _safe_divide(dcg, ideal[np.minimum(n_relevant, k)])


def map_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Average precision at k: Σ_r precision@r · rel_r / min(k, n_relevant).

    Parameters
    ----------
    hits : bool (n, k_max)
    n_relevant : int (n,)
    k : int, 1 <= k <= k_max

    Returns
    -------
    float64 (n,), 0 where n_relevant == 0
    """
    top, k = _check_hits(hits, k)
    n_relevant = _check_relevant(n_relevant, top)
    return _safe_divide(_precision_sum(top), _norm(n_relevant, k))


def map_allrel_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Average precision at k: Σ_r precision@r · rel_r / n_relevant (standard, as in ranx).

    Never above :func:`map_at_k`; equal to it where n_relevant <= k.

    Parameters
    ----------
    hits : bool (n, k_max)
    n_relevant : int (n,)
    k : int, 1 <= k <= k_max

    Returns
    -------
    float64 (n,), 0 where n_relevant == 0
    """
    top, _ = _check_hits(hits, k)
    n_relevant = _check_relevant(n_relevant, top)
    return _safe_divide(_precision_sum(top), n_relevant.astype(np.float64))


def _precision_sum(top: np.ndarray) -> np.ndarray:
    """Σ_r precision@r · rel_r over the columns of ``top`` bool (n, k): float64 (n,)."""
    prec_at_r = np.cumsum(top, axis=1) / np.arange(1, top.shape[1] + 1, dtype=np.float64)
    return (prec_at_r * top).sum(axis=1)


def mrr(hits: np.ndarray, k: int | None = None) -> np.ndarray:
    """Reciprocal rank of the first hit within the top k (all columns by default), 0 if none.

    Parameters
    ----------
    hits : bool (n, k_max)
    k : int or None, 1 <= k <= k_max

    Returns
    -------
    float64 (n,)
    """
    top, _ = _check_hits(hits, k)
    first = np.argmax(top, axis=1)  # index of the first True (0 when there is none)
    return np.where(top.any(axis=1), 1.0 / (first + 1.0), 0.0)


def hit_rate_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """1 if any of the top k is a hit, else 0.

    Parameters
    ----------
    hits : bool (n, k_max)
    k : int, 1 <= k <= k_max

    Returns
    -------
    float64 (n,)
    """
    top, _ = _check_hits(hits, k)
    return top.any(axis=1).astype(np.float64)


def target_ranks(hits: np.ndarray) -> np.ndarray:
    """1-based rank of the first hit in each row, 0 when the row has none: int64 (n,).

    For next-item evaluation (one target per user) over a list holding the whole catalog, this
    is the target's rank in the full ranking.
    """
    top, _ = _check_hits(hits, None)
    return np.where(top.any(axis=1), np.argmax(top, axis=1) + 1, 0).astype(np.int64)


def next_item_metrics(ranks: np.ndarray, ks=(10, 20)) -> dict[str, float]:
    """HR@k, NDCG@k and MRR of next-item ranks (one target per user), means over users.

    ``ranks`` int (n,): the 1-based rank of each user's target, 0 when it was not ranked (it
    counts as a miss everywhere). HR@k = [rank <= k]; NDCG@k = [rank <= k] / log2(rank + 1)
    (the ideal DCG of one target is 1); MRR = 1 / rank (0 for an unranked target).

    Returns ``{"hr@k", "ndcg@k" for each k, "mrr", "n_users"}``.
    """
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {ranks.shape}")
    if not np.issubdtype(ranks.dtype, np.integer) or np.any(ranks < 0):
        raise ValueError("ranks must be integers >= 1 (0 for an unranked target)")
    ranked = ranks > 0
    safe = np.where(ranked, ranks, 1).astype(np.float64)
    out: dict[str, float] = {}
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"every k must be a positive integer, got {k!r}")
        within = ranked & (ranks <= k)
        out[f"hr@{k}"] = float(within.mean())
        out[f"ndcg@{k}"] = float(np.where(within, 1.0 / np.log2(safe + 1.0), 0.0).mean())
    out["mrr"] = float(np.where(ranked, 1.0 / safe, 0.0).mean())
    out["n_users"] = int(ranks.size)
    return out


def _check_rec_ids(rec_ids: np.ndarray, n_items: int) -> np.ndarray:
    """Validate recommendation ids int (n, k) in -1..n_items-1 (-1 = padding)."""
    rec_ids = np.asarray(rec_ids)
    if rec_ids.ndim != 2:
        raise ValueError(f"rec_ids must be 2-D (n_users, k), got shape {rec_ids.shape}")
    if rec_ids.size and not np.issubdtype(rec_ids.dtype, np.integer):
        raise ValueError(f"rec_ids must be integer item ids, got dtype {rec_ids.dtype}")
    rec_ids = rec_ids.astype(np.int64)
    bad = (rec_ids < -1) | (rec_ids >= n_items)
    if np.any(bad):
        raise ValueError(
            f"rec_ids contains item id {int(rec_ids[bad][0])} outside 0..{n_items - 1} "
            "(-1 is the only allowed padding)"
        )
    return rec_ids


def coverage_at_k(rec_ids: np.ndarray, n_items: int, k: int | None = None) -> float:
    """Share of the catalog in the union of all users' top-k lists.

    Parameters
    ----------
    rec_ids : int (n, k_max), padded with -1
    n_items : int, catalog size
    k : int or None, use the first k columns (all by default)

    Returns
    -------
    float in [0, 1]
    """
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    rec_ids = _check_rec_ids(rec_ids, n_items)
    if k is not None:
        if not 1 <= k <= rec_ids.shape[1]:
            raise ValueError(f"k must be in 1..{rec_ids.shape[1]}, got {k}")
        rec_ids = rec_ids[:, :k]
    seen = np.zeros(n_items, dtype=bool)
    seen[rec_ids[rec_ids >= 0]] = True
    return float(seen.sum()) / n_items


def hit_matrix(rec_ids: np.ndarray, test_user_items: sp.spmatrix | sp.sparray) -> np.ndarray:
    """Which recommended items are test items.

    Parameters
    ----------
    rec_ids : int (n, k), padded with -1 (padding is never a hit)
    test_user_items : CSR (n, n_items), rows aligned with ``rec_ids``; stored nonzero
        entries are the relevant items

    Returns
    -------
    bool (n, k)

    Raises
    ------
    ValueError
        On mismatched rows, ids outside the catalog, or an item repeated within a row.
    """
    if not sp.issparse(test_user_items):
        raise ValueError(
            f"test_user_items must be a scipy.sparse matrix, got {type(test_user_items).__name__}"
        )
    test = canonical_csr(test_user_items, name="test_user_items", drop_zeros=True)
    n, n_items = test.shape
    rec_ids = _check_rec_ids(rec_ids, n_items)
    if rec_ids.shape[0] != n:
        raise ValueError(
            f"rec_ids has {rec_ids.shape[0]} rows but test_user_items has {n} (rows must align)"
        )
    valid = rec_ids >= 0
    # a repeated item would be counted twice and push recall/NDCG above 1
    srt = np.sort(rec_ids, axis=1)
    if np.any((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)):
        raise ValueError("rec_ids repeats an item within a row")
    if test.nnz == 0:
        return np.zeros(rec_ids.shape, dtype=bool)
    # canonical CSR: (row, col) keys are strictly increasing, so one searchsorted finds them all
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(test.indptr))
    keys = rows * n_items + test.indices.astype(np.int64)
    query = np.arange(n, dtype=np.int64)[:, None] * n_items + np.where(valid, rec_ids, 0)
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    return valid & (keys[pos] == query)


def _check_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if pred.shape != truth.shape:
        raise ValueError(f"pred has shape {pred.shape}, truth has {truth.shape}")
    if pred.size == 0:
        raise ValueError("pred and truth are empty")
    if not (np.all(np.isfinite(pred)) and np.all(np.isfinite(truth))):
        raise ValueError("pred or truth contains NaN or inf")
    return pred, truth


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    """Root mean squared error over all entries of ``pred`` and ``truth`` (same shape)."""
    pred, truth = _check_pair(pred, truth)
    return float(np.sqrt(np.mean((pred - truth) ** 2)))


def mae(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean absolute error over all entries of ``pred`` and ``truth`` (same shape)."""
    pred, truth = _check_pair(pred, truth)
    return float(np.mean(np.abs(pred - truth)))
