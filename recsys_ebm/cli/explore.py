"""``recsys-ebm explore``: the temperature explorer of a saved model, a local web page."""

from __future__ import annotations

import argparse
import logging

from recsys_ebm.cli.common import write_out

logger = logging.getLogger("recsys_ebm.cli")


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    explore = sub.add_parser(
        "explore", parents=[common],
        help="a local web page to watch a saved model's lists turn exploratory as the "
             "temperature rises (entropy, coverage, energies)")
    explore.add_argument("--model-path", required=True, help="a directory written by train")
    explore.add_argument("--host", default="127.0.0.1",
                         help="only 127.0.0.1 is accepted: the page has no authentication")
    explore.add_argument("--port", type=int, default=8765)
    explore.add_argument("--data-dir", default=None,
                         help="folder holding the MovieLens copy the model was trained on, for "
                              "titles (default: $RECSYS_EBM_DATA_DIR or ./data; never downloaded)")
    explore.add_argument("--items-file", default=None, metavar="CSV",
                         help="titles of a custom data set: a CSV with item_id and title columns")


def cmd_explore(args) -> int:
    from recsys_ebm.explorer import Explorer, bind, check_host, serve

    check_host(args.host)  # before loading anything
    explorer = Explorer.from_saved(args.model_path, data_dir=args.data_dir,
                                   items_file=args.items_file)
    sock = bind(args.host, args.port)
    write_out(f"temperature explorer of {args.model_path}: http://{args.host}:{args.port}/ "
              "(Ctrl-C stops it)\n")
    serve(explorer, sock, log_level="warning" if args.quiet else args.log_level)
    return 0
