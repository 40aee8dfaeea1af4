"""Rating-prediction protocol (PROTOCOLS.md): train on each fold, RMSE/MAE on its test ratings.

- ``protocol="official-folds"``: ML-100K's official folds u1..u5 (``uK.base`` / ``uK.test``).
- ``protocol="kfold"``: any variant, the rows permuted with ``seed`` and cut into ``n_folds``.

Id maps are fitted on each fold's training rows. Every test row is scored: a row whose user or
item never occurs in that fold's training data gets the documented fallback of
:func:`fallback_ratings` (the user's mean training rating when the user is known, else the item's
mean, else the global mean), so every model is scored on exactly the same rows. Predictions are
clipped to the variant's rating scale. The summary is the mean and the population standard
deviation (ddof = 0, as scikit-surprise's ``cross_validate`` reports) over the folds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys_ebm.data.interactions import Interactions
from recsys_ebm.data.movielens import get_variant, load_movielens, load_official_fold
from recsys_ebm.data.split import Split, kfold
from recsys_ebm.evaluation.evaluate import evaluate_ratings

logger = logging.getLogger(__name__)

__all__ = ["RatingModel", "evaluate_rating_folds", "fallback_ratings", "predict_test_ratings",
           "PROTOCOLS"]

PROTOCOLS = ("official-folds", "kfold")
FoldCallback = Callable[[str, int, dict], None]


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


def _load_folds(dataset_variant: str, data_dir, protocol: str, n_folds: int, seed: int,
                download: bool) -> list[tuple[str, Split]]:
    variant = get_variant(dataset_variant)
    if protocol == "official-folds":
        if variant.name != "ml-100k":
            raise ValueError(f"protocol 'official-folds' exists for ml-100k only, not {variant.name}; "
                             "use protocol='kfold'")
        if n_folds != 5:
            raise ValueError(f"the official ML-100K protocol has 5 folds (u1..u5), got n_folds={n_folds}")
        return [(f"u{k}", load_official_fold(k, data_dir, download=download)) for k in range(1, 6)]
    data = load_movielens(variant, data_dir, download=download)
    return [(f"fold{k + 1}", split) for k, split in enumerate(kfold(data.ratings, n_folds, seed))]


def evaluate_rating_folds(
    model_factory: Callable[[], RatingModel],
    dataset_variant: str = "100k",
    data_dir=None,
    protocol: str = "official-folds",
    n_folds: int = 5,
    seed: int = 0,
    callback: FoldCallback | None = None,
    show_progress: bool = False,
    *,
    folds: Sequence[int] | None = None,
    download: bool = True,
) -> dict[str, Any]:
    """Train a fresh model on every fold and score its test ratings.

    Parameters
    ----------
    model_factory : ``model_factory()`` returns an unfitted model (see :class:`RatingModel`).
    dataset_variant : MovieLens variant (``"100k"``, ``"latest-small"``, ...).
    data_dir : folder holding the variant (see ``recsys_ebm.data.movielens``).
    protocol : ``"official-folds"`` (ML-100K u1..u5) or ``"kfold"`` (seeded row permutation).
    n_folds, seed : the k-fold split (``official-folds`` needs ``n_folds == 5``; seed unused).
    callback : ``callback(fold_name, epoch, metrics)`` after every training epoch.
    show_progress : forwarded to ``fit`` (tqdm bar per fold).
    folds : 1-based fold numbers to run (default all), e.g. ``[1]`` for u1 alone.
    download : allow downloading a missing variant.

    Returns
    -------
    dict with ``rmse``, ``rmse_std``, ``mae``, ``mae_std`` (mean / population std over the
    folds run), ``folds`` (one dict per fold: ``fold``, ``rmse``, ``mae``, ``n_test``,
    ``n_fallback``, ``n_train``, ``fit_seconds`` (wall), ``fit_cpu_seconds`` (CPU time of this
    process, all threads: comparable on a shared machine), ``predict_seconds``, ``best_epoch``),
    ``protocol``, ``dataset``, ``n_folds``, ``seed``, ``rating_scale``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    variant = get_variant(dataset_variant)
    all_folds = _load_folds(variant.name, data_dir, protocol, n_folds, seed, download)
    if folds is not None:
        wanted = list(folds)
        bad = [k for k in wanted if not (isinstance(k, (int, np.integer)) and 1 <= k <= len(all_folds))]
        if bad or not wanted:
            raise ValueError(f"folds must be fold numbers in 1..{len(all_folds)}, got {folds!r}")
        all_folds = [all_folds[k - 1] for k in wanted]
    scale = variant.rating_scale
    results = []
    for name, split in all_folds:
        train = Interactions.from_frame(split.train, name=f"{name} train")
        ratings = train.rating_matrix
        model = model_factory()
        fit_kwargs: dict[str, Any] = {"show_progress": show_progress}
        if callback is not None:
            fit_kwargs["callback"] = lambda epoch, metrics, _name=name: callback(_name, epoch, metrics)
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
        results.append(fold)
    rmses = np.array([f["rmse"] for f in results])
    maes = np.array([f["mae"] for f in results])
    return {
        "rmse": float(rmses.mean()),
        "rmse_std": float(rmses.std()),
        "mae": float(maes.mean()),
        "mae_std": float(maes.std()),
        "folds": results,
        "protocol": protocol,
        "dataset": variant.name,
        "n_folds": len(results),
        "seed": seed,
        "rating_scale": [scale.min, scale.max, scale.step],
    }
