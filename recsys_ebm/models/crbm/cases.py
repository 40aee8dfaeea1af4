"""The case data of the CRBM: which ratings form one RBM "case" and its conditioning set.

A case is a user (``orientation="user"``: its visible units are the items it rated) or an
item (``orientation="item"``: its units are the users who rated it). `CaseData` holds every
case's ratings as CSR arrays of levels 0..K-1 and `CaseBatch` the flattened entries of a
minibatch of cases; the helpers convert users x items matrices to cases x units and carve
validation ratings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch


def to_cases(matrix: sp.csr_matrix, orientation: str) -> sp.csr_matrix:
    """users x items -> cases x units for ``orientation`` ("item": transposed, "user": as is)."""
    return sp.csr_matrix(matrix.T) if orientation == "item" else sp.csr_matrix(matrix)


def pairs_to_cases(user_ids: np.ndarray, item_ids: np.ndarray, orientation: str
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) pairs -> (case, unit) pairs for ``orientation``."""
    return (item_ids, user_ids) if orientation == "item" else (user_ids, item_ids)


def rating_levels(ratings: sp.csr_matrix, levels: np.ndarray) -> sp.csr_matrix:
    """Copy of ``ratings`` with values replaced by the index + 1 of the nearest of ``levels``
    (so no level is a zero); ``ValueError`` for a rating that is none of them."""
    values = ratings.data.astype(np.float64)
    pos = np.clip(np.searchsorted(levels, values), 0, len(levels) - 1)
    left = np.clip(pos - 1, 0, len(levels) - 1)
    pos = np.where(np.abs(levels[left] - values) < np.abs(levels[pos] - values), left, pos)
    bad = np.abs(levels[pos] - values) > 1e-4
    if np.any(bad):
        raise ValueError(f"rating {values[bad][0]:g} is not one of the model's levels "
                         f"{levels.tolist()}; set CRBMConfig.levels")
    out = ratings.copy()
    out.data = (pos + 1).astype(np.float32)
    return out


def ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(starts[j], stops[j])`` over j, int64, without a Python loop."""
    lengths = (stops - starts).astype(np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(starts.astype(np.int64) - np.r_[0, np.cumsum(lengths)[:-1]], lengths)
    return np.arange(total, dtype=np.int64) + offsets


@dataclass
class CaseBatch:
    """Rated entries of a batch of cases, flattened (entry j belongs to case ``case_of[j]``).

    Attributes
    ----------
    n_cases : B
    case_of, units, levels : int64 (nnz,), the batch row, unit and level index 0..K-1 of each rating
    r_case_of, r_units : int64 (nr,), the conditioning set r as (batch row, unit) pairs
    positions : int64 (nnz,) or None, the entries' positions in the source ``CaseData``
    """

    n_cases: int
    case_of: torch.Tensor
    units: torch.Tensor
    levels: torch.Tensor
    r_case_of: torch.Tensor
    r_units: torch.Tensor
    positions: np.ndarray | None = None

    @classmethod
    def from_lists(cls, visible: list[dict[int, int]], r: list[list[int]] | None = None) -> CaseBatch:
        """Small batches by hand: ``visible[b] = {unit: level}``, ``r[b] = [units]``."""
        case_of = [b for b, row in enumerate(visible) for _ in row]
        units = [u for row in visible for u in row]
        levels = [lv for row in visible for lv in row.values()]
        r = r if r is not None else [[] for _ in visible]
        as_long = lambda values: torch.tensor(values, dtype=torch.int64)  # noqa: E731
        return cls(len(visible), as_long(case_of), as_long(units), as_long(levels),
                   as_long([b for b, row in enumerate(r) for _ in row]), as_long([u for row in r for u in row]))


@dataclass
class CaseData:
    """Cases x units ratings (levels) and conditioning sets, as CSR arrays.

    Attributes
    ----------
    indptr : int64 (n_cases + 1,); indices, levels : int64 (nnz,), sorted units per case
    r_indptr : int64 (n_cases + 1,); r_indices : int64 (nr,), the conditioning set of each case
    n_units : int
    """

    indptr: np.ndarray
    indices: np.ndarray
    levels: np.ndarray
    r_indptr: np.ndarray
    r_indices: np.ndarray
    n_units: int

    @property
    def n_cases(self) -> int:
        return len(self.indptr) - 1

    @classmethod
    def from_csr(cls, level_csr: sp.csr_matrix, r_csr: sp.csr_matrix | None) -> CaseData:
        """From a CSR whose values are level + 1 and a binary CSR of r (None: r = rated set)."""
        level_csr = sp.csr_matrix(level_csr)
        level_csr.sort_indices()
        r_csr = level_csr if r_csr is None else sp.csr_matrix(r_csr)
        r_csr.sort_indices()
        return cls(level_csr.indptr.astype(np.int64), level_csr.indices.astype(np.int64),
                   np.rint(level_csr.data).astype(np.int64) - 1, r_csr.indptr.astype(np.int64),
                   r_csr.indices.astype(np.int64), level_csr.shape[1])

    def batch(self, rows: np.ndarray) -> CaseBatch:
        """The entries of cases ``rows`` (B,) as a :class:`CaseBatch` (row b = case rows[b])."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, stops = self.indptr[rows], self.indptr[rows + 1]
        pos = ranges(starts, stops)
        r_starts, r_stops = self.r_indptr[rows], self.r_indptr[rows + 1]
        r_pos = ranges(r_starts, r_stops)
        b = np.arange(len(rows), dtype=np.int64)
        return CaseBatch(
            n_cases=len(rows),
            case_of=torch.from_numpy(np.repeat(b, stops - starts)),
            units=torch.from_numpy(self.indices[pos]),
            levels=torch.from_numpy(self.levels[pos]),
            r_case_of=torch.from_numpy(np.repeat(b, r_stops - r_starts)),
            r_units=torch.from_numpy(self.r_indices[r_pos]),
            positions=pos,
        )

    def lookup(self, cases: np.ndarray, units: np.ndarray) -> np.ndarray:
        """Level (0..K-1) of each (case, unit) pair, -1 where the case did not rate the unit."""
        return csr_lookup(self.indptr, self.indices, self.levels, cases, units)

    def in_r(self, cases: np.ndarray, units: np.ndarray) -> np.ndarray:
        """Whether each unit is in its case's conditioning set r: bool (n,)."""
        ones = np.ones(len(self.r_indices), dtype=np.int64)
        return csr_lookup(self.r_indptr, self.r_indices, ones, cases, units) >= 0


