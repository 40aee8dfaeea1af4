"""MovieLens: a registry of the published variants, local lookup or safe download, parsing.

Where the data lives: ``data_dir`` argument > env ``RECSYS_EBM_DATA_DIR`` > ``./data``. A variant
is found as ``<data_dir>/<folder>/`` (e.g. ``data/ml-100k/u.data``) and then used as is, with no
network. Otherwise it is downloaded from GroupLens (base URL overridable with ``base_url=`` or
env ``RECSYS_EBM_MOVIELENS_URL``): streamed to a temporary file inside ``data_dir``, checked
against the published MD5, extracted into a temporary folder with every member checked not to
escape it, then renamed into place, so an interrupted or corrupt download leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import logging
import os
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from recsys_ebm.data.readers import read_interactions, read_text_table
from recsys_ebm.data.split import Split
from recsys_ebm.errors import DataError, DatasetNotFoundError

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens"
ENV_DATA_DIR = "RECSYS_EBM_DATA_DIR"
ENV_BASE_URL = "RECSYS_EBM_MOVIELENS_URL"
OFFICIAL_FOLDS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")

_CHUNK = 1 << 20
_USER_AGENT = "recsys_ebm (https://grouplens.org/datasets/movielens/)"


@dataclass(frozen=True)
class RatingScale:
    """Allowed ratings: ``min, min + step, ..., max``."""

    min: float
    max: float
    step: float

    def __post_init__(self) -> None:
        if not (self.step > 0 and self.max > self.min):
            raise ValueError(f"invalid rating scale {self}")

    def values(self) -> np.ndarray:
        """All allowed ratings, float32 (n_levels,)."""
        n = round((self.max - self.min) / self.step) + 1
        return (self.min + self.step * np.arange(n)).astype(np.float32)


@dataclass(frozen=True)
class RatingsFormat:
    """How a ratings file is laid out."""

    sep: str
    #: Column names of a header-less file; None when the file has a header row.
    names: tuple[str, ...] | None
    user_col: str
    item_col: str
    rating_col: str
    timestamp_col: str
    encoding: str = "utf-8"


_HEADERLESS = ("user_id", "item_id", "rating", "timestamp")
UDATA_FORMAT = RatingsFormat("\t", _HEADERLESS, *_HEADERLESS, encoding="latin-1")
DAT_FORMAT = RatingsFormat("::", _HEADERLESS, *_HEADERLESS, encoding="latin-1")
CSV_FORMAT = RatingsFormat(",", None, "userId", "movieId", "rating", "timestamp")

ItemsFormat = Literal["u.item", "movies.dat", "movies.csv"]


@dataclass(frozen=True)
class MovieLensVariant:
    """One published MovieLens archive.

    Attributes
    ----------
    name : str
        Canonical name, also the archive's stem (``ml-100k`` -> ``ml-100k.zip``).
    md5 : str or None
        Published MD5 of the archive (``<name>.zip.md5`` on GroupLens); None when the archive
        changes over time (ml-latest-small): the download is then not verified (logged).
    folder : str
        Folder the archive extracts to (``ml-10m`` extracts to ``ml-10M100K``).
    ratings_file, ratings_format
        Ratings file inside ``folder`` and its layout.
    items_file, items_format
        Movie file inside ``folder`` and its layout.
    rating_scale : RatingScale
    """

    name: str
    md5: str | None
    folder: str
    ratings_file: str
    ratings_format: RatingsFormat
    items_file: str
    items_format: ItemsFormat
    rating_scale: RatingScale

    @property
    def archive(self) -> str:
        return f"{self.name}.zip"

    def url(self, base_url: str | None = None) -> str:
        """Archive URL: ``base_url`` > env ``RECSYS_EBM_MOVIELENS_URL`` > GroupLens."""
        base = base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
        return f"{base.rstrip('/')}/{self.archive}"


_WHOLE_STARS = RatingScale(1.0, 5.0, 1.0)
_HALF_STARS = RatingScale(0.5, 5.0, 0.5)

#: File layouts: ratings file, its format, and the movies file (also naming its format).
_LAYOUTS: dict[str, tuple[str, RatingsFormat, ItemsFormat]] = {
    "100k": ("u.data", UDATA_FORMAT, "u.item"),
    "dat": ("ratings.dat", DAT_FORMAT, "movies.dat"),
    "csv": ("ratings.csv", CSV_FORMAT, "movies.csv"),
}


def _variant(
    name: str, md5: str | None, layout: str, scale: RatingScale, folder: str | None = None
) -> MovieLensVariant:
    ratings_file, ratings_format, items_file = _LAYOUTS[layout]
    return MovieLensVariant(
        name=name,
        md5=md5,
        folder=folder or name,
        ratings_file=ratings_file,
        ratings_format=ratings_format,
        items_file=items_file,
        items_format=items_file,
        rating_scale=scale,
    )


#: Every known variant by canonical name. MD5 values are the ones GroupLens publishes next to
#: each archive (``https://files.grouplens.org/datasets/movielens/<name>.zip.md5``).
VARIANTS: dict[str, MovieLensVariant] = {
    v.name: v
    for v in (
        _variant("ml-100k", "0e33842e24a9c977be4e0107933c0723", "100k", _WHOLE_STARS),
        _variant("ml-1m", "c4d9eecfca2ab87c1945afe126590906", "dat", _WHOLE_STARS),
        _variant("ml-10m", "ce571fd55effeba0271552578f2648bd", "dat", _HALF_STARS, "ml-10M100K"),
        _variant("ml-20m", "cd245b17a1ae2cc31bb14903e1204af3", "csv", _HALF_STARS),
        _variant("ml-25m", "6b51fb2759a8657d3bfcbfc42b592ada", "csv", _HALF_STARS),
        # ml-32m (2024): the value GroupLens publishes, as pinned by several independent
        # projects; it was not re-fetched from grouplens.org when this was written (no network).
        _variant("ml-32m", "d472be332d4daa821edc399621853b57", "csv", _HALF_STARS),
        # Regenerated from time to time, so there is no stable checksum (download is logged).
        _variant("ml-latest-small", None, "csv", _HALF_STARS),
    )
}


@dataclass(frozen=True, eq=False)
class MovieLensData:
    """A parsed MovieLens variant.

    Attributes
    ----------
    name : str
        Canonical variant name (``ml-100k``).
    ratings : DataFrame (n_ratings, 4)
        ``user_id`` int64, ``item_id`` int64, ``rating`` float32, ``timestamp`` int64 (Unix s).
    items : DataFrame (n_movies, 3)
        ``item_id`` int64, ``title`` str, ``genres`` str (``'|'``-joined, ``''`` when none).
    path : Path
        The extracted folder.
    checksum : str
        SHA-256 hex digest of the ratings file (identifies the exact data in run logs).
    rating_scale : RatingScale
    """

    name: str
    ratings: pd.DataFrame
    items: pd.DataFrame
    path: Path
    checksum: str
    rating_scale: RatingScale

    @property
    def n_users(self) -> int:
        return int(self.ratings["user_id"].nunique())

    @property
    def n_items(self) -> int:
        """Number of distinct rated items (the catalog in ``items`` may be larger)."""
        return int(self.ratings["item_id"].nunique())


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data root: ``data_dir`` > env ``RECSYS_EBM_DATA_DIR`` > ``./data`` (absolute path)."""
    chosen = data_dir if data_dir is not None else os.environ.get(ENV_DATA_DIR) or "data"
    return Path(chosen).expanduser().absolute()


