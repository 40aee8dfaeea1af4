"""Shared fixtures: where the real MovieLens copies live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ray_fixtures import ray_cluster_info  # noqa: F401  (the Ray tests' two-node cluster)

REPO_ROOT = Path(__file__).resolve().parents[1]
#: CI clones the repo with ``shared/`` beside it: ``<parent>/shared/data/movielens``.
DEFAULT_MOVIELENS_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens"


@pytest.fixture(scope="session")
def movielens_dir() -> Path:
    """Folder holding ``ml-100k/`` and ``ml-latest-small/`` (env RECSYS_EBM_DATA_DIR overrides).

    Fails (never skips) when the folder is missing, so a broken checkout cannot pass silently.
    """
    from_env = os.environ.get("RECSYS_EBM_DATA_DIR")
    path = Path(from_env).expanduser().resolve() if from_env else DEFAULT_MOVIELENS_DIR
    expected = [path / "ml-100k" / "u.data", path / "ml-latest-small" / "ratings.csv"]
    missing = [str(p) for p in expected if not p.is_file()]
    if missing:
        source = "RECSYS_EBM_DATA_DIR" if from_env else f"the default {DEFAULT_MOVIELENS_DIR}"
        pytest.fail(
            f"MovieLens copies not found: {missing} (looked in {source}). Unpack ml-100k.zip and "
            f"ml-latest-small.zip from https://files.grouplens.org/datasets/movielens/ there, or "
            "set RECSYS_EBM_DATA_DIR to a folder holding ml-100k/ and ml-latest-small/.",
            pytrace=False,
        )
    return path


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread: the suite's models are small, and with two threads on a busy 2-core
    machine OpenMP spin-waiting made training ~8x slower with identical results."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_wheel(tmp_path: Path) -> Path:
    """The project's wheel, built from a copy of the sources (so the build leaves no build/ or
    egg-info in the checkout), in ``tmp_path/dist``."""
    import shutil
    import subprocess
    import sys

    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO_ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("recsys_ebm", "pipelines"):
        shutil.copytree(REPO_ROOT / name, source / name, ignore=ignore)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("recsys_ebm-*.whl")
    return wheel


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a server a test starts)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(proc, url: str, log_path: Path, what: str, timeout: float = 90.0) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log when ``proc`` exits or
    ``timeout`` seconds pass."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready after {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)


def stop_process_group(proc) -> None:
    """Stop a server started with ``start_new_session=True`` (its whole process group), even
    if it already exited."""
    import os
    import signal
    import subprocess

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
