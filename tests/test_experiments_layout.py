"""experiments/ sits below the CLI: importing it loads no ``recsys_ebm.cli`` module, and it
reads model capabilities from the classes instead of lists of model names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parents[1] / "recsys_ebm" / "experiments"


def test_importing_the_experiments_loads_no_cli_module():
    script = ("import sys\n"
              "import recsys_ebm.experiments.report, recsys_ebm.experiments.render\n"
              "import recsys_ebm.experiments.rating_report, recsys_ebm.experiments.rating_data\n"
              "print(sorted(m for m in sys.modules if m.startswith('recsys_ebm.cli')))\n")
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_no_experiments_module_imports_the_cli_or_lists_model_names():
    for path in EXPERIMENTS.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("recsys_ebm.cli"), path.name
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("recsys_ebm.cli") for a in node.names), path.name
            elif isinstance(node, ast.Name):
                assert node.id not in ("EBM_MODELS", "RATING_MODELS", "DETERMINISTIC_MODELS"), path.name
