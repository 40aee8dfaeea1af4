"""Full-catalog top-N evaluation and rating-error evaluation (protocols: docs/protocols.md)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from recsys_ebm.data.sparse import canonical_csr
from recsys_ebm.evaluation.metrics import (
    coverage_at_k,
    hit_matrix,
    hit_rate_at_k,
    mae,
    map_allrel_at_k,
    map_at_k,
    mrr,
    ndcg_at_k,
    next_item_metrics,
    precision_at_k,
    recall_allrel_at_k,
    recall_at_k,
    rmse,
    target_ranks,
)

logger = logging.getLogger(__name__)

__all__ = [
    "RankingResult",
    "evaluate_ranking",
    "evaluate_ratings",
    "evaluate_next_item",
    "NEXT_ITEM_KS",
    "format_table",
    "RANKING_METRICS",
    "METRIC_LEGEND",
]

# the per-k metrics, in report order; "mrr" (over the max-k list) and "coverage@k" come after.
# "recall"/"map" divide by min(k, R), "recall_allrel"/"map_allrel" by R (R = the user's test items)
RANKING_METRICS: tuple[str, ...] = (
    "precision", "recall", "recall_allrel", "ndcg", "map", "map_allrel", "hitrate"
)
# printed under format_table's rows when recall or MAP rows are shown
METRIC_LEGEND = ("recall, map: / min(k, R); recall_allrel, map_allrel: / R "
                 "(R = the user's test items)")
_TABLE_ROWS: tuple[str, ...] = (*RANKING_METRICS, "coverage")


class SupportsRecommend(Protocol):
    """Anything with ``Recommender.recommend``'s signature (see models/base.py)."""

    def recommend(
        self,
        user_ids,
        user_items=None,
        k: int = 10,
        *,
        filter_seen: bool = True,
        fold_in: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True, eq=False)
class RankingResult:
    """Outcome of :func:`evaluate_ranking`.

    Attributes
    ----------
    summary : dict
        ``"precision@k"``, ``"recall@k"``, ``"recall_allrel@k"``, ``"ndcg@k"``, ``"map@k"``,
        ``"map_allrel@k"``, ``"hitrate@k"``, ``"coverage@k"`` for every k, ``"mrr"`` and
        ``"n_users"``; means over evaluated users. ``recall@k`` and ``map@k`` divide by
        min(k, R), ``recall_allrel@k`` and ``map_allrel@k`` by R, the user's number of test
        items (docs/protocols.md).
    per_user : DataFrame (n_eval_users, ...)
        Indexed by ``user_id`` (row of the input matrices); columns ``n_test`` and every
        per-user metric.
    recommendations : int64 (n_eval_users, max_k)
        Top-max_k item ids, rows aligned with ``per_user``, padded with -1.
    """

    summary: dict[str, float]
    per_user: pd.DataFrame
    recommendations: np.ndarray


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks_list = [ks] if isinstance(ks, (int, np.integer)) else list(ks)
    if not ks_list:
        raise ValueError("ks is empty; give at least one cut-off")
    for k in ks_list:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"every k must be a positive integer, got {k!r}")
    return tuple(sorted({int(k) for k in ks_list}))


def evaluate_ranking(
    model: SupportsRecommend,
    train_user_items: sp.spmatrix | sp.sparray,
    test_user_items: sp.spmatrix | sp.sparray,
    ks: Iterable[int] = (5, 10, 20, 50),
    *,
    batch_size: int = 1024,
    fold_in: bool = False,
    show_progress: bool = False,
) -> RankingResult:
    """Rank the whole catalog for every user with a test item, excluding their train items.

    Parameters
    ----------
    model : object with ``recommend(user_ids, user_items, k, filter_seen=True, fold_in=...)``
    train_user_items : CSR (n_users, n_items)
        Items excluded from each user's ranking. With ``fold_in=True`` (strong
        generalization) these rows are also the histories the model folds in.
    test_user_items : CSR (n_users, n_items)
        The relevant items; users whose row is empty are not evaluated.
    ks : cut-offs; the model is asked once for ``max(ks)`` items per user.
    batch_size : users per ``recommend`` call.
    fold_in : score users from their train rows instead of trained user vectors.
    show_progress : tqdm bar over users.

    Returns
    -------
    RankingResult
    """
    train, test = _check_matrices(model, train_user_items, test_user_items)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ks = _check_ks(ks)
    n_test_all = np.diff(test.indptr)
    user_ids = np.flatnonzero(n_test_all > 0).astype(np.int64)
    if user_ids.size == 0:
        raise ValueError("no user has a test item; nothing to evaluate")
    start_time = time.perf_counter()
    recs = _rank_users(model, train, user_ids, ks[-1], batch_size, fold_in, show_progress)
    per_user = _per_user_metrics(recs, test[user_ids], n_test_all[user_ids].astype(np.int64),
                                 ks, user_ids)
    summary: dict[str, float] = {}
    for metric in RANKING_METRICS:
        for k in ks:
            summary[f"{metric}@{k}"] = float(per_user[f"{metric}@{k}"].mean())
    summary["mrr"] = float(per_user["mrr"].mean())
    for k in ks:
        summary[f"coverage@{k}"] = coverage_at_k(recs, test.shape[1], k)
    summary["n_users"] = int(user_ids.size)
    logger.info("evaluated %d of %d users at k=%s in %.1fs", user_ids.size, test.shape[0],
                list(ks), time.perf_counter() - start_time)
    return RankingResult(summary=summary, per_user=per_user, recommendations=recs)


