"""Model files: plain tensors (loaded with ``weights_only=True``) + JSON; never pickle.

A saved model is a directory::

    config.json   {"model": NAME, "config": {...}, "meta": {...}}
    weights.pt    dict[str, torch.Tensor], loaded with torch.load(weights_only=True)
    manifest.json {"files": {name: sha256}}, written last and verified on load

It is built in a staging sibling and swapped into place whole (:mod:`recsys_ebm.atomic`), so at
every instant the path holds a complete model, and a save never deletes what it did not write.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys_ebm.atomic import atomic_directory, recover, temp_sibling
from recsys_ebm.errors import ModelFileError

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"


MANIFEST_FILE = "manifest.json"


def is_model_dir(path: Path) -> bool:
    """Whether ``path`` holds a model this toolkit saved (its config.json names a model)."""
    try:
        return "model" in json.loads((Path(path) / CONFIG_FILE).read_text())
    except (OSError, ValueError, TypeError):
        return False


def save_model_dir(path: str | Path, model_name: str, config: dict[str, Any],
                   tensors: dict[str, Any], meta: dict[str, Any] | None = None) -> Path:
    """Write ``tensors`` (numpy arrays or torch tensors) and JSON metadata atomically.

    The directory is built beside ``path`` and swapped in whole (:mod:`recsys_ebm.atomic`):
    an existing saved model is replaced, anything else at ``path`` is an error and is left
    untouched. ``manifest.json``, written last, holds the SHA-256 of every file; loading checks it.
    """
    path = Path(path)
    plain = {
        name: (torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray)
               else value.detach().cpu().contiguous())
        for name, value in tensors.items()
    }
    with atomic_directory(path, is_model_dir) as staging:
        torch.save(plain, staging / WEIGHTS_FILE)
        document = {"model": model_name, "config": config, "meta": meta or {}}
        (staging / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True))
        write_manifest(staging, [CONFIG_FILE, WEIGHTS_FILE])
    return path


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, names: list[str]) -> None:
    """``manifest.json`` with the SHA-256 of each named file of ``directory``."""
    files = {name: sha256_of(directory / name) for name in names}
    (directory / MANIFEST_FILE).write_text(json.dumps({"format": 1, "files": files}, indent=2))


def verify_manifest(directory: Path) -> bool:
    """Check every file listed in ``directory``'s manifest; ``ModelFileError`` names the first
    missing or changed one. False when there is no manifest (saved by an older version)."""
    manifest_file = Path(directory) / MANIFEST_FILE
    if not manifest_file.is_file():
        return False
    try:
        files = json.loads(manifest_file.read_text())["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{manifest_file}: not a manifest written by recsys-ebm ({exc})") from None
    for name, expected in sorted(files.items()):
        target = Path(directory) / name
        if not target.is_file():
            raise ModelFileError(f"{target} is missing (listed in {manifest_file.name})")
        actual = sha256_of(target)
        if actual != expected:
            raise ModelFileError(f"{target} does not match its manifest: SHA-256 {actual[:12]}..., "
                                 f"expected {expected[:12]}...; the file was changed or corrupted")
    return True


class SavedTensors(dict):
    """The tensors of a weights file; a missing one is an error naming the file and the tensor."""

    def __init__(self, values: dict, source: Path):
        super().__init__(values)
        self.source = source

    def __missing__(self, key: str):
        raise ModelFileError(f"{self.source} has no tensor {key!r} (it holds {sorted(self)}); "
                             "it was not saved by this model or is damaged")

    def expect(self, key: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The tensor ``key``, checked to have ``shape``."""
        tensor = self[key]
        if tuple(tensor.shape) != tuple(shape):
            raise ModelFileError(f"{self.source}: tensor {key!r} has shape {tuple(tensor.shape)}, "
                                 f"the model's config needs {tuple(shape)}")
        return tensor


def load_model_dir(path: str | Path) -> tuple[str, dict[str, Any], SavedTensors, dict[str, Any]]:
    """Read a model directory: ``(model_name, config, tensors, meta)``; executes no code.

    The manifest is verified first; non-finite weights, truncated files and missing keys are
    ``ModelFileError`` naming the file.
    """
    path = Path(path)
    if not path.exists():
        recover(path.absolute(), is_model_dir)
    config_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    for needed in (config_file, weights_file):
        if not needed.is_file():
            raise FileNotFoundError(f"{path} is not a saved model: {needed.name} is missing")
    if not verify_manifest(path):
        logger.warning("%s has no %s (saved by an older version): its files are not verified",
                       path, MANIFEST_FILE)
    try:
        document = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{config_file}: not valid JSON ({exc})") from exc
    for key in ("model", "config"):
        if key not in document:
            raise ModelFileError(f"{config_file}: missing key {key!r}")
    return document["model"], document["config"], _read_weights(weights_file), document.get("meta", {})


def _read_weights(weights_file: Path) -> SavedTensors:
    try:
        tensors = torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise ModelFileError(f"{weights_file}: not a readable weights file ({type(exc).__name__}: "
                             f"{str(exc)[:200]})") from None
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise ModelFileError(f"{weights_file}: expected a dict of tensors, got {type(tensors).__name__}")
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelFileError(f"{weights_file}: tensor {name!r} holds NaN or inf values")
    return SavedTensors(tensors, weights_file)


def read_model_name(path: str | Path) -> str:
    """The model name recorded in a saved directory's config.json (reads no weights); a
    directory left aside by an interrupted save is put back first, and the manifest is
    verified before config.json is read."""
    if not Path(path).exists():
        recover(Path(path).absolute(), is_model_dir)
    config_file = Path(path) / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a saved model: {CONFIG_FILE} is missing")
    verify_manifest(Path(path))
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))["model"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{config_file}: no model name ({exc!r})") from exc


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
    tmp = temp_sibling(path, suffix)
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
