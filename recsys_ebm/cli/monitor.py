"""``recsys-ebm monitor``: the streaming energy watchdog over an event file (experiments/monitor.py)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from recsys_ebm.cli.common import (
    add_data_args,
    add_tracking_args,
    dataset_from_args,
    parse_override,
    split_ids,
    tracker_from_args,
    write_out,
)
from recsys_ebm.data.readers import read_interactions
from recsys_ebm.experiments.jobs import saved_id_maps
from recsys_ebm.experiments.monitor import monitor_events
from recsys_ebm.io import atomic_path
from recsys_ebm.models import load_model

logger = logging.getLogger("recsys_ebm.cli")


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    monitor = sub.add_parser("monitor", parents=[common],
                             help="score events (user, item, timestamp) with a saved next-item model "
                                  "and alert on streams whose energy statistic crosses a calibrated threshold")
    monitor.add_argument("--model-path", required=True, help="a next-item model saved by train")
    monitor.add_argument("--events", required=True, help="CSV/Parquet with user_id, item_id, timestamp")
    monitor.add_argument("--calibration", default=None,
                         help="genuine events to calibrate the threshold on (default: the tails of "
                              "the model's training sequences)")
    monitor.add_argument("--fpr", type=float, default=0.01, help="target share of genuine streams alerted")
    monitor.add_argument("--statistic", choices=("window", "cusum"), default="window")
    monitor.add_argument("--window", type=int, default=5, help="events in the windowed mean")
    monitor.add_argument("--output", required=True, help="alerts file (.parquet or .csv)")

    report = sub.add_parser("stream-report", parents=[common],
                            help="inject takeover / bot / burst / push streams into held-out genuine "
                                 "tails and score the watchdog -> reports/<dataset>/stream.md")
    add_data_args(report)
    report.add_argument("--detectors", default="popularity,markov,dpebm,seqcrbm",
                        help="comma-separated: popularity or registered models, MODEL:KEY=VALUE;... for options")
    report.add_argument("--fpr", type=float, default=0.01)
    report.add_argument("--seed", type=int, default=0)
    report.add_argument("--output-dir", default="reports")
    add_tracking_args(report)


def cmd_stream_report(args) -> int:
    from recsys_ebm.experiments.stream_eval import stream_metrics, write_stream_report

    detectors: dict[str, dict] = {}
    for entry in split_ids(args.detectors):
        name, _, options = entry.partition(":")
        detectors[name] = dict(parse_override(o) for o in options.split(";") if o)
    dataset = dataset_from_args(args)
    with tracker_from_args(args, "stream-report") as tracker:
        tracker.log_params({"stream": {"detectors": args.detectors, "fpr": args.fpr, "seed": args.seed}})
        tracker.log_dataset(dataset.name, dataset.checksum, source=dataset.source)
        path, document = write_stream_report(dataset, detectors, args.output_dir, fpr=args.fpr,
                                             seed=args.seed)
        tracker.log_metrics(stream_metrics(document))
        tracker.log_dict(document, "stream.json")
        tracker.log_artifact(path, "report")
    write_out(f"stream report written to {path}\n")
    return 0


def cmd_monitor(args) -> int:
    model = load_model(args.model_path)
    user_map, item_map = saved_id_maps(model, args.model_path)
    events = read_interactions(Path(args.events), rating_col=None)
    calibration = read_interactions(Path(args.calibration), rating_col=None) if args.calibration else None
    alerts, summary = monitor_events(model, events, user_map, item_map, fpr=args.fpr,
                                     statistic=args.statistic, window=args.window,
                                     calibration=calibration)
    output = Path(args.output)
    if output.suffix not in (".parquet", ".csv"):
        raise ValueError(f"--output {output}: give a .parquet or .csv file")
    with atomic_path(output, suffix=output.suffix) as tmp:
        if output.suffix == ".parquet":
            alerts.to_parquet(tmp, index=False)
        else:
            alerts.to_csv(tmp, index=False)
    write_out(f"{summary['alerts']} alerts on {summary['users_alerted']} of {summary['streams']} streams "
              f"({summary['events']} events, {summary['events_per_second']:.0f} events/s, threshold "
              f"{summary['threshold']:.3f}) written to {output}\n")
    return 0
