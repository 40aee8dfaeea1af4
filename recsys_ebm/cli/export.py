"""``recsys-ebm export``: every user's top-k (or k sampled at a temperature) to Parquet/CSV."""

from __future__ import annotations

import argparse

from recsys_ebm.cli.common import (
    add_data_args,
    add_tracking_args,
    dataset_from_args,
    model_options_from_args,
    parse_override,
    split_ids,
    tracker_from_args,
    write_out,
)
from recsys_ebm.models import MODELS
from recsys_ebm.ranking.faiss_index import INDEX_KINDS


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    export = sub.add_parser(
        "export", parents=[common],
        help="every user's top-k unseen items (or k sampled at --temperature) to Parquet/CSV")
    add_data_args(export)
    group = export.add_argument_group("model")
    group.add_argument("--model", default="dpebm", choices=sorted(MODELS),
                       help="model to train first (with its defaults) when --model-path is not given")
    group.add_argument("--model-path", default=None, help="export this directory written by train")
    group.add_argument("--index", default=None, choices=INDEX_KINDS,
                       help="serve through a FAISS index saved beside the model (built on first "
                            "use); flat is exact")
    group.add_argument("--config", default=None,
                       help="TOML file with model options (default: pipelines/<model>.toml when present)")
    group.add_argument("--set", dest="overrides", action="append", default=[], type=parse_override,
                       metavar="KEY=VALUE", help="override one model option (repeatable)")
    group.add_argument("--no-refit", action="store_true",
                       help="keep the early-stopped model instead of refitting on all of train")
    add_tracking_args(export)
    out = export.add_argument_group("export")
    out.add_argument("--k", type=int, default=100, help="items per user")
    out.add_argument("--output", required=True, help="Parquet file (CSV when it ends in .csv)")
    out.add_argument("--temperature", type=float, default=0.0,
                     help="0 = exact ranking (probabilities reported at T = 1); > 0 samples k "
                          "distinct items from softmax(-E/T)")
    out.add_argument("--seed", type=int, default=0, help="sampling seed when temperature > 0")
    out.add_argument("--filter-items", default=None, metavar="ITEM,...",
                     help="raw item ids never exported (a block-list)")
    out.add_argument("--include-seen", action="store_true",
                     help="export the users' seen items too (the interactions the model was fitted on)")
    out.add_argument("--resume", action="store_true",
                     help="continue an interrupted export to the same --output from its finished chunks")
    out.add_argument("--chunk-size", type=int, default=None,
                     help="users per resumable chunk (default 16384; with --ray-address, per "
                          "shard file, default: 4 shards per worker, 16384 at most)")
    out.add_argument("--threads", type=int, default=0, help="worker threads (0 = every CPU)")
    ray = export.add_argument_group("distributed (needs pip install \"recsys-ebm[ray]\")")
    ray.add_argument("--ray-address", default=None, metavar="local|auto|HOST:PORT",
                     help="export on a Ray cluster to a partitioned Parquet dataset (--output "
                          "is then a directory): local starts one here, auto or HOST:PORT joins one")
    ray.add_argument("--num-workers", type=int, default=2, help="Ray workers (one CPU each)")


def cmd_export(args) -> int:
    from recsys_ebm.experiments.jobs import export_job
    from recsys_ebm.export.writer import ExportConfig

    config = ExportConfig(k=args.k, temperature=args.temperature, seed=args.seed,
                          chunk_size=ExportConfig.chunk_size if args.chunk_size is None else args.chunk_size,
                          n_threads=args.threads)
    if args.model_path is not None and (args.overrides or args.config or args.no_refit):
        raise ValueError("--set, --config and --no-refit configure a model to train; --model-path "
                         "exports the saved model as it is (drop them, or train with recsys-ebm train)")
    if args.ray_address is not None:  # before any loading or training: say what to install
        from recsys_ebm.distributed.cluster import require_ray

        require_ray(args.ray_address)
    options = model_options_from_args(args, with_seed=False) if args.model_path is None else {}
    dataset = dataset_from_args(args)
    with tracker_from_args(args, f"export-{args.model}") as tracker:
        result = export_job(dataset, args.output, model_name=args.model, model_path=args.model_path,
                            options=options, refit=not args.no_refit, config=config,
                            resume=args.resume, index=args.index,
                            filter_items=None if args.filter_items is None else split_ids(args.filter_items),
                            filter_seen=not args.include_seen, tracker=tracker, show_progress=not args.quiet,
                            ray_address=args.ray_address, num_workers=args.num_workers,
                            shard_size=args.chunk_size)
        run_id = tracker.run_id
    write_out(f"exported {result.n_rows:,} rows for {result.n_users:,} users to {result.path} "
           f"in {result.seconds:.1f} s ({result.users_per_second:,.0f} users/s"
           + (f", {result.resumed_chunks} chunks resumed" if result.resumed_chunks else "") + ")"
           + (f"; MLflow run {run_id}" if run_id else "") + "\n")
    return 0

