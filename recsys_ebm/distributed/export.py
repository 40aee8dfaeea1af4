"""The distributed export: every user's recommendations as a partitioned Parquet dataset,
its shards computed on a Ray cluster by the single-process export's own kernel.

Output layout, a directory Spark, pandas and pyarrow read as one table::

    OUT/part-000000.parquet ...   one file per shard of consecutive users, in user order
    OUT/_manifest.json            the settings, model and data digests, and every shard's
                                  rows and SHA-256: written last, it marks the dataset complete

Columns and rows are those of :func:`recsys_ebm.export.writer.export_recommendations`: each
shard is :meth:`ExportJob.chunk` of its users, the same call the single-process export makes
per chunk, and its sampler is keyed on (seed, user), so with the same seed the dataset holds
exactly the rows of the single-process export, in the same order, ranked or sampled.

How it runs: the job (model vectors and biases, the seen sets, the id maps, or the FAISS index
of an indexed model) is put in the object store once (``ray.put``); a Ray Data pipeline over the
shard numbers runs ``map_batches`` with a pool of ``num_workers`` actors, each fetching the job
once and then computing, for every shard it is given, the rows and writing them to
``OUT.parts/part-NNNNNN.parquet`` atomically with a record (rows, first and last user, SHA-256),
the single-process export's resumable parts. The driver reports progress as shards finish.
When all are done, the shards are linked into a staging directory beside ``OUT`` with the
manifest, which replaces ``OUT`` whole (:func:`recsys_ebm.atomic.atomic_directory`): readers
see the previous dataset or the new one, never a mix. An interrupted export leaves its parts;
``resume=True`` recomputes only the shards that are missing or fail their record. The output
folder must be on a filesystem every node sees (one machine, NFS, a mounted bucket).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from recsys_ebm.atomic import atomic_directory, check_replaceable, exclusive
from recsys_ebm.distributed.cluster import ray_cluster
from recsys_ebm.errors import DataError
from recsys_ebm.export.parts import (
    part_path,
    parts_dir,
    prepare_parts,
    remove_parts,
    verified_done,
    write_part,
)
from recsys_ebm.export.writer import ExportConfig, ExportJob, ExportResult
from recsys_ebm.io import atomic_write_bytes

logger = logging.getLogger(__name__)

DATASET_MANIFEST = "_manifest.json"
SUFFIX = ".parquet"
#: shards per worker when the shard size is left to the export: enough to balance the load
SHARDS_PER_WORKER = 4


def default_shard_size(n_users: int, num_workers: int, chunk_size: int) -> int:
    """Users per shard: ``chunk_size`` at most, small enough for every worker to get
    :data:`SHARDS_PER_WORKER` shards."""
    return max(1, min(chunk_size, math.ceil(n_users / (SHARDS_PER_WORKER * num_workers))))


def is_dataset(path: Path) -> bool:
    """Whether ``path`` is a dataset this export wrote (and so may replace)."""
    try:
        manifest = json.loads((Path(path) / DATASET_MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and {"format", "shards", "model"} <= set(manifest)


def read_dataset_manifest(path: str | Path) -> dict[str, Any]:
    """The ``_manifest.json`` of a complete dataset; ``DataError`` when it is not one."""
    path = Path(path)
    if not is_dataset(path):
        raise DataError(f"{path} is not a complete export dataset (no {DATASET_MANIFEST})")
    return json.loads((path / DATASET_MANIFEST).read_text())


class _ShardWriter:
    """A Ray Data actor: fetches the job once, then computes and writes the shards it is given."""

    def __init__(self, job_ref: list, parts: str):
        import ray

        self.job: ExportJob = ray.get(job_ref[0])
        self.parts = Path(parts)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        size = self.job.config.chunk_size
        rows, users = [], []
        for shard in batch["shard"].tolist():
            lo, hi = shard * size, min((shard + 1) * size, self.job.n_users)
            table = self.job.chunk(lo, hi)
            write_part(part_path(self.parts, shard, SUFFIX), shard, table)
            rows.append(table.num_rows)
            users.append(hi - lo)
        return {"shard": batch["shard"], "rows": np.asarray(rows, dtype=np.int64),
                "users": np.asarray(users, dtype=np.int64)}


def distributed_export(model: Any, output: str | Path, *, address: str = "local",
                       num_workers: int = 2, shard_size: int | None = None,
                       user_items: Any = None, raw_user_ids: Any = None, raw_item_ids: Any = None,
                       config: ExportConfig | None = None, resume: bool = False,
                       show_progress: bool = True, tracker: Any = None, filter_items: Any = None,
                       filter_seen: bool = True,
                       on_shard: Callable[[int, int], None] | None = None) -> ExportResult:
    """Export every trained user's top-k (or k sampled) items to the dataset ``output`` on Ray.

    Parameters are those of :func:`~recsys_ebm.export.writer.export_recommendations`, plus:

    address : str
        ``local`` (a private cluster of ``num_workers`` CPUs), ``auto``, or ``HOST:PORT``.
    num_workers : int
        Actors computing shards at once, one CPU each.
    shard_size : int, optional
        Users per shard (one Parquet file each); default :func:`default_shard_size`. Part of
        what a resumed export checks, with ``k``, ``temperature``, ``seed``, model and data.
    on_shard : callable, optional
        Called as ``on_shard(shard, n_shards)`` on the driver after each shard is on disk.
    """
    config = config if config is not None else ExportConfig()
    output = Path(output)
    if output.suffix.lower() == ".csv" or output.is_file():
        raise DataError(f"--output {output}: a distributed export writes a Parquet dataset, a "
                        "directory; give a directory path (not a file, not .csv)")
    check_replaceable(output.absolute(), is_dataset)  # before any work, not at the commit
    n_users = int(model.n_users)
    size = shard_size or default_shard_size(n_users, num_workers, config.chunk_size)
    # one kernel thread per worker: each actor holds one CPU
    config = dataclasses.replace(config, chunk_size=size, n_threads=config.n_threads or 1)
    job = ExportJob(model, config, user_items, raw_user_ids, raw_item_ids, filter_items, filter_seen)
    manifest = {**job.manifest(output), "layout": "dataset"}
    parts = parts_dir(output)
    started = time.perf_counter()
    with exclusive(parts.absolute()):
        done = prepare_parts(parts, manifest, resume, SUFFIX)
        done = verified_done(parts, done, lambda c: job.raw_users[c * size:(c + 1) * size], SUFFIX)
        todo = [shard for shard in range(job.n_chunks) if shard not in done]
        if todo:
            _run_shards(job, parts, todo, address, num_workers, show_progress, on_shard)
        n_rows = _commit(job, output, parts, manifest)
        remove_parts(parts)
    seconds = time.perf_counter() - started
    result = ExportResult(output, job.n_users, n_rows, seconds, len(done), job.n_chunks)
    logger.info("exported %d rows for %d users to %s in %.1f s on %d Ray workers "
                "(%d shards, %d resumed)", n_rows, job.n_users, output, seconds, num_workers,
                job.n_chunks, len(done))
    if tracker is not None:
        tracker.log_params({f"export.{k}": v for k, v in config.to_dict().items()}
                           | {"export.output": str(output), "export.ray_workers": num_workers})
        tracker.log_metrics({"export_seconds": seconds, "export_users_per_s": result.users_per_second,
                             "export_rows": n_rows, "export_resumed_chunks": len(done)})
    return result


def _run_shards(job: ExportJob, parts: Path, todo: list[int], address: str, num_workers: int,
                show_progress: bool, on_shard: Callable[[int, int], None] | None) -> None:
    """Compute and write the shards ``todo`` on the cluster, reporting each as it finishes."""
    with ray_cluster(address, num_workers) as ray:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver's own bar below counts users
        job_ref = ray.put(job)
        shards = ray.data.from_items([{"shard": shard} for shard in todo],
                                     override_num_blocks=len(todo))
        finished = shards.map_batches(
            _ShardWriter, fn_constructor_kwargs={"job_ref": [job_ref], "parts": str(parts)},
            batch_size=1, compute=ray.data.ActorPoolStrategy(size=num_workers), num_cpus=1,
            batch_format="numpy")
        total = sum(min(job.config.chunk_size, job.n_users - s * job.config.chunk_size) for s in todo)
        with tqdm(total=total, unit="user", desc=f"export on {num_workers} Ray workers",
                  disable=not show_progress) as bar:
            rows = iter(finished.iter_rows())
            try:
                for count, row in enumerate(rows, start=1):
                    bar.update(int(row["users"]))
                    logger.info("shard %d written (%d rows; %d of %d)", int(row["shard"]),
                                int(row["rows"]), count, len(todo))
                    if on_shard is not None:
                        on_shard(int(row["shard"]), job.n_chunks)
            finally:
                _close(rows)


def _close(rows: Any) -> None:
    """Stop the pipeline's threads now, not when a traceback holding the iterator is collected;
    a failure to close is logged, so that it never hides the error that ended the loop."""
    try:
        getattr(rows, "close", lambda: None)()
    except Exception:  # noqa: BLE001  (the pipeline's own error, if any, is the one to raise)
        logger.warning("closing the Ray Data iterator failed", exc_info=True)


def _commit(job: ExportJob, output: Path, parts: Path, manifest: dict[str, Any]) -> int:
    """Link every verified shard into a staging folder with the manifest and put it in place
    of ``output``; returns the number of rows."""
    size = job.config.chunk_size
    done = verified_done(parts, set(range(job.n_chunks)),
                         lambda c: job.raw_users[c * size:(c + 1) * size], SUFFIX)
    missing = sorted(set(range(job.n_chunks)) - done)
    if missing:
        raise RuntimeError(f"{len(missing)} shards of {parts} are missing or damaged after the "
                           f"run (first: {missing[0]}); rerun with resume to compute them")
    shards = []
    with atomic_directory(output, is_dataset) as staging:
        for shard in range(job.n_chunks):
            part = part_path(parts, shard, SUFFIX)
            record = json.loads(part.with_suffix(".json").read_text())
            _link_or_copy(part, staging / part.name)
            shards.append({"file": part.name, **record})
        n_rows = sum(shard["rows"] for shard in shards)
        atomic_write_bytes(staging / DATASET_MANIFEST, json.dumps(
            {**manifest, "rows": n_rows, "shards": shards}, indent=2, sort_keys=True).encode())
    return n_rows


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        target.write_bytes(source.read_bytes())


def read_dataset(path: str | Path):
    """The rows of a complete dataset as one pyarrow table, shards in user order."""
    manifest = read_dataset_manifest(path)
    return pq.ParquetDataset([str(Path(path) / shard["file"]) for shard in manifest["shards"]]).read()
