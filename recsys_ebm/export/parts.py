"""The resumable parts of an export: ``<output>.parts/`` holds a manifest of what must not
change (model, data, settings) and each finished chunk as ``part-NNNNNN.arrow`` (Arrow IPC; or
``.parquet`` for the distributed export's shards) with a record ``part-NNNNNN.json`` (chunk,
first and last user, rows, SHA-256).

A resumed export reuses a part only when its record matches the file's hash and the chunk's
users; a part that was copied over another, truncated or edited is computed again. Temporary
files of killed runs are removed by the next run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather
import pyarrow.parquet as pq

from recsys_ebm.atomic import clean_stale_files
from recsys_ebm.io import atomic_path, atomic_write_bytes, sha256_of

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def parts_dir(path: str | Path) -> Path:
    """Where the finished chunks of an export to ``path`` are kept until it completes."""
    path = Path(path)
    return path.with_name(path.name + ".parts")


def part_path(parts: Path, chunk: int, suffix: str = ".arrow") -> Path:
    return parts / f"part-{chunk:06d}{suffix}"


def _record_path(part: Path) -> Path:
    return part.with_suffix(".json")


def write_part(part: Path, chunk: int, table: pa.Table) -> None:
    """The chunk's rows (Arrow IPC, or Parquet for a ``.parquet`` part, atomically), then its
    record: a part without a record is never reused."""
    with atomic_path(part) as tmp:
        if part.suffix == ".parquet":
            pq.write_table(table, str(tmp), compression="snappy",
                           use_dictionary=["user_id", "rank"], write_statistics=["user_id", "rank"])
        else:
            feather.write_feather(table, str(tmp), compression="uncompressed")
    users = table.column("user_id")
    record = {"chunk": chunk, "rows": table.num_rows, "sha256": sha256_of(part),
              "first_user": _plain(users[0].as_py()) if table.num_rows else None,
              "last_user": _plain(users[-1].as_py()) if table.num_rows else None}
    atomic_write_bytes(_record_path(part), json.dumps(record).encode())


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def part_is_valid(part: Path, chunk: int, chunk_users: np.ndarray) -> bool:
    """Whether ``part`` is the finished chunk ``chunk`` of users ``chunk_users`` (raw ids)."""
    try:
        record = json.loads(_record_path(part).read_text())
        if record["chunk"] != chunk or sha256_of(part) != record["sha256"]:
            return False
        users = (pq.read_table(part, columns=["user_id"]) if part.suffix == ".parquet" else
                 feather.read_table(part, columns=["user_id"], memory_map=True)).column("user_id")
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
        return False
    if users.length() != record["rows"]:
        return False
    if users.length() == 0:
        return True
    allowed = pa.array(chunk_users)
    return bool(pc.all(pc.is_in(users, value_set=allowed)).as_py()) and \
        _plain(users[0].as_py()) == record["first_user"] and \
        _plain(users[-1].as_py()) == record["last_user"]


def remove_parts(parts: Path) -> None:
    """Delete a finished export's parts, the manifest last: a removal cut short leaves a folder
    that still says what it is (and resumes), or an empty one."""
    if not parts.is_dir():
        return
    for child in parts.iterdir():
        if child.name != MANIFEST:
            child.unlink(missing_ok=True)
    (parts / MANIFEST).unlink(missing_ok=True)
    parts.rmdir()


def prepare_parts(parts: Path, manifest: dict, resume: bool, suffix: str = ".arrow") -> set[int]:
    """Make the parts directory; return the chunks whose recorded parts may be reused."""
    manifest_file = parts / MANIFEST
    clean_stale_files(parts)
    if parts.is_dir() and not any(parts.iterdir()):
        parts.rmdir()  # what a removal cut short at its very end leaves
    if parts.exists() and resume:
        if not manifest_file.is_file():
            raise ValueError(f"cannot resume: {parts} has no {MANIFEST}; delete it to start over")
        previous = json.loads(manifest_file.read_text())
        changed = sorted(key for key in manifest if previous.get(key) != manifest[key])
        if changed:
            raise ValueError(f"cannot resume the export in {parts}: {', '.join(changed)} changed "
                             "since it started; run without resume to start over")
        done = {int(p.name[5:11]) for p in parts.glob(f"part-*{suffix}")}
        logger.info("resuming: %d finished chunks found in %s", len(done), parts)
        return done
    if parts.exists():
        if not _is_export_manifest(manifest_file):
            raise ValueError(f"{parts} exists and is not the parts of an export; it was left "
                             "untouched: remove it or choose another output")
        n_old = len(list(parts.glob(f"part-*{suffix}")))
        if n_old:
            logger.warning("discarding %d finished chunks of an earlier export in %s "
                           "(pass resume to continue it instead)", n_old, parts)
        remove_parts(parts)
    elif resume:
        logger.info("nothing to resume at %s; starting a new export", parts)
    parts.mkdir(parents=True)
    atomic_write_bytes(manifest_file, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return set()


def _is_export_manifest(path: Path) -> bool:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and {"format", "chunk_size", "model", "data"} <= set(manifest)


def verified_done(parts: Path, done: set[int], chunk_users, suffix: str = ".arrow") -> set[int]:
    """The chunks of ``done`` whose parts pass :func:`part_is_valid`; the others are redone.

    ``chunk_users(chunk)`` gives the raw ids of a chunk's users.
    """
    valid = set()
    for chunk in sorted(done):
        if part_is_valid(part_path(parts, chunk, suffix), chunk, chunk_users(chunk)):
            valid.add(chunk)
        else:
            logger.warning("part %d in %s does not match its record; computing it again",
                           chunk, parts)
    return valid
