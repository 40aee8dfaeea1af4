"""Rating prediction (``docs/protocols.md``): train on each fold, RMSE / MAE on its test ratings.

The folds arrive as data (:class:`RatingFolds`: train / test frames of raw ids per fold and the
rating scale), so any ratings file can be scored; ``rating_data`` builds them from a dataset
(ML-100K's official folds u1..u5, a seeded k-fold of the rows otherwise).

Id maps are fitted on each fold's training rows. Every test row is scored: a row whose user or
item never occurs in that fold's training data gets the documented fallback of
:func:`fallback_ratings` (the user's mean training rating when the user is known, else the item's
mean, else the global mean), so every model is scored on exactly the same rows. Predictions are
clipped to the folds' rating scale. The summary is the mean and the population standard
deviation (ddof = 0, as scikit-surprise's ``cross_validate`` reports) over the folds.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys_ebm.data.interactions import Interactions
from recsys_ebm.data.split import Split
from recsys_ebm.data.variants import RatingScale
from recsys_ebm.evaluation.evaluate import evaluate_ratings

logger = logging.getLogger(__name__)

__all__ = ["RatingFolds", "RatingModel", "evaluate_folds", "fallback_ratings",
           "predict_test_ratings", "PROTOCOLS"]

PROTOCOLS = ("official-folds", "kfold")
FoldCallback = Callable[[str, int, dict], None]


@dataclasses.dataclass(frozen=True, eq=False)
class RatingFolds:
    """Rating-prediction folds over raw ids, and what they are (recorded in the results).

    ``folds`` are ``(name, split)`` pairs: ``split.train`` / ``split.test`` frames with raw
    ``user_id, item_id, rating``. ``rating_scale`` clips the predictions.
    """

    folds: tuple[tuple[str, Split], ...]
    rating_scale: RatingScale
    dataset: str = "ratings"
    protocol: str = "kfold"
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.folds:
            raise ValueError("no folds to evaluate")

    def select(self, numbers: Sequence[int] | None) -> RatingFolds:
        """The folds numbered ``numbers`` (1-based, in that order); None keeps all."""
        if numbers is None:
            return self
        wanted = list(numbers)
        n = len(self.folds)
        bad = [k for k in wanted if not (isinstance(k, (int, np.integer)) and 1 <= k <= n)]
        if bad or not wanted:
            raise ValueError(f"folds must be fold numbers in 1..{n}, got {numbers!r}")
        return dataclasses.replace(self, folds=tuple(self.folds[k - 1] for k in wanted))


class RatingModel(Protocol):
    """What the runner needs: ``fit`` on a ratings CSR and ``predict`` aligned pairs.

    A model with a true ``uses_query_pattern`` attribute also receives
    ``fit(..., implicit=CSR)``: the binary pattern of the test pairs (never their ratings).
    """

    def fit(self, user_items: sp.csr_matrix, *, callback=None, show_progress: bool = True) -> Any: ...

    def predict(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray: ...


def fallback_ratings(train: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """The documented prediction for a test row the model cannot score.

    The user's mean training rating when the user occurs in ``train``, else the item's mean
    training rating when the item does, else the global mean.

    Parameters
    ----------
    train : DataFrame with raw ``user_id, item_id, rating``
    user_ids, item_ids : raw ids (n,)

    Returns
    -------
    float64 (n,)
    """
    global_mean = float(train["rating"].mean())
    user_mean = train.groupby("user_id")["rating"].mean()
    item_mean = train.groupby("item_id")["rating"].mean()
    by_user = pd.Series(user_ids).map(user_mean).to_numpy(dtype=np.float64)
    by_item = pd.Series(item_ids).map(item_mean).to_numpy(dtype=np.float64)
    return np.where(np.isnan(by_user), np.where(np.isnan(by_item), global_mean, by_item), by_user)


def predict_test_ratings(model: RatingModel, train: Interactions, train_frame: pd.DataFrame,
                         test: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Predictions for every test row: the model's where user and item are known, else fallback.

    Returns
    -------
    pred : float64 (n_test,)
    known : bool (n_test,), True where the model made the prediction
    """
    users = train.user_map.to_index(test["user_id"].to_numpy(), missing="mask")
    items = train.item_map.to_index(test["item_id"].to_numpy(), missing="mask")
    known = (users >= 0) & (items >= 0)
    pred = np.empty(len(test), dtype=np.float64)
    if known.any():
        pred[known] = np.asarray(model.predict(users[known], items[known]), dtype=np.float64)
    if not known.all():
        pred[~known] = fallback_ratings(train_frame, test["user_id"].to_numpy()[~known],
                                        test["item_id"].to_numpy()[~known])
    return pred, known


