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
from recsys_ebm.errors import DataError, DatasetNotFoundError, MissingDependencyError, ModelFitError
from recsys_ebm.evaluation.evaluate import format_table
from recsys_ebm.io import atomic_write_bytes
from recsys_ebm.models import MODELS, load_model, model_class
from recsys_ebm.models.rating_baselines import RATING_BASELINES, make_rating_baseline

logger = logging.getLogger("recsys_ebm.cli")

#: Rating-prediction protocols of PROTOCOLS.md (RMSE / MAE over folds).
RATING_PROTOCOLS = ("official-folds", "kfold")

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


def _add_model_args(parser: argparse.ArgumentParser, extra_models: tuple[str, ...] = ()) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="dpebm", choices=[*sorted(MODELS), *extra_models],
                       help=("a model; the rating-only baselines (" + ", ".join(extra_models) + ") "
                             "run with the rating protocols") if extra_models else None)
    group.add_argument("--config", default=None,
                       help="TOML file with model options (default: pipelines/<model>.toml when present)")
    group.add_argument("--set", dest="overrides", action="append", default=[], type=_parse_override,
                       metavar="KEY=VALUE", help="override one model option (repeatable)")
    group.add_argument("--seed", type=int, default=None, help="model seed (split seeds are fixed by the protocol)")
    group.add_argument("--no-refit", action="store_true",
                       help="keep the early-stopped model instead of refitting on all of train")
    group.add_argument("--threads", type=int, default=1,
                       help="torch intra-op threads (0 = torch's default); 1 is fastest for "
                            "ML-100K-sized models and does not slow down when cores are shared")


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
    _add_model_args(evaluate, RATING_BASELINES)
    _add_tracking_args(evaluate)
    evaluate.add_argument("--protocol", default="random", choices=(*runner.RANKING_PROTOCOLS, *RATING_PROTOCOLS),
                          help="top-N protocols, or rating prediction (explicit models such as crbm): "
                               "official-folds = ML-100K u1..u5, kfold = seeded 5-fold row split")
    evaluate.add_argument("--json", dest="json_path", default=None, help="write the metrics here")

    recommend = sub.add_parser("recommend", parents=[common], help="top-k items for users of a saved model")
    recommend.add_argument("--model-path", required=True, help="a directory written by train")
    recommend.add_argument("--user", dest="users", action="append", required=True,
                           help="raw user id (repeatable)")
    recommend.add_argument("--k", type=int, default=10)
    recommend.add_argument("--temperature", type=float, default=0.0,
                           help="0 = exact ranking; > 0 samples from softmax(-E/T)")
    recommend.add_argument("--seed", type=int, default=0, help="sampling seed when temperature > 0")
    _add_anomaly_parser(sub, common)
    _add_export_parser(sub, common)
    _add_report_parser(sub, common)
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


def _set_threads(threads: int) -> None:
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def _train_and_evaluate(args, tracker) -> tuple[runner.Dataset, runner.PreparedData, Any, Any]:
    _set_threads(args.threads)
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
    if args.protocol in RATING_PROTOCOLS:
        return _evaluate_ratings(args)
    if args.model in RATING_BASELINES:
        raise ValueError(f"{args.model!r} predicts ratings only; evaluate it with "
                         f"--protocol {' or '.join(RATING_PROTOCOLS)}")
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


