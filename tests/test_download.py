"""Downloads against a real HTTP server on 127.0.0.1 serving small hand-made archives.

Nothing here is MovieLens data: the archives hold a few made-up lines in ml-100k's format.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import logging
import socket
import stat
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_movielens import GENRES_100K

from recsys_ebm.data.download import download_movielens, locate_or_download
from recsys_ebm.data.movielens import load_movielens
from recsys_ebm.data.variants import replace_checksum
from recsys_ebm.errors import DataError, DatasetNotFoundError

U_DATA = "1\t10\t5\t100\n1\t20\t3\t200\n2\t10\t4\t300\n"
U_ITEM = (
    "10|Made-up Movie (2000)|01-Jan-2000||http://example.invalid|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "20|Another One (2001)|01-Jan-2001||http://example.invalid|0|0|0|0|0|1|0|0|1|0|0|0|0|0|0|0|0|0|0\n"
)
U_GENRE = "".join(f"{g}|{i}\n" for i, g in enumerate(GENRES_100K))


def make_zip(members: dict[str, str], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in members.items():
            zf.writestr(name, text)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # Unix, so external_attr carries the file mode
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buffer.getvalue()


GOOD_ZIP = make_zip(
    {
        "ml-100k/u.data": U_DATA,
        "ml-100k/u.item": U_ITEM,
        "ml-100k/u.genre": U_GENRE,
        "ml-100k/README": "hand-made test archive\n",
    }
)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@dataclass
class Server:
    """Serves ``files[path] = bytes``; ``truncate[path] = n`` sends only n bytes of the body
    (with the full Content-Length) and then closes the connection."""

    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    truncate: dict[str, int] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            state.requests.append(self.path)
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404, "Not Found")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = state.truncate.get(self.path)
            if cut is None:
                self.wfile.write(body)
                return
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/movielens"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/movielens"  # nothing listens there any more


def entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


# ----------------------------------------------------------------------------- happy path


def test_download_extract_and_load(tmp_path, server, capsys):
    server.files["/movielens/ml-100k.zip"] = GOOD_ZIP
    variant = replace_checksum("100k", md5(GOOD_ZIP))
    data = load_movielens(variant, tmp_path / "data", base_url=server.url, show_progress=True)
    assert server.requests == ["/movielens/ml-100k.zip"]
    assert data.path == tmp_path / "data" / "ml-100k"
    assert entries(tmp_path / "data") == ["ml-100k"]  # no temp file or folder left
    assert entries(data.path) == ["README", "u.data", "u.genre", "u.item"]
    assert data.ratings.values.tolist() == [[1, 10, 5.0, 100], [1, 20, 3.0, 200], [2, 10, 4.0, 300]]
    assert data.items["genres"].tolist() == ["Action", "Comedy|Drama"]
    progress = capsys.readouterr().err
    assert "ml-100k.zip" in progress and "100%" in progress  # the tqdm bar ran to completion

    # the second time the local copy is used: no request at all
    again = locate_or_download(variant, tmp_path / "data", base_url=server.url)
    assert again == data.path and len(server.requests) == 1


def test_base_url_from_environment(tmp_path, server, monkeypatch):
    server.files["/movielens/ml-100k.zip"] = GOOD_ZIP
    monkeypatch.setenv("RECSYS_EBM_MOVIELENS_URL", server.url)
    monkeypatch.setenv("RECSYS_EBM_DATA_DIR", str(tmp_path / "env_dir"))
    path = locate_or_download(replace_checksum("100k", md5(GOOD_ZIP)), show_progress=False)
    assert path == tmp_path / "env_dir" / "ml-100k" and (path / "u.data").read_text() == U_DATA


def test_variant_without_checksum_warns(tmp_path, server, caplog):
    server.files["/movielens/ml-100k.zip"] = GOOD_ZIP
    with caplog.at_level(logging.WARNING, logger="recsys_ebm.data.movielens"):
        path = download_movielens(replace_checksum("100k", None), tmp_path, base_url=server.url)
    assert (path / "u.data").is_file()
    assert "no published checksum" in caplog.text and md5(GOOD_ZIP) in caplog.text


# ----------------------------------------------------------------------------- failures leave nothing


def test_checksum_mismatch_leaves_nothing(tmp_path, server):
    server.files["/movielens/ml-100k.zip"] = GOOD_ZIP
    variant = replace_checksum("100k", "0" * 32)
    with pytest.raises(DataError) as info:
        locate_or_download(variant, tmp_path, base_url=server.url)
    message = str(info.value)
    assert "0" * 32 in message and md5(GOOD_ZIP) in message
    assert f"{server.url}/ml-100k.zip" in message
    assert entries(tmp_path) == []


def test_the_real_published_checksum_rejects_a_foreign_archive(tmp_path, server):
    server.files["/movielens/ml-100k.zip"] = GOOD_ZIP
    with pytest.raises(DataError, match="expected md5 0e33842e24a9c977be4e0107933c0723"):
        locate_or_download("100k", tmp_path, base_url=server.url)
    assert entries(tmp_path) == []


def test_connection_dropped_mid_body_leaves_nothing(tmp_path, server):
    server.files["/movielens/ml-100k.zip"] = GOOD_ZIP
    server.truncate["/movielens/ml-100k.zip"] = len(GOOD_ZIP) // 2
    variant = replace_checksum("100k", md5(GOOD_ZIP))
    with pytest.raises(DatasetNotFoundError) as info:
        locate_or_download(variant, tmp_path, base_url=server.url)
    message = str(info.value)
    assert f"{server.url}/ml-100k.zip" in message
    assert str(tmp_path / "ml-100k") in message  # says where to put a manual copy
    assert entries(tmp_path) == []


def test_bad_zip_leaves_nothing(tmp_path, server):
    garbage = b"PK\x03\x04 this is not really a zip archive" * 10
    server.files["/movielens/ml-100k.zip"] = garbage
    with pytest.raises(DataError, match=r"ml-100k\.zip: not a valid zip archive"):
        locate_or_download(replace_checksum("100k", md5(garbage)), tmp_path, base_url=server.url)
    assert entries(tmp_path) == []


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        ("../escaped.txt", "'..' component"),
        ("ml-100k/../../escaped.txt", "'..' component"),
        ("/tmp/absolute.txt", "absolute path"),
        ("C:/windows/absolute.txt", "absolute path"),
    ],
)
def test_path_traversal_is_rejected(tmp_path, server, member, reason):
    archive = make_zip({"ml-100k/u.data": U_DATA, member: "evil"})
    server.files["/movielens/ml-100k.zip"] = archive
    data_dir = tmp_path / "data"
    with pytest.raises(DataError) as info:
        locate_or_download(replace_checksum("100k", md5(archive)), data_dir, base_url=server.url)
    assert repr(member) in str(info.value) and reason in str(info.value)
    assert entries(data_dir) == []
    assert entries(tmp_path) == ["data"]  # nothing escaped next to the data dir either


def test_symlink_member_is_rejected(tmp_path, server):
    archive = make_zip({"ml-100k/u.data": U_DATA}, symlinks={"ml-100k/u.item": "/etc/passwd"})
    server.files["/movielens/ml-100k.zip"] = archive
    with pytest.raises(DataError, match=r"'ml-100k/u\.item' \(symbolic link\)"):
        locate_or_download(replace_checksum("100k", md5(archive)), tmp_path, base_url=server.url)
    assert entries(tmp_path) == []


def test_archive_without_the_ratings_file(tmp_path, server):
    archive = make_zip({"other/u.data": U_DATA})
    server.files["/movielens/ml-100k.zip"] = archive
    with pytest.raises(DataError, match=r"no ml-100k/u\.data .*\['other'\]"):
        locate_or_download(replace_checksum("100k", md5(archive)), tmp_path, base_url=server.url)
    assert entries(tmp_path) == []


def test_http_404(tmp_path, server):
    with pytest.raises(DatasetNotFoundError, match=r"HTTP 404.*Download .*ml-1m\.zip"):
        locate_or_download("1m", tmp_path, base_url=server.url)
    assert entries(tmp_path) == []


def test_offline_error_names_the_folder_and_url(tmp_path):
    url = closed_port_url()
    with pytest.raises(DatasetNotFoundError) as info:
        locate_or_download("100k", tmp_path / "data", base_url=url)
    message = str(info.value)
    assert str(tmp_path / "data" / "ml-100k") in message
    assert f"{url}/ml-100k.zip" in message
    assert (
        "md5 of ml-100k.zip: 0e33842e24a9c977be4e0107933c0723" in message
    )  # to check a manual copy
    assert entries(tmp_path / "data") == []


def test_download_false_never_touches_the_network(tmp_path, server):
    server.files["/movielens/ml-100k.zip"] = GOOD_ZIP
    with pytest.raises(DatasetNotFoundError, match=r"ml-100k.*u\.data"):
        locate_or_download("100k", tmp_path, download=False, base_url=server.url)
    assert server.requests == []


def test_download_refuses_to_overwrite(tmp_path, server):
    (tmp_path / "ml-100k").mkdir()
    with pytest.raises(DatasetNotFoundError, match="already exists"):
        download_movielens("100k", tmp_path, base_url=server.url)
    assert server.requests == []
