"""Fuzzing the readers: random bytes, CSV texts, Parquet files and frames either give a valid
canonical frame / `Interactions` or raise the toolkit's `DataError` with a message."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import math
import zipfile
from datetime import date, datetime, timedelta
from decimal import Decimal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys_ebm.data.interactions import COLUMNS, Interactions
from recsys_ebm.data.readers import read_interactions
from recsys_ebm.errors import DataError

FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
HEADER = ["user_id", "item_id", "rating", "timestamp"]


def assert_valid_ids(ids: pd.Series) -> None:
    if ids.dtype == np.int64:
        return
    assert ids.dtype == object or isinstance(ids.dtype, pd.StringDtype), ids.dtype
    assert all(isinstance(v, str) and v.strip() == v and v for v in ids), ids.tolist()


def assert_valid(frame: pd.DataFrame) -> None:
    """The canonical frame's invariants, and its `Interactions` mapping back to the raw ids."""
    assert list(frame.columns) == list(COLUMNS)
    assert frame.index.equals(pd.RangeIndex(len(frame))) and len(frame) > 0
    assert frame["rating"].dtype == np.float32 and np.isfinite(frame["rating"]).all()
    assert frame["timestamp"].dtype == np.int64
    assert_valid_ids(frame["user_id"])
    assert_valid_ids(frame["item_id"])
    assert not frame.duplicated(["user_id", "item_id"]).any()
    assert_valid_interactions(Interactions.from_frame(frame), frame)


def assert_valid_interactions(inter: Interactions, frame: pd.DataFrame) -> None:
    assert len(inter) == len(frame)
    assert inter.user_idx.dtype == np.int64 and inter.item_idx.dtype == np.int64
    assert inter.shape == (frame["user_id"].nunique(), frame["item_id"].nunique())
    assert inter.user_map.to_raw(inter.user_idx).tolist() == frame["user_id"].tolist()
    assert inter.item_map.to_raw(inter.item_idx).tolist() == frame["item_id"].tolist()
    assert inter.ratings.dtype == np.float32 and np.isfinite(inter.ratings).all()
    assert inter.user_items.shape == inter.shape


def read_or_data_error(path, **options) -> None:
    try:
        frame = read_interactions(path, **options)
    except DataError as exc:
        assert str(exc).strip()
        return
    assert_valid(frame)


# ----------------------------------------------------------------------------- random bytes

COMPRESSORS = {
    "": lambda b: b,
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
}


def zipped(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("inner.csv", data)
    return buffer.getvalue()


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=300).map(lambda b: b"user_id,item_id,rating,timestamp\n" + b),
        st.binary(max_size=300).map(lambda b: b"PAR1" + b + b"PAR1"),
    ),
    suffix=st.sampled_from(["", ".csv", ".tsv", ".dat", ".parquet"]),
    compression=st.sampled_from(["", ".gz", ".bz2", ".xz", ".zip", "lying .gz"]),
)
def test_random_bytes(tmp_path, data, suffix, compression):
    if compression == ".zip":
        data = zipped(data)
    elif compression != "lying .gz":
        data = COMPRESSORS[compression](data)
    path = tmp_path / f"fuzz{suffix}{compression.replace('lying ', '')}"
    path.write_bytes(data)
    read_or_data_error(path)


# ----------------------------------------------------------------------------- random CSV text

cell_text = st.one_of(
    st.integers(1, 30).map(str),
    st.integers(1, 30).map(str),
    st.integers(1, 30).map(str),
    st.integers(-5, 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "nan", "NA", "null", "1.0", "1", "01", "+1", "1e3", "1e30", "True",
                     " 2 ", "inf", "2001-09-09T01:46:40Z", "1970-01-02", "\"q,\"\"x\"", "'"]),
    st.text(max_size=6),
)
NAME_POOL = HEADER + ["x", "u"]


def column_names(n_columns: int):
    return st.one_of(
        st.just(NAME_POOL[:n_columns]),
        st.just(NAME_POOL[:n_columns]),
        st.permutations(NAME_POOL).map(lambda names: names[:n_columns]),
        st.lists(st.sampled_from(NAME_POOL + ["é", ""]), min_size=n_columns,
                 max_size=n_columns),
    )


@st.composite
def csv_texts(draw):
    sep = draw(st.sampled_from([",", "\t", ";", "|", "::", " "]))
    n_columns = draw(st.sampled_from([1, 2, 3, 4, 4, 4, 4, 4, 5, 6]))
    names = draw(column_names(n_columns))
    widths = st.one_of(st.just(n_columns), st.integers(max(0, n_columns - 1), n_columns + 1))
    rows = draw(st.lists(widths.flatmap(lambda w: st.lists(cell_text, min_size=w, max_size=w)),
                         max_size=8))
    quote = draw(st.booleans())

    def line(cells):
        return sep.join(f'"{c}"' if quote else c for c in cells)

    header = draw(st.booleans())
    text = "\n".join(([line(names)] if header else []) + [line(r) for r in rows])
    return text + draw(st.sampled_from(["", "\n", "\r\n", "\n\n"])), sep, names, header


