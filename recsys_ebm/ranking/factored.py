"""Ranking kernels for models with vectors: -E(u, i) = <[p_u, 1], [q_i, b_i]>, scored for
blocks of users with one BLAS product each, blocks spread over worker threads.

:func:`rank_vectors` is what every vector model's ``recommend`` (and so export) runs: score a
block into a reused buffer, mask the users' seen items in place, and hand it to
:func:`recsys_ebm.ranking.select.select`. When sampling, the product yields s log2(e) / T
directly (``[c p_u, 1] . [q_i, c b_i]``, c = log2(e) / T), the sampler's base-2 log-weights, so
no scaling pass is needed; the drawn items are then rescored exactly.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from recsys_ebm.ranking.faiss_index import (
    default_threads,
    set_faiss_threads,
    single_threaded_kernels,
)
from recsys_ebm.ranking.sampling import LOG2E
from recsys_ebm.ranking.select import select
from recsys_ebm.ranking.topk import check_k, check_temperature, item_mask, mask_rows
from recsys_ebm.ranking.vectors import augment_items, augment_users

#: Bytes of float32 scores per worker thread: sets how many users one BLAS call scores (about
#: 155 for 27,000 items, 8 for a million). Measured on the ML-20M shape (2 threads, dim 64,
#: top-100): 1 MB blocks take 2.9x the time of 16 MB ones (per-block overhead), 8 MB 1.15x,
#: 32 MB 1.46x (the block no longer stays in cache between the product and the top-k).
BLOCK_BYTES = 16 << 20


def auto_batch_size(n_items: int) -> int:
    """Users per block so that a block's scores take about :data:`BLOCK_BYTES`."""
    return int(max(8, min(1024, BLOCK_BYTES // (4 * max(n_items, 1)))))


def run_blocks(fn: Callable[[int, int], None], n_rows: int, batch_size: int,
               n_threads: int | None = None) -> None:
    """Call ``fn(start, stop)`` for consecutive blocks of rows, on up to ``n_threads`` threads.

    Kernels run single-threaded (:func:`single_threaded_kernels`); numpy, BLAS and FAISS
    release the GIL, so the worker threads run in parallel.
    """
    n_threads = default_threads() if n_threads is None else max(1, int(n_threads))
    starts = range(0, n_rows, batch_size)
    with single_threaded_kernels(), _torch_threads(1):
        if n_threads == 1 or len(starts) <= 1:
            for start in starts:
                fn(start, min(start + batch_size, n_rows))
            return
        with ThreadPoolExecutor(n_threads, initializer=set_faiss_threads, initargs=(1,)) as pool:
            futures = [pool.submit(fn, s, min(s + batch_size, n_rows)) for s in starts]
            for future in futures:
                future.result()


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """PyTorch's intra-op pool at ``n`` threads (the products run on the workers' threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class FactorScorer:
    """-E(u, i) for blocks of users: one BLAS product of ``[p_u, 1]`` with ``[q_i, b_i]^T``.

    Items outside ``allowed`` get bias -inf, so they score -inf at no extra cost.

    Parameters
    ----------
    item_vectors : float32 (n_items, dim)
    item_biases : float32 (n_items,)
    allowed : bool (n_items,) or item ids, optional
    """

    def __init__(self, item_vectors: np.ndarray, item_biases: np.ndarray, allowed: Any = None):
        items = augment_items(item_vectors, item_biases)
        self.n_items, self.dim = items.shape[0], items.shape[1] - 1
        mask = item_mask(self.n_items, allowed)
        if mask is not None:
            items[~mask, -1] = -np.inf
        self.items_t = np.ascontiguousarray(items.T)  # (dim + 1, n_items)
        # the product runs through PyTorch (MKL), faster than numpy's on cache-sized blocks
        self._items = torch.from_numpy(self.items_t)

    def score(self, user_vectors: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Scores float32 (b, n_items) of users (b, dim), written into ``out`` when given."""
        users = augment_users(user_vectors)
        if users.shape[1] != self.items_t.shape[0]:
            raise ValueError(f"user vectors have dim {users.shape[1] - 1}, items have {self.dim}")
        n = users.shape[0]
        if out is None:
            out = np.empty((n, self.n_items), dtype=np.float32)
        if n == 0:
            return out
        if n == 1:
            # one row would take BLAS's matrix-vector path, whose rounding differs from the
            # matrix product's: a user must score the same alone as inside any block
            pair = np.empty((2, self.n_items), dtype=np.float32)
            torch.mm(torch.from_numpy(np.repeat(users, 2, axis=0)), self._items, out=torch.from_numpy(pair))
            out[0] = pair[0]
            return out
        torch.mm(torch.from_numpy(np.ascontiguousarray(users)), self._items, out=torch.from_numpy(out))
        return out


def rank_vectors(user_vectors: np.ndarray, item_vectors: np.ndarray, item_biases: np.ndarray,
                 k: int, temperature: float = 0.0, seed: int = 0, *, keys: np.ndarray | None = None,
                 exclude: sp.csr_matrix | None = None, mask: np.ndarray | None = None,
                 with_log_p: bool = False, batch_size: int | None = None,
                 n_threads: int | None = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Top-k (T = 0) or ``k`` sampled items (T > 0) by -E = <p_u, q_i> + b_i for many users.

    Parameters
    ----------
    user_vectors : float32 (n, dim); item_vectors float32 (n_items, dim); item_biases (n_items,).
    keys : int64 (n,) sampling keys (default 0 .. n-1).
    exclude : canonical CSR (n, n_items) aligned with the users; stored entries are never returned.
    mask : bool (n_items,): only these items may be returned.
    with_log_p : also return log p(i | u, T) (T = 1 for the ranking), float64 (n, k).
    batch_size : users per BLAS call (default :func:`auto_batch_size`); memory is about
        ``n_threads * batch_size * n_items * 4`` bytes.

    Returns
    -------
    ids int64 (n, k), scores float32 (n, k), log_p float64 (n, k) or None; padded with -1 / -inf.
    """
    k, temperature = check_k(k), check_temperature(temperature)
    users = np.asarray(user_vectors, dtype=np.float32)
    keys = np.arange(users.shape[0], dtype=np.int64) if keys is None else keys
    # fold log2(e) / T into the product unless that would overflow float32 (very small T):
    # then the sampler gets the plain scores at T and subtracts each row's maximum itself
    fold = temperature > 0 and _can_fold_scale(users, item_vectors, item_biases, temperature)
    scale = np.float32(LOG2E / temperature) if fold else np.float32(1.0)
    biases = np.asarray(item_biases, dtype=np.float32)
    scorer = FactorScorer(item_vectors, biases * scale, mask)
    items = augment_items(item_vectors, biases) if fold else None
    batch_size = batch_size or auto_batch_size(scorer.n_items)
    n = users.shape[0]
    out_ids, out_values = np.empty((n, k), np.int64), np.empty((n, k), np.float32)
    out_log_p = np.empty((n, k)) if with_log_p else None
    local = threading.local()

    def block(start: int, stop: int) -> None:
        if getattr(local, "scores", None) is None:
            local.scores = np.empty((batch_size, scorer.n_items), dtype=np.float32)
        block_users = users[start:stop]
        scores = scorer.score(block_users * scale if fold else block_users,
                              out=local.scores[:stop - start])
        mask_rows(scores, exclude, start)
        with np.errstate(invalid="ignore"):  # rows with nothing eligible: -inf - (-inf)
            if fold:
                # the sampler at T = log2(e) weighs exp2(s c) = exp(s / T): its log p is p(i | u, T)
                ids, _, log_p = select(scores, k, LOG2E, seed, keys[start:stop], with_log_p=with_log_p)
                values = rescore(block_users, items, ids)
            else:
                ids, values, log_p = select(scores, k, temperature, seed, keys[start:stop],
                                            with_log_p=with_log_p)
        out_ids[start:stop], out_values[start:stop] = ids, values
        if with_log_p:
            out_log_p[start:stop] = log_p

    run_blocks(block, n, batch_size, n_threads)
    return out_ids, out_values, out_log_p


def _can_fold_scale(users: np.ndarray, item_vectors: np.ndarray, item_biases: np.ndarray,
                    temperature: float) -> bool:
    """Whether scores times log2(e) / T stay far inside float32's range."""
    bound = (float(np.abs(users).sum(axis=1).max(initial=0.0)) * float(np.abs(item_vectors).max(initial=0.0))
             + float(np.abs(item_biases).max(initial=0.0)))
    return bound * LOG2E / temperature < 1e30


def rescore(user_vectors: np.ndarray, items: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Exact -E = <[p_u, 1], [q_i, b_i]> of selected items in float64 (b, k); -inf for padding.

    ``items`` is the augmented item matrix (n_items, dim + 1).
    """
    users = augment_users(user_vectors).astype(np.float64)
    values = np.einsum("bd,bkd->bk", users, items[np.maximum(ids, 0)].astype(np.float64))
    values[ids < 0] = -np.inf
    return values
