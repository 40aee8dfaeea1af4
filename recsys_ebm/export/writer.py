"""The export writer: every user's k best (or sampled) unseen items to Parquet or CSV.

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

Rows come from the model's ``recommend`` (``with_probabilities=True``), the toolkit's one
ranking: an export serves exactly what ``recommend`` and ``recsys-ebm recommend`` serve for the
same seed, users' seen items (the model's seen set, the interactions it was fitted on) left
out. Its sampler is keyed on (seed, user), so results do not depend on chunking, threads or
resumption. This module only writes: what to export (a saved model, or one trained first) is
decided by :mod:`recsys_ebm.experiments.jobs`.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
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

from recsys_ebm.atomic import clean_stale_files, exclusive, temp_sibling
from recsys_ebm.config import Config, check
from recsys_ebm.data.sparse import canonical_csr
from recsys_ebm.errors import DataError
from recsys_ebm.export.parts import (
    part_path,
    parts_dir,
    prepare_parts,
    remove_parts,
    verified_done,
    write_part,
)
from recsys_ebm.ranking.topk import item_mask
from recsys_ebm.ranking.vectors import has_vectors

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
    filter_items: Any = None,
    filter_seen: bool = True,
    **options: Any,
) -> ExportResult:
    """Write every trained user's top-k unseen items (or k sampled ones) to ``output``.

    Parameters
    ----------
    model : Recommender
        A fitted ``Recommender`` (or a model served through an index).
    output : str or Path
        ``.csv`` for CSV, anything else Parquet.
    user_items : sp.csr_matrix, optional
        CSR (n_users, n_items) of items never to export; default: the model's seen set.
    raw_user_ids, raw_item_ids : array-like, optional
        (n_users,), (n_items,) external ids; default internal ids.
    config : ExportConfig, optional
        ``k``, ``temperature``, ``seed``, ``chunk_size``...; or pass them as keyword
        ``options``, not both.
    resume : bool
        Continue from the finished chunks of an interrupted export to the same path.
    show_progress : bool
        A progress bar over the users.
    tracker : recsys_ebm.tracking.Tracker, optional
        Inside its run, to log the export to MLflow.
    on_chunk : callable, optional
        Called as ``on_chunk(index, n_chunks)`` after each chunk is safely on disk.
    filter_items : array-like, optional
        Item ids (or a bool mask) never to export for anyone: a block-list.
    filter_seen : bool
        False exports the users' seen items too.
    **options
        The fields of :class:`ExportConfig`, instead of ``config``.
    """
    if config is not None and options:
        raise ValueError("pass either a config or keyword options, not both")
    config = config if config is not None else ExportConfig.from_dict(options)
    output = Path(output)
    job = ExportJob(model, config, user_items, raw_user_ids, raw_item_ids, filter_items, filter_seen)
    manifest = job.manifest(output)
    if output.is_dir():
        raise DataError(f"--output {output} is a directory; give a file path ending in .parquet or .csv")
    parts = parts_dir(output)
    with exclusive(output.absolute()):
        return _export(job, output, parts, manifest, resume, show_progress, tracker, on_chunk)


def _export(job: ExportJob, output: Path, parts: Path, manifest: dict, resume: bool, show_progress: bool,
            tracker: Any, on_chunk: Callable[[int, int], None] | None) -> ExportResult:
    """The export once the output is locked: parts, chunks, the committed file, the log."""
    config = job.config
    done = prepare_parts(parts, manifest, resume)
    done = verified_done(parts, done, lambda c: job.raw_users[c * config.chunk_size:
                                                            (c + 1) * config.chunk_size])
    if tracker is not None:
        tracker.log_params({f"export.{k}": v for k, v in config.to_dict().items()}
                           | {"export.output": str(output), "export.n_users": job.n_users,
                              "export.n_items": job.n_items})
    started = time.perf_counter()
    metadata = _file_metadata(job, tracker)
    n_rows = _write_chunks(job, output, parts, done, show_progress, on_chunk, metadata)
    remove_parts(parts)
    seconds = time.perf_counter() - started
    result = ExportResult(output, job.n_users, n_rows, seconds, len(done), job.n_chunks)
    logger.info("exported %d rows for %d users to %s in %.1f s (%.0f users/s, %d chunks resumed)",
                n_rows, job.n_users, output, seconds, result.users_per_second, len(done))
    if tracker is not None:
        tracker.log_metrics({"export_seconds": seconds, "export_users_per_s": result.users_per_second,
                             "export_rows": n_rows, "export_resumed_chunks": len(done)})
        tracker.log_dict({**manifest, "output": str(output), "rows": n_rows, "seconds": seconds},
                         "export.json")
    return result


class ExportJob:
    """What one export ranks: the model, its users and items, the items left out."""

    def __init__(self, model: Any, config: ExportConfig, user_items: Any, raw_user_ids: Any,
                 raw_item_ids: Any, filter_items: Any = None, filter_seen: bool = True):
        self.model, self.config = model, config
        self.filter_seen = bool(filter_seen)
        # the items anyone may receive: the catalog minus the block-list
        self.allowed = None if filter_items is None else item_mask(int(model.n_items), None, filter_items)
        self.n_users, self.n_items = int(model.n_users), int(model.n_items)
        self.exclude = None if user_items is None else canonical_csr(
            user_items, (self.n_users, self.n_items), "user_items")
        self.raw_users = np.arange(self.n_users) if raw_user_ids is None else np.asarray(raw_user_ids)
        self.raw_items = np.arange(self.n_items) if raw_item_ids is None else np.asarray(raw_item_ids)
        if self.raw_users.shape != (self.n_users,):
            raise ValueError(f"raw_user_ids has shape {self.raw_users.shape}, the model has "
                             f"{self.n_users} users")
        if self.raw_items.shape != (self.n_items,):
            raise ValueError(f"raw_item_ids has shape {self.raw_items.shape}, the model has "
                             f"{self.n_items} items")
        self.n_chunks = -(-self.n_users // config.chunk_size)

    def manifest(self, output: Path) -> dict[str, Any]:
        """What must not change between an interrupted export and its resumption."""
        cfg = self.config
        seen = self.exclude if self.exclude is not None else getattr(self.model, "seen_items", None)
        return {
            "format": FORMAT_VERSION, "output_format": output_format(output),
            "k": cfg.k, "temperature": cfg.temperature, "seed": cfg.seed,
            "chunk_size": cfg.chunk_size, "n_users": self.n_users, "n_items": self.n_items,
            "model": _model_digest(self.model, self.n_users),
            "serving": self.model.serving(),
            "data": _digest(self.raw_users, self.raw_items,
                            *(() if seen is None else (seen.indptr, seen.indices))),
            "filter_seen": self.filter_seen,
            "filter_items": None if self.allowed is None else _digest(self.allowed),
        }

    def chunk(self, lo: int, hi: int) -> pa.Table:
        """The output rows of users ``lo .. hi - 1``, ranked by the model's ``recommend``."""
        cfg = self.config
        users = np.arange(lo, hi)
        ids, scores, prob = self.model.recommend(
            users, None if self.exclude is None else self.exclude[lo:hi], k=cfg.k,
            temperature=cfg.temperature, rng=cfg.seed, with_probabilities=True,
            filter_seen=self.filter_seen, items=self.allowed,
            n_threads=cfg.n_threads or None, batch_size=cfg.batch_size or None)
        with np.errstate(invalid="ignore"):
            energy = np.where(ids >= 0, -scores, np.nan).astype(np.float32)
        return _chunk_table(self.raw_users[lo:hi], self.raw_items, ids, energy, prob)


