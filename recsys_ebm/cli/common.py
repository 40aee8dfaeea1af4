"""Argument groups and helpers shared by the subcommands of ``recsys-ebm``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from recsys_ebm._compat import tomllib
from recsys_ebm.config import pipeline_defaults, read_pipeline
from recsys_ebm.experiments import runner
from recsys_ebm.models import MODELS, model_class


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with a TOML literal value (``lr=0.01``, ``user_model="free"``, bare words ok)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default="movielens",
                       help="'movielens' or a path to a CSV/Parquet interactions file")
    group.add_argument("--variant", default="100k", help="MovieLens variant: 100k, 1m, 10m, 20m, 25m, 32m, latest-small")
    group.add_argument("--data-dir", default=None,
                       help="folder holding ml-100k/ etc. (default: $RECSYS_EBM_DATA_DIR or ./data)")
    group.add_argument("--no-download", action="store_true", help="never touch the network")
    group.add_argument("--user-col", default="user_id", help="user column of a custom file")
    group.add_argument("--item-col", default="item_id", help="item column of a custom file")
    group.add_argument("--rating-col", default="rating", help="rating column ('' for none)")
    group.add_argument("--timestamp-col", default="timestamp", help="timestamp column ('' for none)")


def add_model_args(parser: argparse.ArgumentParser, extra_models: tuple[str, ...] = ()) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="dpebm", choices=[*sorted(MODELS), *extra_models],
                       help=("a model; the rating-only baselines (" + ", ".join(extra_models) + ") "
                             "run with the rating protocols") if extra_models else None)
    group.add_argument("--config", default=None,
                       help="TOML file with model options (default: pipelines/<model>.toml when present)")
    group.add_argument("--set", dest="overrides", action="append", default=[], type=parse_override,
                       metavar="KEY=VALUE", help="override one model option (repeatable)")
    group.add_argument("--seed", type=int, default=None, help="model seed (split seeds are fixed by the protocol)")
    group.add_argument("--no-refit", action="store_true",
                       help="keep the early-stopped model instead of refitting on all of train")
    group.add_argument("--threads", type=int, default=1,
                       help="torch intra-op threads (0 = torch's default); 1 is fastest for "
                            "ML-100K-sized models and does not slow down when cores are shared")


def add_tracking_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tracking")
    group.add_argument("--experiment", default="recsys_ebm", help="MLflow experiment name")
    group.add_argument("--tracking-uri", default=None,
                       help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or MLflow's local store)")
    group.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")



def dataset_from_args(args) -> runner.Dataset:
    options = {}
    if args.dataset != "movielens":
        options = {"user_col": args.user_col, "item_col": args.item_col,
                   "rating_col": args.rating_col or None, "timestamp_col": args.timestamp_col or None}
    return runner.load_dataset(args.dataset, args.variant, args.data_dir,
                               download=not args.no_download, **options)


def model_options_from_args(args, *, with_seed: bool = True, kind: str = "ranking") -> dict[str, Any]:
    """Options of ``args.model``: ``--config`` (default ``pipelines/<model>.toml`` when present,
    its ``[model]`` table updated by its ``[<kind>]`` table: "ranking" or "rating" protocols)
    updated by every ``--set`` and, when ``with_seed``, by ``--seed``; validated here."""
    cls = model_class(args.model)
    overrides = dict(args.overrides)
    if with_seed and args.seed is not None:
        overrides["seed"] = args.seed
    if args.config is not None:
        with open(args.config, "rb") as handle:
            parsed = tomllib.load(handle)
        if kind in parsed and "model" in parsed:  # a pipeline with per-kind defaults
            return runner.model_options(cls, None, overrides, defaults=pipeline_defaults(parsed, kind))
        return runner.model_options(cls, args.config, overrides, table="model")
    tuned = read_pipeline(args.model)  # the shipped pipelines/<model>.toml, None when absent
    if tuned is not None and "model" not in tuned:
        raise ValueError(f"pipelines/{args.model}.toml: no [model] table; found {sorted(tuned)}")
    return runner.model_options(cls, None, overrides, defaults=pipeline_defaults(tuned, kind) if tuned else None)


def tracker_from_args(args, run_name: str):
    from recsys_ebm.tracking import Tracker

    return Tracker(args.experiment, tracking_uri=args.tracking_uri, run_name=run_name,
                   enabled=not args.no_mlflow, quiet=args.quiet)


def set_threads(threads: int) -> None:
    if threads > 0:
        import torch

        torch.set_num_threads(threads)



def split_ids(text: str) -> list[str]:
    """``"50, 172,181"`` -> ``["50", "172", "181"]`` (empty entries dropped)."""
    return [entry.strip() for entry in text.split(",") if entry.strip()]


def write_out(text: str) -> None:
    """The CLI's only way to stdout (the library logs instead)."""
    sys.stdout.write(text)
    sys.stdout.flush()

