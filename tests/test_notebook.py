"""notebooks/quickstart.ipynb runs top to bottom (nbclient) on the real ML-100K copy, 2 epochs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO_ROOT / "notebooks" / "quickstart.ipynb"


def _text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output["text"])
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path, movielens_dir, monkeypatch):
    monkeypatch.setenv("QUICKSTART_EPOCHS", "2")
    monkeypatch.setenv("QUICKSTART_OUTPUT", str(tmp_path / "out"))
    monkeypatch.setenv("RECSYS_EBM_DATA_DIR", str(movielens_dir))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel's torch: one thread, like the suite
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # the kernel inherits this environment; run from the repository root like a user would
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO_ROOT)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not any(o.get("output_type") == "error" for o in c.outputs) for c in code)
    text = "\n".join(_text(c) for c in code)
    assert "100,000 ratings by 943 users" in text
    assert "Toy Story (1995)" in text  # titles are joined in
    assert "ndcg" in text and "novelty@10" in text
    figures = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert figures, "the figures cell drew nothing"
    top10 = pd.read_parquet(tmp_path / "out" / "top10.parquet")
    assert len(top10) == 943 * 10 and top10.groupby("user_id").size().eq(10).all()


def test_the_committed_notebook_holds_its_figures_and_no_errors():
    """The notebook is committed executed, figures included (readable without running it)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not any(o.get("output_type") == "error" for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 1
