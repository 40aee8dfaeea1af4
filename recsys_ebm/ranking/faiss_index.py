"""Nearest-energy retrieval: exact factored top-k and FAISS indexes over augmented vectors.

For any model exposing user vectors p_u, item vectors q_i and item biases b_i (the dot-product
EBM; ALS/BPR adapters expose the same three methods), the negative energy is an inner product of
augmented vectors::

    -E(u, i) = <p_u, q_i> + b_i = <[p_u, 1], [q_i, b_i]>

so the lowest-energy items of a user are its maximum-inner-product neighbours.

Two ways to use that here:

* :func:`exact_top_k` scores blocks of users with one BLAS product against the augmented item
  matrix, masks the users' seen items in place and selects the k best (:func:`select_top_k`:
  a bounded heap for small k, a group-maximum threshold pass for larger k), blocks spread over
  worker threads. Exact, with the tie rule of :func:`recsys_ebm.ranking.topk.top_k` (the lower item id
  wins). Batch export uses it; :func:`sampled_top_k` is its exploratory counterpart.
* :class:`EnergyIndex` wraps a FAISS index: ``"flat"`` (``IndexFlatIP``, exact), ``"hnsw"`` and
  ``"ivf"`` (approximate, tuned with ``ef_search`` / ``nprobe``). Seen items are excluded by
  over-fetching ``k + n_seen`` neighbours and filtering; rows that still come back short are
  fetched again with more neighbours and finally answered exactly, so ``k`` items are returned
  whenever ``k`` unseen items exist. Exploratory mode samples ``k`` of the top ``M`` candidates
  at temperature ``T``. Indexes are saved next to the model with a fingerprint of the item
  vectors they were built from, and loading checks it.

By default (``metric="l2"``) the approximate kinds add one more coordinate so that maximum
inner product becomes nearest Euclidean neighbour (Bachrach et al. 2014): items get
``sqrt(R^2 - |[q_i, b_i]|^2)`` with ``R`` the largest item norm, queries get 0. Inner products
are unchanged (still exactly -E). On clustered embeddings L2 graphs and k-means cells serve
them far better than raw inner products (HNSW recall@100 0.99 vs 0.45 on the benchmark's
catalog); on near-isotropic vectors it is the other way round (0.24 vs 0.73), hence
``metric="ip"``. Scores returned by every search are recomputed exactly from the stored vectors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import operator
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp

from recsys_ebm.config import Config, check
from recsys_ebm.ranking.topk import top_k

logger = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "hnsw", "ivf")
INDEX_FILE = "index.faiss"
META_FILE = "index.json"
#: Bytes of float32 scores per worker thread: sets how many users one BLAS call scores
#: (about 600 for 27,000 items, 16 for a million); bigger blocks amortize per-call overheads.
BLOCK_BYTES = 64 << 20


def auto_batch_size(n_items: int) -> int:
    """Users per block so that a block's scores take about :data:`BLOCK_BYTES`."""
    return int(max(8, min(1024, BLOCK_BYTES // (4 * max(n_items, 1)))))


# ----------------------------------------------------------------------------- vectors


def _as_2d_float32(array: Any, name: str) -> np.ndarray:
    out = np.asarray(array, dtype=np.float32)
    if out.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {out.shape}")
    return out


def check_vector_model(model: Any) -> None:
    """Raise ``TypeError`` unless ``model`` has ``user_vectors``, ``item_vectors``, ``item_biases``."""
    missing = [name for name in ("user_vectors", "item_vectors", "item_biases")
               if not callable(getattr(model, name, None))]
    if missing:
        raise TypeError(f"{type(model).__name__} does not expose {', '.join(missing)}; retrieval "
                        "needs user_vectors(user_ids, user_items=None), item_vectors(), item_biases()")


def has_vectors(model: Any) -> bool:
    """Whether ``model`` exposes the three methods retrieval needs."""
    try:
        check_vector_model(model)
    except TypeError:
        return False
    return True


def augment_items(item_vectors: np.ndarray, item_biases: np.ndarray) -> np.ndarray:
    """``[q_i, b_i]``: float32 (n_items, dim + 1)."""
    items = _as_2d_float32(item_vectors, "item_vectors")
    biases = np.asarray(item_biases, dtype=np.float32).ravel()
    if biases.shape[0] != items.shape[0]:
        raise ValueError(f"item_biases has {biases.shape[0]} entries for {items.shape[0]} item vectors")
    return np.hstack([items, biases[:, None]])


def augment_users(user_vectors: np.ndarray) -> np.ndarray:
    """``[p_u, 1]``: float32 (n, dim + 1)."""
    users = _as_2d_float32(user_vectors, "user_vectors")
    return np.hstack([users, np.ones((users.shape[0], 1), dtype=np.float32)])


def fingerprint(item_vectors: np.ndarray, item_biases: np.ndarray) -> str:
    """SHA-256 of the augmented float32 item matrix (shape included): identifies a model's items."""
    items = np.ascontiguousarray(augment_items(item_vectors, item_biases))
    digest = hashlib.sha256(f"{items.shape[0]}x{items.shape[1]}:".encode())
    digest.update(items.tobytes())
    return digest.hexdigest()


def model_fingerprint(model: Any) -> str:
    """:func:`fingerprint` of a model's ``item_vectors()`` and ``item_biases()``."""
    check_vector_model(model)
    return fingerprint(model.item_vectors(), model.item_biases())


def _check_k(k: Any) -> int:
    try:
        k = operator.index(k)
    except TypeError:
        raise ValueError(f"k must be an integer, got {k!r}") from None
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return k


def _allowed_mask(allowed: Any, n_items: int) -> np.ndarray | None:
    """``allowed`` (bool mask or item ids) as a bool mask (n_items,), or None."""
    if allowed is None:
        return None
    allowed = np.asarray(allowed)
    if allowed.dtype == bool:
        if allowed.shape != (n_items,):
            raise ValueError(f"allowed has shape {allowed.shape}, expected ({n_items},)")
        return allowed
    ids = allowed.astype(np.int64).ravel()
    bad = (ids < 0) | (ids >= n_items)
    if np.any(bad):
        raise IndexError(f"allowed item id {int(ids[bad][0])} is outside 0..{n_items - 1}")
    mask = np.zeros(n_items, dtype=bool)
    mask[ids] = True
    return mask


def _canonical_exclude(exclude: Any, n_rows: int, n_items: int) -> sp.csr_matrix | None:
    """Exclusion CSR (n_rows, n_items) with sorted, unique column indices per row."""
    if exclude is None:
        return None
    if not sp.issparse(exclude):
        raise ValueError(f"exclude must be a scipy.sparse matrix, got {type(exclude).__name__}")
    exclude = sp.csr_matrix(exclude)
    if exclude.shape != (n_rows, n_items):
        raise ValueError(f"exclude has shape {exclude.shape}, expected ({n_rows}, {n_items})")
    if not exclude.has_canonical_format:
        exclude = exclude.copy()
        exclude.sum_duplicates()  # also sorts the indices
    return exclude


def mask_rows(scores: np.ndarray, exclude: sp.csr_matrix | None, start: int = 0) -> None:
    """Set the entries of ``exclude`` rows ``start .. start + len(scores)`` to -inf, in place.

    Parameters
    ----------
    scores : float (b, n_items), C-contiguous
    exclude : CSR (n_rows, n_items) or None; every stored entry is excluded (as in ``topk``).
    """
    if exclude is None or scores.shape[0] == 0:
        return
    stop = start + scores.shape[0]
    indptr = exclude.indptr[start:stop + 1]
    cols = exclude.indices[indptr[0]:indptr[-1]]
    if cols.size == 0:
        return
    offsets = np.repeat(np.arange(scores.shape[0], dtype=np.int64) * scores.shape[1], np.diff(indptr))
    scores.reshape(-1)[offsets + cols] = -np.inf


# ----------------------------------------------------------------------------- exact top-k


@functools.lru_cache(maxsize=8)
def _reversed_ids(n_items: int) -> np.ndarray:
    ids = np.arange(n_items - 1, -1, -1, dtype=np.int64)
    ids.flags.writeable = False  # shared by every call (and thread)
    return ids


def heap_top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k per row with a bounded heap (FAISS ``HeapArray``), best first.

    Same contract as :func:`recsys_ebm.ranking.topk.top_k` without masking: -inf entries are never
    returned, rows are padded with -1 / -inf, ties go to the lower item id.

    The heap only replaces its worst element on a strictly larger value, so among items tied
    with it the earlier (lower) id stays; its eviction order breaks ties by heap id, so heap
    ids are the reversed item ids to make it evict the higher item id first. One scan of each
    row, mostly compare-and-skip: cheaper than ``argpartition`` for ``k << n_items``.

    Parameters
    ----------
    scores : float32 (n, n_items); other dtypes, or ``k`` close to ``n_items``, use ``top_k``.

    Returns
    -------
    ids int64 (n, k), values float32 (n, k)
    """
    k = _check_k(k)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (n, n_items), got shape {scores.shape}")
    n, n_items = scores.shape
    if scores.dtype != np.float32 or 4 * k >= n_items or n == 0:
        return top_k(scores, k)
    scores = np.ascontiguousarray(scores)
    values = np.empty((n, k), dtype=np.float32)
    heap_ids = np.empty((n, k), dtype=np.int64)
    heaps = faiss.float_minheap_array_t()
    heaps.nh, heaps.k = n, k
    heaps.val, heaps.ids = faiss.swig_ptr(values), faiss.swig_ptr(heap_ids)
    heaps.heapify()
    heaps.addn_with_ids(n_items, faiss.swig_ptr(scores), faiss.swig_ptr(_reversed_ids(n_items)), 0)
    heaps.reorder()
    filled = heap_ids >= 0
    ids = np.where(filled, n_items - 1 - heap_ids, -1)
    values[~filled] = -np.inf
    # order ties by id (reorder sorts by value only); padding (-inf) stays last
    order = np.lexsort((ids, -values), axis=1)
    ids = np.take_along_axis(ids, order, axis=1)
    values = np.take_along_axis(values, order, axis=1)
    # The heap starts full of -FLT_MAX, so a finite score <= -FLT_MAX would be dropped: redo
    # any row that came back short with the reference path (rows with < k eligible items).
    short = np.flatnonzero(~filled.all(axis=1))
    if short.size:
        ids[short], values[short] = top_k(scores[short].copy(), k)
    return ids, values


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
    k = _check_k(k)
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


def default_threads() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def single_threaded_kernels() -> Iterator[None]:
    """BLAS and FAISS's OpenMP at one thread (in this thread) while workers provide parallelism.

    Oversubscribing cores with nested BLAS/OpenMP pools makes spinning threads fight; one
    single-threaded kernel per worker thread is robust on a shared machine.
    """
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        with _blas_limit(1):
            yield
    finally:
        faiss.omp_set_num_threads(before)


def _blas_limit(n: int):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only affects speed
        return contextlib.nullcontext()
    return threadpool_limits(n, user_api="blas")


def run_blocks(fn: Callable[[int, int], None], n_rows: int, batch_size: int,
               n_threads: int | None = None) -> None:
    """Call ``fn(start, stop)`` for consecutive blocks of rows, on up to ``n_threads`` threads.

    Kernels run single-threaded (:func:`single_threaded_kernels`); numpy, BLAS and FAISS
    release the GIL, so the worker threads run in parallel.
    """
    n_threads = default_threads() if n_threads is None else max(1, int(n_threads))
    starts = range(0, n_rows, batch_size)
    with single_threaded_kernels():
        if n_threads == 1 or len(starts) <= 1:
            for start in starts:
                fn(start, min(start + batch_size, n_rows))
            return
        with ThreadPoolExecutor(n_threads, initializer=faiss.omp_set_num_threads,
                                initargs=(1,)) as pool:
            futures = [pool.submit(fn, s, min(s + batch_size, n_rows)) for s in starts]
            for future in futures:
                future.result()


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
        mask = _allowed_mask(allowed, self.n_items)
        if mask is not None:
            items[~mask, -1] = -np.inf
        self.items_t = np.ascontiguousarray(items.T)  # (dim + 1, n_items)

    def score(self, user_vectors: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Scores float32 (b, n_items) of users (b, dim), written into ``out`` when given."""
        users = augment_users(user_vectors)
        if users.shape[1] != self.items_t.shape[0]:
            raise ValueError(f"user vectors have dim {users.shape[1] - 1}, items have {self.dim}")
        return np.matmul(users, self.items_t, out=out)


def exact_top_k(user_vectors: np.ndarray, item_vectors: np.ndarray, item_biases: np.ndarray,
                k: int, *, exclude: sp.csr_matrix | None = None, allowed: Any = None,
                batch_size: int | None = None, n_threads: int | None = None,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k items by -E = <p_u, q_i> + b_i, seen items excluded, for many users.

    Parameters
    ----------
    user_vectors : float32 (n, dim)
    item_vectors : float32 (n_items, dim)
    item_biases : float32 (n_items,)
    exclude : CSR (n, n_items), rows aligned with ``user_vectors``; stored entries are excluded.
    allowed : bool (n_items,) or item ids; only these items may be returned.
    batch_size : users per BLAS call (default :func:`auto_batch_size`); memory is about
        ``n_threads * batch_size * n_items * 4`` bytes.

    Returns
    -------
    ids int64 (n, k) and scores float32 (n, k), best first, padded with -1 / -inf;
    ties go to the lower item id.
    """
    k = _check_k(k)
    users = _as_2d_float32(user_vectors, "user_vectors")
    scorer = FactorScorer(item_vectors, item_biases, allowed)
    exclude = _canonical_exclude(exclude, users.shape[0], scorer.n_items)
    batch_size = batch_size or auto_batch_size(scorer.n_items)
    out_ids = np.empty((users.shape[0], k), dtype=np.int64)
    out_scores = np.empty((users.shape[0], k), dtype=np.float32)
    local = threading.local()

    def block(start: int, stop: int) -> None:
        buffer = getattr(local, "buffer", None)
        if buffer is None:
            buffer = local.buffer = np.empty((batch_size, scorer.n_items), dtype=np.float32)
        scores = scorer.score(users[start:stop], out=buffer[:stop - start])
        mask_rows(scores, exclude, start)
        out_ids[start:stop], out_scores[start:stop] = select_top_k(scores, k)

    run_blocks(block, users.shape[0], batch_size, n_threads)
    return out_ids, out_scores


def sampled_top_k(user_vectors: np.ndarray, item_vectors: np.ndarray, item_biases: np.ndarray,
                  k: int, temperature: float, seed: int = 0, *,
                  exclude: sp.csr_matrix | None = None, allowed: Any = None,
                  batch_size: int | None = None, n_threads: int | None = None,
                  row_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Exploratory counterpart of :func:`exact_top_k`: ``k`` distinct items per user drawn from
    p(i | u, T) ∝ exp(-E(u, i) / T) over eligible items (:func:`recsys_ebm.ranking.sampling.sample_top_k`).

    The product is computed as ``[c p_u, 1] . [q_i, c b_i]`` with ``c = log2(e) / T``, which is
    the sampler's base-2 log-weight (no scaling pass), and the drawn items are rescored exactly. Draws depend on (seed, row_offset + row) only.
    ``temperature == 0`` is :func:`exact_top_k`.

    Returns ids int64 (n, k) in draw order and scores (-E) float32 (n, k), padded with -1 / -inf.
    """
    from recsys_ebm.ranking.sampling import LOG2E, sample_top_k

    k = _check_k(k)
    if not (0 <= temperature < np.inf):
        raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
    if temperature == 0:
        return exact_top_k(user_vectors, item_vectors, item_biases, k, exclude=exclude,
                           allowed=allowed, batch_size=batch_size, n_threads=n_threads)
    users = _as_2d_float32(user_vectors, "user_vectors")
    scale = np.float32(LOG2E / temperature)
    biases = np.asarray(item_biases, dtype=np.float32)
    scorer = FactorScorer(item_vectors, biases * scale, allowed)
    items = augment_items(item_vectors, biases)
    exclude = _canonical_exclude(exclude, users.shape[0], scorer.n_items)
    batch_size = batch_size or auto_batch_size(scorer.n_items)
    out_ids = np.empty((users.shape[0], k), dtype=np.int64)
    out_scores = np.empty((users.shape[0], k), dtype=np.float32)
    local = threading.local()

    def block(start: int, stop: int) -> None:
        if getattr(local, "buffer", None) is None:
            local.buffer = np.empty((batch_size, scorer.n_items), dtype=np.float32)
        scores = scorer.score(users[start:stop] * scale, out=local.buffer[:stop - start])
        mask_rows(scores, exclude, start)
        ids, _ = sample_top_k(scores, k, LOG2E, seed, row_offset=row_offset + start)
        values = np.einsum("bd,bkd->bk", augment_users(users[start:stop]), items[np.maximum(ids, 0)])
        values[ids < 0] = -np.inf
        out_ids[start:stop], out_scores[start:stop] = ids, values

    run_blocks(block, users.shape[0], batch_size, n_threads)
    return out_ids, out_scores


def recommend_exact(model: Any, user_ids: Any, user_items: sp.csr_matrix | None = None, k: int = 10,
                    *, filter_seen: bool = True, items: Any = None,
                    batch_size: int | None = None, n_threads: int | None = None,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`exact_top_k` for a vector model's trained users.

    ``user_items`` is (n_users, n_items) indexed by ``user_ids`` or (n, n_items) aligned with
    them; its entries are excluded when ``filter_seen``.
    """
    check_vector_model(model)
    user_ids = np.atleast_1d(np.asarray(user_ids, dtype=np.int64))
    vectors = model.user_vectors(user_ids)
    exclude = None
    if filter_seen and user_items is not None:
        exclude = _rows_for(sp.csr_matrix(user_items), user_ids, getattr(model, "n_users", None))
    return exact_top_k(vectors, model.item_vectors(), model.item_biases(), k, exclude=exclude,
                       allowed=items, batch_size=batch_size, n_threads=n_threads)


def _rows_for(user_items: sp.csr_matrix, user_ids: np.ndarray, n_users: int | None) -> sp.csr_matrix:
    """Rows of ``user_items`` for ``user_ids``: one row per trained user, or aligned with the ids."""
    n_rows = user_items.shape[0]
    if n_rows == n_users:
        return user_items[user_ids]
    if n_rows == len(user_ids):
        return user_items
    raise ValueError(f"user_items has {n_rows} rows: expected {len(user_ids)} (aligned with "
                     f"user_ids) or {n_users} (one per trained user, indexed by user_ids)")


# ----------------------------------------------------------------------------- FAISS index


@dataclasses.dataclass(frozen=True)
class IndexConfig(Config):
    """How an :class:`EnergyIndex` is built and searched.

    ``nlist = 0`` picks about ``4 sqrt(n_items)`` IVF cells; ``ef_search`` and ``nprobe`` are
    the accuracy/speed knobs (changeable after building). ``metric`` of the approximate kinds:
    ``"l2"`` searches the MIPS-to-L2 transformed vectors (see the module docstring; much better
    on clustered embeddings), ``"ip"`` the raw inner products (better on unstructured,
    near-isotropic vectors). Measure both on your vectors.
    """

    kind: str = "flat"
    metric: str = "l2"
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    nlist: int = 0
    nprobe: int = 16
    train_size: int = 262_144
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.kind in INDEX_KINDS, f"kind must be one of {INDEX_KINDS}, got {self.kind!r}")
        check(self.metric in ("l2", "ip"), f"metric must be 'l2' or 'ip', got {self.metric!r}")
        for name in ("hnsw_m", "ef_construction", "ef_search", "nprobe", "train_size"):
            value = getattr(self, name)
            check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                  f"{name} must be an integer >= 1, got {value!r}")
        check(isinstance(self.nlist, int) and self.nlist >= 0, f"nlist must be >= 0, got {self.nlist!r}")
        check(isinstance(self.seed, int) and self.seed >= 0, f"seed must be >= 0, got {self.seed!r}")


class EnergyIndex:
    """A FAISS index whose inner products are exactly -E(u, i); see the module docstring.

    Build with :meth:`build` (from a model or from arrays), query with :meth:`search`
    (ranked) or :meth:`sample` (exploratory), persist with :meth:`save` / :meth:`load`.
    """

    def __init__(self, index: faiss.Index, config: IndexConfig, item_fingerprint: str,
                 n_items: int, dim: int, transformed: bool):
        self.index = index
        self.config = config
        self.fingerprint = item_fingerprint
        self.n_items = n_items
        self.dim = dim
        self.transformed = transformed
        self._items: np.ndarray | None = None
        self.ef_search = config.ef_search
        self.nprobe = config.nprobe

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, model: Any = None, *, item_vectors: np.ndarray | None = None,
              item_biases: np.ndarray | None = None, config: IndexConfig | None = None,
              **options: Any) -> EnergyIndex:
        """Index a model's items (or the given arrays); ``options`` are :class:`IndexConfig` fields."""
        if config is not None and options:
            raise ValueError("pass either a config or keyword options, not both")
        config = config if config is not None else IndexConfig(**options)
        if model is not None:
            check_vector_model(model)
            item_vectors, item_biases = model.item_vectors(), model.item_biases()
        if item_vectors is None or item_biases is None:
            raise ValueError("give a model or both item_vectors and item_biases")
        items = augment_items(item_vectors, item_biases)
        n_items, dim = items.shape[0], items.shape[1] - 1
        if n_items == 0:
            raise ValueError("cannot index an empty catalog")
        if not np.all(np.isfinite(items)):
            raise ValueError("item vectors or biases contain NaN or inf")
        item_fingerprint = fingerprint(item_vectors, item_biases)
        transformed = config.kind != "flat" and config.metric == "l2"
        if transformed:
            items = _mips_to_l2(items)
        width = items.shape[1]
        metric = faiss.METRIC_L2 if transformed else faiss.METRIC_INNER_PRODUCT
        if config.kind == "flat":
            index = faiss.IndexFlatIP(width)
        elif config.kind == "hnsw":
            index = faiss.IndexHNSWFlat(width, config.hnsw_m, metric)
            index.hnsw.efConstruction = config.ef_construction
        else:
            nlist = config.nlist or max(1, min(n_items // 39, int(round(4 * math.sqrt(n_items)))))
            quantizer = faiss.IndexFlatL2(width) if transformed else faiss.IndexFlatIP(width)
            index = faiss.IndexIVFFlat(quantizer, width, nlist, metric)
            index.cp.seed = config.seed
            rng = np.random.default_rng(config.seed)
            sample = items if n_items <= config.train_size else items[
                np.sort(rng.choice(n_items, config.train_size, replace=False))]
            index.train(sample)
        logger.info("building %s index over %d items (dim %d + bias)", config.kind, n_items, dim)
        index.add(items)
        if config.kind == "ivf":
            index.make_direct_map()  # reconstruct() for exact rescoring
        return cls(index, config, item_fingerprint, n_items, dim, transformed)

    # ------------------------------------------------------------------ knobs
    @property
    def ef_search(self) -> int:
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if int(value) < 1:
            raise ValueError(f"ef_search must be >= 1, got {value}")
        self._ef_search = int(value)

    @property
    def nprobe(self) -> int:
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if int(value) < 1:
            raise ValueError(f"nprobe must be >= 1, got {value}")
        self._nprobe = int(value)

    # ------------------------------------------------------------------ searching
    def _queries(self, user_vectors: np.ndarray) -> np.ndarray:
        users = augment_users(user_vectors)
        if users.shape[1] != self.dim + 1:
            raise ValueError(f"user vectors have dim {users.shape[1] - 1}, the index has {self.dim}")
        if self.transformed:
            users = np.hstack([users, np.zeros((users.shape[0], 1), dtype=np.float32)])
        return np.ascontiguousarray(users)

    def _params(self, fetch: int, selector: Any) -> Any:
        if self.config.kind == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=max(self.ef_search, fetch), sel=selector)
        if self.config.kind == "ivf":
            return faiss.SearchParametersIVF(nprobe=self.nprobe, sel=selector)
        return faiss.SearchParameters(sel=selector) if selector is not None else None

    def _raw_search(self, queries: np.ndarray, fetch: int, selector: Any) -> np.ndarray:
        params = self._params(fetch, selector)
        _, ids = self.index.search(queries, fetch, params=params)
        return ids

    def items(self) -> np.ndarray:
        """The augmented item matrix ``[q_i, b_i]`` (n_items, dim + 1), read back from the index."""
        if self._items is None:
            self._items = self.index.reconstruct_n(0, self.n_items)[:, :self.dim + 1].copy()
        return self._items

    def _rescore(self, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Exact <[p_u, 1], [q_i, b_i]> for returned ids (n, k), -inf where ids < 0."""
        scores = np.full(ids.shape, -np.inf, dtype=np.float32)
        valid = ids >= 0
        if valid.any():
            vectors = self.index.reconstruct_batch(ids[valid])[:, :self.dim + 1]
            rows = np.nonzero(valid)[0]
            scores[valid] = np.einsum("nd,nd->n", queries[rows, :self.dim + 1], vectors)
        return scores

    def search(self, user_vectors: np.ndarray, k: int, *, exclude: sp.csr_matrix | None = None,
               allowed: Any = None, max_rounds: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """Lowest-energy ``k`` items per user, seen items excluded.

        Parameters
        ----------
        user_vectors : float32 (n, dim)
        exclude : CSR (n, n_items) aligned with the users; stored entries are never returned.
        allowed : bool (n_items,) or item ids, optional (a FAISS ID selector).
        max_rounds : over-fetch rounds (each doubling the fetch) before short rows are
            answered by the exact path.

        Returns
        -------
        ids int64 (n, k), scores float32 (n, k) = exact -E, best first (ties: lower id first),
        padded with -1 / -inf only where fewer than ``k`` eligible items exist.
        """
        k = _check_k(k)
        queries = self._queries(user_vectors)
        n = queries.shape[0]
        exclude = _canonical_exclude(exclude, n, self.n_items)
        mask = _allowed_mask(allowed, self.n_items)
        selector = None
        if mask is not None:
            selector = faiss.IDSelectorBatch(np.flatnonzero(mask).astype(np.int64))
        n_seen = np.diff(exclude.indptr) if exclude is not None else np.zeros(n, dtype=np.int64)
        eligible = _eligible_counts(exclude, mask, self.n_items, n)
        want = np.minimum(eligible, k)
        out = np.full((n, k), -1, dtype=np.int64)
        found = np.zeros(n, dtype=np.int64)
        # exactly k when nothing is excluded; otherwise k + n_seen rounded up to a power of two,
        # so that rows share a handful of search calls
        fetch = np.minimum(np.where(n_seen > 0, _next_pow2(k + n_seen), k), self.n_items)
        pending = np.flatnonzero(want > 0)
        for _ in range(max_rounds):
            if pending.size == 0:
                break
            for size in np.unique(fetch[pending]):
                rows = pending[fetch[pending] == size]
                ids = self._raw_search(queries[rows], int(size), selector)
                got, count = _filter_seen(ids, rows, exclude, self.n_items, k)
                better = count > found[rows]
                out[rows[better]] = got[better]
                found[rows[better]] = count[better]
            pending = pending[found[pending] < want[pending]]
            fetch[pending] = np.minimum(fetch[pending] * 4, self.n_items)
        if pending.size:
            logger.debug("%d of %d rows answered exactly after over-fetching", pending.size, n)
            items = self.items()
            sub_exclude = exclude[pending] if exclude is not None else None
            out[pending], _ = exact_top_k(np.asarray(user_vectors)[pending], items[:, :-1], items[:, -1], k,
                                          exclude=sub_exclude, allowed=mask)
        scores = self._rescore(queries, out)
        order = np.lexsort((np.where(out >= 0, out, np.iinfo(np.int64).max), -scores), axis=1)
        return np.take_along_axis(out, order, axis=1), np.take_along_axis(scores, order, axis=1)

    def sample(self, user_vectors: np.ndarray, k: int, temperature: float, seed: int = 0, *,
               n_candidates: int = 1000, exclude: sp.csr_matrix | None = None,
               allowed: Any = None, row_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Exploratory retrieval: ``k`` of the top ``n_candidates`` items sampled at temperature T.

        A documented truncation of the Gibbs distribution: items outside a user's top
        ``n_candidates`` get probability 0; inside, p(i) ∝ exp(-E(u, i) / T) and the ``k`` draws
        are without replacement (:func:`recsys_ebm.ranking.sampling.sample_top_k`, reproducible for a
        seed; row ``r`` uses the random stream of position ``row_offset + r``).
        T = 0 returns the ranked top-k.

        Returns ids int64 (n, k) in draw order and their scores (-E) float32 (n, k).
        """
        from recsys_ebm.ranking.sampling import sample_top_k

        k = _check_k(k)
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if temperature == 0:
            return self.search(user_vectors, k, exclude=exclude, allowed=allowed)
        n_candidates = max(int(n_candidates), k)
        cand_ids, cand_scores = self.search(user_vectors, n_candidates, exclude=exclude, allowed=allowed)
        slots, values = sample_top_k(cand_scores, k, temperature, seed, row_offset=row_offset)
        ids = np.where(slots >= 0, np.take_along_axis(cand_ids, np.maximum(slots, 0), axis=1), -1)
        return ids, values

    # ------------------------------------------------------------------ persistence
    def matches(self, model: Any) -> bool:
        """Whether the index was built from exactly this model's item vectors and biases."""
        return model_fingerprint(model) == self.fingerprint

    def check(self, model: Any) -> None:
        """Raise ``ValueError`` if the index was built from other item vectors than ``model``'s."""
        actual = model_fingerprint(model)
        if actual != self.fingerprint:
            raise ValueError(f"index does not match the model: built from items {self.fingerprint[:12]}, "
                             f"the model's items are {actual[:12]}; rebuild the index")

    def save(self, path: str | Path) -> Path:
        """Write ``index.faiss`` + ``index.json`` to directory ``path`` (temporary dir + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            faiss.write_index(self.index, str(tmp / INDEX_FILE))
            meta = {"config": self.config.to_dict(), "fingerprint": self.fingerprint,
                    "n_items": self.n_items, "dim": self.dim, "transformed": self.transformed,
                    "ef_search": self.ef_search, "nprobe": self.nprobe,
                    "faiss_version": faiss.__version__}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path, model: Any = None) -> EnergyIndex:
        """Read an index saved by :meth:`save`; with ``model``, check that it matches."""
        path = Path(path)
        for needed in (path / INDEX_FILE, path / META_FILE):
            if not needed.is_file():
                raise FileNotFoundError(f"{path} is not a saved index: {needed.name} is missing")
        meta = json.loads((path / META_FILE).read_text())
        index = faiss.read_index(str(path / INDEX_FILE))
        if index.ntotal != meta["n_items"]:
            raise ValueError(f"{path}: index holds {index.ntotal} vectors, metadata says {meta['n_items']}")
        out = cls(index, IndexConfig.from_dict(meta["config"]), meta["fingerprint"],
                  int(meta["n_items"]), int(meta["dim"]), bool(meta["transformed"]))
        out.ef_search, out.nprobe = meta["ef_search"], meta["nprobe"]
        if model is not None:
            out.check(model)
        return out


def index_path(model_dir: str | Path, kind: str) -> Path:
    """Where the index of a saved model lives: ``<model_dir>/index-<kind>/``."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"kind must be one of {INDEX_KINDS}, got {kind!r}")
    return Path(model_dir) / f"index-{kind}"


def load_or_build(model: Any, model_dir: str | Path, config: IndexConfig | None = None,
                  **options: Any) -> EnergyIndex:
    """The index saved next to a model, rebuilt (and saved) when missing or stale."""
    config = config if config is not None else IndexConfig(**options)
    path = index_path(model_dir, config.kind)
    if path.is_dir():
        try:
            return EnergyIndex.load(path, model)
        except ValueError as exc:
            logger.warning("%s; rebuilding", exc)
    index = EnergyIndex.build(model, config=config)
    index.save(path)
    return index


# ----------------------------------------------------------------------------- helpers


def _mips_to_l2(items: np.ndarray) -> np.ndarray:
    """Append ``sqrt(R^2 - |x|^2)`` so that nearest L2 neighbour = maximum inner product."""
    norms = np.einsum("nd,nd->n", items.astype(np.float64), items.astype(np.float64))
    extra = np.sqrt(np.maximum(norms.max() - norms, 0.0)).astype(np.float32)
    return np.ascontiguousarray(np.hstack([items, extra[:, None]]))


def _next_pow2(values: np.ndarray) -> np.ndarray:
    values = np.maximum(np.asarray(values, dtype=np.int64), 1)
    return (1 << np.ceil(np.log2(values)).astype(np.int64)).astype(np.int64)


def _eligible_counts(exclude: sp.csr_matrix | None, mask: np.ndarray | None, n_items: int,
                     n: int) -> np.ndarray:
    """Items each row may still receive: allowed items minus allowed seen items."""
    n_allowed = n_items if mask is None else int(mask.sum())
    if exclude is None:
        return np.full(n, n_allowed, dtype=np.int64)
    if mask is None:
        return n_allowed - np.diff(exclude.indptr)
    rows = np.repeat(np.arange(n), np.diff(exclude.indptr))
    return n_allowed - np.bincount(rows, weights=mask[exclude.indices], minlength=n).astype(np.int64)


def _filter_seen(ids: np.ndarray, rows: np.ndarray, exclude: sp.csr_matrix | None, n_items: int,
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
