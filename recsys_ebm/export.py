"""Batch top-k export: every user's k best (or sampled) unseen items to Parquet or CSV.

Output columns, one row per (user, rank)::

    user_id      raw user id
    rank         1..k (draw order when sampling)
    item_id      raw item id
    energy       E(u, i) = -score(u, i)  (for models that are not EBMs: the negated score)
    probability  p(i | u, T) = exp(-E(u, i) / T) / sum_j exp(-E(u, j) / T) over the items j the
                 user may receive (unseen, allowed). With T = 0 (exact ranking) it is reported
                 at T = 1, the model's Gibbs distribution. When sampling it is the single-draw
                 probability, not the probability of appearing among the k draws.

Users with fewer than k eligible items get fewer rows. Users are processed in chunks; each
finished chunk is written atomically to ``<output>.parts/part-NNNNNN.arrow`` and the output is
assembled from them into a temporary file that is renamed into place at the end. So an
interrupted export leaves any previous output untouched, and ``resume=True`` continues from the
finished chunks (provided the model, data and settings are unchanged, which a manifest checks).

Models exposing ``user_vectors`` / ``item_vectors`` / ``item_biases`` are scored by the exact
factored path of :mod:`recsys_ebm.ranking.faiss_index` (one BLAS product per block of users, in worker
threads); any other ``Recommender`` through its ``score``. Sampling (T > 0) uses
:func:`recsys_ebm.ranking.sampling.sample_top_k`, whose draws depend only on (seed, user position), so
results are reproducible for a seed regardless of chunking, threads or resumption.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.feather as feather
import pyarrow.parquet as pq
import scipy.sparse as sp
from tqdm.auto import tqdm

from recsys_ebm.config import Config, check
from recsys_ebm.io import atomic_path, atomic_write_bytes
from recsys_ebm.ranking.faiss_index import (
    FactorScorer,
    _canonical_exclude,
    augment_users,
    auto_batch_size,
    has_vectors,
    mask_rows,
    run_blocks,
    select_top_k,
)
from recsys_ebm.ranking.sampling import LOG2E, sample_top_k

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ExportConfig(Config):
    """Settings of one export; ``k``, ``temperature``, ``seed``, ``chunk_size`` are checked on
    resume. ``batch_size`` (users per scoring block, 0 = automatic) and ``n_threads`` (0 = all
    CPUs) only affect speed and memory."""

    k: int = 100
    temperature: float = 0.0
    seed: int = 0
    chunk_size: int = 16384
    batch_size: int = 0
    n_threads: int = 0
    compression: str = "snappy"

    def __post_init__(self) -> None:
        for name in ("k", "seed", "chunk_size", "batch_size", "n_threads"):
            value = getattr(self, name)
            check(isinstance(value, (int, np.integer)) and not isinstance(value, bool),
                  f"{name} must be an integer, got {value!r}")
        check(self.k >= 1, f"k must be >= 1, got {self.k}")
        check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        check(self.chunk_size >= 1, f"chunk_size must be >= 1, got {self.chunk_size}")
        check(self.batch_size >= 0, f"batch_size must be >= 0 (0 = automatic), got {self.batch_size}")
        check(self.n_threads >= 0, f"n_threads must be >= 0 (0 = all CPUs), got {self.n_threads}")
        check(isinstance(self.temperature, (int, float)) and 0 <= self.temperature < float("inf"),
              f"temperature must be finite and >= 0, got {self.temperature!r}")


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What an export wrote and how long it took."""

    path: Path
    n_users: int
    n_rows: int
    seconds: float
    resumed_chunks: int
    n_chunks: int

    @property
    def users_per_second(self) -> float:
        return self.n_users / self.seconds if self.seconds > 0 else float("inf")


def output_format(path: str | Path) -> str:
    """``"csv"`` when the path ends in .csv, otherwise ``"parquet"``."""
    return "csv" if str(path).lower().endswith(".csv") else "parquet"


def parts_dir(path: str | Path) -> Path:
    """Where the finished chunks of an export to ``path`` are kept until it completes."""
    path = Path(path)
    return path.with_name(path.name + ".parts")


# ----------------------------------------------------------------------------- kernels


