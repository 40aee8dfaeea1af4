"""The one training loop: epochs, progress bar, callbacks, early stopping, NaN detection."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from recsys_ebm.errors import ModelFitError

logger = logging.getLogger(__name__)


@dataclass
class TrainingHistory:
    """What happened during ``fit``: per-epoch metrics and the early-stopping outcome."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float = math.nan
    stopped_early: bool = False


def run_training(
    train_epoch: Callable[[int], dict[str, float]],
    *,
    epochs: int,
    validate: Callable[[], dict[str, float]] | None = None,
    monitor: str | None = None,
    mode: str = "max",
    patience: int = 10,
    snapshot: Callable[[], Any] | None = None,
    restore: Callable[[Any], None] | None = None,
    callback: Callable[[int, dict], None] | None = None,
    show_progress: bool = True,
    desc: str = "train",
) -> TrainingHistory:
    """Run ``train_epoch(epoch)`` for up to ``epochs`` epochs (1-based).

    After each epoch ``validate()`` (if given) adds metrics; when ``monitor`` stops
    improving for ``patience`` epochs, training stops and the best ``snapshot()`` is
    restored. Any non-finite metric raises ``ModelFitError`` naming the epoch.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    history = TrainingHistory()
    sign = 1.0 if mode == "max" else -1.0
    best_state = None
    bar = tqdm(range(1, epochs + 1), desc=desc, disable=not show_progress, leave=False)
    for epoch in bar:
        metrics = dict(train_epoch(epoch))
        if validate is not None:
            metrics.update(validate())
        bad = [name for name, value in metrics.items() if not np.isfinite(value)]
        if bad:
            raise ModelFitError(f"epoch {epoch}: non-finite {bad[0]} = {metrics[bad[0]]}; "
                                "lower the learning rate or raise the L2 penalty")
        history.epochs.append(metrics)
        if callback is not None:
            callback(epoch, metrics)
        bar.set_postfix({k: f"{v:.4f}" for k, v in list(metrics.items())[:4]})
        logger.debug("epoch %d: %s", epoch, metrics)
        if monitor is None:
            history.best_epoch = epoch
            continue
        if monitor not in metrics:
            raise ValueError(f"monitored metric {monitor!r} not among {sorted(metrics)}")
        value = metrics[monitor]
        if history.best_epoch == 0 or sign * value > sign * history.best_value:
            history.best_epoch, history.best_value = epoch, value
            best_state = snapshot() if snapshot is not None else None
        elif epoch - history.best_epoch >= patience:
            history.stopped_early = True
            logger.info("early stop at epoch %d: best %s = %.4f at epoch %d",
                        epoch, monitor, history.best_value, history.best_epoch)
            break
    bar.close()
    if best_state is not None and restore is not None and history.best_epoch != len(history.epochs):
        restore(best_state)
    return history


def ranking_validator(recommend: Callable[[np.ndarray], np.ndarray], validation: sp.csr_matrix,
                      k: int = 10) -> Callable[[], dict[str, float]]:
    """A ``validate`` callable computing NDCG@k and Recall@k on held-out ``validation`` items.

    ``recommend(user_ids) -> ids (n, k)`` must already filter the users' training items.
    """
    from recsys_ebm.evaluation.metrics import hit_matrix, ndcg_at_k, recall_at_k

    validation = sp.csr_matrix(validation)
    users = np.flatnonzero(np.diff(validation.indptr) > 0)
    n_relevant = np.diff(validation.indptr)[users]

    def validate() -> dict[str, float]:
        ids = recommend(users)
        hits = hit_matrix(ids, validation[users])
        return {
            f"val_ndcg@{k}": float(ndcg_at_k(hits, n_relevant, k).mean()),
            f"val_recall@{k}": float(recall_at_k(hits, n_relevant, k).mean()),
        }

    return validate
