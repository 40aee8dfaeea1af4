"""Build the API reference of ``recsys_ebm`` from its docstrings with pdoc (``make docs``).

Usage: ``python scripts/build_docs.py [OUTPUT_DIR]`` (default ``docs/api``). The docstrings are
numpy style. Any warning raised while pdoc imports and renders the modules (a module that fails
to import, an annotation it cannot parse, a broken docstring include, ...) fails the build with
exit status 1, after the pages are written, so they can still be looked at.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "docs" / "api"


def source_modules() -> list[str]:
    """Every public module of the checkout's ``recsys_ebm``, found from its files."""
    names = []
    for path in sorted((ROOT / "recsys_ebm").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not any(part.startswith("_") for part in parts):
            names.append(".".join(parts))
    return names


def module_specs() -> list[str]:
    """``recsys_ebm`` plus each module pdoc's walk leaves out: pdoc follows a package's
    ``__all__``, which hides the submodules it does not list (``recsys_ebm.export.writer``)."""
    from pdoc.extract import walk_specs

    specs = ["recsys_ebm"]
    covered = set(walk_specs(specs))
    for name in source_modules():
        if name not in covered:
            specs.append(name)
            covered.update(walk_specs([name]))
    return specs


def build(output: Path) -> list[str]:
    """Render the pages into ``output``; return the warnings raised (empty: a clean build)."""
    # pdoc blocks subprocesses while it imports the modules, and warns about it: a dependency
    # asks `uname -p` (platform.processor) on import, which is harmless here
    os.environ["PDOC_ALLOW_EXEC"] = "1"
    sys.path.insert(0, str(ROOT))  # document this checkout, whatever else is installed
    import pdoc
    import pdoc.render

    pdoc.render.configure(docformat="numpy", footer_text=f"recsys_ebm {_version()}")
    with warnings.catch_warnings(record=True) as caught:
        pdoc.pdoc(*module_specs(), output_directory=output)
    return [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught]


def _version() -> str:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


def main(argv: list[str]) -> int:
    output = Path(argv[0]).resolve() if argv else DEFAULT_OUTPUT
    problems = build(output)
    if problems:
        print(f"docs: {len(problems)} warning(s), treated as errors:", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"docs: {output / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
