"""The job behind ``recsys-ebm monitor``: score an event log with a saved next-item model and
write an alert for every event where a user's stream statistic crosses the calibrated threshold.

Events (``user_id, item_id, timestamp``) are put in time order (ties by the protocol's seeded
rule, ``data/sequences.py``) and grouped into one stream per user; a trained user's stream
starts from the user's training sequence, an unseen user's from nothing (popularity energies).
The threshold is calibrated on genuine streams: the ``calibration`` events when given, else the
last ``tail`` events of the model's own training sequences (logged: they are not held out).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from recsys_ebm.anomaly.stream import (
    PopularitySurprisal,
    SequenceSurprisal,
    Watchdog,
    stream_energies,
)
from recsys_ebm.data.ids import IdMap
from recsys_ebm.data.sequences import Sequences, event_order, tie_keys
from recsys_ebm.errors import DataError

logger = logging.getLogger(__name__)


def event_streams(frame: pd.DataFrame, user_map: IdMap, item_map: IdMap, n_items: int
                  ) -> tuple[Sequences, np.ndarray, np.ndarray, pd.DataFrame]:
    """One stream per raw user, in time order: (streams, model user index or -1, raw user of
    each stream, the kept events in stream order)."""
    items = item_map.to_index(frame["item_id"].to_numpy(), missing="mask")
    unknown = items < 0
    if unknown.any():
        logger.info("monitor: dropped %d of %d events whose item the model does not know",
                    int(unknown.sum()), len(frame))
    frame = frame.loc[~unknown].reset_index(drop=True)
    items = items[~unknown]
    if frame.empty:
        raise DataError("monitor: no event has an item the model knows")
    codes, raw_users = pd.factorize(frame["user_id"], sort=True)
    order = event_order(codes, frame["timestamp"].to_numpy(),
                        tie_keys(frame["user_id"].to_numpy(), frame["item_id"].to_numpy()))
    counts = np.bincount(codes, minlength=len(raw_users))
    streams = Sequences(np.concatenate(([0], np.cumsum(counts))), items[order],
                        frame["timestamp"].to_numpy()[order], n_items)
    users = user_map.to_index(np.asarray(raw_users), missing="mask")
    return streams, users, np.asarray(raw_users), frame.iloc[order].reset_index(drop=True)


def starts(model, users: np.ndarray) -> Sequences:
    """Each stream's history before it: the training sequence of a known user, else empty."""
    empty = Sequences.from_lists([[]], model.n_items)
    rows = [model.train_sequences.take([u]) if u >= 0 else empty for u in users]
    return Sequences.from_lists([r.row(0) for r in rows], model.n_items,
                                [r.timestamps for r in rows])


def training_tails(model, tail: int = 20) -> tuple[Sequences, Sequences]:
    """(prefixes, tails) of the training sequences with more than ``tail`` events."""
    seqs = model.train_sequences
    rows = np.flatnonzero(seqs.lengths > tail)
    prefixes = [seqs.row(r)[:-tail] for r in rows]
    tails = [seqs.row(r)[-tail:] for r in rows]
    return Sequences.from_lists(prefixes, model.n_items), Sequences.from_lists(tails, model.n_items)


def monitor_events(model, frame: pd.DataFrame, user_map: IdMap, item_map: IdMap, *, fpr: float = 0.01,
                   statistic: str = "window", window: int = 5,
                   calibration: pd.DataFrame | None = None) -> tuple[pd.DataFrame, dict]:
    """Alerts (one row per event whose statistic is above the threshold) and a summary."""
    if not getattr(model, "uses_order", False):
        raise ValueError(f"monitor needs a next-item model that reads the order (markov, seqcrbm, "
                         f"attnebm), not {type(model).__name__}")
    counts = np.bincount(model.train_sequences.items, minlength=model.n_items)
    surprisal = SequenceSurprisal(model, PopularitySurprisal(counts))
    if calibration is not None:
        cal, cal_users, _, _ = event_streams(calibration, user_map, item_map, model.n_items)
        cal_start = starts(model, cal_users)
    else:
        logger.warning("monitor: no --calibration events; the threshold is calibrated on the last "
                       "events of the training sequences, which the model has seen")
        cal_start, cal = training_tails(model)
        cal_users = np.full(len(cal), -1)
    cal_energies = stream_energies(surprisal, cal_start, cal_users, cal)
    dog = Watchdog(statistic, window).calibrated(cal_energies, cal.indptr, fpr)
    streams, users, raw_users, events = event_streams(frame, user_map, item_map, model.n_items)
    began = time.perf_counter()
    energies = stream_energies(surprisal, starts(model, users), users, streams)
    values = dog.values(energies, streams.indptr)
    seconds = time.perf_counter() - began
    events = events.assign(energy=energies, statistic=values)
    alerts = events.loc[values > dog.threshold].assign(threshold=dog.threshold)
    for row in alerts.itertuples():
        logger.warning("alert: user %s item %s at %s: %s %.3f > %.3f", row.user_id, row.item_id,
                       row.timestamp, statistic, row.statistic, dog.threshold)
    summary = {"events": len(events), "streams": len(streams), "alerts": len(alerts),
               "users_alerted": int(alerts["user_id"].nunique()), "threshold": dog.threshold,
               "statistic": statistic, "window": window, "fpr": fpr,
               "events_per_second": len(events) / max(seconds, 1e-9)}
    return alerts.reset_index(drop=True), summary
