"""Evaluation: vectorized metrics over hit matrices and the top-N / rating protocols."""

from recsys_ebm.evaluation.evaluate import (
    RANKING_METRICS,
    RankingResult,
    evaluate_ranking,
    evaluate_ratings,
    format_table,
)
from recsys_ebm.evaluation.metrics import (
    coverage_at_k,
    hit_matrix,
    hit_rate_at_k,
    mae,
    map_allrel_at_k,
    map_at_k,
    mrr,
    ndcg_at_k,
    precision_at_k,
    recall_allrel_at_k,
    recall_at_k,
    rmse,
)

__all__ = [
    "RANKING_METRICS",
    "RankingResult",
    "evaluate_ranking",
    "evaluate_ratings",
    "format_table",
    "coverage_at_k",
    "hit_matrix",
    "hit_rate_at_k",
    "mae",
    "map_allrel_at_k",
    "map_at_k",
    "mrr",
    "ndcg_at_k",
    "precision_at_k",
    "recall_allrel_at_k",
    "recall_at_k",
    "rmse",
]
