"""The FAISS adapter, and the only module that imports faiss: the EnergyIndex over augmented
vectors, FAISS's bounded-heap top-k kernel, and FAISS's OpenMP thread control.

For a factored model -E(u, i) = <[p_u, 1], [q_i, b_i]> (:mod:`recsys_ebm.ranking.vectors`), so
the lowest-energy items of a user are its maximum-inner-product neighbours.

* :class:`EnergyIndex` wraps a FAISS index: ``"flat"`` (``IndexFlatIP``, exact), ``"hnsw"`` and
  ``"ivf"`` (approximate, tuned with ``ef_search`` / ``nprobe``). Seen items are excluded by
  over-fetching ``k + n_seen`` neighbours and filtering; rows that still come back short are
  fetched again with more neighbours and finally answered exactly, so ``k`` items are returned
  whenever ``k`` unseen items exist. Indexes are saved next to the model with a fingerprint of
  the item vectors they were built from, and loading checks it. Models serve through an index
  with :class:`recsys_ebm.models.indexed.IndexedRecommender`, whose exploratory lists sample
  from the index's top candidates with the one sampler of :mod:`recsys_ebm.ranking.sampling`.
* :func:`heap_top_k`: exact top-k of score blocks with FAISS's heap, cheaper than
  ``argpartition`` for ``k << n_items``; :mod:`recsys_ebm.ranking.select` dispatches to it.

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
import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp

from recsys_ebm.atomic import atomic_directory
from recsys_ebm.config import Config, check
from recsys_ebm.data.sparse import canonical_csr
from recsys_ebm.errors import ConcurrentWriteError, ModelFileError
from recsys_ebm.io import sha256_of
from recsys_ebm.ranking.neighbours import eligible_counts, filter_seen, mips_to_l2, next_pow2
from recsys_ebm.ranking.topk import check_k, item_mask, mask_rows, top_k
from recsys_ebm.ranking.vectors import (
    augment_items,
    augment_users,
    check_vector_model,
    fingerprint,
    model_fingerprint,
)

logger = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "hnsw", "ivf")
INDEX_FILE = "index.faiss"
META_FILE = "index.json"

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
    k = check_k(k)
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


def default_threads() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def set_faiss_threads(n: int) -> None:
    """FAISS's OpenMP threads for this thread (a worker-pool initializer)."""
    faiss.omp_set_num_threads(int(n))


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
    (ranked), persist with :meth:`save` / :meth:`load`.
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
            items = mips_to_l2(items)
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
        max_rounds : over-fetch rounds (each fetching 4 times more) before short rows are
            answered by the exact path.

        Returns
        -------
        ids int64 (n, k), scores float32 (n, k) = exact -E, best first (ties: lower id first),
        padded with -1 / -inf only where fewer than ``k`` eligible items exist.
        """
        k = check_k(k)
        queries = self._queries(user_vectors)
        n = queries.shape[0]
        exclude = None if exclude is None else canonical_csr(exclude, (n, self.n_items), "exclude")
        mask = item_mask(self.n_items, allowed)
        selector = None
        if mask is not None:
            selector = faiss.IDSelectorBatch(np.flatnonzero(mask).astype(np.int64))
        n_seen = np.diff(exclude.indptr) if exclude is not None else np.zeros(n, dtype=np.int64)
        eligible = eligible_counts(exclude, mask, self.n_items, n)
        want = np.minimum(eligible, k)
        out = np.full((n, k), -1, dtype=np.int64)
        found = np.zeros(n, dtype=np.int64)
        # exactly k when nothing is excluded; otherwise k + n_seen rounded up to a power of two,
        # so that rows share a handful of search calls
        fetch = np.minimum(np.where(n_seen > 0, next_pow2(k + n_seen), k), self.n_items)
        pending = np.flatnonzero(want > 0)
        for _ in range(max_rounds):
            if pending.size == 0:
                break
            for size in np.unique(fetch[pending]):
                rows = pending[fetch[pending] == size]
                ids = self._raw_search(queries[rows], int(size), selector)
                got, count = filter_seen(ids, rows, exclude, self.n_items, k)
                better = count > found[rows]
                out[rows[better]] = got[better]
                found[rows[better]] = count[better]
            pending = pending[found[pending] < want[pending]]
            fetch[pending] = np.minimum(fetch[pending] * 4, self.n_items)
        if pending.size:
            logger.debug("%d of %d rows answered exactly after over-fetching", pending.size, n)
            out[pending] = self._exact(np.asarray(user_vectors, dtype=np.float32)[pending], k,
                                       None if exclude is None else exclude[pending], mask)
        scores = self._rescore(queries, out)
        order = np.lexsort((np.where(out >= 0, out, np.iinfo(np.int64).max), -scores), axis=1)
        return np.take_along_axis(out, order, axis=1), np.take_along_axis(scores, order, axis=1)

    def _exact(self, user_vectors: np.ndarray, k: int, exclude: sp.csr_matrix | None,
               mask: np.ndarray | None) -> np.ndarray:
        """Brute-force top-k ids against the indexed items, for rows over-fetching left short."""
        items = self.items()
        scores = np.ascontiguousarray(augment_users(user_vectors) @ items.T)
        mask_rows(scores, exclude)
        if mask is not None:
            scores[:, ~mask] = -np.inf
        return heap_top_k(scores, k)[0]

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
        """Write ``index.faiss`` + ``index.json`` (with the SHA-256 of the index file) to
        directory ``path``, swapped in whole; only a saved index there is replaced."""
        path = Path(path)
        with atomic_directory(path, lambda p: (p / META_FILE).is_file()) as staging:
            faiss.write_index(self.index, str(staging / INDEX_FILE))
            meta = {"config": self.config.to_dict(), "fingerprint": self.fingerprint,
                    "n_items": self.n_items, "dim": self.dim, "transformed": self.transformed,
                    "ef_search": self.ef_search, "nprobe": self.nprobe,
                    "faiss_version": faiss.__version__, "sha256": sha256_of(staging / INDEX_FILE)}
            (staging / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: str | Path, model: Any = None) -> EnergyIndex:
        """Read an index saved by :meth:`save`; with ``model``, check that it matches."""
        path = Path(path)
        for needed in (path / INDEX_FILE, path / META_FILE):
            if not needed.is_file():
                raise FileNotFoundError(f"{path} is not a saved index: {needed.name} is missing")
        meta = _read_meta(path)
        if "sha256" in meta and sha256_of(path / INDEX_FILE) != meta["sha256"]:
            raise ModelFileError(f"{path / INDEX_FILE} does not match the SHA-256 in {META_FILE}: "
                                 "the index file was changed or corrupted; delete the directory "
                                 "to rebuild it")
        try:
            index = faiss.read_index(str(path / INDEX_FILE))
        except RuntimeError as exc:
            raise ModelFileError(f"{path / INDEX_FILE}: not a readable FAISS index "
                                 f"({str(exc).splitlines()[0][:200]})") from None
        if index.ntotal != meta["n_items"]:
            raise ValueError(f"{path}: index holds {index.ntotal} vectors, metadata says {meta['n_items']}")
        out = cls(index, IndexConfig.from_dict(meta["config"]), meta["fingerprint"],
                  int(meta["n_items"]), int(meta["dim"]), bool(meta["transformed"]))
        out.ef_search, out.nprobe = meta["ef_search"], meta["nprobe"]
        if model is not None:
            out.check(model)
        return out


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads((path / META_FILE).read_text())
        for key in ("config", "fingerprint", "n_items", "dim", "transformed"):
            meta[key]  # noqa: B018 - presence check
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{path / META_FILE}: not an index description written by recsys-ebm "
                             f"({type(exc).__name__}: {exc})") from None
    return meta


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
    try:
        index.save(path)
    except (OSError, ConcurrentWriteError) as exc:  # a read-only model folder, another builder
        logger.warning("serving the %s index from memory: it could not be saved to %s (%s)",
                       config.kind, path, exc)
    return index