@FUZZ
@given(
    case=csv_texts(),
    pass_sep=st.booleans(),
    suffix=st.sampled_from([".csv", ".txt", ".csv.gz"]),
    implicit=st.booleans(),
)
def test_random_csv_texts(tmp_path, case, pass_sep, suffix, implicit):
    text, sep, names, header = case
    data = text.encode("utf-8")
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    options = {"sep": sep} if pass_sep else {}
    if not header:
        options["names"] = names
    if implicit:
        options.update(rating_col=None, timestamp_col=None)
    try:
        read_or_data_error(path, **options)
    except ValueError as exc:  # a caller error, not a data error: duplicate column arguments
        assert "used twice" in str(exc) or "Duplicate names" in str(exc)


# ----------------------------------------------------------------------------- random Parquet

TYPED_VALUES = {
    pa.int8(): st.integers(-128, 127),
    pa.int64(): st.integers(-(2**63), 2**63 - 1),
    pa.uint64(): st.integers(0, 2**64 - 1),
    pa.float16(): st.floats(width=16).map(np.float16),
    pa.float32(): st.floats(width=32),
    pa.float64(): st.floats(),
    pa.bool_(): st.booleans(),
    pa.string(): st.text(max_size=5),
    pa.binary(): st.binary(max_size=5),
    pa.date32(): st.dates(),
    pa.timestamp("us"): st.datetimes(datetime(1, 1, 1), datetime(9999, 1, 1)),
    pa.timestamp("s", tz="UTC"): st.datetimes(datetime(1900, 1, 1), datetime(2200, 1, 1)),
    pa.duration("s"): st.timedeltas(timedelta(days=-1000), timedelta(days=1000)),
    pa.decimal128(10, 2): st.decimals(-(10**7), 10**7, places=2, allow_nan=False),
    pa.list_(pa.int32()): st.lists(st.integers(-5, 5), max_size=3),
    pa.null(): st.none(),
}


@st.composite
def parquet_tables(draw):
    n_rows = draw(st.integers(0, 12))
    columns = draw(st.one_of(
        st.just(HEADER),
        st.permutations(HEADER + ["extra"]),
        st.lists(st.sampled_from(HEADER + ["extra"]), min_size=1, max_size=5, unique=True),
    ))
    arrays = {}
    for column in columns:
        kind = draw(st.one_of(st.sampled_from([pa.int64(), pa.string(), pa.float64()]),
                              st.sampled_from(list(TYPED_VALUES))))
        values = draw(st.lists(st.one_of(st.none(), TYPED_VALUES[kind]) if draw(st.booleans())
                               else TYPED_VALUES[kind], min_size=n_rows, max_size=n_rows))
        if draw(st.booleans()) and kind == pa.string():
            arrays[column] = pa.array(values, type=kind).dictionary_encode()
        else:
            arrays[column] = pa.array(values, type=kind)
    return pa.table(arrays)


@FUZZ
@given(table=parquet_tables(), corrupt=st.one_of(st.none(), st.integers(0, 10**6)))
def test_random_parquet(tmp_path, table, corrupt):
    path = tmp_path / "fuzz.parquet"
    pq.write_table(table, path)
    if corrupt is not None:
        data = bytearray(path.read_bytes())
        data[corrupt % len(data)] ^= 0xFF
        path.write_bytes(bytes(data))
    read_or_data_error(path)


# ----------------------------------------------------------------------------- random frames

frame_values = st.one_of(
    st.integers(-(2**64), 2**64),
    st.floats(),
    st.text(max_size=4),
    st.sampled_from([None, True, b"b", "1", "1.0", " 1", "", Decimal("1.5"), date(2000, 1, 1),
                     (1, 2), math.nan, np.int64(3), np.float32(2.5)]),
)


@st.composite
def frames(draw):
    n_rows = draw(st.integers(0, 10))
    columns = draw(st.lists(st.sampled_from(HEADER), min_size=1, max_size=4, unique=True))
    data = {}
    for column in columns:
        homogeneous = draw(st.sampled_from(["mixed", "int", "str"]))
        element = {"mixed": frame_values, "int": st.integers(-3, 3),
                   "str": st.text(max_size=3)}[homogeneous]
        data[column] = draw(st.lists(element, min_size=n_rows, max_size=n_rows))
    return pd.DataFrame(data)


@FUZZ
@given(frame=frames())
def test_random_frames(frame):
    try:
        inter = Interactions.from_frame(frame)
    except DataError as exc:
        assert str(exc).strip()
        return
    assert len(inter) == len(frame)
    assert inter.user_map.to_raw(inter.user_idx).tolist() == inter.to_frame()["user_id"].tolist()
    assert inter.ratings.dtype == np.float32 and np.isfinite(inter.ratings).all()
    assert inter.timestamps.dtype == np.int64
    assert inter.user_items.shape == inter.shape
    for column in ("user_id", "item_id"):
        id_map = inter.user_map if column == "user_id" else inter.item_map
        assert id_map.raw_ids.dtype == np.int64 or all(
            isinstance(v, str) for v in id_map.raw_ids
        )


@pytest.mark.parametrize("make", [gzip.compress, bz2.compress, lzma.compress, zipped])
def test_fuzz_helpers_build_readable_files(tmp_path, make):
    """The generators above produce files the reader accepts when their content is valid."""
    path = tmp_path / "ok.csv"
    path.write_bytes(make(b"user_id,item_id,rating,timestamp\n1,2,3,4\n"))
    assert read_interactions(path).values.tolist() == [[1, 2, 3.0, 4]]
