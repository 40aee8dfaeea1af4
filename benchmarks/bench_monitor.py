"""Throughput of the streaming watchdog: events per second scored by ``monitor_events``.

A markov chain fitted on synthetic sequences (``--users`` users walking ``--items`` items with
mostly-successor transitions) monitors a stream of ``--events`` new events spread over the
users; the events/s of the scoring (energies and the windowed statistic, not the calibration)
is recorded in ``results/monitor.json``.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from benchmarks.common import environment, write_result
from recsys_ebm.data.ids import IdMap
from recsys_ebm.data.sequences import Sequences
from recsys_ebm.experiments.monitor import monitor_events
from recsys_ebm.models.markov import MarkovChain


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    starts = rng.integers(0, args.items, args.users)
    steps = np.where(rng.random((args.users, args.length)) < 0.7, 1, rng.integers(2, 50, (args.users, args.length)))
    walks = (starts[:, None] + np.cumsum(steps, axis=1)) % args.items
    seqs = Sequences.from_lists(list(walks), args.items)
    model = MarkovChain().fit(seqs.to_csr(), sequences=seqs, show_progress=False)
    users = rng.integers(0, args.users, args.events)
    events = pd.DataFrame({"user_id": users, "item_id": rng.integers(0, args.items, args.events),
                           "timestamp": np.arange(args.events)})
    _, summary = monitor_events(model, events, IdMap.fit(np.arange(args.users)),
                                IdMap.fit(np.arange(args.items)))
    result = {"users": args.users, "items": args.items, "events": args.events, "model": "markov",
              "events_per_second": summary["events_per_second"], "alerts": summary["alerts"],
              "environment": environment()}
    write_result("monitor", result)
    print(f"monitor: {summary['events_per_second']:,.0f} events/s over {args.events:,} events")
    return result


if __name__ == "__main__":
    main()
