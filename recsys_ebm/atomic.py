"""Directories written whole or not at all, never deleting what the toolkit did not write.

A directory is built in a *staging* sibling (``.NAME.staging-PID-XXXX``, marked with a file
naming the writing process) and then put into place:

* when nothing is at the path, by a rename that refuses to replace anything;
* when a directory the caller recognises as its own (a saved model) is there, by an atomic
  exchange of the two directories (Linux ``renameat2(RENAME_EXCHANGE)``), so that at every
  instant the path holds a complete directory, the old one or the new one; the old one is then
  removed. Where the exchange is not available the old directory is first renamed to a marked
  ``.NAME.old-PID-XXXX`` sibling, and :func:`recover` puts it back if the process died in
  between;
* anything else at the path (a file, a directory that is not the caller's) is left untouched and
  is an error naming it.

Writers of one path exclude each other with a lock (``flock`` on a file named by the path's
hash in the temporary directory's ``recsys-ebm-locks/``): the second gets :class:`~recsys_ebm.errors.ConcurrentWriteError` at once. Staging and old siblings left by
killed processes are removed by the next writer, only when they carry the marker and their
process is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from recsys_ebm.errors import ConcurrentWriteError, DataError

logger = logging.getLogger(__name__)

#: the file that marks a sibling as the toolkit's own work in progress; it holds the writer's PID
MARKER = ".recsys-ebm-staging"
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _renameat2(source: Path, target: Path, flags: int) -> bool:
    """``renameat2`` with ``flags``; False when the system or filesystem does not support it."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if not hasattr(libc, "renameat2"):
        return False
    result = libc.renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(target))


def mark_staging(directory: Path) -> None:
    """Mark ``directory`` as this process's work in progress (see :func:`clean_stale`)."""
    (directory / MARKER).write_text(str(os.getpid()))



def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ours_and_abandoned(sibling: Path) -> bool:
    """Marked by a process that is gone. The writer's PID is in the marker, or in the name
    (``.NAME.staging-PID-XXXX``) when the marker is empty (a kill while writing it) or missing
    from an empty directory (a kill between creating and marking it: removing it loses nothing)."""
    marker = sibling / MARKER
    named = sibling.name.rsplit("-", 2)[-2] if sibling.name.count("-") >= 2 else ""
    if marker.is_file():
        text = marker.read_text().strip()
        pid_text = text if text.isdigit() else named
    elif not any(sibling.iterdir()):
        pid_text = named
    else:
        return False  # no marker: not ours, never touched
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    return pid != os.getpid() and not _process_alive(pid)


def remove_marked(directory: Path) -> None:
    """Delete a marked directory of ours, its marker last, so that an interrupted removal
    leaves a directory that is still marked (and removed by the next writer)."""
    for child in directory.iterdir():
        if child.name == MARKER:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    (directory / MARKER).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        directory.rmdir()


