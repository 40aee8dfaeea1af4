"""``recsys-ebm``: train, evaluate, recommend, export, anomaly, report, groups, explore,
monitor and stream-report from the command line.

One module per group of subcommands, each with its parser and its handler; ``common`` holds
the argument groups they share. Only this package configures logging handlers and writes to
stdout.
"""

from __future__ import annotations

import argparse
import logging
import sys

from recsys_ebm.cli import anomaly, explore, export, groups, monitor, report, train
from recsys_ebm.errors import (
    ConcurrentWriteError,
    DataError,
    DatasetNotFoundError,
    MissingDependencyError,
    ModelFitError,
    TrackingError,
)

logger = logging.getLogger("recsys_ebm.cli")

COMMANDS = {"train": train.cmd_train, "evaluate": train.cmd_evaluate, "recommend": groups.cmd_recommend_any,
            "anomaly": anomaly.cmd_anomaly, "export": export.cmd_export, "report": report.cmd_report,
            "groups": groups.cmd_groups, "explore": explore.cmd_explore,
            "monitor": monitor.cmd_monitor, "stream-report": monitor.cmd_stream_report}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    parser = argparse.ArgumentParser(prog="recsys-ebm", description="Energy-based recommender models: "
                                     "train, evaluate, export and recommend.")
    from importlib import metadata

    try:
        version = metadata.version("recsys-ebm")
    except metadata.PackageNotFoundError:  # a source tree that is not installed: its pyproject.toml
        from pathlib import Path

        from recsys_ebm._compat import tomllib

        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        version = (tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
                   if pyproject.is_file() else "unknown (not installed)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version}")
    sub = parser.add_subparsers(dest="command", required=True)
    train.add_parsers(sub, common)
    anomaly.add_parser(sub, common)
    export.add_parser(sub, common)
    report.add_parser(sub, common)
    groups.add_parser(sub, common)
    explore.add_parser(sub, common)
    monitor.add_parser(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # faiss logs at INFO each optional CPU build it could not import (AVX-512, AVX2): not news
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except (DataError, DatasetNotFoundError, ModelFitError, MissingDependencyError, TrackingError,
            ConcurrentWriteError, FileNotFoundError, KeyError, ValueError) as exc:
        logger.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