def _evaluate_ratings(args) -> int:
    """RMSE / MAE over rating-prediction folds (PROTOCOLS.md), for explicit-feedback models."""
    from recsys_ebm.evaluation.rating_folds import evaluate_rating_folds

    if args.model in RATING_BASELINES:
        options = dict(args.overrides)
        if args.seed is not None:
            options["seed"] = args.seed
        options = dict(make_rating_baseline(args.model, options).options)  # validates them now

        def factory():
            return make_rating_baseline(args.model, options)
    else:
        if not model_class(args.model).fits_ratings:
            raise ValueError(f"--protocol {args.protocol} needs a rating model (e.g. crbm); "
                             f"{args.model!r} ranks implicit feedback")
        options = _options(args)

        def factory():
            return runner.build_model(args.model, options)
    if args.dataset != "movielens":
        raise ValueError("rating-prediction protocols run on MovieLens variants (--dataset movielens)")
    _set_threads(args.threads)
    with _tracker(args, f"evaluate-{args.model}-{args.protocol}") as tracker:
        tracker.log_params({"model": args.model, "protocol": args.protocol, "config": options})

        def log_fold(fold: str, epoch: int, metrics: dict) -> None:
            tracker.log_metrics({f"{fold}_{k}": v for k, v in metrics.items()}, step=epoch)

        result = evaluate_rating_folds(
            factory, args.variant, args.data_dir,
            protocol=args.protocol, callback=log_fold, show_progress=not args.quiet,
            download=not args.no_download)
        summary = {key: result[key] for key in ("rmse", "rmse_std", "mae", "mae_std")}
        tracker.log_metrics(summary)
        document = {"model": args.model, "dataset": result["dataset"], "protocol": args.protocol,
                    **summary, "metrics": summary, "folds": result["folds"]}
        tracker.log_dict(document, "evaluation.json")
    if args.json_path:
        atomic_write_bytes(args.json_path, json.dumps(document, indent=2).encode())
        logger.info("metrics written to %s", args.json_path)
    lines = [f"{f['fold']}: RMSE {f['rmse']:.4f}  MAE {f['mae']:.4f}" for f in result["folds"]]
    lines.append(f"mean: RMSE {summary['rmse']:.4f} ± {summary['rmse_std']:.4f}  "
                 f"MAE {summary['mae']:.4f} ± {summary['mae_std']:.4f}")
    _print("\n".join(lines) + "\n")
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


# ----------------------------------------------------------------------------- anomaly (issue 6)


def _add_anomaly_parser(sub, common: argparse.ArgumentParser) -> None:
    from recsys_ebm.anomaly import DETECTOR_SPECS
    from recsys_ebm.attacks import ATTACK_KINDS, INTENTS

    anomaly = sub.add_parser(
        "anomaly", parents=[common],
        help="inject a shilling attack and detect it: energy detectors vs RDMA and PCA-VarSelect")
    _add_data_args(anomaly)
    _add_tracking_args(anomaly)
    attack = anomaly.add_argument_group("attack")
    attack.add_argument("--attack", default="average", choices=ATTACK_KINDS)
    attack.add_argument("--intent", default="push", choices=INTENTS)
    attack.add_argument("--attack-size", type=float, default=0.05,
                        help="fake profiles as a share of the genuine users")
    attack.add_argument("--filler-size", type=float, default=0.05,
                        help="filler items per profile as a share of the catalog")
    attack.add_argument("--seed", type=int, default=0, help="attack seed (targets and profiles)")
    detect = anomaly.add_argument_group("detection")
    detect.add_argument("--detector", dest="detectors", action="append",
                        choices=[*DETECTOR_SPECS, "all"],
                        help="detector (repeatable; default all but random); RDMA and "
                             "PCA-VarSelect always run alongside")
    detect.add_argument("--setting", default="both", choices=("clean", "contaminated", "both"))
    detect.add_argument("--fpr", type=float, default=0.01, help="target false-positive rate")
    detect.add_argument("--split-seed", type=int, default=0, help="seed of the genuine user split")
    detect.add_argument("--set", dest="overrides", action="append", default=[], type=_parse_override,
                        metavar="KEY=VALUE",
                        help="override an AnomalyConfig option, dotted for the models "
                             "(crbm.epochs=10, dpebm.dim=32; repeatable)")
    detect.add_argument("--threads", type=int, default=None,
                        help="torch threads (1 is fastest for these small models on a busy machine)")
    detect.add_argument("--json", dest="json_path", default=None, help="write the results here")
    detect.add_argument("--grid", action="store_true",
                        help="run every attack (random/average/bandwagon/segment) x size (1/5/10%%) "
                             "x filler (3/5/10%%) and write the markdown report + plot")
    detect.add_argument("--report-dir", default=None,
                        help="where --grid writes anomaly.md/.png (default reports/<dataset>-<variant>)")


