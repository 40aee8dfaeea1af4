"""Read interaction logs (CSV/TSV/``::``-separated text or Parquet) into the canonical frame.

The canonical frame has the columns ``user_id, item_id, rating, timestamp``:

- ``user_id, item_id``: int64 when the ids are integers, else strings; the rule is that of
  :func:`recsys_ebm.data.ids.parse_ids` (in a text file whose id column holds only numbers,
  every id must be an integer literal, so ``1.0`` is an error; in a column holding other text
  ``1`` and ``1.0`` are different strings, and such look-alike numbers are an error);
- ``rating``: float32 (1.0 when the source has no rating column), checked against a declared
  scale or, without one, by the rule of :func:`recsys_ebm.data.interactions.parse_ratings`;
- ``timestamp``: int64 Unix seconds (0 when the source has no timestamp column).

Files compressed with gzip, bzip2, xz or zip (one member) are read too; the compression (and
Parquet) is recognised by the first bytes, and a suffix (``.gz``, ``.bz2``, ``.xz``, ``.zip``)
that the bytes contradict is an error.

Every validation failure raises :class:`~recsys_ebm.errors.DataError` naming the file, the
column and an offending value with its data row (1-based, header excluded) and, for text
files, its line in the file.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import logging
import lzma
import os
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_ebm.data.ids import parse_ids
from recsys_ebm.data.interactions import COLUMNS, parse_ratings, parse_timestamps
from recsys_ebm.data.variants import RatingScale
from recsys_ebm.errors import DataError, DatasetNotFoundError

logger = logging.getLogger(__name__)

PARQUET_SUFFIXES = (".parquet", ".pq")
_PARQUET_MAGIC = b"PAR1"
_SUFFIX_SEPS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
#: First bytes of each compression format, and the suffixes that claim one.
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"),
          (b"PK\x03\x04", "zip"), (b"PK\x05\x06", "zip"))
_SUFFIX_COMPRESSION = {".gz": "gzip", ".gzip": "gzip", ".bz2": "bz2", ".xz": "xz", ".zip": "zip"}
# A byte that never occurs in text logs; multi-character separators are rewritten to it so the
# fast C parser can be used (pandas' python engine is ~20x slower on ml-10m's 10M lines).
_UNIT_SEPARATOR = "\x1f"
_EXPECTED = ("a CSV/TSV/'::'-separated text or Parquet file of interactions "
             "(optionally .gz/.bz2/.xz/.zip compressed)")


@dataclass
class _Source:
    """A file to parse: its path, label, and its bytes once decompressed (None: read ``path``)."""

    path: Path
    where: str
    data: bytes | None = None
    suffix: str = ""
    parquet: bool = False
    _bytes: bytes | None = field(default=None, repr=False)

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        if self._bytes is None:
            self._bytes = self.path.read_bytes()
        return self._bytes

    def head(self, size: int) -> bytes:
        if self.data is not None:
            return self.data[:size]
        with self.path.open("rb") as handle:
            return handle.read(size)


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
    rating_scale: RatingScale | tuple[float, ...] | None = None,
    rating_range: tuple[float, float] | None = None,
    integer_ids: bool = False,
    name: str | None = None,
) -> pd.DataFrame:
    """Read and validate an interaction log.

    Parameters
    ----------
    path
        A text file (CSV/TSV/any separator) or Parquet (``.parquet``/``.pq`` or by its
        bytes), possibly gzip/bzip2/xz/zip compressed.
    user_col, item_col, rating_col, timestamp_col
        Source column names; ``rating_col=None`` for implicit data (rating 1.0),
        ``timestamp_col=None`` when there is no time (timestamp 0).
    sep
        Field separator for text files; None picks it from the extension (``.csv``, ``.tsv``,
        also under a compression suffix) or sniffs the first line (``::``, tab, comma,
        semicolon, pipe).
    names
        Column names for a text file *without* a header row (e.g. MovieLens ``u.data``).
    encoding
        Text encoding.
    rating_scale
        The declared scale: a :class:`RatingScale` or ``(min, max)`` / ``(min, max, step)``;
        ratings outside it (or off its steps) raise. Without it the scale is inferred: ratings
        must be finite and within ``10**6`` times the median rating magnitude.
    rating_range
        Inclusive ``(min, max)``, the same as ``rating_scale=(min, max)``.
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
    scale = _scale(rating_scale, rating_range)
    wanted = {"user": user_col, "item": item_col}
    if rating_col is not None:
        wanted["rating"] = rating_col
    if timestamp_col is not None:
        wanted["timestamp"] = timestamp_col
    if len(set(wanted.values())) != len(wanted):
        raise ValueError(f"{where}: the same source column is used twice: {wanted}")

    source = _open_source(path, where)
    if source.parquet:
        raw = _read_parquet(source, list(wanted.values()))
        text, locate = None, _row_locator
    else:
        sep = sep if sep is not None else _sniff(source, encoding)
        raw = _read_text_columns(source, list(wanted.values()), sep, names, encoding)
        text = _column_text(source, raw, sep=sep, names=names, encoding=encoding)
        locate = _line_locator(source, encoding, header=names is None, n_rows=len(raw))
    if len(raw) == 0:
        raise DataError(f"{where}: no interactions (the file has no data rows)")

    ids = {
        column: parse_ids(raw[column], column, where, locate=locate, integer_ids=integer_ids,
                          text=None if text is None else (lambda c=column: text(c)))
        for column in (user_col, item_col)
    }
    if rating_col is None:
        ratings = np.ones(len(raw), dtype=np.float32)
    else:
        ratings = parse_ratings(raw[rating_col], rating_col, where, locate=locate, scale=scale,
                                infer_scale=True)
    if timestamp_col is None:
        timestamps = np.zeros(len(raw), dtype=np.int64)
    else:
        timestamps = parse_timestamps(raw[timestamp_col], timestamp_col, where, locate=locate)
    frame = pd.DataFrame(
        {"user_id": ids[user_col], "item_id": ids[item_col], "rating": ratings,
         "timestamp": timestamps},
        columns=list(COLUMNS),
    )
    return _drop_duplicate_pairs(frame, where)


