"""MovieLens on disk: find a local copy of a variant or download it safely.

A variant is found as ``<data_dir>/<folder>/`` (e.g. ``data/ml-100k/u.data``) and then used as
is, with no network. Otherwise it is downloaded from GroupLens (base URL overridable with
``base_url=`` or env ``RECSYS_EBM_MOVIELENS_URL``): streamed to a temporary file inside
``data_dir``, checked against the published MD5, extracted into a temporary folder with every
member checked not to escape it, then renamed into place, so an interrupted or corrupt
download leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import stat
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath

from tqdm.auto import tqdm

from recsys_ebm.atomic import (
    MARKER,
    clean_stale,
    clean_stale_files,
    mark_staging,
    remove_marked,
    temp_sibling,
)
from recsys_ebm.data.variants import (
    ENV_DATA_DIR,
    MovieLensVariant,
    get_variant,
    resolve_data_dir,
)
from recsys_ebm.errors import DataError, DatasetNotFoundError

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_USER_AGENT = "recsys_ebm (https://grouplens.org/datasets/movielens/)"


def locate_or_download(
    variant: str | MovieLensVariant = "100k",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    *,
    base_url: str | None = None,
    show_progress: bool | None = None,
    timeout: float = 60.0,
) -> Path:
    """Return the extracted folder of ``variant``, downloading it when needed and allowed.

    A local ``<data_dir>/<folder>/`` holding the ratings file is used as is (no network).
    Without one, ``download=False`` (or a failed download) raises ``DatasetNotFoundError``
    naming the folder to create and the URL to fetch.
    """
    v = get_variant(variant)
    root = resolve_data_dir(data_dir)
    found = _local_copy(v, root)
    if found is not None:
        logger.debug("using the local copy of %s in %s", v.name, found)
        clean_stale_files(root, v.name)  # archives of downloads killed before this one won
        clean_stale(root / v.name)
        return found
    target = root / v.folder
    if target.exists():
        raise DatasetNotFoundError(
            f"{target} exists but has no {v.ratings_file}: the copy of {v.name} is incomplete. "
            f"Delete the folder to download it again, or complete it. {_instructions(v, root, base_url)}"
        )
    if not download:
        raise DatasetNotFoundError(
            f"MovieLens {v.name} not found: expected {target / v.ratings_file}. "
            f"{_instructions(v, root, base_url)}"
        )
    return download_movielens(
        v, root, base_url=base_url, show_progress=show_progress, timeout=timeout
    )


def download_movielens(
    variant: str | MovieLensVariant,
    data_dir: str | os.PathLike | None = None,
    *,
    base_url: str | None = None,
    show_progress: bool | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download, verify and extract ``variant`` into ``<data_dir>/<folder>/``; return the folder.

    Parameters
    ----------
    show_progress
        tqdm byte counter: None shows it only on a terminal, True always, False never.
    timeout
        Socket timeout in seconds.

    Raises
    ------
    DatasetNotFoundError
        The network failed (offline, HTTP error, connection dropped mid-body), or the folder
        already exists.
    DataError
        Checksum mismatch, not a zip, an unsafe member path, or the expected files are missing.
        In every failure case the temporary archive and folder are deleted.
    """
    v = get_variant(variant)
    root = resolve_data_dir(data_dir)
    target = root / v.folder
    if target.exists():
        raise DatasetNotFoundError(f"{target} already exists; delete it to download {v.name} again")
    url = v.url(base_url)
    root.mkdir(parents=True, exist_ok=True)
    # what killed downloads of this variant left behind (marked with their process id)
    clean_stale_files(root, v.name)
    clean_stale(root / v.name)
    archive = temp_sibling(root / v.name, ".zip.part")
    staging = Path(tempfile.mkdtemp(prefix=f".{v.name}.staging-{os.getpid()}-", dir=root))
    mark_staging(staging)
    try:
        md5 = _fetch(url, archive, v, root, base_url, show_progress, timeout)
        if v.md5 is None:
            logger.warning(
                "%s has no published checksum (it changes over time); downloaded %s unverified "
                "(md5 %s)",
                v.name,
                url,
                md5,
            )
        elif md5 != v.md5.lower():
            raise DataError(
                f"checksum mismatch for {url}: expected md5 {v.md5}, got {md5}; "
                "the download was deleted"
            )
        _safe_extract(archive, staging, url)
        extracted = staging / v.folder
        if not (extracted / v.ratings_file).is_file():
            top = sorted(p.name for p in staging.iterdir() if p.name != MARKER)
            raise DataError(
                f"{url}: the archive has no {v.folder}/{v.ratings_file} (top-level entries: {top})"
            )
        try:
            os.replace(extracted, target)
        except OSError:
            # Another process may have finished the same download first; its copy is as good.
            if _local_copy(v, root) is None:
                raise
        logger.info("downloaded %s to %s", v.name, target)
        return target
    finally:
        archive.unlink(missing_ok=True)
        remove_marked(staging)


