"""``recsys-ebm``: train, evaluate and recommend from the command line.

Only this module configures logging handlers and writes to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from recsys_ebm import runner
from recsys_ebm._compat import tomllib
from recsys_ebm.errors import DataError, DatasetNotFoundError, ModelFitError
from recsys_ebm.evaluation.evaluate import format_table
from recsys_ebm.io import atomic_write_bytes
from recsys_ebm.models import MODELS, load_model, model_class

logger = logging.getLogger("recsys_ebm.cli")

#: Tuned defaults per model live in pipelines/<model>.toml; used when --config is not given.
PIPELINES_DIR = Path(__file__).resolve().parent.parent / "pipelines"


def _parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with a TOML literal value (``lr=0.01``, ``user_model="free"``, bare words ok)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def _add_data_args(parser: argparse.ArgumentParser) -> None:
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


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="dpebm", choices=sorted(MODELS))
    group.add_argument("--config", default=None,
                       help="TOML file with model options (default: pipelines/<model>.toml when present)")
    group.add_argument("--set", dest="overrides", action="append", default=[], type=_parse_override,
                       metavar="KEY=VALUE", help="override one model option (repeatable)")
    group.add_argument("--seed", type=int, default=None, help="model seed (split seeds are fixed by the protocol)")
    group.add_argument("--no-refit", action="store_true",
                       help="keep the early-stopped model instead of refitting on all of train")


def _add_tracking_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tracking")
    group.add_argument("--experiment", default="recsys_ebm", help="MLflow experiment name")
    group.add_argument("--tracking-uri", default=None,
                       help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or MLflow's local store)")
    group.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    parser = argparse.ArgumentParser(prog="recsys-ebm", description="Energy-based recommender models: "
                                     "train, evaluate, export and recommend.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", parents=[common],
                           help="fit a model on the protocol's train split, evaluate on test")
    _add_data_args(train)
    _add_model_args(train)
    _add_tracking_args(train)
    train.add_argument("--protocol", default="random", choices=runner.RANKING_PROTOCOLS)
    train.add_argument("--output-dir", default=None,
                       help="where the model is saved (default: outputs/<dataset>/<model>)")

    evaluate = sub.add_parser("evaluate", parents=[common], help="run an evaluation protocol and write metrics as JSON")
    _add_data_args(evaluate)
    _add_model_args(evaluate)
    _add_tracking_args(evaluate)
    evaluate.add_argument("--protocol", default="random", choices=runner.RANKING_PROTOCOLS)
    evaluate.add_argument("--json", dest="json_path", default=None, help="write the metrics here")

    recommend = sub.add_parser("recommend", parents=[common], help="top-k items for users of a saved model")
    recommend.add_argument("--model-path", required=True, help="a directory written by train")
    recommend.add_argument("--user", dest="users", action="append", required=True,
                           help="raw user id (repeatable)")
    recommend.add_argument("--k", type=int, default=10)
    recommend.add_argument("--temperature", type=float, default=0.0,
                           help="0 = exact ranking; > 0 samples from softmax(-E/T)")
    recommend.add_argument("--seed", type=int, default=0, help="sampling seed when temperature > 0")
    return parser


def _dataset(args) -> runner.Dataset:
    options = {}
    if args.dataset != "movielens":
        options = {"user_col": args.user_col, "item_col": args.item_col,
                   "rating_col": args.rating_col or None, "timestamp_col": args.timestamp_col or None}
    return runner.load_dataset(args.dataset, args.variant, args.data_dir,
                               download=not args.no_download, **options)


def _options(args) -> dict[str, Any]:
    cls = model_class(args.model)
    config = args.config
    if config is None and (PIPELINES_DIR / f"{args.model}.toml").is_file():
        config = PIPELINES_DIR / f"{args.model}.toml"
    overrides = dict(args.overrides)
    if args.seed is not None:
        overrides["seed"] = args.seed
    return runner.model_options(cls, config, overrides, table="model" if config else None)


def _tracker(args, run_name: str):
    from recsys_ebm.tracking import Tracker

    return Tracker(args.experiment, tracking_uri=args.tracking_uri, run_name=run_name,
                   enabled=not args.no_mlflow)


def _train_and_evaluate(args, tracker) -> tuple[runner.Dataset, runner.PreparedData, Any, Any]:
    dataset = _dataset(args)
    options = _options(args)
    split = runner.make_split(dataset.ratings, args.protocol, seed=0)
    data = runner.prepare(split, args.protocol)
    tracker.log_params({"model": args.model, "protocol": args.protocol, "split_seed": 0,
                        "validation_seed": runner.VALIDATION_SEED, "refit": not args.no_refit,
                        "config": options})
    tracker.log_dataset(dataset.name, dataset.checksum, source=dataset.source,
                        n_train=len(data.train), n_test=len(data.test),
                        n_users=data.train.n_users, n_items=data.train.n_items,
                        n_test_dropped=split.n_dropped)
    model = runner.fit_with_validation(args.model, options, data, refit=not args.no_refit,
                                       callback=tracker.log_epoch, show_progress=not args.quiet)
    result = runner.evaluate_model(model, data, show_progress=not args.quiet)
    tracker.log_metrics({f"test_{k}": v for k, v in result.summary.items()})
    tracker.log_metrics({"best_epoch": model.history.best_epoch})
    return dataset, data, model, result


def cmd_train(args) -> int:
    output = Path(args.output_dir or Path("outputs") / args.dataset.replace("/", "_") / args.model)
    with _tracker(args, f"train-{args.model}") as tracker:
        dataset, data, model, result = _train_and_evaluate(args, tracker)
        model.save(output, meta={"user_ids": data.train.user_map.to_list(),
                                 "item_ids": data.train.item_map.to_list(),
                                 "dataset": dataset.name, "dataset_checksum": dataset.checksum})
        tracker.log_artifacts(output, "model")
        tracker.log_dict(result.summary, "test_metrics.json")
        sample = runner.sample_recommendations(model, data, dataset.items)
        tracker.log_table(sample, "top10_sample.csv")
        run_id = tracker.run_id
    _print(f"\n{args.model} on {dataset.name} ({args.protocol} protocol), test metrics:\n")
    _print(format_table(result.summary, runner.KS) + "\n")
    _print(f"model saved to {output}" + (f"; MLflow run {run_id}" if run_id else "") + "\n")
    return 0


def cmd_evaluate(args) -> int:
    with _tracker(args, f"evaluate-{args.model}-{args.protocol}") as tracker:
        dataset, _, _, result = _train_and_evaluate(args, tracker)
        document = {"model": args.model, "dataset": dataset.name, "protocol": args.protocol,
                    "metrics": result.summary}
        tracker.log_dict(document, "evaluation.json")
    if args.json_path:
        atomic_write_bytes(args.json_path, json.dumps(document, indent=2).encode())
        logger.info("metrics written to %s", args.json_path)
    _print(format_table(result.summary, runner.KS) + "\n")
    return 0


def cmd_recommend(args) -> int:
    import numpy as np

    from recsys_ebm.data.ids import IdMap

    model = load_model(args.model_path)
    meta = getattr(model, "meta", {})
    if "user_ids" not in meta:
        raise DataError(f"{args.model_path}: the saved model has no id maps (was it saved by train?)")
    user_map, item_map = IdMap.from_list(meta["user_ids"]), IdMap.from_list(meta["item_ids"])
    raw = np.asarray(args.users).astype(user_map.raw_ids.dtype)
    users = user_map.to_index(raw)
    ids, scores = model.recommend(users, k=args.k, temperature=args.temperature, rng=args.seed)
    for raw_user, row, row_scores in zip(raw, ids, scores, strict=True):
        items = item_map.to_raw(row[row >= 0])
        _print(f"user {raw_user}: " + ", ".join(f"{i} ({s:.3f})" for i, s in zip(items, row_scores[row >= 0], strict=True)) + "\n")
    return 0


def _print(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "recommend": cmd_recommend}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except (DataError, DatasetNotFoundError, ModelFitError, FileNotFoundError, KeyError, ValueError) as exc:
        logger.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
