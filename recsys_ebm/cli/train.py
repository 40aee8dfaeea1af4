"""``recsys-ebm train``, ``evaluate`` and ``recommend``: fit on a protocol's split, score it, serve a saved model."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from recsys_ebm.atomic import check_replaceable
from recsys_ebm.cli.common import (
    add_data_args,
    add_model_args,
    add_tracking_args,
    dataset_from_args,
    model_options_from_args,
    set_threads,
    split_ids,
    tracker_from_args,
    write_out,
)
from recsys_ebm.data.interactions import Interactions
from recsys_ebm.evaluation.evaluate import format_table
from recsys_ebm.experiments import cluster_fit, runner
from recsys_ebm.experiments.jobs import raw_to_index, saved_id_maps, serving_model
from recsys_ebm.io import atomic_write_bytes, is_model_dir
from recsys_ebm.models import load_model, model_class
from recsys_ebm.models.rating_baselines import RATING_BASELINES, make_rating_baseline
from recsys_ebm.ranking.faiss_index import INDEX_KINDS

logger = logging.getLogger("recsys_ebm.cli")

#: Rating-prediction protocols of docs/protocols.md (RMSE / MAE over folds).
RATING_PROTOCOLS = ("official-folds", "kfold")


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    """The train, evaluate and recommend subcommands."""
    train = sub.add_parser("train", parents=[common],
                           help="fit a model on the protocol's train split, evaluate on test")
    add_data_args(train)
    add_model_args(train)
    add_tracking_args(train)
    train.add_argument("--protocol", default="random", choices=runner.RANKING_PROTOCOLS)
    train.add_argument("--fit", choices=("train", "all"), default="train",
                       help="train: save the model fitted on the protocol's train split (the one "
                            "evaluated); all: evaluate that way, then fit on every interaction with "
                            "the options and epochs it chose and save that model, to serve")
    train.add_argument("--output-dir", default=None,
                       help="where the model is saved (default: outputs/<dataset>/<model>)")
    train.add_argument("--register", default=None, metavar="NAME",
                       help="register the logged MLflow pyfunc model as a version of NAME")
    _add_cluster_args(train)

    evaluate = sub.add_parser("evaluate", parents=[common], help="run an evaluation protocol and write metrics as JSON")
    add_data_args(evaluate)
    add_model_args(evaluate, RATING_BASELINES)
    add_tracking_args(evaluate)
    evaluate.add_argument("--protocol", default="random", choices=(*runner.RANKING_PROTOCOLS, *RATING_PROTOCOLS),
                          help="top-N protocols, or rating prediction (explicit models such as crbm): "
                               "official-folds = ML-100K u1..u5, kfold = seeded 5-fold row split")
    evaluate.add_argument("--json", dest="json_path", default=None, help="write the metrics here")
    _add_cluster_args(evaluate)

    recommend = sub.add_parser("recommend", parents=[common],
                               help="top-k unseen items for users of a saved model, or for a new "
                                    "user's history (folded in, no retraining)")
    recommend.add_argument("--model-path", required=True, help="a directory written by train")
    recommend.add_argument("--user", dest="users", action="append", default=[],
                           help="raw user id of a trained user (repeatable)")
    recommend.add_argument("--history", default=None, metavar="ITEM[:RATING],...",
                           help="a new user's raw item ids (ratings for rating models such as crbm)")
    recommend.add_argument("--history-file", default=None, metavar="PATH",
                           help="a new user's history, one raw item id per line (ITEM<TAB>RATING for "
                                "rating models): for ids that contain commas or colons")
    recommend.add_argument("--include-seen", action="store_true",
                           help="do not leave out the items the user already has (the model's "
                                "seen set: the interactions it was fitted on)")
    recommend.add_argument("--filter-items", default=None, metavar="ITEM,...",
                           help="raw item ids never to recommend (a block-list)")
    recommend.add_argument("--index", default=None, choices=INDEX_KINDS,
                           help="serve through a FAISS index saved beside the model (built on "
                                "first use); flat is exact")
    recommend.add_argument("--k", type=int, default=10)
    recommend.add_argument("--temperature", type=float, default=0.0,
                           help="0 = exact ranking; > 0 samples from softmax(-E/T) (the joint "
                                "CRBM: lists from its block Gibbs chains at temperature T)")
    recommend.add_argument("--seed", type=int, default=0, help="sampling seed when temperature > 0")
    recommend.add_argument("--explain", action="store_true",
                           help="sequence models with attention (attnebm): also print the attention "
                                "over the past events, a Gibbs distribution (weights sum to 1)")



def _add_cluster_args(parser: argparse.ArgumentParser) -> None:
    ray = parser.add_argument_group("data-parallel training (needs pip install \"recsys-ebm[ray]\")")
    ray.add_argument("--ray-address", default=None, metavar="local|auto|HOST:PORT",
                     help="train dpebm (--set loss=sampled) or crbm on a Ray cluster, for the "
                          "configured epochs (no early stopping: --set epochs=N): local starts one "
                          "here, auto or HOST:PORT joins one")
    ray.add_argument("--num-workers", type=int, default=2, help="Ray workers (one CPU each)")
    ray.add_argument("--ray-storage", default=None, metavar="DIR",
                     help="keep the training's checkpoints here (a folder every node sees; "
                          "needed beyond this machine): the same training again resumes from its "
                          "last checkpoint (default on this machine: a temporary folder)")


def _fit_on_cluster(args, name: str, options: dict[str, Any], interactions: Interactions, tracker,
                    run_name: str) -> Any:
    """The model trained on the ``--ray-address`` cluster, its epochs logged afterwards."""
    model = cluster_fit.fit_on_cluster(name, options, interactions, address=args.ray_address,
                                       num_workers=args.num_workers, run_name=run_name,
                                       storage=args.ray_storage)
    prefix = "production_" if run_name == "all" else ""  # as the single-process refits log
    for epoch, metrics in enumerate(model.history.epochs, start=1):
        tracker.log_epoch(epoch, {prefix + k: v for k, v in metrics.items()})
    tracker.log_params({"ray.num_workers": args.num_workers, "ray.address": args.ray_address})
    return model


def _train_and_evaluate(args, tracker) -> tuple[runner.Dataset, runner.PreparedData, Any, Any]:
    set_threads(args.threads)
    options = model_options_from_args(args)
    if args.ray_address is not None:  # before any loading or training: what to install or change
        from recsys_ebm.distributed.cluster import require_ray

        cluster_fit.check_cluster_model(args.model, options, args.ray_address, args.ray_storage,
                                        args.num_workers)
        if args.no_refit:
            raise ValueError("--no-refit selects the early-stopped model; --ray-address trains "
                             "without early stopping (drop one of them)")
        require_ray(args.ray_address)
    dataset = dataset_from_args(args)
    split = runner.make_split(dataset.ratings, args.protocol, seed=0)
    data = runner.prepare(split, args.protocol)
    tracker.log_params({"model": args.model, "protocol": args.protocol, "split_seed": 0,
                        "defaults_kind": "ranking",
                        "validation_seed": runner.VALIDATION_SEED, "refit": not args.no_refit,
                        "config": options})
    tracker.log_dataset(dataset.name, dataset.checksum, source=dataset.source,
                        n_train=len(data.train), n_test=len(data.test),
                        n_users=data.train.n_users, n_items=data.train.n_items,
                        n_test_dropped=split.n_dropped)
    if args.ray_address is not None:
        model = _fit_on_cluster(args, args.model, options, data.train, tracker, f"train-{args.protocol}")
    else:
        model = runner.fit_with_validation(args.model, options, data, refit=not args.no_refit,
                                           callback=tracker.log_epoch, show_progress=not args.quiet)
    result = runner.evaluate_model(model, data, show_progress=not args.quiet)
    tracker.log_metrics({f"test_{k}": v for k, v in result.summary.items()})
    tracker.log_metrics({"best_epoch": model.history.best_epoch})
    return dataset, data, model, result


def cmd_train(args) -> int:
    output = Path(args.output_dir or Path("outputs") / args.dataset.replace("/", "_") / args.model)
    check_replaceable(output.absolute(), is_model_dir)  # before any training, not after it
    if args.register and args.no_mlflow:
        raise ValueError("--register NAME registers the run's MLflow model; drop --no-mlflow")
    with tracker_from_args(args, f"train-{args.model}") as tracker:
        dataset, data, model, result = _train_and_evaluate(args, tracker)
        evaluated, fitted_on = model, data.train
        if args.fit == "all":
            fitted_on = Interactions.from_frame(dataset.ratings, name="all")
            if args.ray_address is not None:
                model = _fit_on_cluster(args, args.model, model_options_from_args(args), fitted_on,
                                        tracker, "all")
            else:
                model = runner.fit_production(args.model, model_options_from_args(args), fitted_on,
                                              evaluated.history.best_epoch, callback=tracker.log_epoch,
                                              show_progress=not args.quiet)
            tracker.log_params({"fit": "all", "fit_interactions": len(fitted_on)})
        # the model files hold its seen set (the interactions it was fitted on) and the id maps
        model.save(output, meta={"user_ids": fitted_on.user_map.to_list(),
                                 "item_ids": fitted_on.item_map.to_list(), "fit": args.fit,
                                 "dataset": dataset.name, "dataset_checksum": dataset.checksum})
        tracker.log_artifacts(output, "model")
        tracker.log_input_frame(dataset.ratings, dataset.name, dataset.checksum, dataset.source)
        tracker.log_recommender(output, load_model=load_model, id_maps=saved_id_maps,
                                to_index=raw_to_index, register=args.register)
        tracker.log_training_figures(evaluated, data.test.user_items)  # held-out items: the evaluated model
        tracker.log_dict(result.summary, "test_metrics.json")
        sample = runner.sample_recommendations(model, fitted_on, dataset.items)
        tracker.log_table(sample, "top10_sample.csv")
        run_id = tracker.run_id
    write_out(f"\n{args.model} on {dataset.name} ({args.protocol} protocol), test metrics:\n")
    write_out(format_table(result.summary, runner.KS) + "\n")
    fitted = " (fitted on every interaction)" if args.fit == "all" else ""
    write_out(f"model saved to {output}{fitted}" + (f"; MLflow run {run_id}" if run_id else "") + "\n")
    return 0


def cmd_evaluate(args) -> int:
    if args.protocol in RATING_PROTOCOLS and args.ray_address is not None:
        raise ValueError("the rating protocols fit a model per fold in this process; "
                         "--ray-address trains on the top-N protocols only")
    if args.protocol in RATING_PROTOCOLS:
        return _evaluate_ratings(args)
    if args.model in RATING_BASELINES:
        raise ValueError(f"{args.model!r} predicts ratings only; evaluate it with "
                         f"--protocol {' or '.join(RATING_PROTOCOLS)}")
    with tracker_from_args(args, f"evaluate-{args.model}-{args.protocol}") as tracker:
        dataset, data, model, result = _train_and_evaluate(args, tracker)
        document = {"model": args.model, "dataset": dataset.name, "protocol": args.protocol,
                    "metrics": result.summary}
        if args.protocol == "loo":  # next-item: exact ranks of each user's last event
            document["next_item"] = runner.next_item_summary(model, data)
            tracker.log_metrics({f"next_{k}": v for k, v in document["next_item"].items()})
        tracker.log_dict(document, "evaluation.json")
    if args.json_path:
        atomic_write_bytes(args.json_path, json.dumps(document, indent=2).encode())
        logger.info("metrics written to %s", args.json_path)
    write_out(format_table(result.summary, runner.KS) + "\n")
    if "next_item" in document:
        write_out("next item: " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                            for k, v in document["next_item"].items()) + "\n")
    return 0


def _evaluate_ratings(args) -> int:
    """RMSE / MAE over rating-prediction folds (docs/protocols.md), for explicit-feedback models."""
    from recsys_ebm.experiments.rating_data import build_rating_folds
    from recsys_ebm.experiments.rating_folds import evaluate_folds

    if args.model in RATING_BASELINES:
        if args.config is not None:
            raise ValueError(f"--config is for the toolkit's models; give {args.model} its options "
                             "with --set KEY=VALUE")
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
        options = model_options_from_args(args, kind="rating")

        def factory():
            return runner.build_model(args.model, options)
    folds = build_rating_folds(dataset_from_args(args), args.protocol, data_dir=args.data_dir,
                               download=not args.no_download)
    set_threads(args.threads)
    with tracker_from_args(args, f"evaluate-{args.model}-{args.protocol}") as tracker:
        tracker.log_params({"model": args.model, "protocol": args.protocol, "config": options,
                            "defaults_kind": "rating"})

        def log_fold(fold: str, epoch: int, metrics: dict) -> None:
            tracker.log_metrics({f"{fold}_{k}": v for k, v in metrics.items()}, step=epoch)

        result = evaluate_folds(factory, folds, callback=log_fold, show_progress=not args.quiet)
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
    write_out("\n".join(lines) + "\n")
    return 0


def cmd_recommend(args) -> int:
    import numpy as np

    model = serving_model(args.model_path, args.index)
    user_map, item_map = saved_id_maps(model, args.model_path)
    if not args.users and not args.history and not args.history_file:
        raise ValueError("recommend needs --user RAW_ID (repeatable), --history ITEM[,ITEM...] "
                         "or --history-file PATH")
    if args.history and args.history_file:
        raise ValueError("give --history or --history-file, not both")
    options = {"k": args.k, "temperature": args.temperature, "rng": args.seed,
               "filter_seen": not args.include_seen,
               "filter_items": None if args.filter_items is None else raw_to_index(
                   item_map, split_ids(args.filter_items), "--filter-items")}
    lines = []
    if args.users:
        users = raw_to_index(user_map, args.users, "--user")
        if model.seen_items is None and not args.include_seen:
            logger.warning("%s has no seen set (saved before it was kept with the model): items "
                           "the users already have are not left out", args.model_path)
        ids, scores = model.recommend(users, **options)
        for raw_user, user, row, row_scores in zip(args.users, users, ids, scores, strict=True):
            lines.append(_format_row(f"user {raw_user}", item_map, row, row_scores))
            if args.explain:
                lines += _explain(model, model.histories([user]), item_map)
    if args.history or args.history_file:
        entries = _history_entries(args)
        history = _history_row(entries, item_map, model.n_items, needs_ratings=model.fits_ratings)
        if getattr(model, "uses_order", False):  # the order given is the history's order
            from recsys_ebm.data.sequences import Sequences

            order = Sequences.from_lists([raw_to_index(item_map, [i for i, _ in entries], "history")],
                                         model.n_items)
            ids, scores = model.recommend(np.array([0]), sequences=order, **options)
            lines.append(_format_row("new user", item_map, ids[0], scores[0]))
            if args.explain:
                lines += _explain(model, order, item_map)
        else:
            ids, scores = model.recommend(np.array([0]), history, fold_in=True, **options)
            lines.append(_format_row("new user", item_map, ids[0], scores[0]))
    write_out("\n".join(lines) + "\n")
    return 0


def _explain(model, sequence, item_map) -> list[str]:
    """The attention of a sequence model over a history's past events, most recent first."""
    if not hasattr(model, "explain"):
        raise ValueError(f"--explain needs a model with attention over past events (attnebm), "
                         f"not {type(model).__name__}")
    entries = model.explain(sequence)
    return ["  attention over past events (steps back: item weight): " + ", ".join(
        f"{e['position']}: {item_map.to_raw([e['item']])[0]} {e['weight']:.3f}" for e in entries[:20])]