# --------------------------------------------------------------------------------------------
# internals: lookup and download


def _local_copy(v: MovieLensVariant, root: Path) -> Path | None:
    """``<root>/<folder>`` (or ``<root>/<name>`` when they differ) holding the ratings file."""
    for folder in dict.fromkeys((v.folder, v.name)):
        if (root / folder / v.ratings_file).is_file():
            return root / folder
    return None


def _instructions(v: MovieLensVariant, root: Path, base_url: str | None) -> str:
    return (
        f"Download {v.url(base_url)} and unzip it into {root} so that the folder "
        f"{root / v.folder} holds {v.ratings_file}, or point data_dir= / ${ENV_DATA_DIR} at a "
        f"folder that has {v.folder}/ in it"
        + ("" if v.md5 is None else f" (expected md5 of {v.archive}: {v.md5})")
        + "."
    )


def _fetch(
    url: str,
    destination: Path,
    v: MovieLensVariant,
    root: Path,
    base_url: str | None,
    show_progress: bool | None,
    timeout: float,
) -> str:
    """Stream ``url`` into ``destination`` with a progress bar; return the MD5 hex digest."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    digest = hashlib.md5(usedforsecurity=False)
    received = 0
    expected: int | None = None
    try:
        with (
            urllib.request.urlopen(request, timeout=timeout) as response,
            destination.open("wb") as out,
        ):
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            with tqdm(
                total=expected,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=v.archive,
                disable=None if show_progress is None else not show_progress,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise DatasetNotFoundError(
            f"could not download {v.name}: {url} answered HTTP {exc.code} {exc.reason}. "
            f"{_instructions(v, root, base_url)}"
        ) from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DatasetNotFoundError(
            f"could not download {v.name} from {url} ({type(exc).__name__}: {reason}; "
            f"{received} bytes received). {_instructions(v, root, base_url)}"
        ) from exc
    if expected is not None and received != expected:
        # http.client returns a short read instead of raising when the server closes early.
        raise DatasetNotFoundError(
            f"download of {url} was interrupted: {received} of {expected} bytes received; "
            f"nothing was kept. {_instructions(v, root, base_url)}"
        )
    return digest.hexdigest()


def _unsafe_reason(info: zipfile.ZipInfo, staging: Path) -> str | None:
    """Why extracting ``info`` into ``staging`` would be unsafe, or None when it is safe."""
    name = info.filename
    posix = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive or posix.is_absolute():
        return "absolute path"
    if ".." in posix.parts:
        return "'..' component"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    if not (staging / name).resolve().is_relative_to(staging):
        return "resolves outside the target folder"
    return None


def _safe_extract(archive: Path, staging: Path, url: str) -> None:
    """Extract every member into ``staging`` after checking none escapes it."""
    staging = staging.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                reason = _unsafe_reason(info, staging)
                if reason is not None:
                    raise DataError(
                        f"{url}: refusing to extract archive member {info.filename!r} ({reason}); "
                        "nothing was kept"
                    )
            zf.extractall(staging, members)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DataError(f"{url}: not a valid zip archive ({exc}); nothing was kept") from exc


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