#: cut-offs of the next-item metrics (docs/protocols.md)
NEXT_ITEM_KS = (10, 20)


def evaluate_next_item(model: SupportsRecommend, history_user_items: sp.spmatrix | sp.sparray,
                       test_user_items: sp.spmatrix | sp.sparray, ks: Iterable[int] = NEXT_ITEM_KS,
                       *, batch_size: int = 512) -> dict[str, float]:
    """Next-item metrics: HR@k, NDCG@k and MRR of each user's single test item, ranked in the
    full ranking of the catalog without the user's history items (``history_user_items``).

    The model is asked for every item (``k = n_items``), so the rank, and so MRR, is exact (not
    truncated at a cut-off). A model that reads the history order (``uses_order``) ranks the
    users from the ordered sequences it was fitted on. Returns :func:`next_item_metrics`.
    """
    history, test = _check_matrices(model, history_user_items, test_user_items)
    n_test = np.diff(test.indptr)
    if np.any(n_test > 1):
        raise ValueError(f"next-item evaluation needs one test item per user; user "
                         f"{int(np.flatnonzero(n_test > 1)[0])} has {int(n_test.max())}")
    user_ids = np.flatnonzero(n_test == 1).astype(np.int64)
    if user_ids.size == 0:
        raise ValueError("no user has a test item; nothing to evaluate")
    ranks = np.empty(user_ids.size, dtype=np.int64)
    for start in range(0, user_ids.size, batch_size):
        batch = user_ids[start:start + batch_size]
        ids, _ = model.recommend(batch, history[batch], k=test.shape[1], filter_seen=True)
        ranks[start:start + batch.size] = target_ranks(hit_matrix(np.asarray(ids), test[batch]))
    return next_item_metrics(ranks, _check_ks(ks))


def _check_matrices(model: SupportsRecommend, train_user_items, test_user_items
                    ) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Both matrices as canonical CSRs of one shape that matches the model's catalog."""
    for name, m in (("train_user_items", train_user_items), ("test_user_items", test_user_items)):
        if not sp.issparse(m):
            raise ValueError(f"{name} must be a scipy.sparse matrix, got {type(m).__name__}")
    if train_user_items.shape != test_user_items.shape:
        raise ValueError(
            f"train_user_items has shape {train_user_items.shape}, "
            f"test_user_items has {test_user_items.shape}; they must match (users x items)"
        )
    model_items = getattr(model, "n_items", None)
    if model_items is not None and model_items != test_user_items.shape[1]:
        raise ValueError(f"the matrices have {test_user_items.shape[1]} items, the model has {model_items}")
    train = canonical_csr(train_user_items, name="train_user_items", drop_zeros=True)
    test = canonical_csr(test_user_items, name="test_user_items", drop_zeros=True)
    overlap = train.multiply(test).nnz
    if overlap:
        logger.warning("%d test interactions are also in train; they are filtered from the ranking "
                       "and can never be hits", overlap)
    return train, test


