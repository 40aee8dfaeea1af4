"""MovieLens loading: a variant (found locally or downloaded) parsed into canonical frames,
and the official ML-100K folds.

The registry of variants is :mod:`recsys_ebm.data.variants`; finding and downloading them is
:mod:`recsys_ebm.data.download`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_ebm.data.download import locate_or_download, sha256_file
from recsys_ebm.data.readers import read_interactions, read_text_table
from recsys_ebm.data.split import Split
from recsys_ebm.data.variants import (
    OFFICIAL_FOLDS,
    VARIANTS,
    MovieLensData,
    MovieLensVariant,
    get_variant,
)
from recsys_ebm.errors import DataError, DatasetNotFoundError

logger = logging.getLogger(__name__)


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
        checksum=sha256_file(ratings_path),
        rating_scale=v.rating_scale,
    )


def load_movielens_items(
    variant: str | MovieLensVariant = "100k", data_dir: str | os.PathLike | None = None
) -> pd.DataFrame:
    """A local MovieLens copy's movies (``item_id``, ``title``, ``genres``), without reading its
    ratings and never downloading; ``DatasetNotFoundError`` when the copy is not there."""
    v = get_variant(variant)
    return _read_items(v, locate_or_download(v, data_dir, download=False))


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
