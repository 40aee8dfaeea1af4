"""The comparison report: every model tuned, refit, tested over seeds, as one JSON-able document.

For one dataset and one top-N protocol (``docs/protocols.md``), for each model:

1. **tune** (``tuning.grid_search``): every point of the model's grid (``[grid.<model>]`` of
   ``pipelines/grids.toml``; the tuned defaults of ``pipelines/<model>.toml`` alone when it
   declares no grid) is early-stopped on the validation-fit part of train with seed
   ``seeds[0]`` and scored by NDCG@10 on the validation split carved from train (never test).
2. **refit** the best point on the full train, once per model seed (for the best validation
   epoch count when the model ``trains_in_epochs``); ``deterministic`` models are fitted once.
3. **test**: full-catalog ranking of every item except the user's train items (no sampled
   negatives), accuracy metrics at every k plus the beyond-accuracy metrics of ``beyond.py``;
   mean ± sample std over the seeds with the data split fixed.
4. for the energy-based models (``is_ebm``): the temperature trade-off (NDCG@10, coverage,
   novelty and genre diversity of ``recommend(temperature=T, rng=seed)`` lists as T goes
   0 -> 2) and the energies E = -score of held-out positives against random unseen items.

``render`` writes ``<output_dir>/<dataset>/<protocol>.md`` (tables, verdict, plots) and the
``<protocol>-*.png`` plots from ``<protocol>.json`` alone. Everything is logged to MLflow
(``recsys_ebm.tracking``): one parent run, one nested run per model, the files as artifacts.
Protocol "ratings" runs ``rating_report.run_rating_report`` instead.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys_ebm.evaluation.beyond import beyond_accuracy, genre_matrix, item_popularity
from recsys_ebm.evaluation.evaluate import RankingResult, evaluate_ranking
from recsys_ebm.evaluation.metrics import hit_matrix, ndcg_at_k, recall_at_k
from recsys_ebm.experiments import next_item, runner, tuning
from recsys_ebm.experiments.rating_report import rating_report_models, run_rating_report
from recsys_ebm.experiments.render import ReportResult, write_report
from recsys_ebm.experiments.reporting import (
    ENERGY_BINS,
    PROTOCOL_TEXT,
    RATING_PROTOCOL,
    REFERENCE_MODEL,
    SHIPPED_GRIDS,
    TRADEOFF_K,
    VERDICT_METRICS,
    ReportConfig,
    clean_json,
    environment,
    limit_threads,
    load_average,
)
from recsys_ebm.experiments.tuning import model_input, tuned_defaults
from recsys_ebm.models import MODELS, model_class
from recsys_ebm.models.base import Recommender

logger = logging.getLogger(__name__)

#: names kept importable from here for the report's callers
__all__ = ["ReportConfig", "ReportResult", "compare", "energy_distributions", "energy_pairs",
           "rating_report_models", "run_rating_report", "run_report", "temperature_curve",
           "tuned_defaults"]


# ---------------------------------------------------------------------------------- shared data
@dataclasses.dataclass(frozen=True, eq=False)
class _Context:
    """What every model's evaluation shares."""

    data: runner.PreparedData
    popularity: np.ndarray  # (n_items,) share of train users per item
    features: sp.csr_matrix | None  # (n_items, n_genres)
    genres: list[str]
    seen: sp.csr_matrix  # (n_test_rows, n_items) items a user's ranking excludes


def _mean_std(rows: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    keys = list(rows[0])
    values = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in keys}
    mean = {k: float(np.mean(v)) for k, v in values.items()}
    std = {k: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for k, v in values.items()}
    return mean, std


def _context(dataset: runner.Dataset, data: runner.PreparedData) -> _Context:
    features, genres = None, []
    items = dataset.items
    if items is not None and "genres" in items.columns:
        raw = data.train.item_map.to_raw(np.arange(data.train.n_items))
        text = items.drop_duplicates("item_id").set_index("item_id")["genres"].reindex(raw)
        features, genres = genre_matrix(text.fillna("").astype(str).tolist())
    seen = data.fold_in.user_items if data.fold_in is not None else data.train.user_items
    return _Context(data, item_popularity(data.train.user_items), features, genres, seen)