def sniff_separator(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """Guess a text file's field separator from its extension or first lines.

    Raises ``DataError`` naming the file when no separator can be recognised.
    """
    path = Path(path)
    return _sniff(_open_source(path, str(path)), encoding)


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
    empty fields as missing (so a title such as ``"NA"`` stays text). Compressed files are
    decompressed. Parse failures raise ``DataError`` naming the file.
    """
    path = Path(path)
    source = _open_source(path, where or str(path))
    return _parse_text(source, sep=sep, names=names, encoding=encoding, dtype=dtype,
                       nrows=nrows, keep_default_na=keep_default_na)


# --------------------------------------------------------------------------------------------
# internals: finding, decompressing and parsing the file


def _scale(rating_scale, rating_range) -> tuple[float, float, float | None] | None:
    """``(min, max, step or None)`` from the reader's scale options, or None."""
    if rating_scale is not None and rating_range is not None:
        raise ValueError("pass rating_scale or rating_range, not both")
    if rating_scale is None and rating_range is None:
        return None
    if isinstance(rating_scale, RatingScale):
        return (float(rating_scale.min), float(rating_scale.max), float(rating_scale.step))
    given = tuple(rating_scale if rating_scale is not None else rating_range)
    if len(given) not in (2, 3) or not all(np.isfinite(np.asarray(given, dtype=float))):
        raise ValueError(f"a rating scale is (min, max) or (min, max, step), got {given!r}")
    low, high = float(given[0]), float(given[1])
    step = float(given[2]) if len(given) == 3 else None
    if not low < high or (step is not None and step <= 0):
        raise ValueError(f"invalid rating scale {given!r}: needs min < max and step > 0")
    return (low, high, step)


def _open_source(path: Path, where: str) -> _Source:
    """Check that ``path`` is a file; decompress it; tell Parquet from text."""
    if path.is_dir():
        raise DataError(f"{where}: is a directory; expected {_EXPECTED}")
    if not path.exists():
        raise DatasetNotFoundError(f"{where}: no such file")
    if not path.is_file():
        raise DataError(f"{where}: not a regular file; expected {_EXPECTED}")
    source = _Source(path, where)
    try:
        head = source.head(8)
    except OSError as exc:
        raise DataError(f"{where}: cannot read the file: {exc}") from exc
    compression = next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)
    suffix = path.suffix.lower()
    claimed = _SUFFIX_COMPRESSION.get(suffix)
    if claimed is not None and compression != claimed:
        raise DataError(f"{where}: named {suffix} but its first bytes {head[:4]!r} are not "
                        f"{claimed} data; rename or recompress it")
    if compression is not None:
        source.data = _decompress(path, compression, where)
        head = source.data[:8]
    if claimed is not None:
        suffix = Path(path.stem).suffix.lower()
    source.suffix = suffix
    source.parquet = suffix in PARQUET_SUFFIXES or head.startswith(_PARQUET_MAGIC)
    return source