class _Kernel:
    """Top-k (or sampled) items, energies and probabilities for blocks of users."""

    def __init__(self, model: Any, exclude: sp.csr_matrix | None, config: ExportConfig):
        self.model = model
        self.exclude = exclude
        self.config = config
        self.vectors = has_vectors(model)
        t = config.temperature
        if self.vectors:
            item_vectors = np.asarray(model.item_vectors(), dtype=np.float32)
            item_biases = np.asarray(model.item_biases(), dtype=np.float32)
            self.n_items = item_vectors.shape[0]
            self.items = np.ascontiguousarray(np.hstack([item_vectors, item_biases[:, None]]))
            # when sampling, the product yields s log2(e) / T directly ([c p, 1] . [q, c b]),
            # the sampler's base-2 log-weights (no scaling pass); drawn items are rescored exactly
            self.scale = np.float32(LOG2E / t) if t > 0 else np.float32(1.0)
            self.scorer = FactorScorer(item_vectors, item_biases * self.scale)
        else:
            self.n_items = int(model.n_items)
        self.local = threading.local()

    def _buffers(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        local = self.local
        if getattr(local, "scores", None) is None or local.scores.shape[0] < rows:
            local.scores = np.empty((rows, self.n_items), dtype=np.float32)
            local.work = np.empty(rows * self.n_items, dtype=np.float32)
        return local.scores[:rows], local.work

    def run(self, users: np.ndarray, position: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ids int64 (b, k), energies float32 (b, k), probabilities float64 (b, k) of ``users``.

        ``position`` is the first user's place in the export: the key of its sampling stream.
        Padding: id -1, energy and probability NaN.
        """
        t = self.config.temperature
        scores, work = self._buffers(len(users))
        vectors = None
        if self.vectors:
            vectors = np.asarray(self.model.user_vectors(users), dtype=np.float32)
            self.scorer.score(vectors * self.scale if t > 0 else vectors, out=scores)
        else:
            scores[...] = np.asarray(self.model.score(users), dtype=np.float32)
        mask_rows(scores, self.exclude, position)
        with np.errstate(invalid="ignore"):  # empty rows: -inf - (-inf)
            ids, values, log_p = self._select(scores, work, vectors, position)
        valid = ids >= 0
        with np.errstate(invalid="ignore"):
            energy = np.where(valid, -values, np.nan).astype(np.float32)
            prob = np.where(valid, np.exp(log_p), np.nan)
        return ids, energy, prob

    def _select(self, scores: np.ndarray, work: np.ndarray, vectors: np.ndarray | None, position: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ids, scores (-E) and log-probabilities of the top-k or sampled items."""
        cfg = self.config
        k, t = cfg.k, cfg.temperature
        if t > 0 and vectors is not None:
            ids, _, log_norm = sample_top_k(scores, k, LOG2E, cfg.seed, row_offset=position,
                                            return_log_norm=True)
            values = self._rescore(vectors, ids)
            log_p = values / t - log_norm[:, None]
        elif t > 0:
            ids, values, log_norm = sample_top_k(scores, k, t, cfg.seed, row_offset=position,
                                                 return_log_norm=True)
            log_p = values.astype(np.float64) / t - log_norm[:, None]
        else:
            ids, values = select_top_k(scores, k)
            log_norm = _logsumexp_rows(scores, values[:, 0].astype(np.float64), work)
            log_p = values.astype(np.float64) - log_norm[:, None]
        return ids, values, log_p

    def _rescore(self, vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Exact -E = <[p_u, 1], [q_i, b_i]> of the drawn items, float64 (b, k), -inf for padding."""
        users = augment_users(vectors).astype(np.float64)
        items = self.items[np.maximum(ids, 0)].astype(np.float64)  # (b, k, dim + 1)
        values = np.einsum("bd,bkd->bk", users, items)
        values[ids < 0] = -np.inf
        return values


#: Rows whose maximum score lies in this window take exp(s) without subtracting it (a pass
#: saved): nothing overflows, and only terms over e^67 times below the maximum underflow.
_DIRECT_WINDOW = (-20.0, 60.0)


def _logsumexp_rows(scores: np.ndarray, row_max: np.ndarray, work: np.ndarray) -> np.ndarray:
    """log sum_i exp(s_i) per row over finite entries, float64 (n,); -inf for empty rows."""
    n, n_items = scores.shape
    out = np.full(n, -np.inf)
    ok = np.isfinite(row_max)
    if not ok.any():
        return out
    buffer = work[:n * n_items].reshape(n, n_items)
    direct = ok & (row_max >= _DIRECT_WINDOW[0]) & (row_max <= _DIRECT_WINDOW[1])
    shift = np.where(direct | ~ok, 0.0, row_max)
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        if np.all(shift == 0):
            np.multiply(scores, np.float32(LOG2E), out=buffer)
        else:
            np.subtract(scores, shift.astype(np.float32)[:, None], out=buffer)
            np.multiply(buffer, np.float32(LOG2E), out=buffer)
        np.exp2(buffer, out=buffer)  # exp(x) = exp2(x log2 e): float32 exp2 is twice as fast
        total = buffer.sum(axis=1).astype(np.float64)
        out[ok] = (np.log(total) + shift)[ok]
    return out


# ----------------------------------------------------------------------------- export


def _digest(*arrays: Any) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(np.asarray(array))
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes() if array.dtype != object else repr(array.tolist()).encode())
    return digest.hexdigest()


def _model_digest(model: Any, n_users: int) -> str:
    """Identifies the model's scores: its vectors, or the scores of its first users."""
    if has_vectors(model):
        users = np.arange(n_users)
        return _digest(model.user_vectors(users), model.item_vectors(), model.item_biases())
    return _digest(np.asarray(model.score(np.arange(min(n_users, 64)))), np.array([type(model).__name__]))


def export_recommendations(
    model: Any,
    output: str | Path,
    *,
    user_items: sp.csr_matrix | None = None,
    raw_user_ids: Any = None,
    raw_item_ids: Any = None,
    config: ExportConfig | None = None,
    resume: bool = False,
    show_progress: bool = True,
    tracker: Any = None,
    on_chunk: Callable[[int, int], None] | None = None,
    **options: Any,
) -> ExportResult:
    """Write every trained user's top-k unseen items (or k sampled ones) to ``output``.

    Parameters
    ----------
    model : a fitted ``Recommender`` (vector models take the fast exact path).
    output : ``.csv`` for CSV, anything else Parquet.
    user_items : CSR (n_users, n_items); each user's stored entries are never exported.
    raw_user_ids, raw_item_ids : (n_users,), (n_items,) external ids; default internal ids.
    config / options : :class:`ExportConfig` (``k``, ``temperature``, ``seed``, ``chunk_size``...).
    resume : continue from the finished chunks of an interrupted export to the same path.
    tracker : optional :class:`recsys_ebm.tracking.Tracker` (inside its run) to log to MLflow.
    on_chunk : called as ``on_chunk(index, n_chunks)`` after each chunk is safely on disk.
    """
    if config is not None and options:
        raise ValueError("pass either a config or keyword options, not both")
    config = config if config is not None else ExportConfig.from_dict(options)
    output = Path(output)
    n_users = int(model.n_users)
    kernel_items = int(model.item_vectors().shape[0]) if has_vectors(model) else int(model.n_items)
    exclude = _canonical_exclude(user_items, n_users, kernel_items) if user_items is not None else None
    raw_users = np.arange(n_users) if raw_user_ids is None else np.asarray(raw_user_ids)
    raw_items = np.arange(kernel_items) if raw_item_ids is None else np.asarray(raw_item_ids)
    if raw_users.shape != (n_users,):
        raise ValueError(f"raw_user_ids has shape {raw_users.shape}, the model has {n_users} users")
    if raw_items.shape != (kernel_items,):
        raise ValueError(f"raw_item_ids has shape {raw_items.shape}, the model has {kernel_items} items")
    n_chunks = -(-n_users // config.chunk_size)
    manifest = {
        "format": FORMAT_VERSION, "output_format": output_format(output),
        "k": config.k, "temperature": config.temperature, "seed": config.seed,
        "chunk_size": config.chunk_size, "n_users": n_users, "n_items": kernel_items,
        "model": _model_digest(model, n_users),
        "data": _digest(raw_users, raw_items,
                        *(() if exclude is None else (exclude.indptr, exclude.indices))),
    }
    parts = parts_dir(output)
    done = _prepare_parts(parts, manifest, resume)
    if tracker is not None:
        tracker.log_params({f"export.{k}": v for k, v in config.to_dict().items()}
                           | {"export.output": str(output), "export.n_users": n_users,
                              "export.n_items": kernel_items})
    kernel = _Kernel(model, exclude, config)
    n_threads = config.n_threads or None
    batch_size = config.batch_size or auto_batch_size(kernel.n_items)
    started = time.perf_counter()
    # Chunk tables are written by a background thread (the part file for resuming, then appended
    # to the temporary output) while the next chunk is computed; at most two are in memory.
    sink = _Sink(output, config.compression)
    in_flight: tuple[int, Future] | None = None

    def settle() -> None:
        nonlocal in_flight
        if in_flight is not None:
            index, future = in_flight
            in_flight = None
            future.result()
            if on_chunk is not None and index not in done:
                on_chunk(index, n_chunks)

    try:
        # leaving the pool waits for a write in progress, so an interrupted run keeps its chunk
        with ThreadPoolExecutor(1) as io_pool, \
                tqdm(total=n_users, unit="user", desc="export", disable=not show_progress) as bar:
            for chunk in range(n_chunks):
                lo, hi = chunk * config.chunk_size, min((chunk + 1) * config.chunk_size, n_users)
                if chunk in done:
                    settle()
                    in_flight = chunk, io_pool.submit(sink.append_part, parts / _part_name(chunk))
                    bar.update(hi - lo)
                    continue
                table = _compute_chunk(kernel, raw_users, raw_items, lo, hi, batch_size, n_threads)
                settle()
                in_flight = chunk, io_pool.submit(sink.write, parts / _part_name(chunk), table)
                bar.update(hi - lo)
            settle()
        if sink.rows == 0 and sink.writer is None:
            sink.append(_chunk_table(raw_users[:0], raw_items, np.empty((0, config.k), np.int64),
                                     np.empty((0, config.k), np.float32), np.empty((0, config.k))))
        sink.commit()
    except BaseException:
        sink.abort()
        raise
    n_rows = sink.rows
    shutil.rmtree(parts, ignore_errors=True)
    seconds = time.perf_counter() - started
    result = ExportResult(output, n_users, n_rows, seconds, len(done), n_chunks)
    logger.info("exported %d rows for %d users to %s in %.1f s (%.0f users/s, %d chunks resumed)",
                n_rows, n_users, output, seconds, result.users_per_second, len(done))
    if tracker is not None:
        tracker.log_metrics({"export_seconds": seconds, "export_users_per_s": result.users_per_second,
                             "export_rows": n_rows, "export_resumed_chunks": len(done)})
        tracker.log_dict({**manifest, "output": str(output), "rows": n_rows, "seconds": seconds},
                         "export.json")
    return result


def _part_name(chunk: int) -> str:
    return f"part-{chunk:06d}.arrow"


def _prepare_parts(parts: Path, manifest: dict, resume: bool) -> set[int]:
    """Make the parts directory; return the finished chunks that may be reused."""
    manifest_file = parts / MANIFEST
    if parts.exists() and resume:
        if not manifest_file.is_file():
            raise ValueError(f"cannot resume: {parts} has no {MANIFEST}; delete it to start over")
        previous = json.loads(manifest_file.read_text())
        changed = sorted(key for key in manifest if previous.get(key) != manifest[key])
        if changed:
            raise ValueError(f"cannot resume the export in {parts}: {', '.join(changed)} changed "
                             "since it started; run without resume to start over")
        done = {int(p.name[5:11]) for p in parts.glob("part-*.arrow")}
        logger.info("resuming: %d finished chunks found in %s", len(done), parts)
        return done
    if parts.exists():
        n_old = len(list(parts.glob("part-*.arrow")))
        if n_old:
            logger.warning("discarding %d finished chunks of an earlier export in %s "
                           "(pass resume to continue it instead)", n_old, parts)
        shutil.rmtree(parts)
    elif resume:
        logger.info("nothing to resume at %s; starting a new export", parts)
    parts.mkdir(parents=True)
    atomic_write_bytes(manifest_file, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return set()


def _chunk_table(raw_users: np.ndarray, raw_items: np.ndarray, ids: np.ndarray, energy: np.ndarray,
                 prob: np.ndarray) -> pa.Table:
    n, k = ids.shape
    valid = (ids >= 0).ravel()
    flat = ids.ravel()[valid]
    return pa.table({
        "user_id": pa.array(np.repeat(raw_users, k)[valid]),
        "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), n)[valid]),
        "item_id": pa.array(raw_items[flat]),
        "energy": pa.array(energy.ravel()[valid]),
        "probability": pa.array(prob.ravel()[valid]),
    })


def _write_part(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        feather.write_feather(table, str(tmp), compression="uncompressed")


def _compute_chunk(kernel: _Kernel, raw_users: np.ndarray, raw_items: np.ndarray, lo: int, hi: int,
                   batch_size: int, n_threads: int | None) -> pa.Table:
    """The output rows of users ``lo .. hi - 1``."""
    k = kernel.config.k
    ids = np.empty((hi - lo, k), dtype=np.int64)
    energy = np.empty((hi - lo, k), dtype=np.float32)
    prob = np.empty((hi - lo, k), dtype=np.float64)
    users = np.arange(lo, hi)

    def block(start: int, stop: int) -> None:
        ids[start:stop], energy[start:stop], prob[start:stop] = kernel.run(users[start:stop], lo + start)

    if kernel.vectors:
        run_blocks(block, hi - lo, batch_size, n_threads)
    else:  # the model's own score may be multi-threaded and is not known to be thread-safe
        for start in range(0, hi - lo, batch_size):
            block(start, min(start + batch_size, hi - lo))
    return _chunk_table(raw_users[lo:hi], raw_items, ids, energy, prob)


class _Sink:
    """The output, written to a temporary sibling and renamed into place by :meth:`commit`."""

    def __init__(self, output: Path, compression: str):
        self.output = output
        self.compression = compression
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        self.writer: Any = None
        self.rows = 0

    def write(self, part: Path, table: pa.Table) -> None:
        """Persist a chunk for resuming, then append it to the output."""
        _write_part(part, table)
        self.append(table)

    def append_part(self, part: Path) -> None:
        self.append(feather.read_table(part, memory_map=True))

    def append(self, table: pa.Table) -> None:
        if self.writer is None:
            if output_format(self.output) == "csv":
                self.writer = pa_csv.CSVWriter(str(self.tmp), table.schema)
            else:
                # dictionary-encode and keep statistics only where they pay: user_id and rank
                # repeat; ids and floats barely compress and cost 4x the encoding time
                self.writer = pq.ParquetWriter(str(self.tmp), table.schema, compression=self.compression,
                                               use_dictionary=["user_id", "rank"],
                                               write_statistics=["user_id", "rank"])
        self.writer.write_table(table)
        self.rows += table.num_rows

    def commit(self) -> None:
        self.writer.close()
        self.writer = None
        os.replace(self.tmp, self.output)

    def abort(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            finally:
                self.writer = None
        self.tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- CLI job


def export_job(dataset: Any, output: str | Path, *, model_name: str = "dpebm",
               model_path: str | Path | None = None, options: dict[str, Any] | None = None,
               refit: bool = True, config: ExportConfig | None = None, resume: bool = False,
               tracker: Any = None, show_progress: bool = True) -> ExportResult:
    """``recsys-ebm export``: a saved model (``model_path``), or ``model_name`` trained first
    with ``options`` the way ``recsys-ebm train`` does (random protocol, early stopping on a
    validation split carved from train, refit on all of train), exported for every user.

    Every interaction the data set holds for a user (train and test alike) counts as seen:
    an export is what would be served, and nobody should be shown what they already rated.

    Parameters
    ----------
    dataset : a :class:`recsys_ebm.experiments.runner.Dataset` (``runner.load_dataset``).
    """
    from recsys_ebm.experiments import runner
    from recsys_ebm.data.ids import IdMap
    from recsys_ebm.data.interactions import Interactions
    from recsys_ebm.errors import DataError
    from recsys_ebm.models import load_model

    config = config if config is not None else ExportConfig()
    if model_path is not None:
        model = load_model(model_path)
        meta = getattr(model, "meta", {}) or {}
        if "user_ids" not in meta or "item_ids" not in meta:
            raise DataError(f"{model_path}: the saved model has no id maps (was it saved by train?)")
        user_map, item_map = IdMap.from_list(meta["user_ids"]), IdMap.from_list(meta["item_ids"])
        if len(user_map) != model.n_users or len(item_map) != model.n_items:
            raise DataError(f"{model_path}: id maps ({len(user_map)} users, {len(item_map)} items) do not "
                            f"match the model ({model.n_users} users, {model.n_items} items)")
        if meta.get("dataset_checksum") not in (None, dataset.checksum):
            logger.warning("%s was trained on another copy of the data (checksum %s..., this one %s...)",
                           model_path, str(meta["dataset_checksum"])[:12], dataset.checksum[:12])
        source = str(model_path)
    else:
        split = runner.make_split(dataset.ratings, "random", seed=0)
        prepared = runner.prepare(split, "random")
        model = runner.fit_with_validation(model_name, options or {}, prepared, refit=refit,
                                           callback=tracker.log_epoch if tracker is not None else None,
                                           show_progress=show_progress)
        user_map, item_map = prepared.train.user_map, prepared.train.item_map
        source = f"trained {model_name}"
    seen = Interactions.from_frame(dataset.ratings, user_map=user_map, item_map=item_map, name="seen")
    if tracker is not None:
        tracker.log_params({"model": model_name if model_path is None else type(model).__name__,
                            "model_source": source, "refit": refit,
                            **({f"model.{k}": v for k, v in (options or {}).items()})})
        tracker.log_dataset(dataset.name, dataset.checksum, source=dataset.source,
                            n_users=len(user_map), n_items=len(item_map), n_seen=len(seen))
    return export_recommendations(model, output, user_items=seen.user_items,
                                  raw_user_ids=user_map.raw_ids, raw_item_ids=item_map.raw_ids,
                                  config=config, resume=resume, show_progress=show_progress,
                                  tracker=tracker)