def _file_metadata(job: ExportJob, tracker: Any) -> dict[str, str]:
    """Key-value metadata of a Parquet export: what made it, with which settings, when."""
    cfg = job.config
    return {"recsys_ebm.model": type(getattr(job.model, "model", job.model)).__name__,
            "recsys_ebm.serving": json.dumps(job.model.serving(), sort_keys=True),
            "recsys_ebm.run_id": str(getattr(tracker, "run_id", None) or ""),
            "recsys_ebm.k": str(cfg.k), "recsys_ebm.temperature": repr(float(cfg.temperature)),
            "recsys_ebm.seed": str(cfg.seed),
            "recsys_ebm.created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _write_chunks(job: ExportJob, output: Path, parts: Path, done: set[int], show_progress: bool,
                  on_chunk: Callable[[int, int], None] | None, metadata: dict[str, str]) -> int:
    """Compute or reuse every chunk; chunk tables are written by a background thread (the part
    file for resuming, then appended to the temporary output) while the next chunk is
    computed, so at most two are in memory. Returns the number of rows written."""
    cfg = job.config
    sink = _Sink(output, cfg.compression, metadata)
    in_flight: tuple[int, Future] | None = None

    def settle() -> None:
        nonlocal in_flight
        if in_flight is not None:
            index, future = in_flight
            in_flight = None
            future.result()
            if on_chunk is not None and index not in done:
                on_chunk(index, job.n_chunks)

    try:
        # leaving the pool waits for a write in progress, so an interrupted run keeps its chunk
        with ThreadPoolExecutor(1) as io_pool, \
                tqdm(total=job.n_users, unit="user", desc="export", disable=not show_progress) as bar:
            for chunk in range(job.n_chunks):
                lo, hi = chunk * cfg.chunk_size, min((chunk + 1) * cfg.chunk_size, job.n_users)
                part = part_path(parts, chunk)
                table = None if chunk in done else job.chunk(lo, hi)
                settle()
                in_flight = chunk, (io_pool.submit(sink.append_part, part) if table is None
                                    else io_pool.submit(sink.write, part, chunk, table))
                bar.update(hi - lo)
            settle()
        if sink.rows == 0 and sink.writer is None:
            empty = np.empty((0, cfg.k))
            sink.append(_chunk_table(job.raw_users[:0], job.raw_items, empty.astype(np.int64),
                                     empty.astype(np.float32), empty))
        sink.commit()
    except BaseException:
        sink.abort()
        raise
    return sink.rows


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


class _Sink:
    """The output, written to a temporary sibling and renamed into place by :meth:`commit`."""

    def __init__(self, output: Path, compression: str, metadata: dict[str, str] | None = None):
        self.metadata = metadata or {}
        self.output = output
        self.compression = compression
        output.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_files(output.parent, output.name)  # left by killed exports to this output
        self.tmp = temp_sibling(output, ".tmp")
        self.writer: Any = None
        self.rows = 0

    def write(self, part: Path, chunk: int, table: pa.Table) -> None:
        """Persist a chunk (and its record) for resuming, then append it to the output."""
        write_part(part, chunk, table)
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
                schema = table.schema.with_metadata({**(table.schema.metadata or {}), **self.metadata})
                self.writer = pq.ParquetWriter(str(self.tmp), schema, compression=self.compression,
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