def csr_lookup(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray,
                rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """values[row, col] for sorted-index CSR arrays, -1 where absent; vectorised searchsorted."""
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    out = np.full(len(rows), -1, dtype=np.int64)
    if len(indices) == 0 or len(rows) == 0:
        return out
    n_cols = int(max(indices.max(initial=0), cols.max(initial=0))) + 1
    row_of = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
    keys = row_of * n_cols + indices  # strictly increasing for sorted CSR
    query = rows * n_cols + cols
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    found = keys[pos] == query
    out[found] = values[pos[found]]
    return out


def check_item_ids(item_ids, n_items: int) -> np.ndarray:
    """Item ids as int64 1-D; ``IndexError`` names an id outside ``0..n_items-1``."""
    ids = np.atleast_1d(np.asarray(item_ids))
    if ids.ndim != 1:
        raise ValueError(f"item_ids must be 1-D, got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"item_ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    bad = (ids < 0) | (ids >= n_items)
    if np.any(bad):
        raise IndexError(f"item id {int(ids[bad][0])} is not a trained item (0..{n_items - 1})")
    return ids


def pattern(matrix: sp.spmatrix) -> sp.csr_matrix:
    """Binary float32 CSR of the stored entries of ``matrix``."""
    out = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    out.sum_duplicates()
    out.data[:] = 1.0
    return out


def carve(level_csr: sp.csr_matrix, fraction: float, rng: np.random.Generator
           ) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split the entries at random: ``fraction`` of them (floor) to validation, the rest train."""
    coo = level_csr.tocoo()
    n_val = int(math.floor(fraction * coo.nnz))
    is_val = np.zeros(coo.nnz, dtype=bool)
    is_val[rng.permutation(coo.nnz)[:n_val]] = True

    def part(mask: np.ndarray) -> sp.csr_matrix:
        out = sp.csr_matrix((coo.data[mask], (coo.row[mask], coo.col[mask])), shape=coo.shape)
        out.sort_indices()
        return out

    return part(~is_val), part(is_val)


#: an inferred rating scale has at most this many levels, evenly spaced
MAX_INFERRED_LEVELS = 20


def inferred_levels(ratings: sp.csr_matrix) -> np.ndarray:
    """The rating levels of the data: its distinct values, which must lie on a small evenly
    spaced scale (1..5, 0.5..5 in halves: at most ``MAX_INFERRED_LEVELS`` steps from the
    lowest to the highest); a value off it is named with its user row."""
    levels = np.unique(ratings.data.astype(np.float64))
    if not np.all(np.isfinite(levels)):
        raise ValueError("the ratings hold NaN or inf")
    if len(levels) < 2:
        return levels
    step = float(np.diff(levels).min())
    positions = (levels - levels[0]) / step
    off_grid = ~np.isclose(positions, np.round(positions), atol=1e-6)
    too_far = positions > MAX_INFERRED_LEVELS - 1
    bad = off_grid | too_far
    if bad.any():
        value = levels[np.flatnonzero(bad)[0]]
        first = np.flatnonzero(ratings.data == np.float32(value))[:1]
        row = int(np.searchsorted(ratings.indptr, first[0], side="right") - 1) if first.size else -1
        raise ValueError(
            f"the ratings are not a rating scale: {value:g} (user row {row}) is off the scale from "
            f"{levels[0]:g} in steps of {step:g} (at most {MAX_INFERRED_LEVELS} levels); set "
            "CRBMConfig.levels to the scale, or fix the value")
    return levels