def _rank_users(model: SupportsRecommend, train: sp.csr_matrix, user_ids: np.ndarray, max_k: int,
                batch_size: int, fold_in: bool, show_progress: bool) -> np.ndarray:
    """Each user's top ``max_k`` (train items excluded) from ``model.recommend``: int64 (n, max_k)."""
    recs = np.empty((user_ids.size, max_k), dtype=np.int64)
    with tqdm(total=user_ids.size, unit="user", desc="evaluate", disable=not show_progress) as bar:
        for start in range(0, user_ids.size, batch_size):
            batch = user_ids[start : start + batch_size]
            # rows aligned with the batch: unambiguous for recommend whether or not we fold in
            ids, _ = model.recommend(batch, train[batch], k=max_k, filter_seen=True, fold_in=fold_in)
            ids = np.asarray(ids)
            if ids.shape != (batch.size, max_k):
                raise ValueError(
                    f"model.recommend returned ids of shape {ids.shape}, expected {(batch.size, max_k)}"
                )
            recs[start : start + batch.size] = ids
            bar.update(batch.size)
    return recs


def _per_user_metrics(recs: np.ndarray, test_rows: sp.csr_matrix, n_test: np.ndarray,
                      ks: tuple[int, ...], user_ids: np.ndarray) -> pd.DataFrame:
    """Every metric at every k for each evaluated user (one row per user)."""
    hits = hit_matrix(recs, test_rows)
    columns: dict[str, np.ndarray] = {"n_test": n_test}
    for k in ks:
        columns[f"precision@{k}"] = precision_at_k(hits, k)
        columns[f"recall@{k}"] = recall_at_k(hits, n_test, k)
        columns[f"recall_allrel@{k}"] = recall_allrel_at_k(hits, n_test, k)
        columns[f"ndcg@{k}"] = ndcg_at_k(hits, n_test, k)
        columns[f"map@{k}"] = map_at_k(hits, n_test, k)
        columns[f"map_allrel@{k}"] = map_allrel_at_k(hits, n_test, k)
        columns[f"hitrate@{k}"] = hit_rate_at_k(hits, k)
    columns["mrr"] = mrr(hits)
    return pd.DataFrame(columns, index=pd.Index(user_ids, name="user_id"))


def evaluate_ratings(
    pred: np.ndarray, truth: np.ndarray, *, clip: tuple[float, float] | None = None
) -> dict[str, float]:
    """RMSE and MAE of rating predictions.

    Parameters
    ----------
    pred, truth : float (n,), aligned test ratings
    clip : (low, high) rating scale to clip ``pred`` to first, or None

    Returns
    -------
    dict with ``"rmse"``, ``"mae"``, ``"n"`` (number of ratings)
    """
    pred = np.asarray(pred, dtype=np.float64)
    if clip is not None:
        low, high = clip
        if not low <= high:
            raise ValueError(f"clip must be (low, high) with low <= high, got {clip}")
        pred = np.clip(pred, low, high)
    return {"rmse": rmse(pred, truth), "mae": mae(pred, truth), "n": int(np.asarray(truth).size)}


_KEY = re.compile(r"^([a-z_]+)@(\d+)$")


def format_table(
    summary: dict[str, float], ks: Iterable[int] | None = None, *, digits: int = 4
) -> str:
    """An aligned text table of a ranking summary: rows = metric, columns = k.

    ``mrr`` and ``n_users`` (when present) go on the line after the rows, then, when a
    recall or MAP row is shown, :data:`METRIC_LEGEND` (which definition each row uses).
    ``ks`` defaults to every k found in the keys; missing entries print as ``-``.
    """
    found = [(m.group(1), int(m.group(2))) for key in summary if (m := _KEY.match(key))]
    ks = _check_ks(ks) if ks is not None else tuple(sorted({k for _, k in found}))
    names = [n for n in _TABLE_ROWS if any(f == n for f, _ in found)]
    names += sorted({f for f, _ in found} - set(names))
    header = ["metric", *[f"@{k}" for k in ks]]
    rows = [
        [
            name,
            *[
                f"{summary[f'{name}@{k}']:.{digits}f}" if f"{name}@{k}" in summary else "-"
                for k in ks
            ],
        ]
        for name in names
    ]
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if j == 0 else cell.rjust(w)
            for j, (cell, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *rows]
    ]
    tail = []
    if "mrr" in summary:
        tail.append(f"mrr {summary['mrr']:.{digits}f}")
    if "n_users" in summary:
        tail.append(f"n_users {int(summary['n_users'])}")
    if tail:
        lines.append("  ".join(tail))
    if {"recall", "recall_allrel", "map", "map_allrel"} & set(names):
        lines.append(METRIC_LEGEND)
    return "\n".join(lines)