def get_variant(name: str | MovieLensVariant) -> MovieLensVariant:
    """Look a variant up by name: ``"100k"``, ``"ml-100k"``, ``"latest-small"``, ... (any case).

    A :class:`MovieLensVariant` is returned unchanged (e.g. one built with
    ``dataclasses.replace`` for a mirror with its own checksum). Unknown names raise
    ``DataError`` listing the known ones.
    """
    if isinstance(name, MovieLensVariant):
        return name
    key = str(name).strip().lower().replace("_", "-")
    if not key.startswith("ml-"):
        key = f"ml-{key}"
    try:
        return VARIANTS[key]
    except KeyError:
        raise DataError(
            f"unknown MovieLens variant {name!r}; known: {', '.join(VARIANTS)} "
            "(the 'ml-' prefix is optional)"
        ) from None


def replace_checksum(variant: str | MovieLensVariant, md5: str | None) -> MovieLensVariant:
    """A copy of ``variant`` expecting ``md5`` (e.g. a mirror or a newer ml-latest-small)."""
    return dataclasses.replace(get_variant(variant), md5=md5)


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
    archive_fd, archive_name = tempfile.mkstemp(prefix=f".{v.name}-", suffix=".zip.part", dir=root)
    os.close(archive_fd)
    archive = Path(archive_name)
    staging = Path(tempfile.mkdtemp(prefix=f".{v.name}-extract-", dir=root))
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
            top = sorted(p.name for p in staging.iterdir())
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
        shutil.rmtree(staging, ignore_errors=True)


