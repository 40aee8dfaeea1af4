"""The tuned options and grids of pipelines/ ship in the wheel as ``recsys_ebm.pipelines`` and
are read through ``recsys_ebm.config.read_pipeline`` (from the source tree and from the wheel)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import build_wheel

from recsys_ebm._compat import tomllib
from recsys_ebm.config import read_pipeline

ROOT = Path(__file__).resolve().parents[1]
TUNED = sorted(p.name for p in (ROOT / "pipelines").glob("*.toml"))


def test_loader_reads_the_repository_pipelines():
    assert "grids.toml" in TUNED and "dpebm.toml" in TUNED
    for name in TUNED:
        with open(ROOT / "pipelines" / name, "rb") as handle:
            assert read_pipeline(name.removesuffix(".toml")) == tomllib.load(handle)
    assert read_pipeline("no-such-model") is None


def test_loader_reads_another_folder(tmp_path):
    (tmp_path / "ease.toml").write_text("[model]\nl2 = 7.0\n")
    assert read_pipeline("ease", tmp_path) == {"model": {"l2": 7.0}}
    assert read_pipeline("als", tmp_path) is None


def test_train_options_default_to_the_tuned_file():
    from recsys_ebm.cli.common import model_options_from_args

    args = argparse.Namespace(model="ease", config=None, overrides=[], seed=None)
    tuned = read_pipeline("ease")["model"]
    options = model_options_from_args(args)
    assert {k: options[k] for k in tuned} == tuned
    args = argparse.Namespace(model="ease", config=None, overrides=[("l2", 3.0)], seed=5)
    assert model_options_from_args(args)["l2"] == 3.0 and model_options_from_args(args)["seed"] == 5


def test_wheel_ships_the_pipelines_and_the_loader_reads_them(tmp_path):
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "unzipped")
    for name in TUNED:
        assert f"recsys_ebm/pipelines/{name}" in names
    # every package of the source tree is in the wheel (the package list is explicit)
    for init in (ROOT / "recsys_ebm").rglob("__init__.py"):
        assert init.relative_to(ROOT).as_posix() in names
    script = ("import recsys_ebm, recsys_ebm.pipelines as p\n"
              "from recsys_ebm.config import read_pipeline\n"
              "from recsys_ebm.experiments.tuning import load_grids, tuned_defaults\n"
              "assert recsys_ebm.__file__.startswith({!r}), recsys_ebm.__file__\n"
              "assert p.__doc__\n"
              "assert read_pipeline('grids')['grid'] and load_grids()['itemknn']\n"
              "print(sorted(tuned_defaults('dpebm').items()))\n").format(str(tmp_path / "unzipped"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "unzipped")}
    outside = tmp_path / "elsewhere"  # neither the checkout nor the unzipped wheel
    outside.mkdir()
    out = subprocess.run([sys.executable, "-c", script], check=True, cwd=outside, env=env,
                         capture_output=True, text=True).stdout
    with open(ROOT / "pipelines" / "dpebm.toml", "rb") as handle:
        assert out.strip() == str(sorted(tomllib.load(handle)["model"].items()))
