"""The victim recommender of a shilling attack: user-kNN rating prediction (Resnick), and the
prediction shift of the attacked items it shows with and without the profiles a detector
flagged.

Not ``recsys_ebm.models.baselines.ItemKNN``: that one ranks items by item-item cosine on
binary interactions; an attack's prediction shift is defined on predicted *ratings*.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys_ebm.anomaly.ratings import as_ratings, row_means, row_of


def _centred_unit_rows(matrix: sp.csr_matrix) -> tuple[sp.csr_matrix, np.ndarray]:
    """Rows mean-centred over their ratings and scaled to unit norm; and the row means."""
    matrix = as_ratings(matrix)
    rows = row_of(matrix)
    means = row_means(matrix.data.astype(np.float64), rows, matrix.shape[0])
    centred = matrix.data - means[rows]
    norms = np.sqrt(np.bincount(rows, weights=centred**2, minlength=matrix.shape[0]))
    data = np.where(norms[rows] > 0, centred / np.maximum(norms[rows], 1e-12), 0.0)
    unit = sp.csr_matrix((data, matrix.indices, matrix.indptr), shape=matrix.shape)
    return unit, means


def knn_predict(pool: sp.csr_matrix, queries: sp.csr_matrix, items: np.ndarray, k: int = 20,
                scale: tuple[float, float] = (1.0, 5.0)) -> np.ndarray:
    """User-kNN rating predictions (Resnick), the classic victim of shilling attacks.

    Similarity is the cosine of mean-centred rating vectors; for each (query, item) the ``k``
    most similar users of ``pool`` who rated the item with positive similarity vote
    mean_q + sum sim (r_v,item - mean_v) / sum sim (mean_q when there is none), clipped to
    ``scale``. Queries should not be pool users who rated ``items``.

    pool (n_pool, n_items), queries (n_q, n_items) rating CSRs; items int (t,).
    Returns float64 (n_q, t).
    """
    pool_unit, pool_means = _centred_unit_rows(pool)
    query_unit, query_means = _centred_unit_rows(queries)
    pool_csc = as_ratings(pool).tocsc()
    items = np.atleast_1d(np.asarray(items, dtype=np.int64))
    out = np.empty((queries.shape[0], len(items)), dtype=np.float64)
    for j, item in enumerate(items):  # a handful of target items, each one vectorized
        span = slice(pool_csc.indptr[item], pool_csc.indptr[item + 1])
        raters = pool_csc.indices[span]
        deviation = pool_csc.data[span] - pool_means[raters]
        sims = np.asarray((query_unit @ pool_unit[raters].T).todense())
        sims = np.where(sims > 0, sims, 0.0)
        if sims.shape[1] > k:
            cut = np.partition(sims, -k, axis=1)[:, -k][:, None]
            # ties at the cut-off could keep more than k: keep the first k of them by column
            keep = sims > cut
            ties = (sims == cut) & (cut > 0)
            room = k - keep.sum(1, keepdims=True)
            keep |= ties & (np.cumsum(ties, axis=1) <= room)
            sims = np.where(keep, sims, 0.0)
        weight = sims.sum(1)
        vote = sims @ deviation
        out[:, j] = query_means + np.where(weight > 0, vote / np.maximum(weight, 1e-12), 0.0)
    return np.clip(out, *scale)


class ShiftMeter:
    """Prediction shift of the targets for genuine users who rated none of them.

    shift = mean over those users and targets of (prediction with ``pool`` - prediction on the
    genuine data alone), by :func:`knn_predict`.
    """

    def __init__(self, genuine_ratings: sp.csr_matrix, attacked_ratings: sp.csr_matrix,
                 targets: np.ndarray, k: int, scale: tuple[float, float]):
        genuine_ratings = as_ratings(genuine_ratings)
        self.attacked = as_ratings(attacked_ratings)
        self.targets, self.k, self.scale = np.asarray(targets), k, scale
        rated_target = np.asarray(genuine_ratings[:, self.targets].sum(axis=1)).ravel() > 0
        self.queries = genuine_ratings[np.flatnonzero(~rated_target)]
        self.clean = knn_predict(genuine_ratings, self.queries, self.targets, k, scale)

    def shift(self, removed: np.ndarray | None = None) -> float:
        """Mean shift with the users ``removed`` (indices into the attacked data) left out."""
        keep = np.ones(self.attacked.shape[0], dtype=bool)
        if removed is not None:
            keep[np.asarray(removed, dtype=np.int64)] = False
        pred = knn_predict(self.attacked[keep], self.queries, self.targets, self.k, self.scale)
        return float(np.mean(pred - self.clean))