def _siblings(target: Path, kinds: str = "staging|old") -> list[Path]:
    """``target``'s own ``.NAME.staging-PID-XXXXXXXX`` / ``.NAME.old-PID-XXXXXXXX`` siblings
    (never those of another path whose name starts the same way)."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.({kinds})-\d+-[A-Za-z0-9_]{{8}}")
    return [p for p in target.parent.glob(f".{target.name}.*-*") if pattern.fullmatch(p.name)]


def clean_stale(target: Path) -> None:
    """Remove the staging and old siblings of ``target`` left by processes that are gone."""
    for sibling in _siblings(target):
        if sibling.is_dir() and _ours_and_abandoned(sibling):
            logger.info("removing %s, left by an interrupted write", sibling)
            if not (sibling / MARKER).exists():
                mark_staging(sibling)  # the empty, unmarked case: marked so the removal is safe
            remove_marked(sibling)


def temp_sibling(target: Path, suffix: str = "") -> Path:
    """A new empty temporary file beside ``target`` named ``.NAME.PID-XXXX<suffix>``: the PID
    lets :func:`clean_stale_files` remove it once its writer is gone."""
    target = Path(target)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}-", suffix=suffix,
                                dir=target.parent)
    os.close(fd)
    return Path(name)


#: ``.NAME.PID-XXXXXXXX<suffix>``: what :func:`temp_sibling` names (mkstemp's 8 characters)
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[A-Za-z0-9_]{8}")


def clean_stale_files(directory: Path, name: str | None = None) -> None:
    """Remove the temporary files (:func:`temp_sibling`) of dead writers in ``directory``:
    those of target ``name`` only, or of every target when ``name`` is None."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for candidate in directory.glob(f".{name}.*-*" if name is not None else ".*.*-*"):
        match = _TEMP_NAME.match(candidate.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        if candidate.is_file() and not _process_alive(int(match["pid"])):
            logger.info("removing %s, left by an interrupted write", candidate)
            candidate.unlink(missing_ok=True)


def recover(target: Path, is_complete: Callable[[Path], bool]) -> None:
    """Put back the previous directory when a writer died between the two renames of the
    fallback swap (nothing at ``target``, a complete marked ``.NAME.old-*`` beside it)."""
    target = Path(target)
    if target.exists():
        return
    for old in sorted(_siblings(target, "old")):
        if old.is_dir() and _ours_and_abandoned(old) and is_complete(old):
            (old / MARKER).unlink(missing_ok=True)
            os.rename(old, target)
            logger.warning("restored %s from %s, left by an interrupted save", target, old.name)
            return


#: where the write locks live: outside the written folders, so that they add no files to them
LOCK_DIR = Path(tempfile.gettempdir()) / "recsys-ebm-locks"


@contextlib.contextmanager
def exclusive(target: Path) -> Iterator[None]:
    """Hold the write lock of ``target``; another holder makes this raise at once."""
    if not LOCK_DIR.is_dir():
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # shared by every user, like /tmp itself
            os.chmod(LOCK_DIR, 0o1777)
    key = hashlib.sha256(str(Path(target).resolve()).encode()).hexdigest()[:32]
    with open(LOCK_DIR / f"{key}.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConcurrentWriteError(
                f"{target} is being written by another process; wait for it to finish "
                "or write somewhere else") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, is_ours: Callable[[Path], bool]) -> Iterator[Path]:
    """Yield an empty staging directory; on success it replaces ``target`` whole.

    ``is_ours(path)`` tells whether an existing directory may be replaced (a saved model, say);
    an empty directory may always be. On an error or interruption the staging directory is
    removed and ``target`` is untouched.
    """
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(target):
        recover(target, is_ours)
        clean_stale(target)
        check_replaceable(target, is_ours)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-{os.getpid()}-",
                                        dir=target.parent))
        mark_staging(staging)
        try:
            yield staging
            _put_in_place(staging, target, is_ours)
        except BaseException:
            remove_marked(staging)
            raise
        # the marker travelled with the new directory; a crash before this line leaves only a
        # harmless extra file in a complete directory
        (target / MARKER).unlink(missing_ok=True)


def check_replaceable(target: Path, is_ours: Callable[[Path], bool]) -> None:
    """``DataError`` unless ``target`` is free, an empty directory or one ``is_ours`` accepts
    (callers check before long work, so that nothing is computed for a path that will refuse)."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise DataError(f"{target} exists and is not a directory; it was left untouched: "
                        "choose another path")
    if target.is_dir() and any(target.iterdir()) and not is_ours(target):
        raise DataError(f"{target} exists and is not a directory this toolkit wrote (it would be "
                        "replaced); it was left untouched: choose another path or empty it")


def _fsync_directory(directory: Path) -> None:
    """Flush a directory's files and the directory itself to disk, so that a power loss after
    the swap cannot leave the new directory's files empty while the old one is gone."""
    for child in directory.rglob("*"):
        if child.is_file() and not child.is_symlink():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())
    for folder in (directory, *[p for p in directory.rglob("*") if p.is_dir()]):
        _fsync_directory_entry(folder)


def _fsync_directory_entry(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _put_in_place(staging: Path, target: Path, is_ours: Callable[[Path], bool]) -> None:
    """Move the finished ``staging`` to ``target`` (see the module docstring)."""
    _fsync_directory(staging)
    if not target.exists():
        if not _renameat2(staging, target, _RENAME_NOREPLACE):
            os.rename(staging, target)  # refuses a non-empty directory that appeared meanwhile
        return
    check_replaceable(target, is_ours)
    mark_staging(target)  # the old directory is marked before it moves: whatever is killed
    try:                  # from here on leaves it marked, for clean_stale() or recover()
        exchanged = _renameat2(staging, target, _RENAME_EXCHANGE)
    except BaseException:
        (target / MARKER).unlink(missing_ok=True)
        raise
    if exchanged:
        old = staging  # the exchange left the previous directory at the staging path
    else:
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{staging.name[-8:]}")
        os.rename(target, old)
        os.rename(staging, target)
    _fsync_directory_entry(target.parent)
    mark_staging(old)
    remove_marked(old)
