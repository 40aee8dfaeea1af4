"""``recsys-ebm report``: every model tuned, refit and tested over seeds, as Markdown + JSON."""

from __future__ import annotations

import argparse
from typing import Any

from recsys_ebm.cli.common import add_data_args, add_tracking_args, parse_override, write_out
from recsys_ebm.models import MODELS


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    from recsys_ebm.experiments.reporting import DEFAULT_TEMPERATURES, REPORT_PROTOCOLS

    report = sub.add_parser(
        "report", parents=[common],
        help="compare every model (tuned on validation, refit, 3 seeds) and write "
             "reports/<dataset>/<protocol>.md + .json + PNG plots")
    add_data_args(report)
    add_tracking_args(report)
    group = report.add_argument_group("report")
    group.add_argument("--protocol", default="random", choices=REPORT_PROTOCOLS,
                       help="a top-N protocol, or 'ratings': RMSE/MAE of the rating models on the "
                            "official ML-100K folds (seeded 5-fold elsewhere)")
    group.add_argument("--models", default=None,
                       help=f"comma-separated models (default: all of {','.join(MODELS)}; "
                            "the next-item models only for --protocol loo; for --protocol ratings the "
                            "rating models, always with the bias baseline)")
    group.add_argument("--seeds", default="0,1,2", help="comma-separated model seeds")
    group.add_argument("--output-dir", default="reports", help="the report lands in DIR/<dataset>/")
    group.add_argument("--grids", default=None,
                       help="TOML with [grid.<model>] tables (default: pipelines/grids.toml)")
    group.add_argument("--no-grid", action="store_true",
                       help="no tuning: every model runs with its tuned defaults")
    group.add_argument("--set", dest="overrides", action="append", default=[], type=parse_override,
                       metavar="MODEL.KEY=VALUE",
                       help="override one option of one model on top of every grid point (repeatable)")
    group.add_argument("--temperatures", default=",".join(f"{t:g}" for t in DEFAULT_TEMPERATURES),
                       help="comma-separated temperatures of the EBMs' trade-off curve")
    group.add_argument("--threads", type=int, default=1,
                       help="torch/BLAS threads (0 = the libraries' defaults); 1 was fastest on 2 shared cores")


def cmd_report(args) -> int:
    from recsys_ebm.experiments import report
    from recsys_ebm.experiments.render import summary_frame

    overrides: dict[str, dict[str, Any]] = {}
    for key, value in args.overrides:
        model, dot, option = key.partition(".")
        if not dot or not option:
            raise ValueError(f"report --set expects MODEL.KEY=VALUE, got {key!r}")
        overrides.setdefault(model, {})[option] = value
    extra: dict[str, Any] = {"grids_file": args.grids} if args.grids else {}
    config = report.ReportConfig(
        dataset=args.dataset, variant=args.variant, data_dir=args.data_dir,
        download=not args.no_download, reader_options=_reader_options(args), protocol=args.protocol,
        models=tuple(m.strip() for m in args.models.split(",")) if args.models else None,
        seeds=tuple(int(s) for s in args.seeds.split(",")), output_dir=args.output_dir,
        temperatures=tuple(float(t) for t in args.temperatures.split(",")),
        use_grids=not args.no_grid, overrides=overrides, threads=args.threads or None,
        experiment=args.experiment, tracking_uri=args.tracking_uri, mlflow=not args.no_mlflow,
        show_progress=not args.quiet, command=command_line(args), **extra)
    result = report.run_report(config)
    write_out(summary_frame(result.document).to_string(float_format=lambda v: f"{v:.4f}") + "\n")
    write_out(f"report written to {result.markdown} (+ {result.json.name}, {len(result.plots)} plots) "
              f"in {result.document['timing']['total_seconds'] / 60:.1f} min\n")
    return 0


def _reader_options(args) -> dict[str, Any]:
    """The column flags of a user's file, as ``evaluate`` reads them ('' means no such column)."""
    if args.dataset == "movielens":
        return {}
    return {"user_col": args.user_col, "item_col": args.item_col,
            "rating_col": args.rating_col or None, "timestamp_col": args.timestamp_col or None}


def command_line(args) -> str:
    """The ``recsys-ebm report`` command reproducing parsed CLI ``args`` (without paths)."""
    parts = ["recsys-ebm report", f"--dataset {args.dataset}"]
    if args.dataset == "movielens":
        parts.append(f"--variant {args.variant}")
    else:
        defaults = {"user_col": "user_id", "item_col": "item_id", "rating_col": "rating",
                    "timestamp_col": "timestamp"}
        parts += [f"--{key.replace('_', '-')} {getattr(args, key)!r}"
                  for key, default in defaults.items() if getattr(args, key) != default]
    parts.append(f"--protocol {args.protocol}")
    if args.models:
        parts.append(f"--models {args.models}")
    if args.seeds != "0,1,2":
        parts.append(f"--seeds {args.seeds}")
    if args.no_grid:
        parts.append("--no-grid")
    parts += [f"--set {key}={value}" for key, value in args.overrides]
    return " ".join(parts)
