"""The rating-prediction report: RMSE / MAE of every explicit-feedback model over rating folds.

Folds come from ``rating_data.build_rating_folds`` (the official ML-100K folds u1..u5 on ML-100K,
a seeded 5-fold of the rows for any other dataset, a user's ratings file included); mean ± std
over folds. Models: ``config.models`` or every registered model that ``fits_ratings`` plus the
scikit-surprise baselines, always with the ``bias`` baseline (mu + b_u + b_i) as the reference.
Each runs with its tuned defaults (``pipelines/<model>.toml``; the model's own early stopping on
a split carved from each fold's training ratings) plus ``config.overrides``. Writes
``ratings.{md,json,png}`` (rendered by ``render``) and logs to MLflow. Protocols:
``docs/protocols.md``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from recsys_ebm.experiments.rating_data import OFFICIAL, build_rating_folds
from recsys_ebm.experiments.rating_folds import RatingFolds, evaluate_folds
from recsys_ebm.experiments.render import ReportResult, write_rating_report
from recsys_ebm.experiments.reporting import (
    BIAS_BASELINE,
    RATING_PROTOCOL,
    ReportConfig,
    clean_json,
    environment,
    limit_threads,
    load_average,
)
from recsys_ebm.experiments.tuning import build_model, tuned_defaults
from recsys_ebm.models import MODELS
from recsys_ebm.models.rating_baselines import (
    RATING_BASELINES,
    SURPRISE_BASELINES,
    make_rating_baseline,
    require_surprise,
    surprise_available,
)

logger = logging.getLogger(__name__)


def _rating_factory(name: str, config: ReportConfig):
    if name in RATING_BASELINES:
        return make_rating_baseline(name, config.overrides.get(name, {}))
    return build_model(name, _rating_options(name, config))


def _rating_options(name: str, config: ReportConfig) -> dict[str, Any]:
    """The options a rating-report model runs with (what the JSON records)."""
    if name in RATING_BASELINES:
        return dict(make_rating_baseline(name, config.overrides.get(name, {})).options)
    return {**tuned_defaults(name, config.pipelines_dir, kind="rating"), **config.overrides.get(name, {})}


def rating_report_models(config: ReportConfig) -> list[str]:
    """The models of a rating report: ``bias`` first, then ``config.models`` or, by default,
    every registered model that ``fits_ratings`` and the scikit-surprise baselines (skipped
    with a warning when the optional ``bench`` extra is not installed). Asking for a surprise
    baseline that cannot be imported raises ``MissingDependencyError`` before anything runs."""
    if config.models:
        names = list(config.models)
        if any(name in SURPRISE_BASELINES for name in names):
            require_surprise()
    else:
        names = [name for name, cls in MODELS.items() if cls.fits_ratings]
        if surprise_available():
            names += list(SURPRISE_BASELINES)
        else:
            logger.warning("scikit-surprise is not installed (optional 'bench' extra): the rating "
                           "report runs without the surprise baselines")
    return [BIAS_BASELINE, *[m for m in names if m != BIAS_BASELINE]]


def _run_rating_model(name: str, config: ReportConfig, folds: RatingFolds, child) -> dict[str, Any]:
    """Every fold of one model, logged to its child run; the model's JSON section."""
    started = time.perf_counter()
    result = evaluate_folds(
        lambda: _rating_factory(name, config), folds,
        callback=lambda fold, epoch, metrics: child.log_metrics(
            {f"{fold}_{k}": v for k, v in metrics.items()}, step=epoch),
        show_progress=config.show_progress)
    result["options"] = _rating_options(name, config)
    result["seconds"] = time.perf_counter() - started
    for index, fold in enumerate(result["folds"]):
        child.log_metrics({"fold_rmse": fold["rmse"], "fold_mae": fold["mae"]}, step=index)
    child.log_metrics({k: result[k] for k in ("rmse", "rmse_std", "mae", "mae_std", "seconds")})
    child.log_dict(clean_json(result), f"{name}.json")
    return result


def _protocol_section(folds: RatingFolds) -> dict[str, Any]:
    if folds.protocol == OFFICIAL:
        description = "the official ML-100K folds u1..u5 (uK.base train, uK.test test)"
    else:
        description = f"5 folds of the rating rows after a permutation seeded with {folds.seed}"
    return {"name": RATING_PROTOCOL, "folds": folds.protocol, "description": description,
            "std": "population std (ddof=0) over folds"}


def run_rating_report(config: ReportConfig) -> ReportResult:
    """Rating prediction: every model over the folds of ``config``'s dataset; writes
    ``<output_dir>/<dataset>/ratings.{md,json,png}``."""
    from recsys_ebm.tracking import Tracker

    started, load = time.perf_counter(), load_average()
    dataset = config.load_dataset()
    folds = build_rating_folds(dataset, n_folds=5, seed=0, data_dir=config.data_dir,
                               download=config.download).select(config.rating_folds)
    names = rating_report_models(config)
    sections: dict[str, dict] = {}
    tracker = Tracker(config.experiment, tracking_uri=config.tracking_uri,
                      run_name=f"report-{dataset.name}-ratings", enabled=config.mlflow,
                      tags={"report": "ratings"}, quiet=not config.show_progress)
    with limit_threads(config.threads), tracker:
        tracker.log_params({"protocol": folds.protocol, "models": ",".join(names), "seed": 0,
                            "threads": config.threads, "overrides": config.overrides})
        child_runs = {}
        for name in names:
            logger.info("rating report: %s", name)
            with tracker.child(name, tags={"model": name}) as child:
                sections[name] = _run_rating_model(name, config, folds, child)
                child_runs[name] = child.run_id
        document = clean_json({
            "title": f"{dataset.name}: rating prediction",
            "dataset": {"name": dataset.name, "rating_scale": sections[names[0]]["rating_scale"]},
            "protocol": _protocol_section(folds),
            "config": {"models": names, "threads": config.threads, "overrides": config.overrides,
                       "command": config.command},
            "reference": BIAS_BASELINE,
            "models": sections,
            "mlflow": {"parent_run_id": tracker.run_id, "child_run_ids": child_runs,
                       "experiment": config.experiment},
            "environment": environment(load),
            "timing": {"total_seconds": time.perf_counter() - started},
        })
        result = write_rating_report(document, Path(config.output_dir) / dataset.name)
        for path in (result.json, result.markdown, *result.plots.values()):
            tracker.log_artifact(path, "report")
        tracker.log_metrics({"total_seconds": document["timing"]["total_seconds"]})
    return result
