"""End-to-end jobs behind the CLI: dataset -> split -> fit (with validation) -> evaluate -> track.

Data flows one way (``docs/protocols.md``): raw frame -> split -> id maps fitted on train ->
train/test CSRs of the same shape -> fit -> evaluate. Raw ids reappear only in artifacts and
exports. Fitting with validation (early stop then refit) is ``tuning.fit_with_validation``,
re-exported here with ``build_model`` and ``model_input``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys_ebm.data.interactions import Interactions
from recsys_ebm.data.movielens import load_movielens
from recsys_ebm.data.readers import read_interactions
from recsys_ebm.data.split import (
    Split,
    filter_min_interactions,
    held_out_users,
    leave_one_out,
    random_holdout,
    temporal_holdout,
)
from recsys_ebm.data.variants import RatingScale
from recsys_ebm.evaluation.evaluate import RankingResult, evaluate_next_item, evaluate_ranking
from recsys_ebm.experiments.tuning import (
    build_model,
    fit_production,
    fit_with_validation,
    model_input,
)
from recsys_ebm.models.base import Recommender

logger = logging.getLogger(__name__)

__all__ = ["KS", "RANKING_PROTOCOLS", "VALIDATION_SEED", "Dataset", "PreparedData", "build_model",
           "evaluate_model", "fit_production", "fit_with_validation", "load_dataset", "make_split", "model_input", "model_options", "next_item_summary",
           "prepare", "sample_recommendations", "tied_test_items"]

#: Top-N protocols of docs/protocols.md; "strong" folds held-out users in at evaluation time.
RANKING_PROTOCOLS = ("random", "temporal", "loo", "strong")
#: Seed of the validation split carved from train (a different seed from the test split).
VALIDATION_SEED = 1
#: Cut-offs reported for every ranking evaluation.
KS = (5, 10, 20, 50)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Interactions as a canonical frame plus what the reports need about them."""

    name: str
    ratings: pd.DataFrame
    items: pd.DataFrame | None
    checksum: str
    source: str
    #: the MovieLens variant (``ml-100k``, ...) it was loaded as; None for a user's file
    variant: str | None = None
    #: the allowed ratings when known (MovieLens); None for a user's file
    rating_scale: RatingScale | None = None


def load_dataset(dataset: str, variant: str = "100k", data_dir: str | None = None,
                 download: bool = True, **reader_options: Any) -> Dataset:
    """``dataset="movielens"`` loads a MovieLens variant; any other value is a CSV/Parquet path."""
    if dataset == "movielens":
        data = load_movielens(variant, data_dir, download)
        return Dataset(data.name, data.ratings, data.items, data.checksum, str(data.path),
                       variant=data.name, rating_scale=data.rating_scale)
    path = Path(dataset)
    if not path.exists():
        raise FileNotFoundError(
            f"dataset {dataset!r} is neither 'movielens' nor an existing CSV/Parquet file"
        )
    frame = read_interactions(path, **reader_options)
    checksum = hashlib.sha256(path.read_bytes()).hexdigest()
    return Dataset(path.stem, frame, None, checksum, str(path))


def make_split(frame: pd.DataFrame, protocol: str, seed: int = 0) -> Split:
    """The top-N test split of docs/protocols.md (users with < 5 interactions dropped first)."""
    frame = filter_min_interactions(frame, 5)
    if protocol == "random":
        return random_holdout(frame, 0.2, seed=seed)
    if protocol == "temporal":
        return temporal_holdout(frame, 0.2)
    if protocol == "loo":
        return leave_one_out(frame)
    if protocol == "strong":
        return held_out_users(frame, fraction=0.1, fold_in_fraction=0.8, seed=seed)
    raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(RANKING_PROTOCOLS)}")


@dataclass(frozen=True, eq=False)
class PreparedData:
    """Train (and validation-fit) matrices plus the test target, all over train's id maps."""

    train: Interactions
    test: Interactions
    fit_part: Interactions
    validation: Interactions
    fold_in: Interactions | None = None