def load_movielens(
    variant: str | MovieLensVariant = "100k",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    *,
    base_url: str | None = None,
    show_progress: bool | None = None,
) -> MovieLensData:
    """Find (or download) and parse a MovieLens variant.

    Returns
    -------
    MovieLensData
        Ratings validated against the variant's rating scale; items with titles and genres.
    """
    v = get_variant(variant)
    folder = locate_or_download(
        v, data_dir, download, base_url=base_url, show_progress=show_progress
    )
    ratings_path = folder / v.ratings_file
    ratings = _read_ratings(v, ratings_path)
    items = _read_items(v, folder)
    logger.info(
        "%s: %d ratings, %d users, %d items from %s",
        v.name,
        len(ratings),
        ratings["user_id"].nunique(),
        ratings["item_id"].nunique(),
        folder,
    )
    return MovieLensData(
        name=v.name,
        ratings=ratings,
        items=items,
        path=folder,
        checksum=_sha256(ratings_path),
        rating_scale=v.rating_scale,
    )


def load_official_fold(
    fold: str | int,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    base_url: str | None = None,
) -> Split:
    """One of ML-100K's official rating-prediction folds: ``u1``..``u5``, ``ua``, ``ub``.

    ``uK.base`` is train and ``uK.test`` is test, unchanged: test rows whose item is absent
    from train are kept (PROTOCOLS: every model is scored on the same rows; u1.test has 32),
    and their number is logged. ``fold`` may also be the integer 1..5.
    """
    name = f"u{fold}" if isinstance(fold, int) and not isinstance(fold, bool) else str(fold).lower()
    if name not in OFFICIAL_FOLDS:
        raise ValueError(
            f"unknown ML-100K fold {fold!r}; expected one of {', '.join(OFFICIAL_FOLDS)}"
        )
    v = VARIANTS["ml-100k"]
    folder = locate_or_download(v, data_dir, download, base_url=base_url)
    train = _read_ratings(v, folder / f"{name}.base")
    test = _read_ratings(v, folder / f"{name}.test")
    unknown_item = ~test["item_id"].isin(train["item_id"].unique())
    unknown_user = ~test["user_id"].isin(train["user_id"].unique())
    if unknown_item.any() or unknown_user.any():
        logger.info(
            "ML-100K fold %s: %d test rows have an item and %d a user unknown to train (kept)",
            name,
            int(unknown_item.sum()),
            int(unknown_user.sum()),
        )
    return Split(train=train, test=test, fold_in=None, n_dropped=0)


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# internals: parsing


def _read_ratings(v: MovieLensVariant, path: Path) -> pd.DataFrame:
    fmt = v.ratings_format
    scale = v.rating_scale
    ratings = read_interactions(
        path,
        user_col=fmt.user_col,
        item_col=fmt.item_col,
        rating_col=fmt.rating_col,
        timestamp_col=fmt.timestamp_col,
        sep=fmt.sep,
        names=fmt.names,
        encoding=fmt.encoding,
        rating_range=(scale.min, scale.max),
        integer_ids=True,
        name=v.name,
    )
    steps = (ratings["rating"].to_numpy(dtype=np.float64) - scale.min) / scale.step
    off_scale = np.abs(steps - np.round(steps)) > 1e-6
    if off_scale.any():
        row = int(np.flatnonzero(off_scale)[0])
        raise DataError(
            f"{v.name} ({path}): column {fmt.rating_col!r} has a rating "
            f"{float(ratings['rating'].iloc[row])!r} at data row {row + 1} that is not on the "
            f"scale {scale.min}..{scale.max} in steps of {scale.step}"
        )
    return ratings


