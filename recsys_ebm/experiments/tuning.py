"""Choosing a model's options on validation: early stop then refit, and the grid search.

**Early stop then refit** (written once, used by ``runner.fit_with_validation`` for
train / evaluate / export and by the comparison report): a model is fitted on the
validation-fit part of train with the validation split carved from train for early stopping
(:func:`early_stop`); it is then refit on all of train (:func:`fit_on_train`) with
:func:`refit_options`: models that train in epochs (``trains_in_epochs``) refit for the best
validation epoch count, the others (closed form, or a fixed iteration count that is itself a
tuned hyperparameter) with the same options.

**Grid search**: the ``[grid.<model>]`` tables of ``pipelines/grids.toml`` (each list a
hyperparameter, the cartesian product fitted) on top of the model's tuned defaults of
``pipelines/<model>.toml``; every point is early-stopped on the validation split and scored by
NDCG@10 there (never on test); :func:`grid_search` returns the scores and the refit options of
the best point. The protocols are described in ``docs/protocols.md``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import scipy.sparse as sp

from recsys_ebm._compat import tomllib
from recsys_ebm.config import pipeline_defaults, read_pipeline
from recsys_ebm.evaluation.evaluate import evaluate_ranking
from recsys_ebm.models import model_class
from recsys_ebm.models.base import Recommender

if TYPE_CHECKING:
    from recsys_ebm.data.interactions import Interactions
    from recsys_ebm.experiments.runner import PreparedData

logger = logging.getLogger(__name__)

#: the file of the declared grids inside ``pipelines/``
GRIDS = "grids"
#: selection criterion on the validation split, and the second number recorded there
SELECTION_METRIC = "ndcg@10"
SECOND_METRIC = "recall@20"

#: ``on_point(index, entry)`` after every grid point is scored
PointCallback = Callable[[int, dict[str, Any]], None]


# ---------------------------------------------------------------------------------- models
def build_model(name: str, options: dict[str, Any] | None = None) -> Recommender:
    """A model from its registry name and config options (unknown options raise ValueError)."""
    cls = model_class(name)
    config = cls.config_class.from_dict(options or {})
    return cls(config)


def model_input(model: Recommender, interactions: Interactions) -> sp.csr_matrix:
    """The users x items CSR a model fits on: ratings for explicit models, else binary."""
    return interactions.rating_matrix if model.fits_ratings else interactions.user_items


def order_input(model: Recommender, interactions: Interactions) -> dict[str, Any]:
    """``fit``'s ``sequences=`` (the ordered view, ``Interactions.sequences``) for a model that
    reads the order of a history (``uses_order``); ``{}`` for the set models."""
    return {"sequences": interactions.sequences()} if model.uses_order else {}


def has_option(name: str, option: str) -> bool:
    """Whether model ``name``'s config declares ``option`` (e.g. ``seed``)."""
    return option in {f.name for f in dataclasses.fields(model_class(name).config_class)}


def with_seed(name: str, options: dict[str, Any], seed: int) -> dict[str, Any]:
    """``options`` with ``seed`` set when the model's config has a seed."""
    return {**options, "seed": seed} if has_option(name, "seed") else options


# ---------------------------------------------------------------------------------- early stop then refit
def early_stop(name: str, options: dict[str, Any], data: PreparedData, *, callback=None,
               show_progress: bool = False) -> tuple[Recommender, float]:
    """Fit on ``data.fit_part``, early-stopping on ``data.validation``: (model, wall seconds)."""
    model = build_model(name, options)
    start = time.perf_counter()
    model.fit(model_input(model, data.fit_part), validation=model_input(model, data.validation),
              callback=callback, show_progress=show_progress, **order_input(model, data.fit_part))
    return model, time.perf_counter() - start


def refit_options(name: str, options: dict[str, Any], best_epoch: int) -> dict[str, Any]:
    """The options of the refit on all of train: the best epoch count for epoch-trained models."""
    if model_class(name).trains_in_epochs:
        return {**options, "epochs": max(int(best_epoch), 1)}
    return dict(options)


def fit_on_train(name: str, options: dict[str, Any], train: Interactions, *, callback=None,
                 show_progress: bool = False) -> tuple[Recommender, float]:
    """Fit on all of ``train`` (no validation): (model, wall seconds)."""
    model = build_model(name, options)
    start = time.perf_counter()
    model.fit(model_input(model, train), callback=callback, show_progress=show_progress,
              **order_input(model, train))
    return model, time.perf_counter() - start


def fit_with_validation(name: str, options: dict[str, Any], data: PreparedData, *,
                        refit: bool = True, callback=None, show_progress: bool = True) -> Recommender:
    """Early-stop on the validation split, then (``refit``) retrain on all of train with
    :func:`refit_options`, so the final model sees every training interaction. The callback
    receives the early-stopping epochs with metric names prefixed ``select_``."""
    model, _ = early_stop(name, options, data, callback=_prefixed(callback, "select_"),
                          show_progress=show_progress)
    best = model.history.best_epoch
    logger.info("%s: best validation epoch %d (%s)", name, best, model.history.best_value)
    if not refit:
        return model
    final, _ = fit_on_train(name, refit_options(name, options, best), data.train,
                            callback=callback, show_progress=show_progress)
    final.history.best_epoch = best
    final.history.best_value = model.history.best_value
    return final


