"""MovieLens registry, data-dir resolution, parsing of every file format, real ML-100K and
ml-latest-small copies, and the official ML-100K folds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_ebm.data.download import locate_or_download
from recsys_ebm.data.movielens import load_movielens, load_official_fold
from recsys_ebm.data.split import Split
from recsys_ebm.data.variants import (
    VARIANTS,
    MovieLensData,
    get_variant,
    replace_checksum,
    resolve_data_dir,
)
from recsys_ebm.errors import DataError, DatasetNotFoundError

GENRES_100K = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]


# ----------------------------------------------------------------------------- registry


def test_registry_has_every_variant_with_url_checksum_and_scale():
    assert list(VARIANTS) == [
        "ml-100k",
        "ml-1m",
        "ml-10m",
        "ml-20m",
        "ml-25m",
        "ml-32m",
        "ml-latest-small",
    ]
    expected_md5 = {
        "ml-100k": "0e33842e24a9c977be4e0107933c0723",
        "ml-1m": "c4d9eecfca2ab87c1945afe126590906",
        "ml-10m": "ce571fd55effeba0271552578f2648bd",
        "ml-20m": "cd245b17a1ae2cc31bb14903e1204af3",
        "ml-25m": "6b51fb2759a8657d3bfcbfc42b592ada",
        "ml-32m": "d472be332d4daa821edc399621853b57",
        "ml-latest-small": None,
    }
    for name, variant in VARIANTS.items():
        assert variant.md5 == expected_md5[name]
        assert variant.url(None) == f"https://files.grouplens.org/datasets/movielens/{name}.zip"
    assert VARIANTS["ml-10m"].folder == "ml-10M100K"
    assert (
        VARIANTS["ml-100k"].ratings_file == "u.data"
        and VARIANTS["ml-100k"].ratings_format.sep == "\t"
    )
    assert (
        VARIANTS["ml-1m"].ratings_format.sep == "::"
        and VARIANTS["ml-1m"].items_file == "movies.dat"
    )
    assert VARIANTS["ml-25m"].ratings_format.names is None  # CSV with a header
    for name in ("ml-100k", "ml-1m"):
        scale = VARIANTS[name].rating_scale
        assert (scale.min, scale.max, scale.step) == (1.0, 5.0, 1.0)
        assert scale.values().tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    for name in ("ml-10m", "ml-20m", "ml-25m", "ml-32m", "ml-latest-small"):
        scale = VARIANTS[name].rating_scale
        assert (scale.min, scale.max, scale.step) == (0.5, 5.0, 0.5)
        assert len(scale.values()) == 10


def test_url_base_override(monkeypatch):
    variant = VARIANTS["ml-1m"]
    monkeypatch.setenv("RECSYS_EBM_MOVIELENS_URL", "http://mirror.example/ml/")
    assert variant.url() == "http://mirror.example/ml/ml-1m.zip"
    assert variant.url("http://other.example") == "http://other.example/ml-1m.zip"


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("100k", "ml-100k"),
        ("ml-100k", "ml-100k"),
        ("ML-1M", "ml-1m"),
        (" 10m ", "ml-10m"),
        ("latest-small", "ml-latest-small"),
        ("ml-latest-small", "ml-latest-small"),
        ("latest_small", "ml-latest-small"),
        ("32m", "ml-32m"),
    ],
)
def test_get_variant_aliases(alias, name):
    assert get_variant(alias).name == name


def test_get_variant_unknown_lists_known_names():
    with pytest.raises(DataError) as info:
        get_variant("50k")
    message = str(info.value)
    assert "'50k'" in message
    for name in VARIANTS:
        assert name in message


def test_replace_checksum_returns_a_new_variant():
    mirror = replace_checksum("100k", "0" * 32)
    assert mirror.md5 == "0" * 32 and VARIANTS["ml-100k"].md5 == "0e33842e24a9c977be4e0107933c0723"
    assert get_variant(mirror) is mirror


def test_resolve_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RECSYS_EBM_DATA_DIR", raising=False)
    assert resolve_data_dir() == tmp_path / "data"
    monkeypatch.setenv("RECSYS_EBM_DATA_DIR", str(tmp_path / "from_env"))
    assert resolve_data_dir() == tmp_path / "from_env"
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_data_dir("relative") == tmp_path / "relative"


# ----------------------------------------------------------------------------- real copies


def test_load_real_ml100k(movielens_dir):
    data = load_movielens("100k", movielens_dir, download=False)
    assert isinstance(data, MovieLensData) and data.name == "ml-100k"
    assert data.path == movielens_dir / "ml-100k"
    ratings = data.ratings
    assert list(ratings.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert ratings.dtypes.astype(str).tolist() == ["int64", "int64", "float32", "int64"]
    assert len(ratings) == 100_000
    assert ratings["user_id"].nunique() == 943 == data.n_users
    assert ratings["item_id"].nunique() == 1682 == data.n_items
    assert sorted(ratings["rating"].unique().tolist()) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert ratings.iloc[0].tolist() == [196, 242, 3.0, 881250949]  # first line of u.data
    items = data.items.set_index("item_id")
    assert len(items) == 1682
    assert items.loc[1, "title"] == "Toy Story (1995)"
    assert items.loc[1, "genres"] == "Animation|Children's|Comedy"
    assert items.loc[2, "genres"] == "Action|Adventure|Thriller"
    every_genre = set("|".join(items["genres"]).split("|"))
    assert every_genre == set(GENRES_100K)
    assert (
        data.checksum
        == hashlib.sha256((movielens_dir / "ml-100k" / "u.data").read_bytes()).hexdigest()
    )
    assert (data.rating_scale.min, data.rating_scale.max) == (1.0, 5.0)


def test_load_real_latest_small(movielens_dir):
    data = load_movielens("latest-small", movielens_dir, download=False)
    ratings = data.ratings
    assert len(ratings) == 100_836
    assert ratings["user_id"].nunique() == 610 and ratings["item_id"].nunique() == 9724
    assert ratings.dtypes.astype(str).tolist() == ["int64", "int64", "float32", "int64"]
    values = sorted(ratings["rating"].unique().tolist())
    assert values == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]  # half stars
    assert int((ratings["rating"] == 0.5).sum()) == 1370
    items = data.items.set_index("item_id")
    assert len(items) == 9742
    assert items.loc[1, "title"] == "Toy Story (1995)"
    assert items.loc[1, "genres"] == "Adventure|Animation|Children|Comedy|Fantasy"
    assert items.loc[73, "title"] == "Misérables, Les (1995)"  # UTF-8 decoded


def test_official_fold_u1(movielens_dir):
    split = load_official_fold("u1", movielens_dir, download=False)
    assert isinstance(split, Split)
    assert len(split.train) == 80_000 and len(split.test) == 20_000
    assert split.n_dropped == 0 and split.fold_in is None
    assert split.train.dtypes.astype(str).tolist() == ["int64", "int64", "float32", "int64"]
    # PROTOCOLS: test rows with items unseen in train are kept (u1.test has 32 of them)
    assert int((~split.test["item_id"].isin(split.train["item_id"])).sum()) == 32
    assert split.train.iloc[0].tolist() == [1, 1, 5.0, 874965758]


def test_official_folds_ua_and_int_names(movielens_dir):
    ua = load_official_fold("ua", movielens_dir, download=False)
    assert len(ua.train) == 90_570 and len(ua.test) == 9_430
    assert (ua.test.groupby("user_id").size() == 10).all()  # ua.test: exactly 10 per user
    u3 = load_official_fold(3, movielens_dir, download=False)
    assert len(u3.train) + len(u3.test) == 100_000
    with pytest.raises(ValueError, match="'u6'.*u1, u2, u3, u4, u5, ua, ub"):
        load_official_fold("u6", movielens_dir, download=False)


def test_local_copy_is_used_without_network(movielens_dir, monkeypatch):
    # an unroutable mirror: any network use would fail the test
    monkeypatch.setenv("RECSYS_EBM_MOVIELENS_URL", "http://127.0.0.1:9/none")
    assert locate_or_download("100k", movielens_dir, download=True) == movielens_dir / "ml-100k"


def test_missing_copy_without_download_names_folder_and_url(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_movielens("1m", tmp_path / "empty", download=False)
    message = str(info.value)
    assert str(tmp_path / "empty" / "ml-1m") in message
    assert "https://files.grouplens.org/datasets/movielens/ml-1m.zip" in message
    assert not (tmp_path / "empty").exists()  # looking does not create anything


# ----------------------------------------------------------------------------- formats (hand-made)


def write(path: Path, text: str, encoding: str = "utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))


def make_100k(root: Path, data: str = "1\t10\t5\t100\n2\t10\t3\t200\n2\t20\t1\t300\n") -> Path:
    folder = root / "ml-100k"
    write(folder / "u.data", data)
    flags = ["0"] * 19
    write(
        folder / "u.item",
        f"10|Caf\xe9 (1990)|01-Jan-1990||http://x|{'|'.join(flags[:1] + ['1', '0', '1'] + flags[4:])}\n"
        f"20|NA (1991)|01-Jan-1991||http://y|{'|'.join(flags)}\n",
        encoding="latin-1",
    )
    write(folder / "u.genre", "".join(f"{g}|{i}\n" for i, g in enumerate(GENRES_100K)) + "\n")
    return folder


def test_parse_100k_format(tmp_path):
    make_100k(tmp_path)
    data = load_movielens("ml-100k", tmp_path, download=False)
    assert data.ratings.values.tolist() == [[1, 10, 5.0, 100], [2, 10, 3.0, 200], [2, 20, 1.0, 300]]
    assert data.items["title"].tolist() == ["Café (1990)", "NA (1991)"]  # latin-1; "NA" stays text
    assert data.items["genres"].tolist() == ["Action|Animation", ""]


def test_parse_1m_dat_format(tmp_path):
    write(tmp_path / "ml-1m" / "ratings.dat", "1::1193::5::978300760\n2::661::3::978302109\n")
    write(
        tmp_path / "ml-1m" / "movies.dat",
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::Pok\xe9mon: The Movie (1999)::Animation|Children's\n",
        encoding="latin-1",
    )
    data = load_movielens("1m", tmp_path, download=False)
    assert data.ratings.values.tolist() == [[1, 1193, 5.0, 978300760], [2, 661, 3.0, 978302109]]
    assert data.items["title"].tolist()[1] == "Pokémon: The Movie (1999)"  # ':' inside a title
    assert data.items["genres"].tolist() == ["Drama", "Animation|Children's"]


def test_parse_10m_folder_and_half_stars(tmp_path):
    write(
        tmp_path / "ml-10M100K" / "ratings.dat", "1::122::4.5::838985046\n1::185::0.5::838983525\n"
    )
    write(
        tmp_path / "ml-10M100K" / "movies.dat",
        "122::Boomerang (1992)::Comedy|Romance\n185::Net, The (1995)::Action\n",
    )
    data = load_movielens("10m", tmp_path, download=False)
    assert data.path == tmp_path / "ml-10M100K"
    assert data.ratings["rating"].tolist() == [4.5, 0.5]


def test_parse_csv_format(tmp_path):
    write(
        tmp_path / "ml-25m" / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,296,5.0,1147880044\n3,1,3.5,1439474476\n",
    )
    write(
        tmp_path / "ml-25m" / "movies.csv",
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n296,"Pulp Fiction, The (1994)",(no genres listed)\n',
    )
    data = load_movielens("25m", tmp_path, download=False)
    assert data.ratings.values.tolist() == [[1, 296, 5.0, 1147880044], [3, 1, 3.5, 1439474476]]
    assert data.items.set_index("item_id").loc[296, "title"] == "Pulp Fiction, The (1994)"


def test_rating_outside_the_scale_names_file_column_value(tmp_path):
    make_100k(tmp_path, "1\t10\t5\t100\n2\t10\t7\t200\n")
    with pytest.raises(DataError) as info:
        load_movielens("100k", tmp_path, download=False)
    message = str(info.value)
    assert "u.data" in message and "'rating'" in message and "7" in message and "row 2" in message


def test_rating_off_the_step_is_rejected(tmp_path):
    make_100k(tmp_path, "1\t10\t5\t100\n2\t10\t3.5\t200\n")
    with pytest.raises(DataError, match=r"u\.data.*'rating'.*3\.5.*row 2.*steps of 1\.0"):
        load_movielens("100k", tmp_path, download=False)


def test_non_integer_movie_id_is_rejected(tmp_path):
    make_100k(tmp_path, "1\t10\t5\t100\n2\tabc\t3\t200\n")
    with pytest.raises(DataError, match=r"u\.data.*'item_id'.*'abc'.*row 2"):
        load_movielens("100k", tmp_path, download=False)


def test_incomplete_copy_is_reported_not_overwritten(tmp_path):
    (tmp_path / "ml-1m").mkdir()
    (tmp_path / "ml-1m" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetNotFoundError, match=r"ml-1m exists but has no ratings\.dat"):
        locate_or_download("1m", tmp_path, download=True)
    assert (tmp_path / "ml-1m" / "notes.txt").read_text() == "mine"


def test_missing_items_file(tmp_path):
    write(tmp_path / "ml-1m" / "ratings.dat", "1::1::5::1\n")
    with pytest.raises(DatasetNotFoundError, match=r"movies\.dat"):
        load_movielens("1m", tmp_path, download=False)


def test_ratings_frame_matches_read_interactions_dtypes(tmp_path):
    make_100k(tmp_path)
    frame = load_movielens("100k", tmp_path, download=False).ratings
    assert isinstance(frame.index, pd.RangeIndex)
    assert frame["rating"].to_numpy().dtype == np.float32