def _test_pattern(train: Interactions, test: pd.DataFrame) -> sp.csr_matrix:
    """Binary users x items CSR of the test pairs whose user and item are known to train."""
    users = train.user_map.to_index(test["user_id"].to_numpy(), missing="mask")
    items = train.item_map.to_index(test["item_id"].to_numpy(), missing="mask")
    keep = (users >= 0) & (items >= 0)
    out = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (users[keep], items[keep])),
                        shape=train.shape)
    out.sum_duplicates()
    out.data[:] = 1.0
    return out


def evaluate_folds(model_factory: Callable[[], RatingModel], folds: RatingFolds,
                   callback: FoldCallback | None = None,
                   show_progress: bool = False) -> dict[str, Any]:
    """Train a fresh model on every fold and score its test ratings.

    Parameters
    ----------
    model_factory : ``model_factory()`` returns an unfitted model (see :class:`RatingModel`).
    folds : the folds (``RatingFolds.select`` runs a subset).
    callback : ``callback(fold_name, epoch, metrics)`` after every training epoch.
    show_progress : forwarded to ``fit`` (tqdm bar per fold).

    Returns
    -------
    dict with ``rmse``, ``rmse_std``, ``mae``, ``mae_std`` (mean / population std over the
    folds run), ``folds`` (one dict per fold: ``fold``, ``rmse``, ``mae``, ``n_test``,
    ``n_fallback``, ``n_train``, ``fit_seconds`` (wall), ``fit_cpu_seconds`` (CPU time of this
    process, all threads: comparable on a shared machine), ``predict_seconds``, ``best_epoch``),
    ``protocol``, ``dataset``, ``n_folds``, ``seed``, ``rating_scale``.
    """
    scale = folds.rating_scale
    results = [_evaluate_fold(model_factory, name, split, scale, callback, show_progress)
               for name, split in folds.folds]
    rmses = np.array([f["rmse"] for f in results])
    maes = np.array([f["mae"] for f in results])
    return {
        "rmse": float(rmses.mean()),
        "rmse_std": float(rmses.std()),
        "mae": float(maes.mean()),
        "mae_std": float(maes.std()),
        "folds": results,
        "protocol": folds.protocol,
        "dataset": folds.dataset,
        "n_folds": len(results),
        "seed": folds.seed,
        "rating_scale": [scale.min, scale.max, scale.step],
    }


def _evaluate_fold(model_factory: Callable[[], RatingModel], name: str, split: Split,
                   scale: RatingScale, callback: FoldCallback | None,
                   show_progress: bool) -> dict[str, Any]:
    train = Interactions.from_frame(split.train, name=f"{name} train")
    ratings = train.rating_matrix
    model = model_factory()
    fit_kwargs: dict[str, Any] = {"show_progress": show_progress}
    if callback is not None:
        fit_kwargs["callback"] = lambda epoch, metrics: callback(name, epoch, metrics)
    if getattr(model, "uses_query_pattern", False):
        fit_kwargs["implicit"] = _test_pattern(train, split.test)
    start, cpu_start = time.perf_counter(), time.process_time()
    model.fit(ratings, **fit_kwargs)
    fit_seconds = time.perf_counter() - start
    fit_cpu_seconds = time.process_time() - cpu_start
    start = time.perf_counter()
    pred, known = predict_test_ratings(model, train, split.train, split.test)
    predict_seconds = time.perf_counter() - start
    scores = evaluate_ratings(pred, split.test["rating"].to_numpy(), clip=(scale.min, scale.max))
    history = getattr(model, "history", None)
    fold = {
        "fold": name,
        "rmse": scores["rmse"],
        "mae": scores["mae"],
        "n_test": scores["n"],
        "n_fallback": int((~known).sum()),
        "n_train": int(ratings.nnz),
        "fit_seconds": fit_seconds,
        "fit_cpu_seconds": fit_cpu_seconds,
        "predict_seconds": predict_seconds,
        "best_epoch": int(getattr(history, "best_epoch", 0)),
    }
    logger.info("%s: rmse %.4f mae %.4f (%d test rows, %d by fallback), fit %.1fs",
                name, fold["rmse"], fold["mae"], fold["n_test"], fold["n_fallback"], fit_seconds)
    return fold
