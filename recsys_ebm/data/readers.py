"""Read interaction logs (CSV/TSV/``::``-separated text or Parquet) into the canonical frame.

The canonical frame has the columns ``user_id, item_id, rating, timestamp``:

- ``user_id, item_id``: int64 when every id is an integer, else strings;
- ``rating``: float32 (1.0 when the source has no rating column);
- ``timestamp``: int64 Unix seconds (0 when the source has no timestamp column).

Every validation failure raises :class:`~recsys_ebm.errors.DataError` naming the file, the
column and an offending value with its data row (1-based, header excluded).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_ebm.data.interactions import COLUMNS
from recsys_ebm.errors import DataError, DatasetNotFoundError

logger = logging.getLogger(__name__)

PARQUET_SUFFIXES = (".parquet", ".pq")
_SUFFIX_SEPS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
# A byte that never occurs in text logs; multi-character separators are rewritten to it so the
# fast C parser can be used (pandas' python engine is ~20x slower on ml-10m's 10M lines).
_UNIT_SEPARATOR = "\x1f"


def read_interactions(
    path: str | os.PathLike,
    *,
    user_col: str = "user_id",
    item_col: str = "item_id",
    rating_col: str | None = "rating",
    timestamp_col: str | None = "timestamp",
    sep: str | None = None,
    names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    rating_range: tuple[float, float] | None = None,
    integer_ids: bool = False,
    name: str | None = None,
) -> pd.DataFrame:
    """Read and validate an interaction log.

    Parameters
    ----------
    path
        A text file (CSV/TSV/any separator) or Parquet (``.parquet``/``.pq``).
    user_col, item_col, rating_col, timestamp_col
        Source column names; ``rating_col=None`` for implicit data (rating 1.0),
        ``timestamp_col=None`` when there is no time (timestamp 0).
    sep
        Field separator for text files; None picks it from the extension (``.csv``, ``.tsv``)
        or sniffs the first line (``::``, tab, comma, semicolon, pipe).
    names
        Column names for a text file *without* a header row (e.g. MovieLens ``u.data``).
    encoding
        Text encoding.
    rating_range
        Inclusive ``(min, max)``; ratings outside raise.
    integer_ids
        Require integer ids (else string ids are allowed and kept as strings).
    name
        Label prefixed to messages (the file path is always included).

    Returns
    -------
    DataFrame (n, 4)
        ``user_id, item_id, rating (float32), timestamp (int64)``, RangeIndex, file order.
        Duplicate ``(user_id, item_id)`` pairs keep the latest row by timestamp (the last one
        in the file on ties); the number dropped is logged as a warning.
    """
    path = Path(path)
    where = f"{name} ({path})" if name else str(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"{where}: no such file")
    wanted = {"user": user_col, "item": item_col}
    if rating_col is not None:
        wanted["rating"] = rating_col
    if timestamp_col is not None:
        wanted["timestamp"] = timestamp_col
    if len(set(wanted.values())) != len(wanted):
        raise ValueError(f"{where}: the same source column is used twice: {wanted}")

    raw = _read_table(
        path, list(wanted.values()), sep=sep, names=names, encoding=encoding, where=where
    )
    if len(raw) == 0:
        raise DataError(f"{where}: no interactions (the file has a header but no data rows)")

    user_ids = _ids(raw[user_col], user_col, where, integer_ids)
    item_ids = _ids(raw[item_col], item_col, where, integer_ids)
    if rating_col is None:
        ratings = np.ones(len(raw), dtype=np.float32)
    else:
        ratings = _ratings(raw[rating_col], rating_col, where, rating_range)
    if timestamp_col is None:
        timestamps = np.zeros(len(raw), dtype=np.int64)
    else:
        timestamps = _timestamps(raw[timestamp_col], timestamp_col, where)

    frame = pd.DataFrame(
        {"user_id": user_ids, "item_id": item_ids, "rating": ratings, "timestamp": timestamps},
        columns=list(COLUMNS),
    )
    return _drop_duplicate_pairs(frame, where)


def sniff_separator(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """Guess a text file's field separator from its extension or first lines.

    Raises ``DataError`` naming the file when no separator can be recognised.
    """
    path = Path(path)
    by_suffix = _SUFFIX_SEPS.get(path.suffix.lower())
    if by_suffix is not None:
        return by_suffix
    with path.open("rb") as handle:
        sample = handle.read(64 * 1024).decode(encoding, errors="replace")
    first_line = sample.split("\n", 1)[0]
    if "::" in first_line:
        return "::"
    lines = sample.splitlines()
    if len(lines) > 1 and not sample.endswith("\n"):
        lines = lines[:-1]  # the last line of a 64 KiB sample may be cut in the middle
    try:
        return csv.Sniffer().sniff("\n".join(lines[:50]), delimiters=",\t;|").delimiter
    except csv.Error as exc:
        raise DataError(
            f"{path}: cannot detect the field separator from the first line {first_line[:80]!r}; "
            "pass sep="
        ) from exc


def read_text_table(
    path: str | os.PathLike,
    *,
    sep: str,
    names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    dtype: dict | None = None,
    nrows: int | None = None,
    keep_default_na: bool = True,
    where: str | None = None,
) -> pd.DataFrame:
    """Parse a delimited text file with pandas' C parser, also for multi-character ``sep``.

    ``names`` given means the file has no header row. ``keep_default_na=False`` treats only
    empty fields as missing (so a title such as ``"NA"`` stays text). Parse failures raise
    ``DataError`` naming the file.
    """
    path = Path(path)
    where = where or str(path)
    options: dict = {"header": None if names is not None else "infer", "encoding": encoding}
    if names is not None:
        options["names"] = list(names)
    if dtype is not None:
        options["dtype"] = dtype
    if nrows is not None:
        options["nrows"] = nrows
    if not keep_default_na:
        options["keep_default_na"] = False
        options["na_values"] = [""]
    source: str | Path | io.BytesIO = path
    shown_sep = sep
    if len(sep) > 1:
        data = path.read_bytes()
        if _UNIT_SEPARATOR.encode() in data:
            options["engine"] = "python"
            sep = re.escape(sep)
        else:
            source = io.BytesIO(data.replace(sep.encode(encoding), _UNIT_SEPARATOR.encode()))
            sep = _UNIT_SEPARATOR
    try:
        return pd.read_csv(source, sep=sep, **options)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{where}: the file is empty") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(
            f"{where}: cannot parse as {shown_sep!r}-separated text: {str(exc).strip()}"
        ) from exc


# --------------------------------------------------------------------------------------------
# internals


def _read_table(
    path: Path,
    columns: list[str],
    *,
    sep: str | None,
    names: Sequence[str] | None,
    encoding: str,
    where: str,
) -> pd.DataFrame:
    """Read only ``columns`` of a text or Parquet file, checking that they exist."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        import pyarrow.parquet as pq

        try:
            found = pq.read_schema(path).names
        except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
            raise DataError(f"{where}: not a readable Parquet file: {exc}") from exc
        _check_columns(columns, found, where)
        return pd.read_parquet(path, columns=columns)

    sep = sep if sep is not None else sniff_separator(path, encoding)
    if names is not None:
        found = list(names)
    else:
        found = read_text_table(path, sep=sep, encoding=encoding, nrows=0, where=where).columns
        found = [str(c) for c in found]
    _check_columns(columns, found, where)
    # All columns are parsed (no usecols): pandas ignores surplus fields of ragged rows when
    # usecols is given, and a ragged row is a broken file that must be reported.
    return read_text_table(path, sep=sep, names=names, encoding=encoding, where=where)[columns]