def _decompress(path: Path, compression: str, where: str) -> bytes:
    # A file that is entirely read into memory; a crafted archive may expand enormously.
    try:
        if compression == "zip":
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.infolist() if not m.is_dir()]
                if len(members) != 1:
                    raise DataError(
                        f"{where}: a zip archive must hold exactly one file, it holds "
                        f"{len(members)}: {[m.filename for m in members][:10]}"
                    )
                return archive.read(members[0])
        opener = {"gzip": gzip.decompress, "bz2": bz2.decompress, "xz": lzma.decompress}
        return opener[compression](path.read_bytes())
    except DataError:
        raise
    except (OSError, EOFError, ValueError, lzma.LZMAError, zipfile.BadZipFile,
            NotImplementedError, RuntimeError) as exc:
        raise DataError(f"{where}: not a readable {compression} file: {exc}") from exc


def _sniff(source: _Source, encoding: str) -> str:
    by_suffix = _SUFFIX_SEPS.get(source.suffix)
    if by_suffix is not None:
        return by_suffix
    sample = source.head(64 * 1024).decode(encoding, errors="replace")
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
            f"{source.where}: cannot detect the field separator from the first line "
            f"{first_line[:80]!r}; pass sep="
        ) from exc


def _parse_text(
    source: _Source,
    *,
    sep: str,
    names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    dtype: dict | None = None,
    nrows: int | None = None,
    keep_default_na: bool = True,
) -> pd.DataFrame:
    options: dict = {"header": None if names is not None else "infer", "encoding": encoding,
                     "low_memory": False}
    if names is not None:
        options["names"] = list(names)
    if dtype is not None:
        options["dtype"] = dtype
    if nrows is not None:
        options["nrows"] = nrows
    if not keep_default_na:
        options["keep_default_na"] = False
        options["na_values"] = [""]
    data: str | Path | io.BytesIO = source.path if source.data is None else io.BytesIO(
        source.data)
    shown_sep = sep
    if len(sep) > 1:
        raw = source.read_bytes()
        if _UNIT_SEPARATOR.encode() in raw:
            options["engine"] = "python"
            options.pop("low_memory")
            data, sep = io.BytesIO(raw), re.escape(sep)
        else:
            try:
                encoded = sep.encode(encoding)
            except (UnicodeEncodeError, LookupError) as exc:
                raise DataError(f"{source.where}: separator {sep!r}: {exc}") from exc
            data = io.BytesIO(raw.replace(encoded, _UNIT_SEPARATOR.encode()))
            sep = _UNIT_SEPARATOR
    try:
        return pd.read_csv(data, sep=sep, **options)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{source.where}: the file is empty") from exc
    except (pd.errors.ParserError, UnicodeError, LookupError, csv.Error, ValueError,
            TypeError, OverflowError, IndexError) as exc:
        raise DataError(
            f"{source.where}: cannot parse as {shown_sep!r}-separated text: {str(exc).strip()}"
        ) from exc


