"""``--quiet`` keeps MLflow's own chatter off the terminal: its INFO lines (database setup, input
example validation) and its artifact progress bars; what the toolkit logs itself, and MLflow's
warnings, still show (the pyfunc model is logged from code: MLflow has no pickle to warn of)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from recsys_ebm.tracking.quiet import PROGRESS_BAR_VARIABLE, quiet_mlflow

REPO_ROOT = Path(__file__).resolve().parents[1]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_quiet_block_silences_mlflow_and_restores_it(monkeypatch):
    monkeypatch.delenv(PROGRESS_BAR_VARIABLE, raising=False)
    root = logging.getLogger("mlflow")
    level, seen = root.level, _Records()
    root.setLevel(logging.INFO)  # as MLflow sets it up
    root.addHandler(seen)
    store_logger, pyfunc_logger = logging.getLogger("mlflow.store.db.utils"), logging.getLogger("mlflow.pyfunc")
    try:
        with quiet_mlflow():
            store_logger.info("Creating initial MLflow database tables...")
            pyfunc_logger.warning("a warning that matters")
            assert os.environ[PROGRESS_BAR_VARIABLE] == "false"
        assert seen.messages == ["a warning that matters"]
        assert PROGRESS_BAR_VARIABLE not in os.environ and root.level == logging.INFO
        store_logger.info("shown again")
        assert seen.messages[1:] == ["shown again"]
    finally:
        root.removeHandler(seen)
        root.setLevel(level)


def test_train_quiet_prints_only_the_toolkits_lines(tmp_path, movielens_dir):
    ratings = pd.read_csv(movielens_dir / "ml-100k" / "u.data", sep="\t",
                          names=["user_id", "item_id", "rating", "timestamp"])
    data = tmp_path / "first150.csv"
    ratings[ratings["user_id"] <= 150].to_csv(data, index=False)
    env = {**{k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",
                                                               PROGRESS_BAR_VARIABLE)},
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from recsys_ebm.cli import main; sys.exit(main())",
         "train", "--dataset", str(data), "--model", "pop", "--quiet", "--output-dir",
         str(tmp_path / "pop"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    # the run was logged (a new database, a pyfunc model read back), and MLflow said nothing
    assert any("MLflow run" in line and "ended: FINISHED" in line for line in lines)
    assert all(" recsys_ebm." in line for line in lines), "\n".join(lines)
    assert "%|" not in done.stderr and "Downloading artifacts" not in done.stderr