def _check_columns(wanted: list[str], found: Sequence[str], where: str) -> None:
    missing = [c for c in wanted if c not in found]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {missing}; found columns {list(found)} "
            "(pass user_col=/item_col=/rating_col=/timestamp_col=, or rating_col=None / "
            "timestamp_col=None when the data has none)"
        )


def _first_bad(series: pd.Series, bad: np.ndarray) -> tuple[object, int]:
    """The first offending raw value and its 1-based data row."""
    position = int(np.flatnonzero(bad)[0])
    return series.iloc[position], position + 1


def _ids(series: pd.Series, column: str, where: str, integer_ids: bool) -> np.ndarray:
    """Validate an id column: no missing values; int64 when integral, else strings."""
    missing = series.isna().to_numpy()
    if missing.any():
        value, row = _first_bad(series, missing)
        raise DataError(f"{where}: column {column!r} has a missing id {value!r} at data row {row}")
    if pd.api.types.is_bool_dtype(series):
        raise DataError(f"{where}: column {column!r} holds booleans ({series.iloc[0]!r}), not ids")
    if pd.api.types.is_integer_dtype(series):
        return series.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(series):
        values = series.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            value, row = _first_bad(series, bad)
            raise DataError(
                f"{where}: column {column!r} has a non-integer id {value!r} at data row {row}"
            )
        return values.astype(np.int64)
    text = series.astype(str).str.strip()
    numeric = pd.to_numeric(text, errors="coerce")
    integral = numeric.notna().to_numpy()
    if integral.all():
        values = numeric.to_numpy(dtype=np.float64)
        integral = values == np.round(values)
        if integral.all() and np.abs(values).max() < 2**53:
            return values.astype(np.int64)
    if integer_ids:
        value, row = _first_bad(series, ~integral)
        raise DataError(
            f"{where}: column {column!r} has a non-integer id {value!r} at data row {row}"
        )
    return text.to_numpy(dtype=object)