def _read_parquet(source: _Source, columns: list[str]) -> pd.DataFrame:
    """Read only ``columns`` of a Parquet file, checking that they exist."""
    import pyarrow.parquet as pq

    target = source.path if source.data is None else io.BytesIO(source.data)
    try:
        found = pq.read_schema(target).names
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise DataError(f"{source.where}: not a readable Parquet file: {exc}") from exc
    _check_columns(columns, found, source.where)
    if len(set(found)) != len(found):
        raise DataError(f"{source.where}: the Parquet file repeats column names: {found}")
    if source.data is not None:
        target.seek(0)
    try:
        table = pq.read_table(target, columns=columns)
        table.validate(full=True)  # e.g. invalid UTF-8 in a string column of a damaged page
        return table.to_pandas().reset_index(drop=True)
    except Exception as exc:  # corrupt pages: thrift, decompression and arrow errors alike
        raise DataError(f"{source.where}: a corrupt or unreadable Parquet file: {exc}") from exc


def _read_text_columns(
    source: _Source, columns: list[str], sep: str, names: Sequence[str] | None, encoding: str
) -> pd.DataFrame:
    """Read a text file, checking that ``columns`` exist and that no row is longer."""
    if names is not None:
        found = [str(c) for c in names]
    else:
        found = _parse_text(source, sep=sep, encoding=encoding, nrows=0).columns
        found = [str(c) for c in found]
    _check_columns(columns, found, source.where)
    # All columns are parsed (no usecols): pandas ignores surplus fields of ragged rows when
    # usecols is given, and a ragged row is a broken file that must be reported.
    table = _parse_text(source, sep=sep, names=names, encoding=encoding)
    if not table.index.equals(pd.RangeIndex(len(table))):
        # pandas silently turns the leading fields into an index when every row is longer
        raise DataError(f"{source.where}: the rows have more fields than the "
                        f"{len(found)} column names {found}")
    return table[columns]


def _column_text(source: _Source, raw: pd.DataFrame, **options) -> Callable[[str], pd.Series]:
    """A function giving a column's raw text (re-parsed as strings, same rows as ``raw``)."""

    def text(column: str) -> pd.Series:
        table = _parse_text(source, dtype={column: str}, **options)
        values = table[column]
        if len(values) != len(raw):
            raise DataError(f"{source.where}: the file changed while it was read")
        return values

    return text


def _row_locator(position: int) -> str:
    return f"at data row {position + 1}"


def _line_locator(
    source: _Source, encoding: str, *, header: bool, n_rows: int
) -> Callable[[int], str]:
    """Words a 0-based data row as ``at data row 2 (line 3)``; computed only for messages.

    The line is given when the non-blank lines (which pandas reads as rows) match the rows
    read; quoted fields spanning lines make it unknowable, and then only the row is given.
    """

    def locate(position: int) -> str:
        text = source.read_bytes().decode(encoding, errors="replace")
        count, line = -1 if header else 0, None
        for number, content in enumerate(io.StringIO(text, newline=None), start=1):
            if content.strip():
                count += 1
                if count == position + 1:
                    line = number
        if line is None or count != n_rows:
            return _row_locator(position)
        return f"at data row {position + 1} (line {line})"

    return locate


def _check_columns(wanted: list[str], found: Sequence[str], where: str) -> None:
    missing = [c for c in wanted if c not in found]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {missing}; found columns {list(found)} "
            "(pass user_col=/item_col=/rating_col=/timestamp_col=, or rating_col=None / "
            "timestamp_col=None when the data has none)"
        )


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
