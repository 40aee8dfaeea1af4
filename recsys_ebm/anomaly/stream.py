"""The streaming energy watchdog: each event's energy e_t = -log p(x_t | the user's history),
a windowed statistic over each user's stream, a threshold calibrated on genuine streams.

- **Energies.** :class:`SequenceSurprisal` reads a next-item model (``uses_order``: markov,
  seqcrbm, attnebm) through ``log_next``; :class:`PopularitySurprisal` is item-popularity
  surprisal; :class:`UserSurprisal` the energy of a non-sequential model (dpebm), normalised over
  the items the user has not had. A user with no history is scored by popularity.
- **Streams** are processed in rounds: round r scores the r-th event of every stream in one
  batch from the histories so far, then appends it; within a stream the order is the time order.
- **Statistics**: the mean energy of the last ``window`` events (``"window"``) and a one-sided
  CUSUM S_t = max(0, S_{t-1} + e_t - mu - slack) with mu the genuine mean energy (``"cusum"``).
- **Calibration**: the threshold is the (1 - fpr) quantile of the per-stream maximum of the
  statistic over genuine calibration streams, so at most a share fpr of genuine streams ever
  raises an alert.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recsys_ebm.data.sequences import Sequences

#: the statistics a watchdog can use
STATISTICS = ("window", "cusum")


class PopularitySurprisal:
    """e = -log p_pop(x) over the items the history has not had (training counts + 1)."""

    def __init__(self, counts: np.ndarray):
        counts = np.asarray(counts, dtype=np.float64) + 1.0
        self.log_p = np.log(counts / counts.sum())

    def log_next(self, histories: Sequences, users: np.ndarray) -> np.ndarray:
        scores = np.tile(self.log_p, (len(histories), 1))
        return _normalise_unseen(scores, histories)


class SequenceSurprisal:
    """The next-item model's own p(x | history); users without history by popularity."""

    def __init__(self, model, popularity: PopularitySurprisal):
        self.model, self.popularity = model, popularity

    def log_next(self, histories: Sequences, users: np.ndarray) -> np.ndarray:
        out = self.model.log_next(histories)
        empty = histories.lengths == 0
        if empty.any():
            out[empty] = self.popularity.log_next(histories.take(np.flatnonzero(empty)), users[empty])
        return out


class UserSurprisal:
    """A set model's Gibbs distribution softmax(score(u)) over unseen items (trained users;
    others by popularity)."""

    def __init__(self, model, popularity: PopularitySurprisal):
        self.model, self.popularity = model, popularity

    def log_next(self, histories: Sequences, users: np.ndarray) -> np.ndarray:
        out = self.popularity.log_next(histories, users)
        known = users >= 0
        if known.any():
            scores = np.asarray(self.model.score(users[known]), dtype=np.float64)
            out[known] = _normalise_unseen(scores, histories.take(np.flatnonzero(known)))
        return out


def _normalise_unseen(scores: np.ndarray, histories: Sequences) -> np.ndarray:
    """log-softmax of each row of ``scores`` over the items its history has not had."""
    rows = np.repeat(np.arange(len(histories)), histories.lengths)
    scores = scores.copy()
    scores[rows, histories.items] = -np.inf
    top = scores.max(axis=1, keepdims=True)
    return scores - top - np.log(np.exp(scores - top).sum(axis=1, keepdims=True))


def stream_energies(surprisal, start: Sequences, users: np.ndarray, streams: Sequences,
                    batch_size: int = 512) -> np.ndarray:
    """e_t of every stream event, float64 (n_events,) in ``streams``' order.

    ``start`` holds each stream's history before its first event (rows aligned with
    ``streams``), ``users`` the model's user index of each stream (-1 when unknown).
    """
    energies = np.empty(len(streams.items))
    histories = start
    for r in range(int(streams.lengths.max()) if len(streams) else 0):
        rows = np.flatnonzero(streams.lengths > r)
        items = streams.items[streams.indptr[rows] + r]
        for part in np.array_split(np.arange(len(rows)), max(1, len(rows) // batch_size)):
            log_p = surprisal.log_next(histories.take(rows[part]), users[rows[part]])
            energies[streams.indptr[rows[part]] + r] = -log_p[np.arange(len(part)), items[part]]
        histories = histories.appended(rows, items, streams.timestamps[streams.indptr[rows] + r])
    # an item seen before in the stream has p = 0 under the unseen-item support: cap it
    return np.minimum(energies, 50.0)


@dataclasses.dataclass(frozen=True)
class Watchdog:
    """A statistic over each stream's energies and its alarm threshold."""

    statistic: str = "window"
    window: int = 5
    mu: float = 0.0
    slack: float = 0.5
    threshold: float = float("inf")

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {STATISTICS}, got {self.statistic!r}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")

    def values(self, energies: np.ndarray, indptr: np.ndarray) -> np.ndarray:
        """The statistic after every event of every stream: float64 (n_events,)."""
        out = np.empty(len(energies))
        for start, stop in zip(indptr[:-1], indptr[1:], strict=True):
            e = energies[start:stop]
            if self.statistic == "window":
                sums = np.cumsum(np.concatenate(([0.0], e)))
                lo = np.maximum(np.arange(1, len(e) + 1) - self.window, 0)
                out[start:stop] = (sums[1:] - sums[lo]) / (np.arange(1, len(e) + 1) - lo)
            else:
                s, values = 0.0, np.empty(len(e))
                for t, value in enumerate(e):
                    s = max(0.0, s + value - self.mu - self.slack)
                    values[t] = s
                out[start:stop] = values
        return out

    def calibrated(self, energies: np.ndarray, indptr: np.ndarray, fpr: float) -> Watchdog:
        """This watchdog with ``mu`` the genuine mean energy and the threshold the (1 - fpr)
        quantile of the genuine streams' maximal statistic."""
        if not 0 < fpr < 1:
            raise ValueError(f"fpr must be in (0, 1), got {fpr}")
        tuned = dataclasses.replace(self, mu=float(np.mean(energies)))
        peaks = stream_max(tuned.values(energies, indptr), indptr)
        return dataclasses.replace(tuned, threshold=float(np.quantile(peaks, 1.0 - fpr, method="higher")))


def stream_max(values: np.ndarray, indptr: np.ndarray, first: np.ndarray | None = None) -> np.ndarray:
    """The maximum of ``values`` over each stream, from its event ``first`` on (default 0)."""
    first = np.zeros(len(indptr) - 1, dtype=np.int64) if first is None else first
    return np.array([values[a + f:b].max() if b > a + f else -np.inf
                     for a, b, f in zip(indptr[:-1], indptr[1:], first, strict=True)])


def first_alert(values: np.ndarray, indptr: np.ndarray, threshold: float, first: np.ndarray) -> np.ndarray:
    """Events after ``first`` until the statistic exceeds ``threshold`` (0 = at the first
    attacked event), -1 when it never does: int64 (n_streams,)."""
    out = np.full(len(indptr) - 1, -1, dtype=np.int64)
    for s, (a, b) in enumerate(zip(indptr[:-1], indptr[1:], strict=True)):
        above = np.flatnonzero(values[a + first[s]:b] > threshold)
        if above.size:
            out[s] = int(above[0])
    return out
