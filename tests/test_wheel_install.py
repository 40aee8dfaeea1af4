"""The wheel, installed into a fresh venv, runs ``recsys-ebm train`` and ``report`` by itself.

No network: the wheel goes into a new venv without its dependencies, and the venv reaches the
third-party packages of the running environment through a ``.pth`` file listing its
site-packages folders. A path line of a ``.pth`` file is only added to ``sys.path`` (the ``.pth``
files inside it are not run), so an editable install of ``recsys_ebm`` in the running
environment stays out of the new venv; the test checks that ``recsys_ebm`` is the wheel's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest
from conftest import build_wheel

from recsys_ebm._compat import tomllib
from recsys_ebm.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


def _fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, cwd=tmp_path)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    Path(site, "_running_env_deps.pth").write_text("\n".join(deps) + "\n", encoding="utf-8")
    return venv


def _small_log(movielens_dir: Path, path: Path) -> Path:
    ratings = pd.read_csv(movielens_dir / "ml-100k" / "u.data", sep="\t",
                          names=["user_id", "item_id", "rating", "timestamp"])
    ratings[ratings["user_id"] <= 150].to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_the_installed_wheel_trains_and_reports_outside_the_checkout(tmp_path, movielens_dir):
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "recsys_ebm/py.typed" in names
        # the explorer's page ships with the package
        assert {f"recsys_ebm/explorer/static/{f}" for f in ("index.html", "explorer.js",
                                                            "explorer.css")} <= set(names)
        metadata_file = next(n for n in names if n.endswith(".dist-info/METADATA"))
        wheel_metadata = archive.read(metadata_file).decode()
        assert "License-Expression: MIT" in wheel_metadata  # SPDX (PEP 639)
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    venv = _fresh_venv(tmp_path, wheel)
    work = tmp_path / "work"  # neither the checkout nor the venv
    work.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "MLFLOW_TRACKING_URI")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    def run(*argv: str) -> str:
        done = subprocess.run(list(argv), cwd=work, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"{argv}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    where = run(str(venv / "bin" / "python"), "-c",
                "import recsys_ebm, importlib.metadata as m; print(recsys_ebm.__file__); "
                "print(m.distribution('recsys-ebm').locate_file(''))")
    module_file, dist_root = where.split()
    assert Path(module_file).is_relative_to(venv) and Path(dist_root).is_relative_to(venv)
    assert (Path(module_file).parent / "py.typed").is_file()
    page = run(str(venv / "bin" / "python"), "-c", "from importlib import resources; print(resources."
               "files('recsys_ebm.explorer').joinpath('static', 'index.html').read_text()[:15])")
    assert page.strip() == "<!doctype html>"
    cli = str(venv / "bin" / "recsys-ebm")  # the console script the wheel installed
    assert run(cli, "--version").strip() == f"recsys-ebm {VERSION}"

    data = _small_log(movielens_dir, tmp_path / "first150.csv")
    out = run(cli, "train", "--dataset", str(data), "--model", "ease", "--no-mlflow", "--quiet",
              "--output-dir", str(work / "model"))
    assert "ndcg" in out
    assert any((work / "model").iterdir())
    run(cli, "report", "--dataset", str(data), "--models", "pop,ease", "--seeds", "0",
        "--no-grid", "--no-mlflow", "--quiet", "--output-dir", str(work / "reports"))
    assert list((work / "reports").rglob("*.md")) and list((work / "reports").rglob("*.json"))


def test_version_falls_back_to_the_source_tree_pyproject(monkeypatch, capsys):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"recsys-ebm {VERSION}"