def _format_row(label: str, item_map, row, row_scores) -> str:
    items = item_map.to_raw(row[row >= 0])
    return f"{label}: " + ", ".join(f"{i} ({s:.3f})" for i, s in zip(items, row_scores[row >= 0], strict=True))


def _history_entries(args) -> list[tuple[str, str | None]]:
    """``(raw item, rating text or None)`` pairs from --history or --history-file."""
    if args.history_file is None:
        pairs = []
        for entry in split_ids(args.history):
            item, colon, rating = entry.partition(":")
            pairs.append((item.strip(), rating if colon else None))
        return pairs
    path = Path(args.history_file)
    if not path.is_file():
        raise FileNotFoundError(f"--history-file {path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"--history-file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    pairs = []
    for line in (line.rstrip("\r\n") for line in lines):
        if line.strip():
            item, tab, rating = line.partition("\t")
            pairs.append((item.strip(), rating if tab else None))
    return pairs


def _history_row(entries: list[tuple[str, str | None]], item_map, n_items: int, *, needs_ratings: bool):
    """A 1 x n_items CSR over the model's items (value 1 or the rating) from history entries."""
    import numpy as np
    import scipy.sparse as sp

    raw_items, values = [], []
    for item, rating in entries:
        try:
            value = float(rating) if rating is not None else 1.0
        except ValueError:
            raise ValueError(f"history entry {item!r}: the rating {rating!r} must be a number") from None
        if needs_ratings and rating is None:
            raise ValueError(f"history entry {item!r}: this model predicts ratings, give ITEM:RATING "
                             "(or ITEM<TAB>RATING in --history-file)")
        raw_items.append(item)
        values.append(value)
    if not raw_items:
        raise ValueError("the history is empty; give raw item ids")
    items = raw_to_index(item_map, raw_items, "history")
    unique, counts = np.unique(items, return_counts=True)
    if np.any(counts > 1):
        repeated = item_map.to_raw(unique[counts > 1])
        raise ValueError(f"--history names item(s) {', '.join(map(str, repeated))} more than once")
    return sp.csr_matrix((np.asarray(values, np.float32), (np.zeros(len(items), np.int64), items)),
                         shape=(1, n_items))
