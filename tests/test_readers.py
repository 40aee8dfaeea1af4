"""read_interactions: formats, canonical dtypes, and an error naming file/column/value per bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys_ebm.data.readers import read_interactions, sniff_separator
from recsys_ebm.errors import DataError, DatasetNotFoundError


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def assert_canonical(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert frame["rating"].dtype == np.float32
    assert frame["timestamp"].dtype == np.int64
    assert isinstance(frame.index, pd.RangeIndex)


def test_csv_with_header(tmp_path):
    path = write(
        tmp_path / "log.csv", "user_id,item_id,rating,timestamp\n1,10,4.5,100\n2,20,3,200\n"
    )
    frame = read_interactions(path)
    assert_canonical(frame)
    assert frame["user_id"].dtype == np.int64 and frame["item_id"].dtype == np.int64
    assert frame["user_id"].tolist() == [1, 2]
    assert frame["item_id"].tolist() == [10, 20]
    np.testing.assert_allclose(frame["rating"], [4.5, 3.0])
    assert frame["timestamp"].tolist() == [100, 200]


def test_custom_column_names_and_tsv(tmp_path):
    path = write(tmp_path / "log.tsv", "u\ti\tr\tt\textra\n7\t8\t2\t5\tx\n")
    frame = read_interactions(path, user_col="u", item_col="i", rating_col="r", timestamp_col="t")
    assert frame.iloc[0].tolist() == [7, 8, 2.0, 5]


def test_headerless_with_names_like_udata(tmp_path):
    path = write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    frame = read_interactions(path, names=["user_id", "item_id", "rating", "timestamp"])
    assert frame["user_id"].tolist() == [196, 186]
    assert frame["timestamp"].tolist() == [881250949, 891717742]


def test_double_colon_separator_is_sniffed(tmp_path):
    path = write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    assert sniff_separator(path) == "::"
    frame = read_interactions(path, names=["user_id", "item_id", "rating", "timestamp"])
    assert frame["item_id"].tolist() == [1193, 661]
    np.testing.assert_allclose(frame["rating"], [5.0, 3.0])


@pytest.mark.parametrize("sep", [",", "\t", ";", "|"])
def test_sniffed_separators(tmp_path, sep):
    rows = ["user_id", "item_id", "rating", "timestamp"], ["1", "2", "3", "4"], ["5", "6", "1", "8"]
    path = write(tmp_path / "log.txt", "\n".join(sep.join(r) for r in rows) + "\n")
    assert sniff_separator(path) == sep
    assert read_interactions(path)["item_id"].tolist() == [2, 6]


def test_unsniffable_separator_names_the_file(tmp_path):
    path = write(tmp_path / "odd.txt", "abc\n")
    with pytest.raises(DataError, match=r"odd\.txt.*sep="):
        read_interactions(path)


def test_implicit_data_without_rating_and_timestamp(tmp_path):
    path = write(tmp_path / "clicks.csv", "user_id,item_id\na,x\nb,y\n")
    frame = read_interactions(path, rating_col=None, timestamp_col=None)
    assert_canonical(frame)
    assert frame["user_id"].tolist() == ["a", "b"]  # string ids are kept as strings
    np.testing.assert_array_equal(frame["rating"].to_numpy(), np.ones(2, dtype=np.float32))
    assert frame["timestamp"].tolist() == [0, 0]


def test_parquet(tmp_path):
    source = pd.DataFrame(
        {
            "user": np.array([3, 1], dtype=np.int32),
            "item": ["p", "q"],
            "stars": [1.5, 5.0],
            "when": pd.to_datetime(["1970-01-01 00:00:10", "2001-09-09 01:46:40"]),
        }
    )
    path = tmp_path / "log.parquet"
    source.to_parquet(path)
    frame = read_interactions(
        path, user_col="user", item_col="item", rating_col="stars", timestamp_col="when"
    )
    assert_canonical(frame)
    assert frame["user_id"].dtype == np.int64
    assert frame["item_id"].tolist() == ["p", "q"]
    assert frame["timestamp"].tolist() == [10, 1_000_000_000]


def test_iso_timestamps_become_unix_seconds(tmp_path):
    path = write(
        tmp_path / "log.csv",
        "user_id,item_id,rating,timestamp\n1,1,1,2001-09-09T01:46:40Z\n1,2,1,1970-01-02\n",
    )
    assert read_interactions(path)["timestamp"].tolist() == [1_000_000_000, 86_400]


def test_float_timestamps_are_floored(tmp_path):
    path = write(tmp_path / "log.csv", "user_id,item_id,rating,timestamp\n1,1,1,10.9\n1,2,1,11.0\n")
    assert read_interactions(path)["timestamp"].tolist() == [10, 11]


def test_duplicates_keep_latest_and_warn(tmp_path, caplog):
    path = write(
        tmp_path / "dups.csv",
        "user_id,item_id,rating,timestamp\n"
        "1,1,2,300\n"  # latest of (1,1): kept
        "1,1,5,100\n"
        "1,1,4,200\n"
        "2,1,3,50\n"
        "2,1,1,50\n",  # tie on (2,1): the later row wins
    )
    with caplog.at_level(logging.WARNING, logger="recsys_ebm.data.readers"):
        frame = read_interactions(path)
    assert frame.values.tolist() == [[1, 1, 2.0, 300], [2, 1, 1.0, 50]]
    assert "dropped 3 duplicate" in caplog.text and "dups.csv" in caplog.text


# ----------------------------------------------------------------------------- error messages


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"nowhere\.csv"):
        read_interactions(tmp_path / "nowhere.csv")


def test_empty_file(tmp_path):
    with pytest.raises(DataError, match=r"empty\.csv.*empty"):
        read_interactions(write(tmp_path / "empty.csv", ""))


def test_header_only_file(tmp_path):
    with pytest.raises(DataError, match=r"head\.csv.*no interactions"):
        read_interactions(write(tmp_path / "head.csv", "user_id,item_id,rating,timestamp\n"))


def test_missing_column_lists_found_columns(tmp_path):
    path = write(tmp_path / "cols.csv", "user,item_id,rating,timestamp\n1,2,3,4\n")
    with pytest.raises(DataError) as info:
        read_interactions(path)
    message = str(info.value)
    assert "cols.csv" in message and "'user_id'" in message
    assert "['user', 'item_id', 'rating', 'timestamp']" in message


def test_missing_parquet_column(tmp_path):
    path = tmp_path / "cols.parquet"
    pd.DataFrame({"user_id": [1], "item_id": [2]}).to_parquet(path)
    with pytest.raises(
        DataError, match=r"cols\.parquet.*'rating'.*found columns \['user_id', 'item_id'\]"
    ):
        read_interactions(path, timestamp_col=None)


def test_corrupt_parquet(tmp_path):
    path = write(tmp_path / "bad.parquet", "this is not parquet")
    with pytest.raises(DataError, match=r"bad\.parquet.*Parquet"):
        read_interactions(path)


BAD_INPUTS = [
    # (description, csv body, kwargs, expected fragments: column, value, row)
    (
        "non-numeric rating",
        "1,1,4,1\n2,2,abc,2\n",
        {},
        ["'rating'", "'abc'", "row 2", "non-numeric"],
    ),
    ("NaN rating", "1,1,4,1\n2,2,,2\n3,3,1,3\n", {}, ["'rating'", "nan", "row 2"]),
    (
        "out-of-range rating",
        "1,1,4,1\n2,2,7,2\n",
        {"rating_range": (1, 5)},
        ["'rating'", "7", "row 2", "[1, 5]"],
    ),
    ("NaN user", "1,1,4,1\n,2,3,2\n", {}, ["'user_id'", "nan", "row 2", "missing id"]),
    ("NaN item", "1,1,4,1\n2,2,4,2\n3,,4,3\n", {}, ["'item_id'", "nan", "row 3"]),
    ("non-integer id", "1,1,4,1\n2.5,2,4,2\n", {}, ["'user_id'", "2.5", "row 2"]),
    (
        "string id when integers required",
        "1,1,4,1\nbob,2,4,2\n",
        {"integer_ids": True},
        ["'user_id'", "'bob'", "row 2"],
    ),
    (
        "unparseable timestamp",
        "1,1,4,2001-01-01\n2,2,4,yesterday\n",
        {},
        ["'timestamp'", "'yesterday'", "row 2"],
    ),
    ("missing timestamp", "1,1,4,1\n2,2,4,\n", {}, ["'timestamp'", "nan", "row 2"]),
]


@pytest.mark.parametrize(
    ("body", "kwargs", "fragments"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_values_name_file_column_value_and_row(tmp_path, body, kwargs, fragments):
    path = write(tmp_path / "bad_input.csv", "user_id,item_id,rating,timestamp\n" + body)
    with pytest.raises(DataError) as info:
        read_interactions(path, **kwargs)
    message = str(info.value)
    assert "bad_input.csv" in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_name_label_is_added_to_messages(tmp_path):
    path = write(tmp_path / "r.csv", "user_id,item_id,rating,timestamp\n1,1,x,1\n")
    with pytest.raises(DataError, match=r"^my ratings \(.*r\.csv\)"):
        read_interactions(path, name="my ratings")


def test_ragged_rows_are_a_data_error(tmp_path):
    path = write(
        tmp_path / "ragged.csv", "user_id,item_id,rating,timestamp\n1,1,1,1\n1,2,3,4,5,6\n"
    )
    with pytest.raises(DataError, match=r"ragged\.csv"):
        read_interactions(path)


# ----------------------------------------------------------------------------- property


frames = st.lists(
    st.tuples(
        st.integers(0, 2**40),
        st.integers(-50, 50),
        st.sampled_from([0.5, 1.0, 2.5, 5.0]),
        st.integers(0, 2**33),
    ),
    min_size=1,
    max_size=30,
    unique_by=lambda row: (row[0], row[1]),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=frames, fmt=st.sampled_from(["csv", "tsv", "parquet"]))
def test_round_trip(tmp_path, rows, fmt):
    source = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    path = tmp_path / f"log.{fmt}"
    if fmt == "parquet":
        source.to_parquet(path)
    else:
        source.to_csv(path, sep="," if fmt == "csv" else "\t", index=False)
    frame = read_interactions(path)
    assert frame["user_id"].tolist() == source["user_id"].tolist()
    assert frame["item_id"].tolist() == source["item_id"].tolist()
    np.testing.assert_array_equal(frame["rating"].to_numpy(), source["rating"].to_numpy(np.float32))
    assert frame["timestamp"].tolist() == source["timestamp"].tolist()


# ----------------------------------------------------------------------------- hostile input


HEADER = "user_id,item_id,rating,timestamp\n"


def test_integer_and_float_looking_ids_are_never_merged(tmp_path):
    # only numbers in the column: ids are integers, and 1.0 is refused rather than read as 1
    path = write(tmp_path / "floats.csv", HEADER + "1,1,4,1\n\n1.0,2,4,2\n")
    with pytest.raises(DataError) as info:
        read_interactions(path)
    assert "column 'user_id' has a non-integer id '1.0' at data row 2 (line 4)" in str(info.value)
    # other text in the column: ids are strings, and two spellings of one number are refused
    path = write(tmp_path / "mixed.csv", HEADER + "1,1,4,1\n1.0,2,4,2\nbob,3,1,3\n")
    with pytest.raises(DataError) as info:
        read_interactions(path)
    message = str(info.value)
    assert "'1' at data row 1 (line 2) and '1.0' at data row 2 (line 3)" in message
    assert "same number written differently" in message
    # distinct strings that are not look-alike numbers stay distinct string ids
    path = write(tmp_path / "text.csv", HEADER + "1,1,4,1\n1a,2,4,2\n2,3,1,3\n")
    assert read_interactions(path)["user_id"].tolist() == ["1", "1a", "2"]


@pytest.mark.parametrize("missing", ["", "nan", "NA", "  "])
def test_a_missing_id_names_file_column_row_and_line(tmp_path, missing):
    path = write(tmp_path / "holes.csv", HEADER + f"1,1,4,1\n{missing},2,4,2\nalice,3,1,3\n")
    with pytest.raises(DataError) as info:
        read_interactions(path)
    message = str(info.value)
    assert "holes.csv" in message and "column 'user_id' has a missing id" in message
    assert "at data row 2 (line 3)" in message


def compressed(kind: str, data: bytes) -> bytes:
    import bz2
    import gzip
    import io
    import lzma
    import zipfile

    if kind == "zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("ratings.csv", data)
        return buffer.getvalue()
    return {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[kind](data)


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz", "zip"])
@pytest.mark.parametrize("named", [True, False])
def test_compressed_files_by_suffix_and_by_magic_bytes(tmp_path, kind, named):
    body = "user_id\titem_id\trating\ttimestamp\n1\t10\t4.5\t100\n2\t20\t3\t200\n"
    path = tmp_path / (f"log.tsv.{kind}" if named else "log.dat")
    path.write_bytes(compressed(kind, body.encode()))
    frame = read_interactions(path)
    assert frame.values.tolist() == [[1, 10, 4.5, 100], [2, 20, 3.0, 200]]


def test_compressed_parquet_and_bad_archives(tmp_path):
    import io

    buffer = io.BytesIO()
    pd.DataFrame({"user_id": [1, 2], "item_id": [3, 4], "rating": [1.0, 2.0],
                  "timestamp": [5, 6]}).to_parquet(buffer)
    (tmp_path / "log.parquet.gz").write_bytes(compressed("gz", buffer.getvalue()))
    assert read_interactions(tmp_path / "log.parquet.gz")["item_id"].tolist() == [3, 4]
    with pytest.raises(DataError, match=r"plain\.csv\.gz: named \.gz but .* not gzip data"):
        read_interactions(write(tmp_path / "plain.csv.gz", HEADER + "1,1,1,1\n"))
    truncated = compressed("gz", (HEADER + "1,1,1,1\n" * 100).encode())[:40]
    (tmp_path / "cut.csv.gz").write_bytes(truncated)
    with pytest.raises(DataError, match=r"cut\.csv\.gz: not a readable gzip file"):
        read_interactions(tmp_path / "cut.csv.gz")


def test_a_directory_is_named_as_such(tmp_path):
    (tmp_path / "ml-custom").mkdir()
    with pytest.raises(DataError) as info:
        read_interactions(tmp_path / "ml-custom")
    message = str(info.value)
    assert "ml-custom: is a directory; expected a CSV/TSV" in message and "Parquet" in message


def test_corrupt_parquet_pages_are_a_data_error(tmp_path):
    path = tmp_path / "pages.parquet"
    frame = pd.DataFrame({"user_id": np.arange(2000), "item_id": np.arange(2000) % 7,
                          "rating": np.ones(2000), "timestamp": np.arange(2000)})
    frame.to_parquet(path)
    data = bytearray(path.read_bytes())
    data[100:300] = b"\xff" * 200  # inside the first column's data pages, schema intact
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"pages\.parquet: a corrupt or unreadable Parquet"):
        read_interactions(path)


def test_more_fields_than_column_names_is_an_error_not_a_shifted_table(tmp_path):
    path = write(tmp_path / "wide.csv", "user_id,item_id\n1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match=r"wide\.csv: the rows have more fields than the 2"):
        read_interactions(path, rating_col=None, timestamp_col=None)


def test_an_absurd_rating_is_refused_without_a_declared_scale(tmp_path):
    path = write(tmp_path / "huge.csv", HEADER + "1,1,4,1\n2,2,1e30,2\n3,3,5,3\n")
    with pytest.raises(DataError) as info:
        read_interactions(path)
    message = str(info.value)
    assert "huge.csv: column 'rating' has a rating 1e+30 at data row 2 (line 3)" in message
    assert "6 orders of magnitude" in message and "rating_scale=" in message
    # play counts spanning a few orders of magnitude are fine
    counts = write(tmp_path / "plays.csv", HEADER + "1,1,1,1\n2,2,3,2\n3,3,250000,3\n")
    assert read_interactions(counts)["rating"].max() == 250000
    # a value beyond float32 is refused whatever the other ratings
    path = write(tmp_path / "big.csv", HEADER + "1,1,1e39,1\n2,2,1e39,2\n")
    with pytest.raises(DataError, match="too large rating 1e[+]39 at data row 1"):
        read_interactions(path)


def test_a_declared_rating_scale(tmp_path):
    from recsys_ebm.data.variants import RatingScale

    path = write(tmp_path / "stars.csv", HEADER + "1,1,4,1\n2,2,4.5,2\n3,3,9,3\n")
    with pytest.raises(DataError, match=r"rating 9.0 at data row 3 \(line 4\) outside"):
        read_interactions(path, rating_scale=(1, 5))
    with pytest.raises(DataError, match=r"rating 4.5 at data row 2 .* in steps of 1"):
        read_interactions(path, rating_scale=(1, 10, 1))
    frame = read_interactions(path, rating_scale=RatingScale(0.5, 10.0, 0.5))
    assert frame["rating"].tolist() == [4.0, 4.5, 9.0]
    with pytest.raises(ValueError, match="min < max"):
        read_interactions(path, rating_scale=(5, 1))
    with pytest.raises(ValueError, match="not both"):
        read_interactions(path, rating_scale=(1, 5), rating_range=(1, 5))