def prepare(split: Split, protocol: str) -> PreparedData:
    """Fit id maps on train; carve a validation split from train the way the test was made."""
    train = Interactions.from_frame(split.train, name="train")
    inner = _validation_split(split.train, protocol)
    fit_part = Interactions.from_frame(inner.train, user_map=train.user_map,
                                       item_map=train.item_map, name="validation-fit")
    validation = Interactions.from_frame(inner.test, user_map=train.user_map,
                                         item_map=train.item_map, name="validation")
    if protocol == "strong":
        fold_in = Interactions.from_frame(split.fold_in, item_map=train.item_map, name="fold-in")
        test = Interactions.from_frame(split.test, user_map=fold_in.user_map,
                                       item_map=train.item_map, name="test")
        return PreparedData(train, test, fit_part, validation, fold_in)
    test = Interactions.from_frame(split.test, user_map=train.user_map, item_map=train.item_map,
                                   name="test")
    return PreparedData(train, test, fit_part, validation)


def _validation_split(train: pd.DataFrame, protocol: str) -> Split:
    if protocol in ("temporal", "loo"):
        return temporal_holdout(train, 0.2) if protocol == "temporal" else leave_one_out(train)
    return random_holdout(train, 0.2, seed=VALIDATION_SEED)


def evaluate_model(model: Recommender, data: PreparedData, ks=KS,
                   show_progress: bool = False) -> RankingResult:
    """Full-catalog ranking metrics on the test target (fold-in for strong generalization).

    A sequence model (``uses_order``) ranks after every training event: a model kept from early
    stopping (fitted without the validation event) observes the train sequences first.
    """
    if model.uses_order and data.fold_in is None:
        model.observe(data.train.sequences())
    if data.fold_in is not None:
        return evaluate_ranking(model, model_input(model, data.fold_in), data.test.user_items, ks,
                                fold_in=True, show_progress=show_progress)
    return evaluate_ranking(model, model_input(model, data.train), data.test.user_items, ks,
                            show_progress=show_progress)


def tied_test_items(data: PreparedData) -> int:
    """How many test items share their timestamp with the user's last training event (their
    order was decided by the protocol's seeded tie rule, ``data/sequences.py``)."""
    train = data.train.sequences()
    has = train.lengths[data.test.user_idx] > 0
    last = train.timestamps[train.indptr[1:][data.test.user_idx[has]] - 1]
    return int((data.test.timestamps[has] == last).sum())


def next_item_summary(model: Recommender, data: PreparedData) -> dict[str, Any]:
    """Next-item metrics of the ``loo`` protocol (HR@10/20, NDCG@10/20, exact MRR) and the
    number of test items whose order was a timestamp tie."""
    if data.fold_in is not None:
        raise ValueError("next-item metrics are defined for the loo protocol")
    if model.uses_order:
        model.observe(data.train.sequences())
    summary: dict[str, Any] = evaluate_next_item(model, data.train.user_items, data.test.user_items)
    summary["n_tied_test"] = tied_test_items(data)
    return summary


def sample_recommendations(model: Recommender, fitted_on: Interactions, items: pd.DataFrame | None,
                           n_users: int = 5, k: int = 10) -> pd.DataFrame:
    """Top-k for the first few users with raw ids (and titles when known): an MLflow artifact.

    ``fitted_on`` holds the interactions (and id maps) the model was fitted on; its seen set
    is left out.
    """
    users = np.arange(min(n_users, fitted_on.n_users))
    ids, scores = model.recommend(users, k=k)
    frame = pd.DataFrame({
        "user_id": np.repeat(fitted_on.user_map.to_raw(users), k),
        "rank": np.tile(np.arange(1, k + 1), len(users)),
        "item_id": fitted_on.item_map.to_raw(np.where(ids >= 0, ids, 0).ravel()),
        "score": scores.ravel(),
    })[ids.ravel() >= 0]
    if items is not None and "title" in items.columns:
        frame = frame.merge(items[["item_id", "title"]], on="item_id", how="left")
    return frame


def model_options(cls: type[Recommender], config_file: str | None, overrides: dict[str, Any],
                  table: str | None = None, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Options from a TOML file's ``[table]`` (if any; else ``defaults``, e.g. the tuned
    ``[model]`` table of ``pipelines/<model>.toml``) updated by command-line overrides."""
    options: dict[str, Any] = {}
    if config_file is not None:
        options.update(dataclasses.asdict(cls.config_class.from_toml(config_file, table)))
    elif defaults is not None:
        options.update(dataclasses.asdict(cls.config_class.from_dict(defaults)))
    options.update(overrides)
    cls.config_class.from_dict(options)  # validate early, with the field's name in the error
    return options