def _beyond(ctx: _Context, recs: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    return beyond_accuracy(recs, ctx.data.train.n_items, ks, popularity=ctx.popularity,
                           item_features=ctx.features)


def _evaluate(model: Recommender, data: runner.PreparedData, ks: Sequence[int]) -> RankingResult:
    if data.fold_in is not None:
        return evaluate_ranking(model, model_input(model, data.fold_in), data.test.user_items, ks,
                                fold_in=True)
    return evaluate_ranking(model, data.train.user_items, data.test.user_items, ks)


def _mean_std(rows: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    keys = list(rows[0])
    values = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in keys}
    mean = {k: float(np.mean(v)) for k, v in values.items()}
    std = {k: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for k, v in values.items()}
    return mean, std


# ---------------------------------------------------------------------------------- EBM extras
def _recommend(model: Recommender, name: str, ctx: _Context, users: np.ndarray, k: int,
               temperature: float, seed: int) -> np.ndarray:
    data = ctx.data
    if data.fold_in is not None:
        rows = model_input(model, data.fold_in)[users]
        ids, _ = model.recommend(users, rows, k=k, temperature=temperature, rng=seed, fold_in=True)
    else:
        ids, _ = model.recommend(users, model_input(model, data.train), k=k,
                                 temperature=temperature, rng=seed)
    return ids


def temperature_curve(model: Recommender, name: str, ctx: _Context, users: np.ndarray,
                      temperatures: Sequence[float], seed: int, k: int = TRADEOFF_K) -> list[dict]:
    """Accuracy and beyond-accuracy metrics of sampled top-k lists at each temperature."""
    test = ctx.data.test.user_items[users]
    n_test = np.diff(test.indptr)
    rows = []
    for t in temperatures:
        ids = _recommend(model, name, ctx, users, k, float(t), seed)
        hits = hit_matrix(ids, test)
        row = {"temperature": float(t),
               f"ndcg@{k}": float(ndcg_at_k(hits, n_test, k).mean()),
               f"recall@{k}": float(recall_at_k(hits, n_test, k).mean())}
        row.update(_beyond(ctx, ids, (k,)))
        rows.append(row)
    return rows


def energy_pairs(model: Recommender, name: str, ctx: _Context, users: np.ndarray, seed: int,
                 batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """E = -score of every held-out (user, item) pair and of one random unseen item per pair.

    The random item is uniform over the items the user has neither in train (or fold-in) nor in
    test, drawn for all pairs at once (the result does not depend on ``batch_size``).

    Returns
    -------
    positives, random_unseen : float64 (n_test_pairs,), pairs in CSR order of the test rows
    """
    data = ctx.data
    rng = np.random.default_rng(seed)
    test = sp.csr_matrix(data.test.user_items[users])
    test.sort_indices()
    n_items = test.shape[1]
    rows = np.repeat(np.arange(len(users)), np.diff(test.indptr))
    excluded = sp.csr_matrix(ctx.seen[users] + test)
    excluded.sum_duplicates()
    excluded.sort_indices()
    keys = np.repeat(np.arange(len(users), dtype=np.int64), np.diff(excluded.indptr)) * n_items \
        + excluded.indices
    negatives = rng.integers(0, n_items, size=rows.size)
    todo = np.arange(rows.size)
    for _ in range(1000):  # rejection: redraw items the user has seen or holds out
        query = rows[todo] * n_items + negatives[todo]
        pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
        todo = todo[keys[pos] == query]
        if todo.size == 0:
            break
        negatives[todo] = rng.integers(0, n_items, size=todo.size)
    else:
        raise RuntimeError("could not draw unseen items (users have seen almost everything)")
    pos_e = np.empty(rows.size)
    neg_e = np.empty(rows.size)
    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        if data.fold_in is not None:
            scores = model.score(batch, model_input(model, data.fold_in)[batch])
        else:
            scores = model.score(batch)
        energy = -np.asarray(scores, dtype=np.float64)
        span = slice(test.indptr[start], test.indptr[min(start + batch_size, len(users))])
        local = rows[span] - start
        pos_e[span] = energy[local, test.indices[span]]
        neg_e[span] = energy[local, negatives[span]]
    return pos_e, neg_e


def energy_distributions(model: Recommender, name: str, ctx: _Context, users: np.ndarray,
                         seed: int, bins: int = ENERGY_BINS, batch_size: int = 256) -> dict:
    """Histograms (shared edges) and summaries of :func:`energy_pairs`; ``auc`` =
    P(E_positive < E_random) over all pairs of the two samples (ties count 1/2)."""
    from scipy.stats import rankdata

    pos_e, neg_e = energy_pairs(model, name, ctx, users, seed, batch_size)
    ranks = rankdata(np.concatenate([-pos_e, -neg_e]))  # rank by -E: low energy ranks high
    auc = (ranks[:pos_e.size].sum() - pos_e.size * (pos_e.size + 1) / 2) / (pos_e.size * neg_e.size)
    edges = np.histogram_bin_edges(np.concatenate([pos_e, neg_e]), bins=bins)

    def describe(values: np.ndarray) -> dict:
        return {"n": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
                "median": float(np.median(values)),
                "counts": np.histogram(values, bins=edges)[0].astype(int).tolist()}

    return {"edges": edges.tolist(), "positives": describe(pos_e), "random_unseen": describe(neg_e),
            "auc": float(auc), "energy": "E = -score" + (" (score = -E)" if name == "dpebm" else "")}


# ---------------------------------------------------------------------------------- one model
def _tune(name: str, config: ReportConfig, data: runner.PreparedData, grids: dict,
          tracker) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The grid search of one model, every point logged: (grid entries, refit options)."""
    points = grids.get(name) if config.use_grids else None
    candidates = tuning.candidate_options(name, points, config.overrides.get(name, {}),
                                          config.pipelines_dir)

    def log_point(index: int, entry: dict[str, Any]) -> None:
        tracker.log_metrics({"val_ndcg@10": entry["val_ndcg@10"],
                             "val_recall@20": entry["val_recall@20"]}, step=index)

    entries, chosen = tuning.grid_search(name, candidates, data, config.seeds[0],
                                         on_point=log_point, show_progress=config.show_progress)
    tracker.log_params({"grid_size": len(candidates), "chosen": chosen,
                        "deterministic": model_class(name).deterministic})
    return entries, chosen


@dataclasses.dataclass
class _SeedRuns:
    """Test results of the refits over the seeds."""

    per_seed: list[dict[str, float]]
    per_user: dict[str, list[np.ndarray]]
    fit_seconds: list[float]
    first_model: Recommender
    users: np.ndarray


def _refit_and_test(name: str, chosen: dict[str, Any], config: ReportConfig, ctx: _Context,
                    tracker) -> _SeedRuns:
    """Refit ``chosen`` on all of train per seed (once when deterministic) and test each."""
    per_seed: list[dict[str, float]] = []
    per_user: dict[str, list[np.ndarray]] = {m: [] for m in VERDICT_METRICS}
    fit_seconds: list[float] = []
    first = None
    for seed in config.seeds:
        if model_class(name).deterministic and per_seed:  # same model whatever the seed
            per_seed.append(dict(per_seed[0]))
            for metric in VERDICT_METRICS:
                per_user[metric].append(per_user[metric][0])
            tracker.log_metrics({f"test_{k}": v for k, v in per_seed[0].items()}, step=seed)
            continue
        model, seconds = tuning.fit_on_train(name, tuning.with_seed(name, chosen, seed),
                                             ctx.data.train, show_progress=config.show_progress)
        fit_seconds.append(seconds)
        result = _evaluate(model, ctx.data, config.ks)
        metrics = {k: v for k, v in result.summary.items() if k != "n_users"}
        metrics.update(_beyond(ctx, result.recommendations, config.ks))
        if config.protocol == "loo":  # next-item: the exact rank of each user's last event
            metrics.update({f"next_{k}": v for k, v in runner.next_item_summary(model, ctx.data).items()
                            if k not in ("n_users", "n_tied_test")})
        per_seed.append(metrics)
        for metric in VERDICT_METRICS:
            per_user[metric].append(result.per_user[metric].to_numpy())
        tracker.log_metrics({f"test_{k}": v for k, v in metrics.items()}, step=seed)
        if first is None:
            first = (model, result.per_user.index.to_numpy())
    return _SeedRuns(per_seed, per_user, fit_seconds, *first)


def _run_model(name: str, config: ReportConfig, ctx: _Context, grids: dict,
               tracker) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Tune, refit per seed, test, EBM extras. Returns the JSON section and per-user arrays."""
    cls = model_class(name)
    started = time.perf_counter()
    entries, chosen = _tune(name, config, ctx.data, grids, tracker)
    timing = {"tune_seconds": time.perf_counter() - started}
    runs = _refit_and_test(name, chosen, config, ctx, tracker)
    timing["refit_test_seconds"] = time.perf_counter() - started - timing["tune_seconds"]
    mean, std = _mean_std(runs.per_seed)
    tracker.log_metrics({f"test_{k}_mean": v for k, v in mean.items()})
    tracker.log_metrics({f"test_{k}_std": v for k, v in std.items()})
    section: dict[str, Any] = {
        "model": name, "kind": "ebm" if cls.is_ebm else "baseline",
        "deterministic": cls.deterministic, "grid_declared": config.use_grids and name in grids,
        "grid": entries, "chosen": chosen,
        "refit_epochs": chosen.get("epochs") if cls.trains_in_epochs else None,
        "seeds": list(config.seeds), "per_seed": runs.per_seed, "mean": mean, "std": std,
        "n_users": int(len(runs.users)), "fit_seconds": runs.fit_seconds,
    }
    if cls.is_ebm:
        extra_start = time.perf_counter()
        section["temperature"] = temperature_curve(runs.first_model, name, ctx, runs.users,
                                                   config.temperatures, config.seeds[0])
        section["energies"] = energy_distributions(runs.first_model, name, ctx, runs.users,
                                                   config.seeds[0])
        timing["ebm_extras_seconds"] = time.perf_counter() - extra_start
        tracker.log_metrics({"energy_auc": section["energies"]["auc"]})
    timing["total_seconds"] = time.perf_counter() - started
    section["timing"] = timing
    tracker.log_metrics({f"time_{k}": v for k, v in timing.items()})
    tracker.log_dict(clean_json(section), f"{name}.json")
    arrays = {m: np.mean(runs.per_user[m], axis=0) for m in VERDICT_METRICS}
    arrays["users"] = runs.users
    return section, arrays


# ---------------------------------------------------------------------------------- verdict
def compare(reference: str, sections: dict[str, dict], arrays: dict[str, dict]) -> list[dict]:
    """Reference model minus every other model on the verdict metrics.

    ``difference`` compares the means over seeds; ``ci95`` is the normal-approximation 95%
    interval of the mean per-user difference (each user's metric averaged over seeds first),
    paired over the same test users.
    """
    rows = []
    ref = sections[reference]
    for other, section in sections.items():
        if other == reference:
            continue
        for metric in VERDICT_METRICS:
            a, b = arrays[reference], arrays[other]
            if not np.array_equal(a["users"], b["users"]):
                raise ValueError(f"{reference} and {other} were evaluated on different users")
            diff = a[metric] - b[metric]
            half = 1.96 * diff.std(ddof=1) / math.sqrt(diff.size) if diff.size > 1 else math.nan
            value_ref, value_other = ref["mean"][metric], section["mean"][metric]
            rows.append({
                "reference": reference, "model": other, "metric": metric,
                "reference_value": value_ref, "model_value": value_other,
                "difference": value_ref - value_other,
                "relative": (value_ref - value_other) / value_other if value_other else math.nan,
                "ci95": [float(diff.mean() - half), float(diff.mean() + half)],
                "winner": reference if value_ref > value_other else other if value_other > value_ref else "tie",
                "significant": bool(half == half and abs(diff.mean()) > half),
            })
    return rows


# ---------------------------------------------------------------------------------- run
def run_report(config: ReportConfig) -> ReportResult:
    """Run the whole comparison and write ``<output_dir>/<dataset>/<protocol>.{md,json,png}``.

    ``protocol="ratings"`` runs :func:`run_rating_report` instead.
    """
    from recsys_ebm.tracking import Tracker

    if config.protocol == RATING_PROTOCOL:
        return run_rating_report(config)
    started, load = time.perf_counter(), load_average()
    dataset = config.load_dataset()
    split = runner.make_split(dataset.ratings, config.protocol, seed=0)
    data = runner.prepare(split, config.protocol)
    ctx = _context(dataset, data)
    grids = tuning.load_grids(config.grids_file) if config.use_grids else {}
    names = _model_order(config)
    tracker = Tracker(config.experiment, tracking_uri=config.tracking_uri,
                      run_name=f"report-{dataset.name}-{config.protocol}", enabled=config.mlflow,
                      tags={"report": "comparison"}, quiet=not config.show_progress)
    with limit_threads(config.threads), tracker:
        tracker.log_params({"protocol": config.protocol, "models": ",".join(names),
                            "seeds": ",".join(map(str, config.seeds)), "split_seed": 0,
                            "validation_seed": runner.VALIDATION_SEED, "use_grids": config.use_grids,
                            "threads": config.threads, "overrides": config.overrides})
        tracker.log_dataset(dataset.name, dataset.checksum, source=dataset.source,
                            n_train=len(data.train), n_test=len(data.test),
                            n_users=data.train.n_users, n_items=data.train.n_items)
        sections: dict[str, dict] = {}
        arrays: dict[str, dict] = {}
        child_runs = {}
        for name in names:
            logger.info("report: %s", name)
            with tracker.child(name, tags={"model": name}) as child:
                sections[name], arrays[name] = _run_model(name, config, ctx, grids, child)
                child_runs[name] = child.run_id
        document = _document(config, dataset, split, ctx, sections, arrays)
        if config.protocol == "loo" and next_item.CRBM_MODEL in names:
            document["crbm_training"] = next_item.training_curves(
                data, config.seeds[0], config.overrides.get(next_item.CRBM_MODEL))
        document["mlflow"] = {"parent_run_id": tracker.run_id, "child_run_ids": child_runs,
                              "experiment": config.experiment}
        document["environment"] = environment(load)
        document["timing"] = {"total_seconds": time.perf_counter() - started}
        result = write_report(clean_json(document), Path(config.output_dir) / dataset.name)
        for path in [result.markdown, result.json, *result.plots.values()]:
            tracker.log_artifact(path, "report")
        tracker.log_metrics({"total_seconds": document["timing"]["total_seconds"]})
    return result


def _model_order(config: ReportConfig) -> list[str]:
    """``config.models`` (default: every registered model; the next-item models, which read
    the order of a history, only under ``loo``), the reference model first."""
    names = list(config.models) if config.models else [
        name for name, cls in MODELS.items() if config.protocol == "loo" or not cls.uses_order]
    if REFERENCE_MODEL in names:
        names.remove(REFERENCE_MODEL)
        names.insert(0, REFERENCE_MODEL)
    return names


def _document(config: ReportConfig, dataset: runner.Dataset, split, ctx: _Context,
              sections: dict[str, dict], arrays: dict[str, dict]) -> dict[str, Any]:
    """The JSON document but for its MLflow, environment and timing sections."""
    data = ctx.data
    reference = REFERENCE_MODEL if REFERENCE_MODEL in sections else next(iter(sections))
    return {
        "title": f"{dataset.name}: {config.protocol} protocol",
        "dataset": {
            "name": dataset.name, "checksum": dataset.checksum,
            "n_users": data.train.n_users, "n_items": data.train.n_items,
            "n_train": len(data.train), "n_test": len(data.test),
            "n_validation_fit": len(data.fit_part), "n_validation": len(data.validation),
            "n_test_dropped": split.n_dropped,
            "n_fold_in": len(data.fold_in) if data.fold_in is not None else None,
            "genres": ctx.genres,
            "n_tied_test": runner.tied_test_items(data) if config.protocol == "loo" else None,
        },
        "protocol": {"name": config.protocol, "description": PROTOCOL_TEXT[config.protocol],
                     "split_seed": 0, "validation_seed": runner.VALIDATION_SEED,
                     "selection_metric": f"validation {tuning.SELECTION_METRIC}",
                     "sampled_negatives": False, "std": "sample std (ddof=1) over model seeds"},
        "config": {"models": list(sections), "seeds": list(config.seeds), "ks": list(config.ks),
                   "temperatures": list(config.temperatures), "use_grids": config.use_grids,
                   "grids_file": (config.grids_file or SHIPPED_GRIDS) if config.use_grids else None,
                   "overrides": config.overrides, "threads": config.threads,
                   "command": config.command},
        "reference": reference,
        "models": sections,
        "comparison": compare(reference, sections, arrays),
    }
