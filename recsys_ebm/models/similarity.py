"""Item-item and user-user neighbours (implicit's ``similar_items`` / ``similar_users``): the
nearest rows of a vector table by cosine or by energy, each row's own id left out, ranked by the
serving core's exact kernels."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys_ebm.ranking.factored import rank_vectors
from recsys_ebm.ranking.select import select
from recsys_ebm.ranking.topk import check_k, mask_rows

METRICS = ("cosine", "energy")


def check_ids(ids, n: int, what: str) -> np.ndarray:
    """``ids`` as int64 1-D within ``0 .. n-1``; ``IndexError`` names the first one outside."""
    out = np.atleast_1d(np.asarray(ids))
    if out.ndim != 1 or (out.size and not np.issubdtype(out.dtype, np.integer)):
        raise ValueError(f"{what} ids must be a 1-D array of integers, got {out.dtype} {out.shape}")
    out = out.astype(np.int64)
    bad = (out < 0) | (out >= n)
    if np.any(bad):
        raise IndexError(f"{what} id {int(out[bad][0])} is outside 0..{n - 1}")
    return out


def _self_mask(ids: np.ndarray, n: int) -> sp.csr_matrix:
    """One stored entry per query row, at the row's own id: never its own neighbour."""
    return sp.csr_matrix((np.ones(ids.size, np.float32), ids, np.arange(ids.size + 1)),
                         shape=(ids.size, n))


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def nearest_rows(table: np.ndarray, ids: np.ndarray, k: int, *, metric: str = "cosine",
                 biases: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``table`` (n, dim) nearest to rows ``ids`` of it, themselves excluded.

    ``cosine``: cosine similarity of the rows. ``energy``: -E of row j for a query that is row
    i, <t_i, t_j> + b_j (``biases``, default 0). Returns ids int64 (len(ids), k) and scores
    float32, best first, ties to the lower id, padded with -1 / -inf.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    k = check_k(k)
    table = np.asarray(table, dtype=np.float32)
    if metric == "cosine":
        table, biases = _unit_rows(table), None
    bias = np.zeros(table.shape[0], np.float32) if biases is None else np.asarray(biases, np.float32)
    ids_out, values, _ = rank_vectors(table[ids], table, bias, k, exclude=_self_mask(ids, len(table)))
    return ids_out, values


def nearest_in_matrix(matrix, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest entries of rows ``ids`` of a square item-item matrix (dense or sparse),
    the diagonal excluded: an item-item model's own neighbours."""
    k = check_k(k)
    rows = matrix[ids]
    scores = np.array(rows.toarray() if sp.issparse(rows) else rows, dtype=np.float32, order="C")
    if sp.issparse(matrix):  # absent entries of a sparse graph are no neighbours
        present = rows.toarray() != 0
        scores[~present] = -np.inf
    mask_rows(scores, _self_mask(ids, matrix.shape[1]))
    out_ids, values, _ = select(scores, k, 0.0, 0, ids)
    return out_ids, values
