"""Beyond-accuracy metrics of recommendation lists, vectorized over users.

Every function takes ``rec_ids`` int (n_users, k_max): row u is user u's list, best first,
padded with -1 (padding is ignored), and an optional ``k`` that keeps the first k columns, so one
matrix built at the largest cut-off serves every k (as in ``metrics.py``). No item may repeat
within a row.

Definitions (Kaminskas & Bridge 2016 give a survey):

- catalog coverage: |union of the lists| / n_items.
- Gini index of exposure: Gini coefficient of the number of lists each catalog item appears
  in, over *all* n_items items (never-recommended items count as zero exposure); 0 when every
  item is shown equally often, (n_items - 1) / n_items when one item takes every slot.
- novelty (Zhou et al. 2010): mean over a list of the self-information -log2 p_i of its items,
  p_i = share of the training users who interacted with item i (``item_popularity``).
- intra-list diversity: mean over the pairs of items in a list of the distance between their
  feature (e.g. genre) vectors: cosine distance 1 - cos(g_i, g_j) or Jaccard distance
  1 - |g_i ∩ g_j| / |g_i ∪ g_j|. A pair involving an item without features has similarity 0.
- personalization: 1 - mean over pairs of users (u < v) of |L_u ∩ L_v| / k. The sum over pairs
  of the overlaps equals sum_i c_i (c_i - 1) / 2 with c_i the number of lists holding item i,
  so it costs O(n_users k), not O(n_users^2 k).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from recsys_ebm.evaluation.metrics import _check_rec_ids

__all__ = [
    "exposure_counts",
    "catalog_coverage",
    "gini_coefficient",
    "gini_index",
    "item_popularity",
    "novelty",
    "genre_matrix",
    "intra_list_diversity",
    "personalization",
    "beyond_accuracy",
]

#: users per chunk in intra-list diversity (bounds the (chunk, k, k) pair arrays)
_ILD_CHUNK = 2048


def _lists(rec_ids: np.ndarray, n_items: int, k: int | None) -> np.ndarray:
    """Validated int64 (n, k) lists: ids in -1..n_items-1, first ``k`` columns, no repeats."""
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    rec_ids = np.asarray(rec_ids)
    if rec_ids.ndim != 2:
        raise ValueError(f"rec_ids must be 2-D (n_users, k), got shape {rec_ids.shape}")
    rec_ids = _check_rec_ids(rec_ids, n_items)
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= rec_ids.shape[1]:
            raise ValueError(f"k must be an integer in 1..{rec_ids.shape[1]}, got {k!r}")
        rec_ids = rec_ids[:, :k]
    srt = np.sort(rec_ids, axis=1)
    if np.any((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)):
        raise ValueError("rec_ids repeats an item within a row")
    return rec_ids


def exposure_counts(rec_ids: np.ndarray, n_items: int, k: int | None = None) -> np.ndarray:
    """Number of lists each item appears in: int64 (n_items,)."""
    lists = _lists(rec_ids, n_items, k)
    return np.bincount(lists[lists >= 0], minlength=n_items).astype(np.int64)


def catalog_coverage(rec_ids: np.ndarray, n_items: int, k: int | None = None) -> float:
    """|union of all lists| / n_items, in [0, 1]."""
    return float(np.count_nonzero(exposure_counts(rec_ids, n_items, k))) / n_items


def gini_coefficient(values: np.ndarray) -> float:
    """Gini coefficient of nonnegative ``values`` (n,): sum_i (2i - n - 1) x_(i) / (n sum x).

    ``x_(i)`` sorted ascending, i = 1..n. 0 for equal values; NaN when all are zero.
    """
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if x.size == 0:
        raise ValueError("values is empty")
    if np.any(x < 0) or not np.all(np.isfinite(x)):
        raise ValueError("values must be finite and >= 0")
    total = x.sum()
    if total == 0:
        return float("nan")
    n = x.size
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(((2 * ranks - n - 1) * x).sum() / (n * total))


def gini_index(rec_ids: np.ndarray, n_items: int, k: int | None = None) -> float:
    """Gini index of item exposure over the whole catalog (0 = equal exposure)."""
    return gini_coefficient(exposure_counts(rec_ids, n_items, k))


def item_popularity(user_items: sp.spmatrix | sp.sparray) -> np.ndarray:
    """Share of users who interacted with each item, float64 (n_items,) in (0, 1].

    An item nobody interacted with is counted as one interaction (so its self-information
    is finite, log2 n_users).
    """
    if not sp.issparse(user_items):
        raise ValueError(f"user_items must be a scipy.sparse matrix, got {type(user_items).__name__}")
    matrix = sp.csr_matrix(user_items, copy=True)
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    n_users, n_items = matrix.shape
    if n_users < 1:
        raise ValueError("user_items has no rows")
    counts = np.bincount(matrix.indices, minlength=n_items).astype(np.float64)
    return np.maximum(counts, 1.0) / n_users


def novelty(rec_ids: np.ndarray, popularity: np.ndarray, k: int | None = None) -> np.ndarray:
    """Mean self-information -log2 p_i of each list's items, float64 (n,) (NaN for empty lists).

    Parameters
    ----------
    rec_ids : int (n, k_max), padded with -1
    popularity : float (n_items,), p_i in (0, 1] (see ``item_popularity``)
    """
    popularity = np.asarray(popularity, dtype=np.float64)
    if popularity.ndim != 1:
        raise ValueError(f"popularity must be 1-D (n_items,), got shape {popularity.shape}")
    if np.any(~(popularity > 0)) or np.any(popularity > 1):
        raise ValueError("popularity must hold shares in (0, 1]")
    lists = _lists(rec_ids, popularity.size, k)
    info = -np.log2(popularity)
    valid = lists >= 0
    per_item = np.where(valid, info[np.maximum(lists, 0)], 0.0)
    counts = valid.sum(axis=1)
    out = np.full(lists.shape[0], np.nan)
    np.divide(per_item.sum(axis=1), counts, out=out, where=counts > 0)
    return out


def genre_matrix(genres: Sequence[str], sep: str = "|") -> tuple[sp.csr_matrix, list[str]]:
    """Binary item x genre matrix from '|'-joined genre strings (MovieLens' ``items.genres``).

    Parameters
    ----------
    genres : str (n_items,), e.g. ``"Action|Comedy"``; ``""`` for none.

    Returns
    -------
    CSR float64 (n_items, n_genres) and the genre names (sorted), column order.
    """
    split = [[g for g in str(text).split(sep) if g] for text in genres]
    names = sorted({g for row in split for g in row})
    column = {g: j for j, g in enumerate(names)}
    indptr = np.cumsum([0] + [len(set(row)) for row in split])
    indices = np.array([column[g] for row in split for g in sorted(set(row))], dtype=np.int64)
    matrix = sp.csr_matrix((np.ones(indices.size), indices, indptr), shape=(len(split), len(names)))
    return matrix, names


def intra_list_diversity(rec_ids: np.ndarray, item_features: sp.spmatrix | np.ndarray,
                         k: int | None = None, metric: str = "cosine") -> np.ndarray:
    """Mean pairwise feature distance within each list, float64 (n,) (NaN for < 2 items).

    Parameters
    ----------
    rec_ids : int (n, k_max), padded with -1
    item_features : (n_items, n_features), binary for ``"jaccard"``; any nonnegative weights
        for ``"cosine"``
    metric : ``"cosine"`` (1 - cosine similarity) or ``"jaccard"`` (1 - |A ∩ B| / |A ∪ B|)
    """
    if metric not in ("cosine", "jaccard"):
        raise ValueError(f"metric must be 'cosine' or 'jaccard', got {metric!r}")
    features = item_features.toarray() if sp.issparse(item_features) else np.asarray(item_features)
    if features.ndim != 2:
        raise ValueError(f"item_features must be 2-D (n_items, n_features), got shape {features.shape}")
    features = features.astype(np.float64)
    if metric == "jaccard":
        features = (features != 0).astype(np.float64)
    lists = _lists(rec_ids, features.shape[0], k)
    norms = np.sqrt((features**2).sum(axis=1))
    sizes = features.sum(axis=1)
    n, width = lists.shape
    out = np.full(n, np.nan)
    upper = np.triu(np.ones((width, width), dtype=bool), 1)
    for start in range(0, n, _ILD_CHUNK):
        block = lists[start:start + _ILD_CHUNK]
        valid = block >= 0
        ids = np.maximum(block, 0)
        vectors = features[ids] * valid[..., None]  # (b, k, f), padding rows zeroed
        dot = np.matmul(vectors, vectors.transpose(0, 2, 1))  # (b, k, k)
        if metric == "cosine":
            den = norms[ids][:, :, None] * norms[ids][:, None, :]
        else:
            den = sizes[ids][:, :, None] + sizes[ids][:, None, :] - dot
        sim = np.zeros_like(dot)
        np.divide(dot, den, out=sim, where=den > 0)
        pairs = upper & valid[:, :, None] & valid[:, None, :]
        n_pairs = pairs.sum(axis=(1, 2))
        total = np.where(pairs, 1.0 - sim, 0.0).sum(axis=(1, 2))
        np.divide(total, n_pairs, out=out[start:start + len(block)], where=n_pairs > 0)
    return out


def personalization(rec_ids: np.ndarray, n_items: int, k: int | None = None) -> float:
    """1 - mean over user pairs of |L_u ∩ L_v| / k (k = the list width); NaN for < 2 users.

    1 when no two users share an item, 0 when every user gets the same k items.
    """
    lists = _lists(rec_ids, n_items, k)
    n, width = lists.shape
    if n < 2:
        return float("nan")
    counts = np.bincount(lists[lists >= 0], minlength=n_items).astype(np.float64)
    shared = (counts * (counts - 1) / 2).sum()  # sum over pairs u < v of |L_u ∩ L_v|
    n_pairs = n * (n - 1) / 2
    return float(1.0 - shared / (n_pairs * width))


def beyond_accuracy(rec_ids: np.ndarray, n_items: int, ks: Iterable[int], *,
                    popularity: np.ndarray | None = None,
                    item_features: sp.spmatrix | np.ndarray | None = None,
                    diversity_metric: str = "cosine") -> dict[str, float]:
    """All beyond-accuracy metrics at every k as a flat dict (``"novelty@10"``, ...).

    Keys: ``coverage@k``, ``gini@k``, ``personalization@k``, plus ``novelty@k`` when
    ``popularity`` is given and ``diversity@k`` when ``item_features`` is; per-user values are
    averaged over users whose list is long enough to define them.
    """
    out: dict[str, float] = {}
    for k in ks:
        out[f"coverage@{k}"] = catalog_coverage(rec_ids, n_items, k)
        out[f"gini@{k}"] = gini_index(rec_ids, n_items, k)
        out[f"personalization@{k}"] = personalization(rec_ids, n_items, k)
        if popularity is not None:
            out[f"novelty@{k}"] = _nanmean(novelty(rec_ids, popularity, k))
        if item_features is not None:
            out[f"diversity@{k}"] = _nanmean(
                intra_list_diversity(rec_ids, item_features, k, diversity_metric))
    return out


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")
