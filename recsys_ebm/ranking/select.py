"""The one selection of a block of scores: exact top-k at T = 0, the seeded sample at T > 0,
and the log-partition that turns the selected scores into Gibbs probabilities.

Every ranking of the toolkit ends here: ``Recommender.recommend`` (and so export, evaluation,
the CLI and the FAISS-served models) passes masked score blocks to :func:`select`.
"""

from __future__ import annotations

import numpy as np
import torch

from recsys_ebm.ranking.faiss_index import heap_top_k
from recsys_ebm.ranking.sampling import sample_top_k
from recsys_ebm.ranking.topk import check_k, check_temperature


def select(scores: np.ndarray, k: int, temperature: float, seed: int, keys: np.ndarray, *,
           with_log_p: bool = False, work: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The ranked (T = 0) or sampled (T > 0) ``k`` items of each row of masked ``scores``.

    Parameters
    ----------
    scores : np.ndarray
        float32 (n, n_items), -inf where an item may not be returned; used as scratch.
    k : int
        How many items per row.
    temperature : float
        0 for the exact top-k, > 0 to sample from softmax(scores / T).
    seed : int
        Seed of the sampler (unused at T = 0).
    keys : np.ndarray
        int64 (n,), the users' sampling keys (see :func:`recsys_ebm.ranking.sampling.sample_top_k`).
    with_log_p : bool
        Also return log p(i | u, T) of the selected items under the Gibbs distribution over the
        eligible items (at T = 1 for the ranking); see :func:`log_probabilities`.
    work : np.ndarray, optional
        float32 scratch for the log-partition (see :func:`logsumexp_rows`).

    Returns
    -------
    ids : np.ndarray
        int64 (n, k), best first / in draw order, padded with -1.
    scores : np.ndarray
        float32 (n, k), the selected scores, padded with -inf.
    log_p : np.ndarray or None
        float64 (n, k) (-inf for padding), or None without ``with_log_p``.
    """
    k = check_k(k)
    temperature = check_temperature(temperature)
    if temperature > 0:
        if not with_log_p:
            ids, values = sample_top_k(scores, k, temperature, seed, keys=keys)
            return ids, values, None
        ids, values, log_norm = sample_top_k(scores, k, temperature, seed, keys=keys,
                                             return_log_norm=True)
        return ids, values, log_probabilities(values, log_norm, temperature)
    ids, values = select_top_k(scores, k)
    if not with_log_p:
        return ids, values, None
    log_norm = logsumexp_rows(scores, values[:, 0].astype(np.float64), work)
    return ids, values, log_probabilities(values, log_norm, 1.0)


def log_probabilities(values: np.ndarray, log_norm: np.ndarray, temperature: float) -> np.ndarray:
    """log p = s / T - log Z of selected scores (n, k); -inf for padding.

    Z is summed from float32 weights, so rounding can put a near-certain item a few 1e-8 above
    probability 1, or a list's total above 1: such rows are scaled back to a total of exactly 1
    (a change far below the weights' own precision), so p is in [0, 1] and sums to at most 1.
    """
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        log_p = np.minimum(values.astype(np.float64) / temperature - log_norm[:, None], 0.0)
        log_p[~np.isfinite(values)] = -np.inf
        finite = np.isfinite(log_p)
        top = np.max(np.where(finite, log_p, -np.inf), axis=1, initial=-np.inf)
        total = top + np.log(np.where(finite, np.exp(log_p - top[:, None]), 0.0).sum(axis=1))
    over = np.isfinite(total) & (total > 0)
    log_p[over] -= total[over, None]
    return log_p


#: :func:`select_top_k` switches from the heap to the threshold method at this k.
THRESHOLD_MIN_K = 32


def select_top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k per row, best first, by the faster method for the shape.

    Same contract as :func:`heap_top_k` (-inf never returned, -1 / -inf padding, ties to the
    lower item id). Small ``k``: the heap. Larger ``k``: a threshold pass. Split the items
    into G strided groups and take each group's maximum; the k-th largest group maximum t is
    a lower bound of the k-th largest score (k groups each hold an item >= t), so every top-k
    item, and every item tied with the k-th, is among the few with score >= t. Those are
    found with vectorized compares and sorted by (score desc, id asc). Rows where that set is
    degenerate (fewer than k groups with eligible items, or many ties) use the heap.

    Parameters
    ----------
    scores : float32 (n, n_items)
    """
    k = check_k(k)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (n, n_items), got shape {scores.shape}")
    n, n_items = scores.shape
    n_groups = max(512, 4 * k)
    if k < THRESHOLD_MIN_K or scores.dtype != np.float32 or n_items < 8 * n_groups or n == 0:
        return heap_top_k(scores, k)
    scores = np.ascontiguousarray(scores)
    n_full = n_items // n_groups
    group_max = scores[:, :n_full * n_groups].reshape(n, n_full, n_groups).max(axis=1)
    tail = scores[:, n_full * n_groups:]
    if tail.shape[1]:
        np.maximum(group_max[:, :tail.shape[1]], tail, out=group_max[:, :tail.shape[1]])
    threshold = np.partition(group_max, n_groups - k, axis=1)[:, n_groups - k]
    fallback = ~np.isfinite(threshold)  # fewer than k groups hold an eligible item
    threshold[fallback] = np.inf
    flat = np.flatnonzero(scores >= threshold[:, None])
    rows = flat // n_items
    counts = np.bincount(rows, minlength=n)
    fallback |= counts > 8 * k + 64  # heavy ties at the threshold: let the heap sort them out
    if fallback.any():
        keep = ~fallback[rows]
        flat, rows = flat[keep], rows[keep]
        counts[fallback] = 0
    width = max(int(counts.max()), k)
    starts = np.cumsum(counts) - counts
    position = np.arange(flat.size) - starts[rows]
    values = np.full((n, width), -np.inf, dtype=np.float32)
    ids = np.full((n, width), -1, dtype=np.int64)
    values[rows, position] = scores.reshape(-1)[flat]
    ids[rows, position] = flat - rows * n_items
    # candidates are in id order within a row: a stable sort by -score breaks ties by id
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    ids = np.take_along_axis(ids, order, axis=1)
    values = np.take_along_axis(values, order, axis=1)
    redo = np.flatnonzero(fallback)
    if redo.size:
        ids[redo], values[redo] = heap_top_k(scores[redo], k)
    return ids, values


#: Rows whose maximum score lies in this window take exp(s) without subtracting it (a pass
#: saved): nothing overflows, and only terms over e^67 times below the maximum underflow.
_DIRECT_WINDOW = (-20.0, 60.0)
#: Rows weighed per pass: the exp'd copy stays in cache between the exp and the sum instead of
#: a round trip to memory (the pass is memory-bound otherwise).
_CACHE_BYTES = 1 << 19


def logsumexp_rows(scores: np.ndarray, row_max: np.ndarray, work: np.ndarray | None = None
                   ) -> np.ndarray:
    """log sum_i exp(s_i) per row over finite entries, float64 (n,); -inf for empty rows.

    ``row_max`` is each row's largest score (the first of its top-k), float64 (n,); ``work``
    an optional float32 scratch buffer of at least ``min(n, step) * n_items`` entries.
    """
    scores = np.ascontiguousarray(scores)  # no copy for the usual C-ordered blocks
    n, n_items = scores.shape
    out = np.full(n, -np.inf)
    ok = np.isfinite(row_max)
    if not ok.any():
        return out
    direct = ok & (row_max >= _DIRECT_WINDOW[0]) & (row_max <= _DIRECT_WINDOW[1])
    shift = np.where(direct | ~ok, 0.0, row_max)
    shift32 = shift.astype(np.float32)[:, None]
    step = max(1, _CACHE_BYTES // (4 * max(n_items, 1)))
    if work is None or work.dtype != np.float32 or work.size < min(step, n) * n_items:
        work = np.empty(min(step, n) * n_items, dtype=np.float32)
    total = np.empty(n)
    ones = torch.ones(n_items, dtype=torch.float32)
    source, shift_t = torch.from_numpy(scores), torch.from_numpy(shift32)
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        for start in range(0, n, step):
            stop = min(start + step, n)
            buffer = torch.from_numpy(work[:(stop - start) * n_items].reshape(stop - start, n_items))
            if direct[start:stop].all():
                torch.exp(source[start:stop], out=buffer)  # PyTorch's float32 exp: one SIMD pass
            else:
                torch.sub(source[start:stop], shift_t[start:stop], out=buffer)
                buffer.exp_()
            total[start:stop] = torch.mv(buffer, ones).numpy()  # BLAS sums faster than a reduction
        out[ok] = (np.log(total) + shift)[ok]
    return out
