"""Model files: plain tensors (loaded with ``weights_only=True``) + JSON; never pickle.

A saved model is a directory::

    config.json   {"model": NAME, "config": {...}, "meta": {...}}
    weights.pt    dict[str, torch.Tensor], loaded with torch.load(weights_only=True)

It is written to a temporary sibling directory and renamed into place, so an interrupted
save leaves any previous model at ``path`` intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"


def save_model_dir(path: str | Path, model_name: str, config: dict[str, Any],
                   tensors: dict[str, Any], meta: dict[str, Any] | None = None) -> Path:
    """Write ``tensors`` (numpy arrays or torch tensors) and JSON metadata atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = {
        name: (torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray)
               else value.detach().cpu().contiguous())
        for name, value in tensors.items()
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        torch.save(plain, tmp / WEIGHTS_FILE)
        document = {"model": model_name, "config": config, "meta": meta or {}}
        (tmp / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True))
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_model_dir(path: str | Path) -> tuple[str, dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """Read a model directory: ``(model_name, config, tensors, meta)``; executes no code."""
    path = Path(path)
    config_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    for needed in (config_file, weights_file):
        if not needed.is_file():
            raise FileNotFoundError(f"{path} is not a saved model: {needed.name} is missing")
    try:
        document = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_file}: not valid JSON ({exc})") from exc
    for key in ("model", "config"):
        if key not in document:
            raise ValueError(f"{config_file}: missing key {key!r}")
    tensors = torch.load(weights_file, map_location="cpu", weights_only=True)
    if not isinstance(tensors, dict):
        raise ValueError(f"{weights_file}: expected a dict of tensors, got {type(tensors).__name__}")
    return document["model"], document["config"], tensors, document.get("meta", {})


def read_model_name(path: str | Path) -> str:
    """The model name recorded in a saved directory's config.json (reads no weights)."""
    config_file = Path(path) / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a saved model: {CONFIG_FILE} is missing")
    try:
        return json.loads(config_file.read_text())["model"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise ValueError(f"{config_file}: no model name ({exc!r})") from exc


def _replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` is swapped out, then removed."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling directory; on success it replaces ``path`` whole.

    Everything written inside lands together or not at all: an error or interruption removes
    the temporary directory and leaves an existing ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


#: the training interactions saved beside a model by ``recsys-ebm train`` (binary CSR, .npz)
SEEN_FILE = "seen_items.npz"


def save_seen_items(path: str | Path, user_items) -> Path:
    """Write the users x items pattern a model was trained on into model directory ``path``.

    ``recsys-ebm recommend`` reads it to leave out what each user already has. A plain
    ``scipy.sparse.save_npz`` file: integer and float arrays only, loaded without pickle.
    """
    import scipy.sparse as sp

    pattern = sp.csr_matrix(user_items, dtype=np.float32, copy=True)
    pattern.eliminate_zeros()
    pattern.data[:] = 1.0
    target = Path(path) / SEEN_FILE
    with atomic_path(target, suffix=".npz") as tmp:
        sp.save_npz(tmp, pattern)
    return target


def load_seen_items(path: str | Path):
    """The CSR written by :func:`save_seen_items`, or None when the directory has none."""
    import scipy.sparse as sp

    target = Path(path) / SEEN_FILE
    if not target.is_file():
        return None
    try:
        return sp.load_npz(target).tocsr()  # np.load(allow_pickle=False) inside
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{target}: not a seen-items file written by recsys-ebm train ({exc!r})") from exc


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success it is renamed onto ``path``.

    On any error (or interruption) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file via a temporary sibling + ``os.replace``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
