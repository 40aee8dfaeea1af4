"""Users x items rating-matrix helpers shared by the anomaly modules: a canonical CSR form and
per-row reductions over its stored ratings."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

#: Users scored per chunk of dense (users x items) work.
CHUNK_USERS = 512


def as_ratings(matrix: sp.spmatrix) -> sp.csr_matrix:
    """float32 CSR with summed duplicates, explicit zeros dropped, sorted indices."""
    if not sp.issparse(matrix):
        raise ValueError(f"expected a scipy.sparse users x items matrix, got {type(matrix).__name__}")
    out = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    out.sum_duplicates()
    out.eliminate_zeros()
    out.sort_indices()
    return out


def profile_lengths(profiles: sp.csr_matrix) -> np.ndarray:
    """Number of ratings of each row: int64 (n,)."""
    return np.diff(sp.csr_matrix(profiles).indptr).astype(np.int64)


def row_of(matrix: sp.csr_matrix) -> np.ndarray:
    """Row index of every stored entry: int64 (nnz,)."""
    return np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))


def row_means(values: np.ndarray, rows: np.ndarray, n_rows: int) -> np.ndarray:
    """Mean of ``values`` (nnz,) per row given each value's row (nnz,): float64 (n_rows,), 0 for
    an empty row."""
    counts = np.bincount(rows, minlength=n_rows)
    sums = np.bincount(rows, weights=values, minlength=n_rows)
    return sums / np.maximum(counts, 1)