def _read_items(v: MovieLensVariant, folder: Path) -> pd.DataFrame:
    """Movies as ``item_id`` (int64), ``title``, ``genres`` ('|'-joined)."""
    path = folder / v.items_file
    where = f"{v.name} ({path})"
    if not path.is_file():
        raise DatasetNotFoundError(f"{where}: no such file (the copy of {v.name} is incomplete)")
    if v.items_format == "u.item":
        genre_names = _read_genre_names(folder / "u.genre", v.name)
        names = ["item_id", "title", "release_date", "video_release_date", "imdb_url", *genre_names]
        table = read_text_table(
            path, sep="|", names=names, encoding="latin-1", keep_default_na=False, where=where
        )
        flags = table[genre_names]
        if not flags.isin([0, 1]).all().all():
            raise DataError(
                f"{where}: genre flag columns must hold 0/1; check {path.name} and u.genre"
            )
        joined = flags.astype(np.int64).dot(
            pd.Series([f"{g}|" for g in genre_names], index=genre_names, dtype=object)
        )
        genres = joined.astype(str).str.rstrip("|")
    else:
        if v.items_format == "movies.dat":
            table = _read_movies_dat(path, where)
        else:
            table = read_text_table(
                path,
                sep=",",
                encoding="utf-8",
                keep_default_na=False,
                where=where,
                dtype={"title": str, "genres": str},
            ).rename(columns={"movieId": "item_id"})
        missing = [c for c in ("item_id", "title", "genres") if c not in table.columns]
        if missing:
            raise DataError(f"{where}: missing column(s) {missing}; found {list(table.columns)}")
        genres = table["genres"].fillna("").astype(str)
    item_ids = pd.to_numeric(table["item_id"], errors="coerce")
    bad = item_ids.isna() | (item_ids != item_ids.round())
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{where}: column 'item_id' has a non-integer id {table['item_id'].iloc[row]!r} at data row {row + 1}"
        )
    return pd.DataFrame(
        {
            "item_id": item_ids.to_numpy(dtype=np.int64),
            "title": table["title"].fillna("").astype(str).to_numpy(dtype=object),
            "genres": genres.to_numpy(dtype=object),
        }
    ).astype({"title": "str", "genres": "str"})


def _read_movies_dat(path: Path, where: str) -> pd.DataFrame:
    # ml-1m's movies.dat is Latin-1; ml-10m's is believed to be UTF-8. Try UTF-8 first: Latin-1
    # text essentially never decodes as valid UTF-8 when it has accented letters.
    names = ["item_id", "title", "genres"]
    try:
        return read_text_table(
            path,
            sep="::",
            names=names,
            encoding="utf-8",
            keep_default_na=False,
            where=where,
            dtype={"title": str, "genres": str},
        )
    except DataError as exc:
        if not isinstance(exc.__cause__, UnicodeDecodeError):
            raise
    return read_text_table(
        path,
        sep="::",
        names=names,
        encoding="latin-1",
        keep_default_na=False,
        where=where,
        dtype={"title": str, "genres": str},
    )


def _read_genre_names(path: Path, variant: str) -> list[str]:
    """ML-100K's ``u.genre``: ``name|index`` lines, returned in index order (19 names)."""
    where = f"{variant} ({path})"
    if not path.is_file():
        raise DatasetNotFoundError(f"{where}: no such file (needed to name u.item's genre flags)")
    table = read_text_table(
        path,
        sep="|",
        names=["genre", "index"],
        encoding="latin-1",
        keep_default_na=False,
        where=where,
    )
    index = pd.to_numeric(table["index"], errors="coerce")
    if index.isna().any() or sorted(index.astype(int)) != list(range(len(table))):
        raise DataError(
            f"{where}: expected 'name|index' lines with indices 0..n-1, got {table.to_dict('list')}"
        )
    return table.sort_values("index")["genre"].astype(str).tolist()
