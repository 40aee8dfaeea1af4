"""SIGKILL at many points of real writes: a model save, an export and its resumption, a
download. After every kill the path holds the old or the new complete artifact (never a
half-written one), and the next run succeeds and removes what the killed one left."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsys_ebm.models import load_model
from recsys_ebm.models.dot_ebm import DotEBM

KILLS = 20


def _kill_after_lines(argv: list[str], n_lines: int, delay: float) -> None:
    """Start ``argv``, wait for ``n_lines`` lines on its stdout, then ``delay`` s, and SIGKILL it."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for _ in range(n_lines):
            if not proc.stdout.readline():
                break
        time.sleep(delay)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


_SAVER = """
import sys
import numpy as np, scipy.sparse as sp
from recsys_ebm.models.dot_ebm import DotEBM
rng = np.random.default_rng(0)
train = sp.csr_matrix((rng.random((300, 400)) < 0.05).astype(np.float32))
model = DotEBM(dim=32, epochs=1, lr=0.05).fit(train, show_progress=False)
for i in range(1000):
    print(i, flush=True)
    model.save(sys.argv[1], meta={"round": i})
"""


def test_killed_model_saves_leave_a_complete_model(tmp_path):
    target = tmp_path / "model"
    rng = np.random.default_rng(0)
    train = sp.csr_matrix((rng.random((300, 400)) < 0.05).astype(np.float32))
    DotEBM(dim=32, epochs=1, lr=0.05).fit(train, show_progress=False).save(target, meta={"round": -1})
    rounds = set()
    for kill in range(KILLS):
        _kill_after_lines([sys.executable, "-c", _SAVER, str(target)], 1 + kill % 4, 0.003 * kill)
        model = load_model(target)  # complete and verified (manifest), or this raises
        rounds.add(model.meta["round"])
        assert model.n_users == 300 and model.seen_items.nnz == train.nnz
    assert len(rounds) > 1, "the kills never landed after a save"
    DotEBM(dim=32, epochs=1, lr=0.05).fit(train, show_progress=False).save(target)
    assert _leftovers(tmp_path, {"model"}) == []


_EXPORTER = """
import sys
from recsys_ebm.models import load_model
from recsys_ebm.export.writer import export_recommendations
model = load_model(sys.argv[3])
resume = sys.argv[2] == "resume"
export_recommendations(model, sys.argv[1], k=20, temperature=0.5, seed=3, chunk_size=150,
                       resume=resume, show_progress=False,
                       on_chunk=lambda i, n: print(i, flush=True))
print("done", flush=True)
"""


def test_killed_exports_keep_the_previous_file_and_resume_to_the_same_rows(tmp_path):
    rng = np.random.default_rng(0)
    train = sp.csr_matrix((rng.random((3000, 2000)) < 0.01).astype(np.float32))
    model_dir = tmp_path / "models" / "dpebm"
    DotEBM(dim=16, epochs=1, lr=0.05, seed=0).fit(train, show_progress=False).save(model_dir)
    out = tmp_path / "top.parquet"
    subprocess.run([sys.executable, "-c", _EXPORTER, str(out), "fresh", str(model_dir)], check=True,
                   stdout=subprocess.DEVNULL)
    reference = pd.read_parquet(out)
    for kill in range(KILLS):
        _kill_after_lines([sys.executable, "-c", _EXPORTER, str(out), "resume", str(model_dir)],
                          1 + kill % 5, 0.005 * kill)
        # the old complete file until a run completes, then the new one: never a partial file
        pd.testing.assert_frame_equal(pd.read_parquet(out), reference)
    done = subprocess.run([sys.executable, "-c", _EXPORTER, str(out), "resume", str(model_dir)],
                          check=True, capture_output=True, text=True)
    assert done.stdout.strip().endswith("done")
    pd.testing.assert_frame_equal(pd.read_parquet(out), reference)
    assert _leftovers(tmp_path, {"top.parquet", "models"}) == []


class _SlowZip(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        try:
            for start in range(0, len(self.body), 4096):
                self.wfile.write(self.body[start:start + 4096])
                time.sleep(0.002)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the downloader was killed

    def log_message(self, *args) -> None:
        pass


_DOWNLOADER = """
import sys
from recsys_ebm.data.download import download_movielens
from recsys_ebm.data.variants import replace_checksum
print("start", flush=True)
download_movielens(replace_checksum("100k", None), sys.argv[1], base_url=sys.argv[2], show_progress=False)
print("done", flush=True)
"""


@pytest.fixture
def slow_server(movielens_dir):
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("u.data", "u.item", "u.genre"):
            zf.write(movielens_dir / "ml-100k" / name, f"ml-100k/{name}")
    _SlowZip.body = buffer.getvalue()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowZip)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/movielens"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_killed_downloads_leave_nothing_and_the_next_one_completes(tmp_path, slow_server):
    root = tmp_path / "data"
    for kill in range(KILLS):
        _kill_after_lines([sys.executable, "-c", _DOWNLOADER, str(root), slow_server], 1, 0.05 * kill)
        assert not (root / "ml-100k").exists() or (root / "ml-100k" / "u.data").is_file()
        if (root / "ml-100k").exists():
            break  # a kill landed after the rename: the complete copy is there
    if not (root / "ml-100k").exists():
        done = subprocess.run([sys.executable, "-c", _DOWNLOADER, str(root), slow_server],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.strip().endswith("done"), done.stderr[-500:]
    assert len(pd.read_csv(root / "ml-100k" / "u.data", sep="\t", header=None)) == 100_000
    # the next run finds the copy and removes what the killed ones left
    from recsys_ebm.data.download import locate_or_download

    assert locate_or_download("100k", root, download=False) == root / "ml-100k"
    assert _leftovers(root, {"ml-100k"}) == []