def _ratings(
    series: pd.Series, column: str, where: str, rating_range: tuple[float, float] | None
) -> np.ndarray:
    """Validate a rating column: numeric, finite, within ``rating_range``; float32."""
    if pd.api.types.is_bool_dtype(series):
        raise DataError(
            f"{where}: column {column!r} holds booleans ({series.iloc[0]!r}), not ratings"
        )
    if pd.api.types.is_numeric_dtype(series):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        numeric = pd.to_numeric(series, errors="coerce")
        not_numeric = (numeric.isna() & series.notna()).to_numpy()
        if not_numeric.any():
            value, row = _first_bad(series, not_numeric)
            raise DataError(
                f"{where}: column {column!r} has a non-numeric rating {value!r} at data row {row}"
            )
        values = numeric.to_numpy(dtype=np.float64, na_value=np.nan)
    not_finite = ~np.isfinite(values)
    if not_finite.any():
        value, row = _first_bad(series, not_finite)
        raise DataError(
            f"{where}: column {column!r} has a missing or infinite rating {value!r} at data row {row}"
        )
    if rating_range is not None:
        low, high = rating_range
        outside = (values < low) | (values > high)
        if outside.any():
            value, row = _first_bad(series, outside)
            raise DataError(
                f"{where}: column {column!r} has a rating {value!r} at data row {row} outside "
                f"the range [{low}, {high}] ({int(outside.sum())} such rows)"
            )
    return values.astype(np.float32)


def _timestamps(series: pd.Series, column: str, where: str) -> np.ndarray:
    """Validate a time column: Unix seconds (int or float) or ISO 8601 strings; int64 seconds."""
    missing = series.isna().to_numpy()
    if missing.any():
        value, row = _first_bad(series, missing)
        raise DataError(
            f"{where}: column {column!r} has a missing timestamp {value!r} at data row {row}"
        )
    if pd.api.types.is_datetime64_any_dtype(series):
        return _datetimes_to_seconds(series)
    if pd.api.types.is_bool_dtype(series):
        raise DataError(
            f"{where}: column {column!r} holds booleans ({series.iloc[0]!r}), not timestamps"
        )
    if pd.api.types.is_integer_dtype(series):
        return series.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(series):
        values = series.to_numpy(dtype=np.float64)
    else:
        numeric = pd.to_numeric(series, errors="coerce")
        if numeric.notna().all():
            values = numeric.to_numpy(dtype=np.float64)
        else:
            parsed = pd.to_datetime(series, errors="coerce", utc=True, format="ISO8601")
            bad = parsed.isna().to_numpy()
            if bad.any():
                value, row = _first_bad(series, bad)
                raise DataError(
                    f"{where}: column {column!r} has an unparseable timestamp {value!r} at data "
                    f"row {row} (expected Unix seconds or ISO 8601 date-times)"
                )
            return _datetimes_to_seconds(parsed)
    not_finite = ~np.isfinite(values)
    if not_finite.any():
        value, row = _first_bad(series, not_finite)
        raise DataError(
            f"{where}: column {column!r} has an unparseable timestamp {value!r} at data row {row}"
        )
    # Fractional seconds are truncated towards the past, consistently for negative times too.
    return np.floor(values).astype(np.int64)


def _datetimes_to_seconds(series: pd.Series) -> np.ndarray:
    if series.dt.tz is None:
        series = series.dt.tz_localize("UTC")
    epoch = pd.Timestamp(0, tz="UTC")
    return ((series - epoch) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)


def _drop_duplicate_pairs(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """Keep the latest row of each ``(user_id, item_id)`` pair (the last in file order on ties)."""
    if not frame.duplicated(["user_id", "item_id"]).any():
        return frame
    order = np.argsort(frame["timestamp"].to_numpy(), kind="stable")
    latest = frame.iloc[order].drop_duplicates(["user_id", "item_id"], keep="last").sort_index()
    n_dropped = len(frame) - len(latest)
    logger.warning(
        "%s: dropped %d duplicate (user_id, item_id) rows, keeping the latest by timestamp",
        where,
        n_dropped,
    )
    return latest.reset_index(drop=True)
