"""Interaction matrices in canonical form: CSR with sorted, unique column indices, and 0/1
patterns. Every layer that takes a users x items matrix normalises it here."""

from __future__ import annotations

from typing import Any

import scipy.sparse as sp


def canonical_csr(matrix: Any, shape: tuple[int, int] | None = None, name: str = "user_items", *,
                  drop_zeros: bool = False) -> sp.csr_matrix:
    """CSR with sorted, unique column indices, the shape checked.

    Copied only when it must change, except with ``drop_zeros`` (stored zeros removed), which
    always returns a copy. ``ValueError`` names ``name`` when it is not a sparse matrix or has
    another shape.
    """
    if not sp.issparse(matrix):
        raise ValueError(f"{name} must be a scipy.sparse matrix, got {type(matrix).__name__}")
    matrix = sp.csr_matrix(matrix, copy=drop_zeros)
    if shape is not None and matrix.shape != tuple(shape):
        raise ValueError(f"{name} has shape {matrix.shape}, expected {tuple(shape)}")
    if drop_zeros:
        matrix.eliminate_zeros()
    if not matrix.has_canonical_format:
        matrix = matrix if drop_zeros else matrix.copy()
        matrix.sum_duplicates()  # also sorts the indices
    return matrix


def binarize(user_items: sp.csr_matrix) -> sp.csr_matrix:
    """A 0/1 float32 copy with sorted indices; the caller's matrix (often ratings) is left
    untouched. Stored zeros are dropped first: they are not interactions."""
    binary = sp.csr_matrix(user_items, dtype=user_items.dtype, copy=True)
    binary.sum_duplicates()
    binary.eliminate_zeros()
    binary.data[:] = 1.0
    binary.sort_indices()
    return binary
