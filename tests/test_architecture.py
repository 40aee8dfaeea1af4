"""The library's shape, checked: one job per module (an opening docstring, under ~500 lines),
functions under ~60 lines of code, and no words of the issue tracker in library code.
The import layers are checked by import-linter (``make lint``, pyproject.toml contracts)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[1] / "recsys_ebm"
MODULES = sorted(LIBRARY.rglob("*.py"))
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
#: tracker words: issue numbers, acceptance "bars", files that are not in the repository
TRACKER_WORDS = re.compile(r"\bissue\s*#?\d+|\bbar_check\b|\bBAR_[A-Z]+|issue's bar|DESIGN\.md|PROTOCOLS\.md")


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body without its docstring."""
    body = node.body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return 0 if not body else node.end_lineno - body[0].lineno + 1


def test_the_checks_see_the_library():
    assert len(MODULES) > 40 and (LIBRARY / "ranking" / "select.py") in MODULES


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(LIBRARY)))
def test_module_states_its_job_and_stays_small(path: Path):
    text = path.read_text()
    tree = ast.parse(text)
    assert ast.get_docstring(tree), f"{path.name} has no opening docstring saying its job"
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path} has {len(text.splitlines())} lines"
    long = [f"{node.name} ({_code_lines(node)} lines)" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and _code_lines(node) > MAX_FUNCTION_LINES]
    assert not long, f"{path}: functions over {MAX_FUNCTION_LINES} lines: {long}"
    words = TRACKER_WORDS.findall(text)
    assert not words, f"{path}: tracker words {words}"


def test_the_line_counter_counts_code_not_docstrings():
    tree = ast.parse('def f():\n    """doc\n\n    more"""\n    a = 1\n    return a\n')
    assert _code_lines(tree.body[0]) == 2