def fit_production(name: str, options: dict[str, Any], interactions: Interactions,
                   best_epoch: int, *, callback=None, show_progress: bool = True) -> Recommender:
    """The model to serve: fitted on every interaction (``interactions``, all users and items of
    the data), with the options a validation run chose (``best_epoch`` for models that train
    in epochs). Its seen set is then everything a user has."""
    model, _ = fit_on_train(name, refit_options(name, options, best_epoch), interactions,
                            callback=_prefixed(callback, "production_"), show_progress=show_progress)
    model.history.best_epoch = best_epoch
    return model


def _prefixed(callback, prefix: str):
    if callback is None:
        return None
    return lambda epoch, metrics: callback(epoch, {prefix + k: v for k, v in metrics.items()})


# ---------------------------------------------------------------------------------- grids
def load_grids(path: str | Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """``[grid.<model>]`` tables -> every combination of their list values, per model.

    ``path`` None reads the shipped ``pipelines/grids.toml``. A table with no keys is one
    configuration ``{}``; a scalar value is a one-element list. Combinations are in the file's
    key order (the last key varies fastest).
    """
    if path is None:
        data = read_pipeline(GRIDS) or {}
        path = f"pipelines/{GRIDS}.toml"
    else:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    tables = data.get("grid", {})
    if not isinstance(tables, dict):
        raise ValueError(f"{path}: [grid] must be a table of [grid.<model>] tables")
    grids: dict[str, list[dict[str, Any]]] = {}
    for model, table in tables.items():
        if not isinstance(table, dict):
            raise ValueError(f"{path}: [grid.{model}] must be a table")
        keys = list(table)
        values = [v if isinstance(v, list) else [v] for v in table.values()]
        if any(not v for v in values):
            raise ValueError(f"{path}: [grid.{model}] has an empty list")
        grids[model] = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]
    return grids


def tuned_defaults(model: str, pipelines_dir: str | Path | None = None,
                   kind: str | None = "ranking") -> dict[str, Any]:
    """The ``[model]`` table of ``pipelines/<model>.toml`` updated by its ``[<kind>]`` table
    (``kind`` "ranking" for the top-N protocols, "rating" for rating prediction; {} when there
    is no such file); ``pipelines_dir`` None reads the shipped files."""
    return pipeline_defaults(read_pipeline(model, pipelines_dir), kind)


def candidate_options(model: str, points: Sequence[dict[str, Any]] | None,
                      overrides: dict[str, Any] | None = None,
                      pipelines_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Distinct option dicts to try: the tuned defaults updated by each grid point (``None``:
    the defaults alone), then by ``overrides``. An unknown option raises ValueError."""
    defaults = tuned_defaults(model, pipelines_dir)
    out: list[dict[str, Any]] = []
    for point in points or [{}]:
        options = {**defaults, **point, **(overrides or {})}
        model_class(model).config_class.from_dict(options)  # unknown option -> ValueError
        if options not in out:
            out.append(options)
    return out


def grid_search(name: str, candidates: Sequence[dict[str, Any]], data: PreparedData, seed: int, *,
                on_point: PointCallback | None = None,
                show_progress: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Early-stop every candidate (model seed ``seed``) and score it on the validation split.

    Returns the per-point entries (``options``, ``val_ndcg@10``, ``val_recall@20``,
    ``best_epoch``, ``fit_seconds``) and the refit options of the best point (highest
    validation NDCG@10, the first on ties).
    """
    entries = []
    for index, options in enumerate(candidates):
        options = with_seed(name, options, seed)
        model, seconds = early_stop(name, options, data, show_progress=show_progress)
        val = evaluate_ranking(model, data.fit_part.user_items, data.validation.user_items,
                               (10, 20)).summary
        entry = {"options": options, f"val_{SELECTION_METRIC}": val[SELECTION_METRIC],
                 f"val_{SECOND_METRIC}": val[SECOND_METRIC],
                 "best_epoch": int(model.history.best_epoch), "fit_seconds": seconds}
        entries.append(entry)
        if on_point is not None:
            on_point(index, entry)
        logger.info("%s grid %d/%d %s: val NDCG@10 %.4f (epoch %d, %.1fs)", name, index + 1,
                    len(candidates), options, entry[f"val_{SELECTION_METRIC}"], entry["best_epoch"],
                    seconds)
    best = max(range(len(entries)), key=lambda i: (entries[i][f"val_{SELECTION_METRIC}"], -i))
    chosen = refit_options(name, entries[best]["options"], entries[best]["best_epoch"])
    return entries, chosen
