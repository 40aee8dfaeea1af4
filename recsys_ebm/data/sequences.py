"""The sequence view of an interaction log: each user's events ordered by time, ties broken by a
seeded random permutation (never by id), with the time gaps kept.

**Tie rule** (docs/protocols.md, "Next-item"): events of one user are ordered by timestamp;
events with the same timestamp are ordered by :func:`tie_keys`, a keyed 64-bit hash of the
(raw user id, raw item id) pair with the key fixed by the protocol (``TIE_SEED``). Within a tie
this is a uniformly random permutation that does not depend on the ids' order, on the row
order of the file, or on which split the events landed in, so the leave-last-one-out split and
the sequence view of its train part agree on every order. Ordering ties by item id instead would
leak: the held-out item would always be the larger id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

#: the seed of the tie-breaking permutation, fixed by the next-item protocol
TIE_SEED = 0


def tie_keys(users, items, seed: int = TIE_SEED) -> np.ndarray:
    """uint64 (n,) keys ordering tied events: a keyed hash of each (user, item) pair of raw ids.

    Raw ids are hashed as text, so an id read as ``int64`` in one place and ``int32`` or
    ``str`` in another gets the same key.
    """
    if not 0 <= int(seed) < 10**13:
        raise ValueError(f"the tie seed must be in 0..10^13 - 1, got {seed!r}")
    pairs = pd.DataFrame({"user": np.asarray(users).astype(str), "item": np.asarray(items).astype(str)})
    return pd.util.hash_pandas_object(pairs, index=False, hash_key=f"seq{int(seed):013d}").to_numpy()


def event_order(users: np.ndarray, timestamps: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The permutation putting events in (user, timestamp, tie key) order: int64 (n,)."""
    return np.lexsort((keys, timestamps, users)).astype(np.int64)


@dataclass(frozen=True, eq=False)
class Sequences:
    """Ragged per-user event sequences, oldest first (a CSR without values).

    Attributes
    ----------
    indptr : int64 (n_rows + 1,)
        Row ``r``'s events are ``items[indptr[r]:indptr[r + 1]]``.
    items : int64 (n_events,)
        Item index of each event.
    timestamps : int64 (n_events,)
        Unix seconds of each event (0 when the source has none).
    n_items : int
        Catalog size (the item indices are below it).
    """

    indptr: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    n_items: int

    def __post_init__(self) -> None:
        indptr = np.asarray(self.indptr, dtype=np.int64)
        if indptr.ndim != 1 or indptr.size < 1 or indptr[0] != 0 or np.any(np.diff(indptr) < 0):
            raise ValueError("indptr must be a non-decreasing 1-D array starting at 0")
        if indptr[-1] != len(self.items) or len(self.items) != len(self.timestamps):
            raise ValueError(f"indptr ends at {indptr[-1]} but there are {len(self.items)} items and "
                             f"{len(self.timestamps)} timestamps")
        items = np.asarray(self.items, dtype=np.int64)
        if items.size and (items.min() < 0 or items.max() >= self.n_items):
            raise ValueError(f"item index {int(items.max() if items.max() >= self.n_items else items.min())} "
                             f"is outside 0..{self.n_items - 1}")
        object.__setattr__(self, "indptr", indptr)
        object.__setattr__(self, "items", items)
        object.__setattr__(self, "timestamps", np.asarray(self.timestamps, dtype=np.int64))

    @classmethod
    def from_lists(cls, rows, n_items: int, timestamps=None) -> Sequences:
        """From a list of item lists (oldest first), with optional per-event timestamps."""
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        indptr = np.concatenate(([0], np.cumsum(lengths)))
        items = np.concatenate([np.asarray(r, np.int64) for r in rows]) if len(rows) else np.empty(0, np.int64)
        stamps = (np.zeros(len(items), np.int64) if timestamps is None
                  else np.concatenate([np.asarray(t, np.int64) for t in timestamps]))
        return cls(indptr, items.astype(np.int64), stamps, int(n_items))

    def __len__(self) -> int:
        return len(self.indptr) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Events per row, int64 (n_rows,)."""
        return np.diff(self.indptr)

    def row(self, r: int) -> np.ndarray:
        """Row ``r``'s items, oldest first."""
        return self.items[self.indptr[r]:self.indptr[r + 1]]

    @property
    def gaps(self) -> np.ndarray:
        """Seconds since the same row's previous event, int64 (n_events,); -1 for a first event."""
        gaps = np.empty(len(self.items), dtype=np.int64)
        if len(self.items):
            gaps[1:] = np.diff(self.timestamps)
        gaps[self.indptr[:-1][self.lengths > 0]] = -1
        return gaps

    def take(self, rows) -> Sequences:
        """The sequences of ``rows`` (int indices), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, stops = self.indptr[rows], self.indptr[rows + 1]
        lengths = stops - starts
        indptr = np.concatenate(([0], np.cumsum(lengths)))
        index = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
        return Sequences(indptr, self.items[index], self.timestamps[index], self.n_items)

    def to_csr(self) -> sp.csr_matrix:
        """The binary rows x items pattern of the events (the set view)."""
        rows = np.repeat(np.arange(len(self), dtype=np.int64), self.lengths)
        matrix = sp.csr_matrix((np.ones(len(self.items), np.float32), (rows, self.items)),
                               shape=(len(self), self.n_items))
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        matrix.sort_indices()
        return matrix

    def tied_last(self) -> np.ndarray:
        """bool (n_rows,): the row's last event shares its timestamp with the one before it."""
        last = self.indptr[1:] - 1
        has_two = self.lengths >= 2
        out = np.zeros(len(self), dtype=bool)
        out[has_two] = self.timestamps[last[has_two]] == self.timestamps[last[has_two] - 1]
        return out

    def appended(self, rows, items, timestamps=None) -> Sequences:
        """A copy with one event appended to each row in ``rows`` (each row at most once)."""
        rows = np.asarray(rows, dtype=np.int64)
        extra = np.zeros(len(self), dtype=np.int64)
        extra[rows] = 1
        indptr = np.concatenate(([0], np.cumsum(self.lengths + extra)))
        new_items = np.empty(indptr[-1], np.int64)
        new_stamps = np.empty(indptr[-1], np.int64)
        keep = np.ones(indptr[-1], dtype=bool)
        keep[indptr[1:][rows] - 1] = False
        new_items[keep], new_stamps[keep] = self.items, self.timestamps
        new_items[~keep] = np.asarray(items, np.int64)[np.argsort(rows)]
        stamps = np.zeros(len(rows), np.int64) if timestamps is None else np.asarray(timestamps, np.int64)
        new_stamps[~keep] = stamps[np.argsort(rows)]
        return Sequences(indptr, new_items, new_stamps, self.n_items)


def sequence_view(user_idx: np.ndarray, item_idx: np.ndarray, timestamps: np.ndarray,
                  raw_users: np.ndarray, raw_items: np.ndarray, n_users: int, n_items: int,
                  seed: int = TIE_SEED) -> Sequences:
    """Every user's events (rows ``0..n_users-1``) ordered by the protocol's rule (module doc)."""
    order = event_order(np.asarray(user_idx), np.asarray(timestamps), tie_keys(raw_users, raw_items, seed))
    counts = np.bincount(np.asarray(user_idx, np.int64), minlength=n_users)
    indptr = np.concatenate(([0], np.cumsum(counts)))
    return Sequences(indptr, np.asarray(item_idx)[order], np.asarray(timestamps)[order], n_items)