def _anomaly_config(args):
    import dataclasses

    from recsys_ebm.anomaly import CLASSIC_DETECTORS, AnomalyConfig

    values = dataclasses.asdict(AnomalyConfig())
    for key, value in args.overrides:
        target, *path = key.split(".")
        if path:
            if target not in ("crbm", "dpebm") or len(path) != 1:
                raise ValueError(f"--set {key}: dotted keys are crbm.<option> or dpebm.<option>")
            values[target][path[0]] = value
        else:
            values[target] = value
    chosen = args.detectors or ["all"]
    if "all" not in chosen:
        values["detectors"] = tuple(dict.fromkeys([*chosen, *CLASSIC_DETECTORS]))
    values["settings"] = ("clean", "contaminated") if args.setting == "both" else (args.setting,)
    values["fpr"] = args.fpr
    values["split_seed"] = args.split_seed
    return AnomalyConfig.from_dict(values)


def _cell_metrics(cell) -> dict[str, float]:
    metrics = {"shift_attacked": cell.shift_attacked}
    for outcome in cell.outcomes:
        for name, value in outcome.metrics.items():
            metrics[f"{outcome.setting}.{outcome.detector}.{name}"] = value
    return metrics


def cmd_anomaly(args) -> int:
    import dataclasses
    import tempfile

    from recsys_ebm import anomaly
    from recsys_ebm.data.interactions import Interactions

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    config = _anomaly_config(args)
    dataset = _dataset(args)
    genuine = Interactions.from_frame(dataset.ratings, name=dataset.name)
    label = f"{args.dataset}-{args.variant}" if args.dataset == "movielens" else dataset.name
    run_name = "anomaly-grid" if args.grid else f"anomaly-{args.attack}-{args.intent}"
    with _tracker(args, run_name) as tracker:
        tracker.log_params({"anomaly": dataclasses.asdict(config), "grid": args.grid,
                            "attack": {"kind": args.attack, "intent": args.intent,
                                       "attack_size": args.attack_size,
                                       "filler_size": args.filler_size, "seed": args.seed}})
        tracker.log_dataset(dataset.name, dataset.checksum, source=dataset.source,
                            n_users=genuine.n_users, n_items=genuine.n_items, n_ratings=len(genuine))

        def log_cell(cell) -> None:
            name = (f"{cell.attack.kind}-{cell.attack.attack_size:g}-{cell.attack.filler_size:g}"
                    f"-s{cell.attack.seed}")
            if args.grid:
                with tracker.child(name) as child:
                    child.log_params(dataclasses.asdict(cell.attack))
                    child.log_metrics(_cell_metrics(cell))
            else:
                tracker.log_metrics(_cell_metrics(cell))

        if args.grid:
            result = anomaly.run_grid(genuine, config, intent=args.intent, seed=args.seed,
                                      on_cell=log_cell)
        else:
            result = anomaly.run_grid(genuine, config, kinds=(args.attack,),
                                      attack_sizes=(args.attack_size,),
                                      filler_sizes=(args.filler_size,), intent=args.intent,
                                      seed=args.seed, bar_seeds=(), on_cell=log_cell)
        bar = anomaly.bar_check(result.table)
        document = {"dataset": dataset.name, "config": dataclasses.asdict(config),
                    "info": result.info, "results": result.table.to_dict("records"),
                    "interactions": result.interactions.to_dict("records"),
                    "bar": bar.to_dict("records")}
        tracker.log_dict(document, "anomaly.json")
        tracker.log_table(result.table, "anomaly_cells.csv")
        for row in document["bar"]:
            tracker.log_metrics({f"bar.{row['setting']}.{row['attack']}.auc": row["auc"],
                                 f"bar.{row['setting']}.{row['attack']}.classic_auc":
                                     row["classic_auc"]})
        if args.grid:
            out = Path(args.report_dir or Path("reports") / label)
            anomaly.write_report(result, out / "anomaly.md", out / "anomaly.png", dataset=dataset.name,
                                 command="make anomaly")
            tracker.log_artifact(out / "anomaly.md", "report")
            tracker.log_artifact(out / "anomaly.png", "report")
        elif result.histograms:
            with tempfile.TemporaryDirectory() as tmp:
                plot = Path(tmp) / "anomaly.png"
                anomaly.plot_histograms(result, plot)
                tracker.log_artifact(plot, "report")
    if args.json_path:
        atomic_write_bytes(args.json_path, json.dumps(document, indent=2, default=_anomaly_jsonable).encode())
        logger.info("results written to %s", args.json_path)
    columns = ["setting", "attack", "attack_size", "filler_size", "detector", "auc", "fpr",
               "detection_rate", "precision", "f1", "shift_filtered"]
    if not args.grid:
        _print(anomaly.markdown_table(result.table[columns]) + "\n")
        if len(result.interactions):
            _print("\ninteraction level:\n" + anomaly.markdown_table(result.interactions[
                ["corruption", "detector", "auc", "fpr", "detection_rate", "f1"]]) + "\n")
        if len(result.table):
            _print(f"\nprediction shift of the target with the attack: "
                   f"{result.table['shift_attacked'].iloc[0]:+.3f}\n")
    if len(bar):
        _print("\n" + anomaly.markdown_table(bar) + "\n")
    return 0


