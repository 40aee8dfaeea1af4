"""The MovieLens registry: every published variant (folder, files, formats, rating scale,
checksum), looked up by name, and where the data lives on disk.

Where the data lives: ``data_dir`` argument > env ``RECSYS_EBM_DATA_DIR`` > ``./data``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from recsys_ebm.errors import DataError

DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens"
ENV_DATA_DIR = "RECSYS_EBM_DATA_DIR"
ENV_BASE_URL = "RECSYS_EBM_MOVIELENS_URL"
OFFICIAL_FOLDS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")


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
