"""`IdMap`: raw external ids <-> contiguous internal integer indices."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class IdMap:
    """Bijection between raw ids and ``0..n-1``, fitted on training data.

    ``raw_ids[index]`` is the raw id of an index; raw ids are kept sorted so that
    the mapping is deterministic for a given set of ids.
    """

    raw_ids: np.ndarray

    @classmethod
    def fit(cls, raw_values) -> IdMap:
        """Build a map from any iterable of raw ids (duplicates allowed)."""
        return cls(np.unique(np.asarray(raw_values)))

    def __len__(self) -> int:
        return len(self.raw_ids)

    # The generated dataclass __eq__/__hash__ compare the ndarray field with ``==`` (ambiguous
    # truth value) and hash it (unhashable), so both are defined on the ids' contents instead.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IdMap):
            return NotImplemented
        return len(self) == len(other) and bool(np.all(self.raw_ids == other.raw_ids))

    def __hash__(self) -> int:
        return hash((len(self.raw_ids), tuple(self.raw_ids[:8].tolist())))

    def to_index(self, raw_values, *, missing: str = "raise") -> np.ndarray:
        """Map raw ids to indices (int64, shape like the input).

        ``missing="raise"`` raises ``KeyError`` naming the first unknown id;
        ``missing="mask"`` returns -1 for unknown ids.
        """
        raw = np.asarray(raw_values)
        if len(self.raw_ids) == 0:
            pos = np.zeros(raw.shape, dtype=np.int64)
            found = np.zeros(raw.shape, dtype=bool)
        else:
            try:
                pos = np.searchsorted(self.raw_ids, raw)
            except TypeError as exc:
                raise KeyError(
                    f"raw ids of type {raw.dtype} cannot be compared with the map's {self.raw_ids.dtype}"
                ) from exc
            pos = np.clip(pos, 0, len(self.raw_ids) - 1)
            found = self.raw_ids[pos] == raw
        if not np.all(found):
            if missing == "raise":
                unknown = raw[~found].ravel()[0]
                unknown = unknown.item() if isinstance(unknown, np.generic) else unknown  # 25, not np.int64(25)
                raise KeyError(f"unknown id {unknown!r} ({int((~found).sum())} unknown in total)")
            if missing != "mask":
                raise ValueError(f"missing must be 'raise' or 'mask', got {missing!r}")
            pos = np.where(found, pos, -1)
        return pos.astype(np.int64)

    def to_raw(self, indices) -> np.ndarray:
        """Map indices back to raw ids; raises ``IndexError`` naming an out-of-range index."""
        idx = np.asarray(indices, dtype=np.int64)
        bad = (idx < 0) | (idx >= len(self.raw_ids))
        if np.any(bad):
            raise IndexError(f"index {int(idx[bad].ravel()[0])} out of range for {len(self)} ids")
        return self.raw_ids[idx]

    def to_list(self) -> list:
        """JSON-serialisable raw ids (numpy scalars converted to Python)."""
        return self.raw_ids.tolist()

    @classmethod
    def from_list(cls, values: list) -> IdMap:
        """Inverse of :meth:`to_list`; the list must be sorted and unique."""
        arr = np.asarray(values)
        if len(arr) > 1 and not np.all(arr[1:] > arr[:-1]):
            raise ValueError("IdMap.from_list expects sorted unique raw ids")
        return cls(arr)
