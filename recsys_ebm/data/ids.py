"""`IdMap`: raw external ids <-> contiguous internal integer indices; `parse_ids`: the rule
turning a raw id column (from a file or a frame) into int64 or string ids, or a `DataError`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import numpy as np
import pandas as pd

from recsys_ebm.errors import DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class IdMap:
    """Bijection between raw ids and ``0..n-1``, fitted on training data.

    ``raw_ids[index]`` is the raw id of an index; raw ids are kept sorted so that
    the mapping is deterministic for a given set of ids.
    """

    raw_ids: np.ndarray

    @classmethod
    def fit(cls, raw_values) -> IdMap:
        """Build a map from any iterable of raw ids (duplicates allowed)."""
        return cls(np.unique(np.asarray(raw_values)))

    def __len__(self) -> int:
        return len(self.raw_ids)

    # The generated dataclass __eq__/__hash__ compare the ndarray field with ``==`` (ambiguous
    # truth value) and hash it (unhashable), so both are defined on the ids' contents instead.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IdMap):
            return NotImplemented
        return len(self) == len(other) and bool(np.all(self.raw_ids == other.raw_ids))

    def __hash__(self) -> int:
        return hash((len(self.raw_ids), tuple(self.raw_ids[:8].tolist())))

    def to_index(self, raw_values, *, missing: str = "raise") -> np.ndarray:
        """Map raw ids to indices (int64, shape like the input).

        ``missing="raise"`` raises ``KeyError`` naming the first unknown id;
        ``missing="mask"`` returns -1 for unknown ids.
        """
        raw = np.asarray(raw_values)
        if len(self.raw_ids) == 0:
            pos = np.zeros(raw.shape, dtype=np.int64)
            found = np.zeros(raw.shape, dtype=bool)
        else:
            try:
                pos = np.searchsorted(self.raw_ids, raw)
            except TypeError as exc:
                raise KeyError(
                    f"raw ids of type {raw.dtype} cannot be compared with the map's {self.raw_ids.dtype}"
                ) from exc
            pos = np.clip(pos, 0, len(self.raw_ids) - 1)
            found = self.raw_ids[pos] == raw
        if not np.all(found):
            if missing == "raise":
                unknown = raw[~found].ravel()[0]
                unknown = unknown.item() if isinstance(unknown, np.generic) else unknown  # 25, not np.int64(25)
                raise KeyError(f"unknown id {unknown!r} ({int((~found).sum())} unknown in total)")
            if missing != "mask":
                raise ValueError(f"missing must be 'raise' or 'mask', got {missing!r}")
            pos = np.where(found, pos, -1)
        return pos.astype(np.int64)

    def to_raw(self, indices) -> np.ndarray:
        """Map indices back to raw ids; raises ``IndexError`` naming an out-of-range index."""
        idx = np.asarray(indices, dtype=np.int64)
        bad = (idx < 0) | (idx >= len(self.raw_ids))
        if np.any(bad):
            raise IndexError(f"index {int(idx[bad].ravel()[0])} out of range for {len(self)} ids")
        return self.raw_ids[idx]

    def to_list(self) -> list:
        """JSON-serialisable raw ids (numpy scalars converted to Python)."""
        return self.raw_ids.tolist()

    @classmethod
    def from_list(cls, values: list) -> IdMap:
        """Inverse of :meth:`to_list`; the list must be sorted and unique."""
        arr = np.asarray(values)
        if len(arr) > 1 and not np.all(arr[1:] > arr[:-1]):
            raise ValueError("IdMap.from_list expects sorted unique raw ids")
        return cls(arr)


# --------------------------------------------------------------------------------------------
# parsing raw id columns

#: An integer literal: digits with an optional sign (``007`` is the integer 7).
_INT_LITERAL = r"[+-]?[0-9]+"
#: Any decimal number literal (``1``, ``1.0``, ``.5``, ``1e3``).
_NUMBER_LITERAL = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
#: Integer literals written one way only (no sign ``+``, no leading zeros): never look-alikes.
_CANONICAL_INT = r"0|-?[1-9][0-9]*"
_INT64_MAX = np.iinfo(np.int64).max
_ID_SCALARS = (str, int, float, np.integer, np.floating)


def shown(value: object) -> object:
    """A value for messages: numpy scalars as Python ones (``2.5``, not ``np.float64(2.5)``)."""
    return value.item() if isinstance(value, np.generic) else value


def by_position(position: int) -> str:
    """Default row locator for messages: ``at row 3`` (1-based)."""
    return f"at row {position + 1}"


def parse_ids(
    series: pd.Series,
    column: str,
    where: str,
    *,
    locate: Callable[[int], str] = by_position,
    integer_ids: bool = False,
    text: Callable[[], pd.Series] | None = None,
) -> np.ndarray:
    """Validate a raw id column; int64 ids (integer column) or ``object`` strings.

    The rule:

    - a missing (NaN, None, empty or blank) id is an error;
    - an integer-typed column gives int64 ids; a float-typed one too when every value is a
      whole number below 2**53 (else an error naming the value);
    - text (and Python ints/floats mixed with it, which become text, whole floats as
      integers) is stripped;
      when every value is a number, every value must be an integer literal (``1.0``, ``1e3``
      or ``2.5`` is an error) and the ids are integers, compared as numbers (``007`` is 7);
      otherwise the ids are the exact strings, and two values that are the same number
      written differently (``1`` and ``1.0``) are an error naming both;
    - integer literals beyond int64 keep all ids of the column as strings;
    - booleans, bytes, dates, lists and other objects are an error.

    ``text`` returns the column's raw text when ``series`` was parsed as floats from a text
    file (so ``1.0`` can be told from ``1``). ``locate(position)`` words a 0-based row.
    """
    missing = series.isna().to_numpy()
    if missing.any():
        raise DataError(
            f"{where}: column {column!r} has a missing id "
            f"({shown(series.iloc[int(np.flatnonzero(missing)[0])])!r}: an empty or NA field) "
            f"{locate(int(np.flatnonzero(missing)[0]))}"
        )
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype(object)
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        raise DataError(f"{where}: column {column!r} holds booleans ({shown(series.iloc[0])!r}), not ids")
    if pd.api.types.is_integer_dtype(dtype):
        values = series.to_numpy()
        if values.dtype == np.uint64 and values.max() > _INT64_MAX:
            return _text_ids(pd.Series(values.astype(str), dtype=object), column, where, locate,
                             integer_ids)
        return values.astype(np.int64)
    if pd.api.types.is_float_dtype(dtype):
        if text is not None:
            return _text_ids(_stripped(text(), column, where, locate), column, where, locate,
                             integer_ids)
        return _float_ids(series, column, where, locate)
    if isinstance(dtype, pd.StringDtype) or pd.api.types.is_object_dtype(dtype):
        return _text_ids(_stripped(series, column, where, locate), column, where, locate,
                         integer_ids)
    raise DataError(
        f"{where}: column {column!r} holds {dtype} values ({shown(series.iloc[0])!r}), not ids "
        "(ids are integers or strings)"
    )


def _float_ids(series: pd.Series, column: str, where: str, locate) -> np.ndarray:
    values = series.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    bad[~bad] = (values[~bad] != np.round(values[~bad])) | (np.abs(values[~bad]) >= 2**53)
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{where}: column {column!r} has a non-integer id {shown(series.iloc[position])!r} "
            f"{locate(position)}"
        )
    return values.astype(np.int64)


def _stripped(series: pd.Series, column: str, where: str, locate) -> pd.Series:
    """The values as stripped Python strings (ints and floats via ``str``); others refused."""
    if isinstance(series.dtype, pd.StringDtype):
        text = pd.Series(series.to_numpy(dtype=object), dtype=object)
    else:
        values = series.to_numpy(dtype=object)
        for position, value in enumerate(values):
            if not isinstance(value, _ID_SCALARS) or isinstance(value, (bool, np.bool_)):
                raise DataError(
                    f"{where}: column {column!r} holds a {type(value).__name__} value "
                    f"{value!r} {locate(position)}; ids are integers or strings"
                )
        text = pd.Series([_id_text(v) for v in values], dtype=object)
    text = text.str.strip()
    blank = (text == "").to_numpy()
    if blank.any():
        raise DataError(
            f"{where}: column {column!r} has a missing id (a blank "
            f"field) {locate(int(np.flatnonzero(blank)[0]))}"
        )
    return text


def _id_text(value: object) -> str:
    """A scalar id as text: whole floats as integers (as in a float-typed column)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (float, np.floating)) and np.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _text_ids(
    text: pd.Series, column: str, where: str, locate, integer_ids: bool
) -> np.ndarray:
    """Apply the integer/string rule of :func:`parse_ids` to stripped strings."""
    numeric = text.str.fullmatch(_NUMBER_LITERAL).to_numpy(dtype=bool)
    if numeric.all():
        integer = text.str.fullmatch(_INT_LITERAL).to_numpy(dtype=bool)
        if not integer.all():
            position = int(np.flatnonzero(~integer)[0])
            raise DataError(
                f"{where}: column {column!r} has a non-integer id {text.iloc[position]!r} "
                f"{locate(position)} (every id of the column is a number, so ids are "
                "integers: write them without a decimal point or exponent)"
            )
        ints = [int(v) for v in text]
        if max(ints) <= _INT64_MAX and min(ints) >= -_INT64_MAX - 1:
            return np.asarray(ints, dtype=np.int64)
        logger.info("%s: column %r has integer ids beyond int64; read as strings", where, column)
    if integer_ids:
        position = int(np.flatnonzero(~numeric)[0]) if not numeric.all() else 0
        raise DataError(
            f"{where}: column {column!r} has a non-integer id {text.iloc[position]!r} "
            f"{locate(position)}"
        )
    _refuse_lookalike_numbers(text, numeric, column, where, locate)
    return text.to_numpy(dtype=object)


def _refuse_lookalike_numbers(
    text: pd.Series, numeric: np.ndarray, column: str, where: str, locate
) -> None:
    """Raise when two distinct strings of a string id column denote the same number."""
    canonical = text.str.fullmatch(_CANONICAL_INT).to_numpy(dtype=bool)
    if not (numeric & ~canonical).any():
        return  # distinct canonical integer literals are distinct numbers
    seen: dict[object, tuple[str, int]] = {}
    for position in np.flatnonzero(numeric):
        raw = text.iloc[position]
        try:
            key: object = Decimal(raw)
        except (InvalidOperation, ValueError, OverflowError):
            key = raw
        first = seen.setdefault(key, (raw, int(position)))
        if first[0] != raw:
            raise DataError(
                f"{where}: column {column!r} has the ids {first[0]!r} {locate(first[1])} and "
                f"{raw!r} {locate(int(position))}: the same number written differently; the "
                "column holds non-numeric ids too, so ids are compared as text: write each id "
                "one way"
            )