def _anomaly_jsonable(obj: Any) -> Any:
    return obj.tolist() if hasattr(obj, "tolist") else str(obj)


# ----------------------------------------------------------------------------- export (issue 4)


def _add_export_parser(sub, common: argparse.ArgumentParser) -> None:
    export = sub.add_parser(
        "export", parents=[common],
        help="every user's top-k unseen items (or k sampled at --temperature) to Parquet/CSV")
    _add_data_args(export)
    group = export.add_argument_group("model")
    group.add_argument("--model", default="dpebm", choices=sorted(MODELS),
                       help="model to train first (with its defaults) when --model-path is not given")
    group.add_argument("--model-path", default=None, help="export this directory written by train")
    group.add_argument("--config", default=None,
                       help="TOML file with model options (default: pipelines/<model>.toml when present)")
    group.add_argument("--set", dest="overrides", action="append", default=[], type=_parse_override,
                       metavar="KEY=VALUE", help="override one model option (repeatable)")
    group.add_argument("--no-refit", action="store_true",
                       help="keep the early-stopped model instead of refitting on all of train")
    _add_tracking_args(export)
    out = export.add_argument_group("export")
    out.add_argument("--k", type=int, default=100, help="items per user")
    out.add_argument("--output", required=True, help="Parquet file (CSV when it ends in .csv)")
    out.add_argument("--temperature", type=float, default=0.0,
                     help="0 = exact ranking (probabilities reported at T = 1); > 0 samples k "
                          "distinct items from softmax(-E/T)")
    out.add_argument("--seed", type=int, default=0, help="sampling seed when temperature > 0")
    out.add_argument("--resume", action="store_true",
                     help="continue an interrupted export to the same --output from its finished chunks")
    out.add_argument("--chunk-size", type=int, default=16384, help="users per resumable chunk")
    out.add_argument("--threads", type=int, default=0, help="worker threads (0 = every CPU)")


def cmd_export(args) -> int:
    from recsys_ebm.export import ExportConfig, export_job

    config = ExportConfig(k=args.k, temperature=args.temperature, seed=args.seed,
                          chunk_size=args.chunk_size, n_threads=args.threads)
    options: dict[str, Any] = {}
    if args.model_path is None:
        config_file = args.config
        if config_file is None and (PIPELINES_DIR / f"{args.model}.toml").is_file():
            config_file = PIPELINES_DIR / f"{args.model}.toml"
        options = runner.model_options(model_class(args.model), config_file, dict(args.overrides),
                                       table="model" if config_file else None)
    dataset = _dataset(args)
    with _tracker(args, f"export-{args.model}") as tracker:
        result = export_job(dataset, args.output, model_name=args.model, model_path=args.model_path,
                            options=options, refit=not args.no_refit, config=config,
                            resume=args.resume, tracker=tracker, show_progress=not args.quiet)
        run_id = tracker.run_id
    _print(f"exported {result.n_rows:,} rows for {result.n_users:,} users to {result.path} "
           f"in {result.seconds:.1f} s ({result.users_per_second:,.0f} users/s"
           + (f", {result.resumed_chunks} chunks resumed" if result.resumed_chunks else "") + ")"
           + (f"; MLflow run {run_id}" if run_id else "") + "\n")
    return 0


