"""Shared fixtures: where the real MovieLens copies live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