# ----------------------------------------------------------------------------- report (issue 5)


def _add_report_parser(sub, common: argparse.ArgumentParser) -> None:
    from recsys_ebm.evaluation.report import DEFAULT_TEMPERATURES, REPORT_PROTOCOLS

    report = sub.add_parser(
        "report", parents=[common],
        help="compare every model (tuned on validation, refit, 3 seeds) and write "
             "reports/<dataset>/<protocol>.md + .json + PNG plots")
    _add_data_args(report)
    _add_tracking_args(report)
    group = report.add_argument_group("report")
    group.add_argument("--protocol", default="random", choices=REPORT_PROTOCOLS,
                       help="a top-N protocol, or 'ratings': RMSE/MAE of the rating models on the "
                            "official ML-100K folds (seeded 5-fold elsewhere)")
    group.add_argument("--models", default=None,
                       help=f"comma-separated models (default: all of {','.join(MODELS)}; "
                            "for --protocol ratings the rating models, always with the bias baseline)")
    group.add_argument("--seeds", default="0,1,2", help="comma-separated model seeds")
    group.add_argument("--output-dir", default="reports", help="the report lands in DIR/<dataset>/")
    group.add_argument("--grids", default=None,
                       help="TOML with [grid.<model>] tables (default: pipelines/grids.toml)")
    group.add_argument("--no-grid", action="store_true",
                       help="no tuning: every model runs with its tuned defaults")
    group.add_argument("--set", dest="overrides", action="append", default=[], type=_parse_override,
                       metavar="MODEL.KEY=VALUE",
                       help="override one option of one model on top of every grid point (repeatable)")
    group.add_argument("--temperatures", default=",".join(f"{t:g}" for t in DEFAULT_TEMPERATURES),
                       help="comma-separated temperatures of the EBMs' trade-off curve")
    group.add_argument("--threads", type=int, default=1,
                       help="torch/BLAS threads (0 = the libraries' defaults); 1 was fastest on 2 shared cores")


def cmd_report(args) -> int:
    from recsys_ebm.evaluation import report

    overrides: dict[str, dict[str, Any]] = {}
    for key, value in args.overrides:
        model, dot, option = key.partition(".")
        if not dot or not option:
            raise ValueError(f"report --set expects MODEL.KEY=VALUE, got {key!r}")
        overrides.setdefault(model, {})[option] = value
    extra: dict[str, Any] = {"grids_file": args.grids} if args.grids else {}
    config = report.ReportConfig(
        dataset=args.dataset, variant=args.variant, data_dir=args.data_dir,
        download=not args.no_download, protocol=args.protocol,
        models=tuple(m.strip() for m in args.models.split(",")) if args.models else None,
        seeds=tuple(int(s) for s in args.seeds.split(",")), output_dir=args.output_dir,
        temperatures=tuple(float(t) for t in args.temperatures.split(",")),
        use_grids=not args.no_grid, overrides=overrides, threads=args.threads or None,
        experiment=args.experiment, tracking_uri=args.tracking_uri, mlflow=not args.no_mlflow,
        show_progress=not args.quiet, command=report.command_line(args), **extra)
    result = report.run_report(config)
    _print(report.summary_frame(result.document).to_string(float_format=lambda v: f"{v:.4f}") + "\n")
    _print(f"report written to {result.markdown} (+ {result.json.name}, {len(result.plots)} plots) "
           f"in {result.document['timing']['total_seconds'] / 60:.1f} min\n")
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "recommend": cmd_recommend,
            "anomaly": cmd_anomaly, "export": cmd_export, "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except (DataError, DatasetNotFoundError, ModelFitError, MissingDependencyError, FileNotFoundError,
            KeyError, ValueError) as exc:
        logger.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
