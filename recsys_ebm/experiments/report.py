"""The comparison report: every model tuned, refit, tested over seeds, written as Markdown + JSON.

For one dataset and one top-N protocol (PROTOCOLS.md), for each model:

1. **tune**: every point of the model's grid (``[grid.<model>]`` of ``pipelines/grids.toml``,
   each list a hyperparameter, the cartesian product fitted; the model's tuned defaults of
   ``pipelines/<model>.toml`` alone when it declares no grid) is fitted on the validation-fit
   part of train with seed ``seeds[0]`` and scored by NDCG@10 on the validation split carved
   from train (never on test). Epoch-trained models early-stop on that validation split.
2. **refit** the best point on the full train, once per model seed (for the best validation
   epoch count when the model trains in epochs); deterministic models are fitted once.
3. **test**: full-catalog ranking of every item except the user's train items (no sampled
   negatives), accuracy metrics at every k plus the beyond-accuracy metrics of ``beyond.py``;
   mean ± sample std over the seeds with the data split fixed.
4. for the energy-based models: the temperature trade-off (NDCG@10, coverage, novelty and
   genre diversity of ``recommend(temperature=T, rng=seed)`` lists as T goes 0 -> 2) and the
   energies E = -score of held-out positives against random unseen items.

Outputs ``<output_dir>/<dataset>/<protocol>.md`` (tables, verdict, plots), ``<protocol>.json``
(every number; the Markdown and the plots are rendered from it alone) and ``<protocol>-*.png``.
Everything is logged to MLflow: one parent run, one nested run per model, plots as artifacts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys_ebm.experiments import runner
from recsys_ebm._compat import tomllib
from recsys_ebm.evaluation.beyond import beyond_accuracy, genre_matrix, item_popularity
from recsys_ebm.evaluation.evaluate import RANKING_METRICS, RankingResult, evaluate_ranking
from recsys_ebm.evaluation.metrics import hit_matrix, ndcg_at_k, recall_at_k
from recsys_ebm.io import atomic_write_bytes
from recsys_ebm.models import MODELS, model_class
from recsys_ebm.models.base import Recommender
from recsys_ebm.models.rating_baselines import (
    RATING_BASELINES,
    SURPRISE_BASELINES,
    make_rating_baseline,
    require_surprise,
    surprise_available,
)

logger = logging.getLogger(__name__)

PIPELINES_DIR = Path(__file__).resolve().parents[2] / "pipelines"
GRIDS_FILE = PIPELINES_DIR / "grids.toml"

#: the model every other one is compared against in the verdict
REFERENCE_MODEL = "dpebm"
#: models whose scores are negative energies: they get the temperature and energy sections
EBM_MODELS = ("dpebm", "crbm")
#: explicit-feedback models: they are fitted on (and fold users in from) the ratings CSR
RATING_MODELS = ("crbm",)
#: models that ignore their seed (models/baselines.py): fitted once, std over seeds is 0
DETERMINISTIC_MODELS = ("pop", "itemknn", "ease")
#: selection criterion on the validation split, and the second number recorded there
SELECTION_METRIC = "ndcg@10"
#: the two numbers the verdict compares (issue 5's bar)
VERDICT_METRICS = ("ndcg@10", "recall@20")
#: cut-off of the temperature trade-off and of the headline beyond-accuracy columns
TRADEOFF_K = 10
DEFAULT_TEMPERATURES = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
ENERGY_BINS = 40

#: rating prediction (PROTOCOLS.md): official ML-100K folds u1..u5, seeded 5-fold elsewhere
RATING_PROTOCOL = "ratings"
REPORT_PROTOCOLS = (*runner.RANKING_PROTOCOLS, RATING_PROTOCOL)
#: the reference rating predictor of the rating report (``rating_baselines.BiasBaseline``)
BIAS_BASELINE = "bias"

PROTOCOL_TEXT = {
    "random": "per-user random holdout: floor(20%) of each user's interactions (at least 1) "
              "go to test, seed 0",
    "temporal": "per-user temporal holdout: each user's latest floor(20%) interactions "
                "(at least 1) go to test",
    "loo": "leave-last-one-out: each user's latest interaction goes to test",
    "strong": "strong generalization: 10% of users held out entirely; 80% of each held-out "
              "user's history is folded in at evaluation time (no retraining), 20% is the target",
}


#: how ``runner.prepare`` carves the validation split from train, per protocol
VALIDATION_TEXT = {
    "random": "per-user random 20%, seed {seed}",
    "strong": "per-user random 20% of the training users' interactions, seed {seed}",
    "temporal": "each user's latest 20% of train",
    "loo": "each user's latest train interaction",
}


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """What to compare, where to write it, and how to log it.

    ``overrides`` maps a model name to options applied on top of every grid point (e.g.
    ``{"dpebm": {"epochs": 2}}`` for a quick run). ``use_grids=False`` tunes nothing: each
    model runs with its tuned defaults. ``threads`` caps torch and BLAS threads for the run
    (one thread was fastest for these small matrices on 2 shared cores); None leaves them.
    ``rating_folds`` (protocol "ratings" only) runs a subset of the folds, e.g. ``(1,)``.
    """

    dataset: str = "movielens"
    variant: str = "100k"
    data_dir: str | None = None
    download: bool = True
    protocol: str = "random"
    models: tuple[str, ...] | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    ks: tuple[int, ...] = runner.KS
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    output_dir: str = "reports"
    grids_file: str | None = str(GRIDS_FILE)
    pipelines_dir: str = str(PIPELINES_DIR)
    use_grids: bool = True
    overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    threads: int | None = 1
    rating_folds: tuple[int, ...] | None = None
    experiment: str = "recsys_ebm"
    tracking_uri: str | None = None
    mlflow: bool = True
    show_progress: bool = False
    command: str | None = None

    def __post_init__(self) -> None:
        if self.protocol not in REPORT_PROTOCOLS:
            raise ValueError(f"protocol must be one of {REPORT_PROTOCOLS}, got {self.protocol!r}")
        if not self.seeds:
            raise ValueError("seeds is empty; give at least one model seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        for name in [*(self.models or ()), *self.overrides]:
            if name in RATING_BASELINES:
                if self.protocol != RATING_PROTOCOL and name in (self.models or ()):
                    raise ValueError(f"{name!r} predicts ratings only; it runs in the report with "
                                     f"protocol {RATING_PROTOCOL!r}, not {self.protocol!r}")
            else:
                model_class(name)  # KeyError naming the known models
        if self.models is not None and not self.models:
            raise ValueError("models is empty")
        if TRADEOFF_K not in self.ks or 20 not in self.ks:
            raise ValueError(f"ks must include {TRADEOFF_K} and 20 (the verdict's cut-offs), got {self.ks}")
        if any(not (t >= 0 and math.isfinite(t)) for t in self.temperatures):
            raise ValueError(f"temperatures must be finite and >= 0, got {self.temperatures}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads}")


@dataclasses.dataclass(frozen=True)
class ReportResult:
    """The JSON document and the files written."""

    document: dict[str, Any]
    markdown: Path
    json: Path
    plots: dict[str, Path]


# ---------------------------------------------------------------------------------- grids
def load_grids(path: str | Path | None) -> dict[str, list[dict[str, Any]]]:
    """``[grid.<model>]`` tables -> every combination of their list values, per model.

    A table with no keys is one configuration ``{}``; a scalar value is a one-element list.
    Combinations are in the file's key order (the last key varies fastest).
    """
    if path is None:
        return {}
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


def tuned_defaults(model: str, pipelines_dir: str | Path = PIPELINES_DIR) -> dict[str, Any]:
    """The ``[model]`` table of ``pipelines/<model>.toml`` ({} when there is no such file)."""
    path = Path(pipelines_dir) / f"{model}.toml"
    if not path.is_file():
        return {}
    with open(path, "rb") as handle:
        return dict(tomllib.load(handle).get("model", {}))


def candidate_options(model: str, config: ReportConfig,
                      grids: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Distinct option dicts to try: defaults updated by each grid point, then the overrides."""
    defaults = tuned_defaults(model, config.pipelines_dir)
    points = grids.get(model, [{}]) if config.use_grids else [{}]
    overrides = config.overrides.get(model, {})
    out: list[dict[str, Any]] = []
    for point in points:
        options = {**defaults, **point, **overrides}
        model_class(model).config_class.from_dict(options)  # unknown option -> ValueError
        if options not in out:
            out.append(options)
    return out


# ---------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def limit_threads(n: int | None) -> Iterator[None]:
    """Cap torch intra-op and BLAS/OpenMP threads at ``n`` inside the block (None: no change)."""
    if n is None:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield
    finally:
        torch.set_num_threads(before)


def _has_field(name: str, field: str) -> bool:
    return field in {f.name for f in dataclasses.fields(model_class(name).config_class)}


def _matrix(name: str, interactions) -> sp.csr_matrix:
    """What a model is fitted on / folds in from: ratings for explicit models, else binary."""
    return interactions.rating_matrix if name in RATING_MODELS else interactions.user_items


def _fit(name: str, options: dict[str, Any], train, validation=None,
         show_progress: bool = False) -> tuple[Recommender, float]:
    model = runner.build_model(name, options)
    kwargs: dict[str, Any] = {"show_progress": show_progress}
    if validation is not None:
        kwargs["validation"] = _matrix(name, validation)
    start = time.perf_counter()
    model.fit(_matrix(name, train), **kwargs)
    return model, time.perf_counter() - start


def _evaluate(model: Recommender, name: str, data: runner.PreparedData,
              ks: Sequence[int]) -> RankingResult:
    if data.fold_in is not None:
        return evaluate_ranking(model, _matrix(name, data.fold_in), data.test.user_items, ks,
                                fold_in=True)
    return evaluate_ranking(model, data.train.user_items, data.test.user_items, ks)


@dataclasses.dataclass(frozen=True, eq=False)
class _Context:
    """What every model's evaluation shares."""

    data: runner.PreparedData
    popularity: np.ndarray  # (n_items,) share of train users per item
    features: sp.csr_matrix | None  # (n_items, n_genres)
    genres: list[str]
    seen: sp.csr_matrix  # (n_test_rows, n_items) items a user's ranking excludes


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
        rows = _matrix(name, data.fold_in)[users]
        ids, _ = model.recommend(users, rows, k=k, temperature=temperature, rng=seed, fold_in=True)
    else:
        ids, _ = model.recommend(users, _matrix(name, data.train), k=k, temperature=temperature,
                                 rng=seed)
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
            scores = model.score(batch, _matrix(name, data.fold_in)[batch])
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
def _run_model(name: str, config: ReportConfig, ctx: _Context, grids: dict,
               tracker) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Tune, refit per seed, test, EBM extras. Returns the JSON section and per-user arrays."""
    data = ctx.data
    timing: dict[str, float] = {}
    started = time.perf_counter()
    candidates = candidate_options(name, config, grids)
    tuning = []
    first_seed = config.seeds[0]
    for index, options in enumerate(candidates):
        if _has_field(name, "seed"):
            options = {**options, "seed": first_seed}
        model, seconds = _fit(name, options, data.fit_part, data.validation, config.show_progress)
        val = evaluate_ranking(model, data.fit_part.user_items, data.validation.user_items,
                               (10, 20)).summary
        entry = {"options": options, "val_ndcg@10": val["ndcg@10"], "val_recall@20": val["recall@20"],
                 "best_epoch": int(model.history.best_epoch), "fit_seconds": seconds}
        tuning.append(entry)
        tracker.log_metrics({"val_ndcg@10": entry["val_ndcg@10"],
                             "val_recall@20": entry["val_recall@20"]}, step=index)
        logger.info("%s grid %d/%d %s: val NDCG@10 %.4f (epoch %d, %.1fs)", name, index + 1,
                    len(candidates), options, entry["val_ndcg@10"], entry["best_epoch"], seconds)
    best = max(range(len(tuning)), key=lambda i: (tuning[i]["val_ndcg@10"], -i))
    chosen = dict(tuning[best]["options"])
    trains_in_epochs = _has_field(name, "epochs")
    if trains_in_epochs:
        chosen["epochs"] = max(tuning[best]["best_epoch"], 1)
    timing["tune_seconds"] = time.perf_counter() - started
    tracker.log_params({"grid_size": len(candidates), "chosen": chosen,
                        "deterministic": name in DETERMINISTIC_MODELS})

    per_seed: list[dict[str, float]] = []
    per_user: dict[str, list[np.ndarray]] = {m: [] for m in VERDICT_METRICS}
    fit_seconds: list[float] = []
    first_model = None
    deterministic = name in DETERMINISTIC_MODELS
    for seed in config.seeds:
        if deterministic and per_seed:  # same model whatever the seed: reuse the first result
            per_seed.append(dict(per_seed[0]))
            for metric in VERDICT_METRICS:
                per_user[metric].append(per_user[metric][0])
            tracker.log_metrics({f"test_{k}": v for k, v in per_seed[0].items()}, step=seed)
            continue
        options = {**chosen, "seed": seed} if _has_field(name, "seed") else chosen
        model, seconds = _fit(name, options, data.train, show_progress=config.show_progress)
        fit_seconds.append(seconds)
        result = _evaluate(model, name, data, config.ks)
        metrics = {k: v for k, v in result.summary.items() if k != "n_users"}
        metrics.update(_beyond(ctx, result.recommendations, config.ks))
        per_seed.append(metrics)
        for metric in VERDICT_METRICS:
            per_user[metric].append(result.per_user[metric].to_numpy())
        tracker.log_metrics({f"test_{k}": v for k, v in metrics.items()}, step=seed)
        if first_model is None:
            first_model, eval_users = model, result.per_user.index.to_numpy()
    timing["refit_test_seconds"] = time.perf_counter() - started - timing["tune_seconds"]
    mean, std = _mean_std(per_seed)
    tracker.log_metrics({f"test_{k}_mean": v for k, v in mean.items()})
    tracker.log_metrics({f"test_{k}_std": v for k, v in std.items()})

    section: dict[str, Any] = {
        "model": name,
        "kind": "ebm" if name in EBM_MODELS else "baseline",
        "deterministic": deterministic,
        "grid_declared": config.use_grids and name in grids,
        "grid": tuning,
        "chosen": chosen,
        "refit_epochs": chosen.get("epochs") if trains_in_epochs else None,
        "seeds": list(config.seeds),
        "per_seed": per_seed,
        "mean": mean,
        "std": std,
        "n_users": int(len(eval_users)),
        "fit_seconds": fit_seconds,
    }
    if name in EBM_MODELS:
        extra_start = time.perf_counter()
        section["temperature"] = temperature_curve(first_model, name, ctx, eval_users,
                                                   config.temperatures, first_seed)
        section["energies"] = energy_distributions(first_model, name, ctx, eval_users, first_seed)
        timing["ebm_extras_seconds"] = time.perf_counter() - extra_start
        tracker.log_metrics({"energy_auc": section["energies"]["auc"]})
    timing["total_seconds"] = time.perf_counter() - started
    section["timing"] = timing
    tracker.log_metrics({f"time_{k}": v for k, v in timing.items()})
    tracker.log_dict(_clean(section), f"{name}.json")
    arrays = {m: np.mean(per_user[m], axis=0) for m in VERDICT_METRICS}
    arrays["users"] = eval_users
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
    from recsys_ebm.tracking import Tracker, git_commit, git_dirty

    if config.protocol == RATING_PROTOCOL:
        return run_rating_report(config)
    started = time.perf_counter()
    load_average = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    dataset = runner.load_dataset(config.dataset, config.variant, config.data_dir, config.download)
    split = runner.make_split(dataset.ratings, config.protocol, seed=0)
    data = runner.prepare(split, config.protocol)
    ctx = _context(dataset, data)
    grids = load_grids(config.grids_file) if config.use_grids else {}
    names = list(config.models) if config.models else list(MODELS)
    if REFERENCE_MODEL in names:  # reference first
        names.remove(REFERENCE_MODEL)
        names.insert(0, REFERENCE_MODEL)
    sections: dict[str, dict] = {}
    arrays: dict[str, dict] = {}
    tracker = Tracker(config.experiment, tracking_uri=config.tracking_uri,
                      run_name=f"report-{dataset.name}-{config.protocol}", enabled=config.mlflow,
                      tags={"report": "comparison"})
    with limit_threads(config.threads), tracker:
        tracker.log_params({"protocol": config.protocol, "models": ",".join(names),
                            "seeds": ",".join(map(str, config.seeds)), "split_seed": 0,
                            "validation_seed": runner.VALIDATION_SEED, "use_grids": config.use_grids,
                            "threads": config.threads, "overrides": config.overrides})
        tracker.log_dataset(dataset.name, dataset.checksum, source=dataset.source,
                            n_train=len(data.train), n_test=len(data.test),
                            n_users=data.train.n_users, n_items=data.train.n_items)
        child_runs = {}
        for name in names:
            logger.info("report: %s", name)
            with tracker.child(name, tags={"model": name}) as child:
                sections[name], arrays[name] = _run_model(name, config, ctx, grids, child)
                child_runs[name] = child.run_id
        reference = REFERENCE_MODEL if REFERENCE_MODEL in sections else names[0]
        document = {
            "title": f"{dataset.name}: {config.protocol} protocol",
            "dataset": {
                "name": dataset.name, "checksum": dataset.checksum,
                "n_users": data.train.n_users, "n_items": data.train.n_items,
                "n_train": len(data.train), "n_test": len(data.test),
                "n_validation_fit": len(data.fit_part), "n_validation": len(data.validation),
                "n_test_dropped": split.n_dropped,
                "n_fold_in": len(data.fold_in) if data.fold_in is not None else None,
                "genres": ctx.genres,
            },
            "protocol": {"name": config.protocol, "description": PROTOCOL_TEXT[config.protocol],
                         "split_seed": 0, "validation_seed": runner.VALIDATION_SEED,
                         "selection_metric": f"validation {SELECTION_METRIC}",
                         "sampled_negatives": False, "std": "sample std (ddof=1) over model seeds"},
            "config": {"models": names, "seeds": list(config.seeds), "ks": list(config.ks),
                       "temperatures": list(config.temperatures), "use_grids": config.use_grids,
                       "grids_file": _relative(config.grids_file) if config.use_grids else None,
                       "overrides": config.overrides, "threads": config.threads,
                       "command": config.command},
            "reference": reference,
            "models": sections,
            "comparison": compare(reference, sections, arrays),
            "mlflow": {"parent_run_id": tracker.run_id, "child_run_ids": child_runs,
                       "experiment": config.experiment},
            "environment": {"git_commit": git_commit(), "git_dirty": git_dirty(),
                            "python": platform.python_version(), "cpu_count": os.cpu_count(),
                            "load_average_at_start": load_average,
                            "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z")},
            "timing": {"total_seconds": time.perf_counter() - started},
        }
        result = write_report(_clean(document), Path(config.output_dir) / dataset.name)
        for path in [result.markdown, result.json, *result.plots.values()]:
            tracker.log_artifact(path, "report")
        tracker.log_metrics({"total_seconds": document["timing"]["total_seconds"]})
    return result


def _relative(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(PIPELINES_DIR.parent))
    except ValueError:
        return str(path)


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ---------------------------------------------------------------------------------- ratings
def _rating_factory(name: str, config: ReportConfig):
    if name in RATING_BASELINES:
        return make_rating_baseline(name, config.overrides.get(name, {}))
    return runner.build_model(name, _rating_options(name, config))


def _rating_options(name: str, config: ReportConfig) -> dict[str, Any]:
    """The options a rating-report model runs with (what the JSON records)."""
    if name in RATING_BASELINES:
        return dict(make_rating_baseline(name, config.overrides.get(name, {})).options)
    return {**tuned_defaults(name, config.pipelines_dir), **config.overrides.get(name, {})}


def rating_report_models(config: ReportConfig) -> list[str]:
    """The models of a rating report: ``bias`` first, then ``config.models`` or, by default,
    every rating model of ``RATING_MODELS`` and the scikit-surprise baselines (skipped with a
    warning when the optional ``bench`` extra is not installed). Asking for a surprise baseline
    that cannot be imported raises ``MissingDependencyError`` before anything runs."""
    if config.models:
        names = list(config.models)
        if any(name in SURPRISE_BASELINES for name in names):
            require_surprise()
    else:
        names = [m for m in RATING_MODELS if m in MODELS]
        if surprise_available():
            names += list(SURPRISE_BASELINES)
        else:
            logger.warning("scikit-surprise is not installed (optional 'bench' extra): the rating "
                           "report runs without the surprise baselines")
    return [BIAS_BASELINE, *[m for m in names if m != BIAS_BASELINE]]


def run_rating_report(config: ReportConfig) -> ReportResult:
    """Rating prediction (PROTOCOLS.md): RMSE / MAE of every explicit-feedback model on the
    official ML-100K folds u1..u5 (seeded 5-fold for other variants), mean ± std over folds.

    Models: ``config.models`` or every registered model of ``RATING_MODELS``, always with the
    ``bias`` baseline (mu + b_u + b_i) as the reference to beat. Each runs with its tuned
    defaults (``pipelines/<model>.toml``; the model's own early stopping on a split carved from
    each fold's training ratings) plus ``config.overrides``. Writes ``ratings.{md,json,png}``.
    """
    from recsys_ebm.data.movielens import get_variant
    from recsys_ebm.experiments.rating_folds import evaluate_rating_folds
    from recsys_ebm.tracking import Tracker, git_commit, git_dirty

    if config.dataset != "movielens":
        raise ValueError("the rating report runs on MovieLens variants (official or seeded folds)")
    started = time.perf_counter()
    load_average = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    variant = get_variant(config.variant)
    protocol = "official-folds" if variant.name == "ml-100k" else "kfold"
    names = rating_report_models(config)
    sections: dict[str, dict] = {}
    tracker = Tracker(config.experiment, tracking_uri=config.tracking_uri,
                      run_name=f"report-{variant.name}-ratings", enabled=config.mlflow,
                      tags={"report": "ratings"})
    with limit_threads(config.threads), tracker:
        tracker.log_params({"protocol": protocol, "models": ",".join(names), "seed": 0,
                            "threads": config.threads, "overrides": config.overrides})
        child_runs = {}
        for name in names:
            logger.info("rating report: %s", name)
            with tracker.child(name, tags={"model": name}) as child:
                model_start = time.perf_counter()
                result = evaluate_rating_folds(
                    lambda name=name: _rating_factory(name, config), variant.name, config.data_dir,
                    protocol, n_folds=5, seed=0, download=config.download, folds=config.rating_folds,
                    callback=lambda fold, epoch, metrics, child=child: child.log_metrics(
                        {f"{fold}_{k}": v for k, v in metrics.items()}, step=epoch),
                    show_progress=config.show_progress)
                result["options"] = _rating_options(name, config)
                result["seconds"] = time.perf_counter() - model_start
                for index, fold in enumerate(result["folds"]):
                    child.log_metrics({"fold_rmse": fold["rmse"], "fold_mae": fold["mae"]}, step=index)
                child.log_metrics({k: result[k] for k in ("rmse", "rmse_std", "mae", "mae_std", "seconds")})
                child.log_dict(_clean(result), f"{name}.json")
                sections[name] = result
                child_runs[name] = child.run_id
        document = {
            "title": f"{variant.name}: rating prediction",
            "dataset": {"name": variant.name, "rating_scale": sections[names[0]]["rating_scale"]},
            "protocol": {"name": RATING_PROTOCOL, "folds": protocol,
                         "description": ("the official ML-100K folds u1..u5 (uK.base train, uK.test test)"
                                         if protocol == "official-folds" else
                                         "5 folds of the rating rows after a permutation seeded with 0"),
                         "std": "population std (ddof=0) over folds"},
            "config": {"models": names, "threads": config.threads, "overrides": config.overrides,
                       "command": config.command},
            "reference": BIAS_BASELINE,
            "models": sections,
            "mlflow": {"parent_run_id": tracker.run_id, "child_run_ids": child_runs,
                       "experiment": config.experiment},
            "environment": {"git_commit": git_commit(), "git_dirty": git_dirty(),
                            "python": platform.python_version(), "cpu_count": os.cpu_count(),
                            "load_average_at_start": load_average,
                            "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z")},
            "timing": {"total_seconds": time.perf_counter() - started},
        }
        document = _clean(document)
        folder = Path(config.output_dir) / variant.name
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"json": folder / "ratings.json", "md": folder / "ratings.md",
                 "png": folder / "ratings-folds.png"}
        atomic_write_bytes(paths["json"], (json.dumps(document, indent=1) + "\n").encode())
        atomic_write_bytes(paths["png"], plot_rating_folds(document))
        atomic_write_bytes(paths["md"], render_rating_markdown(document, paths["png"].name).encode())
        for path in paths.values():
            path.chmod(0o644)
            tracker.log_artifact(path, "report")
        tracker.log_metrics({"total_seconds": document["timing"]["total_seconds"]})
    return ReportResult(document, paths["md"], paths["json"], {"folds": paths["png"]})


def render_rating_markdown(document: dict, plot: str) -> str:
    """The rating report page, from its JSON document only."""
    env, models, cfg = document["environment"], document["models"], document["config"]
    ref = document["reference"]
    commit = (env.get("git_commit") or "unknown")[:10] + (" (uncommitted changes)" if env.get("git_dirty") else "")
    out = [f"# {document['title']}", "",
           f"Generated {env['generated']} from git {commit} by "
           f"`{cfg.get('command') or 'recsys_ebm.experiments.report.run_rating_report'}`. Total time "
           f"{document['timing']['total_seconds'] / 60:.1f} min. Every number is also in "
           "[`ratings.json`](ratings.json).", "",
           "## Protocol", "",
           f"- Folds: {document['protocol']['description']}; mean ± {document['protocol']['std']}.",
           "- RMSE and MAE on every test rating, predictions clipped to the rating scale; a test rating "
           "whose user or item is not in the fold's training data gets the documented fallback "
           "(user mean, else item mean, else global mean) and is counted.",
           "- `bias` is the reference predictor mu + b_u + b_i (damped means, reg 10 / 15); "
           "`surprise-*` are scikit-surprise's " + ", ".join(f"`{c}`" for c in SURPRISE_BASELINES.values())
           + " with the library's defaults (SVD and SVDpp seeded, `random_state` 0), fitted and "
           "scored by surprise itself on the same rows; the other models run with their tuned "
           "defaults (`pipelines/<model>.toml`).", "",
           "## Results", "", "| model | RMSE | MAE | test ratings by fallback | time (s) |", "|---|---|---|---|---|"]
    for name, r in models.items():
        fallback = sum(f["n_fallback"] for f in r["folds"])
        out.append(f"| `{name}` | {r['rmse']:.4f} ± {r['rmse_std']:.4f} | {r['mae']:.4f} ± {r['mae_std']:.4f} | "
                   f"{fallback} | {r['seconds']:.1f} |")
    out.append("")
    for name, r in models.items():
        if name == ref:
            continue
        diff = r["rmse"] - models[ref]["rmse"]
        verdict = "better" if diff < 0 else "worse"
        out.append(f"- `{name}` is {verdict} than `{ref}` by {abs(diff):.4f} RMSE "
                   f"({r['rmse']:.4f} vs {models[ref]['rmse']:.4f}) and "
                   f"{abs(r['mae'] - models[ref]['mae']):.4f} MAE.")
    best = min(models, key=lambda name: models[name]["rmse"])
    out.append(f"- Lowest RMSE: `{best}` ({models[best]['rmse']:.4f}).")
    out += ["", "## Per fold", "", "| model | " + " | ".join(f["fold"] for f in models[ref]["folds"]) + " |",
            "|---|" + "---|" * len(models[ref]["folds"])]
    for name, r in models.items():
        out.append(f"| `{name}` RMSE | " + " | ".join(f"{f['rmse']:.4f}" for f in r["folds"]) + " |")
    out += ["", f"![RMSE per fold]({plot})", ""]
    return "\n".join(out)


def plot_rating_folds(document: dict) -> bytes:
    """RMSE per fold, one group of bars per fold, one bar per model."""
    plt, fig, axes = _figure(1, 1, (9.5, 3.6))
    ax = axes[0, 0]
    models = document["models"]
    width = 0.8 / len(models)
    for j, (name, r) in enumerate(models.items()):
        x = np.arange(len(r["folds"])) + j * width
        ax.bar(x, [f["rmse"] for f in r["folds"]], width, label=f"{name} ({r['rmse']:.3f})")
    first = next(iter(models.values()))
    ax.set_xticks(np.arange(len(first["folds"])) + 0.4 - width / 2, [f["fold"] for f in first["folds"]])
    lows = [f["rmse"] for r in models.values() for f in r["folds"]]
    ax.set_ylim(min(lows) * 0.97, max(lows) * 1.02)
    ax.set_ylabel("RMSE")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never on them
    ax.set_title(document["title"])
    return _png(plt, fig)


# ---------------------------------------------------------------------------------- output
def write_report(document: dict, folder: Path) -> ReportResult:
    """Write the JSON, the PNG plots and the Markdown (rendered from ``document`` alone)."""
    protocol = document["protocol"]["name"]
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / f"{protocol}.json"
    plots = {"metrics_vs_k": folder / f"{protocol}-metrics-vs-k.png"}
    ebms = [m for m, s in document["models"].items() if s.get("temperature")]
    if ebms:
        plots["temperature"] = folder / f"{protocol}-temperature.png"
        plots["energies"] = folder / f"{protocol}-energies.png"
    atomic_write_bytes(json_path, (json.dumps(document, indent=1) + "\n").encode())
    atomic_write_bytes(plots["metrics_vs_k"], plot_metrics_vs_k(document))
    if ebms:
        atomic_write_bytes(plots["temperature"], plot_temperature(document))
        atomic_write_bytes(plots["energies"], plot_energies(document))
    markdown = folder / f"{protocol}.md"
    atomic_write_bytes(markdown, render_markdown(document, {k: p.name for k, p in plots.items()}).encode())
    for path in [json_path, markdown, *plots.values()]:
        path.chmod(0o644)  # atomic_write_bytes' temporary files are private (0600)
    return ReportResult(document, markdown, json_path, plots)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pm(section: dict, key: str, digits: int = 4) -> str:
    mean, std = section["mean"].get(key), section["std"].get(key)
    if mean is None:
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


HEADLINE = [("NDCG@10", "ndcg@10"), ("Recall@20", "recall@20"), ("Precision@10", "precision@10"),
            ("MAP@10", "map@10"), ("HitRate@10", "hitrate@10"), ("MRR", "mrr"),
            ("Coverage@10", "coverage@10"), ("Gini@10", "gini@10"), ("Novelty@10", "novelty@10"),
            ("Diversity@10", "diversity@10"), ("Personalization@10", "personalization@10")]
PER_K = [*RANKING_METRICS, "coverage", "gini", "novelty", "diversity", "personalization"]


def _verdict(document: dict) -> list[str]:
    lines = []
    ref = document["reference"]
    rows = document["comparison"]
    for metric in VERDICT_METRICS:
        sub = [r for r in rows if r["metric"] == metric]
        if not sub:
            continue
        label = metric.replace("ndcg", "NDCG").replace("recall", "Recall")
        beaten = [r for r in sub if r["winner"] == ref]
        winners = [r for r in sub if r["winner"] not in (ref, "tie")]
        value = document["models"][ref]["mean"][metric]
        if not winners:
            best = max(sub, key=lambda r: r["model_value"])
            sig = "significant" if best["significant"] else "not significant"
            lines.append(f"- **{label}: `{ref}` is best** ({value:.4f}); the strongest other model, "
                         f"`{best['model']}` ({best['model_value']:.4f}), is "
                         f"{best['difference']:.4f} lower ({100 * best['relative']:.1f}% relative to it; "
                         f"paired per-user 95% CI of `{ref}` − `{best['model']}` "
                         f"[{best['ci95'][0]:.4f}, {best['ci95'][1]:.4f}], {sig}).")
        else:
            for r in sorted(winners, key=lambda r: r["difference"]):
                sig = "significant" if r["significant"] else "not significant"
                lines.append(
                    f"- **{label}: `{r['model']}` beats `{ref}`** by {-r['difference']:.4f} "
                    f"({r['model_value']:.4f} vs {value:.4f}, +{-100 * r['difference'] / value:.1f}% relative "
                    f"to `{ref}`; paired per-user 95% CI of `{ref}` − `{r['model']}` "
                    f"[{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}], {sig}).")
            if beaten:
                lines.append(f"  `{ref}` beats the others on {label}: "
                             + ", ".join(f"`{r['model']}` by {r['difference']:.4f}" for r in beaten) + ".")
    return lines


def render_markdown(document: dict, plots: dict[str, str]) -> str:
    """The report page, from the JSON document only (so every number matches it)."""
    ds, protocol, cfg = document["dataset"], document["protocol"], document["config"]
    models = document["models"]
    env = document["environment"]
    total = document["timing"]["total_seconds"]
    out = [f"# {document['title']}", ""]
    commit = (env.get("git_commit") or "unknown")[:10] + (" (uncommitted changes)" if env.get("git_dirty") else "")
    out += [f"Generated {env['generated']} from git {commit} by "
            f"`{cfg.get('command') or 'recsys_ebm.experiments.report.run_report'}`. Total time "
            f"{total / 60:.1f} min with {cfg['threads']} thread(s) per process on {env['cpu_count']} cores "
            f"(load average {_fmt(env.get('load_average_at_start'), 1)} at start). Every number is also in "
            f"[`{protocol['name']}.json`]({protocol['name']}.json).", ""]
    out += ["## Protocol", "",
            f"- Data: `{ds['name']}` (SHA-256 of ratings `{ds['checksum'][:12]}…`), all ratings as "
            f"implicit interactions, users with < 5 interactions dropped: {ds['n_users']} users, "
            f"{ds['n_items']} items, {ds['n_train']} train / {ds['n_test']} test interactions"
            + (f", {ds['n_fold_in']} fold-in" if ds.get("n_fold_in") else "")
            + f" ({ds['n_test_dropped']} test interactions with items unknown to train dropped).",
            f"- Split: {protocol['description']}. Every item is ranked except the user's train "
            "items; **no sampled negatives**.",
            f"- Tuning: each model's grid (`{cfg.get('grids_file') or 'none: tuned defaults'}`, other "
            "options from `pipelines/<model>.toml`) is fitted on the validation-fit part of train "
            f"({ds['n_validation_fit']} interactions) and scored by NDCG@10 on the validation split carved "
            f"from train ({ds['n_validation']} interactions; "
            + VALIDATION_TEXT.get(protocol.get("name"), "per-user random 20%, seed {seed}").format(
                seed=protocol["validation_seed"]) + "); never on test. "
            "Epoch-trained models early-stop on it and are refit for the best epoch count.",
            f"- The chosen configuration is refit on all of train with model seeds "
            f"{', '.join(map(str, cfg['seeds']))} (data split fixed) and tested; mean ± {protocol['std']}. "
            f"Deterministic models ({', '.join(m for m, s in models.items() if s['deterministic']) or 'none'}) "
            "are fitted once (std 0).", ""]
    described = " (the dot-product EBM)" if document["reference"] == "dpebm" else ""
    out += ["## Verdict", "", f"Reference: `{document['reference']}`{described} against every "
            "other model on NDCG@10 and Recall@20 (means over seeds).", "", *_verdict(document), ""]
    out += ["## Results", "", "Test metrics, mean ± std over seeds; beyond-accuracy columns on the top-10 lists "
            "(novelty in bits; diversity = mean pairwise cosine distance of genre vectors).", ""]
    out.append("| model | " + " | ".join(label for label, _ in HEADLINE) + " |")
    out.append("|---|" + "---|" * len(HEADLINE))
    for name, section in models.items():
        out.append(f"| `{name}` | " + " | ".join(_pm(section, key) for _, key in HEADLINE) + " |")
    out += ["", f"![metrics vs k]({plots['metrics_vs_k']})", "",
            "<details><summary>Every metric at every cut-off</summary>", ""]
    ks = cfg["ks"]
    out.append("| model | metric | " + " | ".join(f"@{k}" for k in ks) + " |")
    out.append("|---|---|" + "---|" * len(ks))
    for name, section in models.items():
        for metric in PER_K:
            if f"{metric}@{ks[0]}" in section["mean"]:
                out.append(f"| `{name}` | {metric} | "
                           + " | ".join(_pm(section, f"{metric}@{k}") for k in ks) + " |")
    out += ["", "</details>", ""]
    out += ["## Tuning", "", "| model | grid points | chosen options | validation NDCG@10 | "
            "validation Recall@20 | refit epochs |", "|---|---|---|---|---|---|"]
    for name, section in models.items():
        best = max(section["grid"], key=lambda g: g["val_ndcg@10"])
        options = ", ".join(f"{k}={v}" for k, v in section["chosen"].items() if k != "seed") or "–"
        out.append(f"| `{name}` | {len(section['grid'])} | {options} | {best['val_ndcg@10']:.4f} | "
                   f"{best['val_recall@20']:.4f} | {section['refit_epochs'] or '–'} |")
    undeclared = [f"`{m}`" for m, s in models.items() if not s.get("grid_declared")]
    if undeclared and cfg.get("use_grids"):
        out += ["", f"No grid is declared for {', '.join(undeclared)}: they run with their tuned defaults "
                "(`pipelines/<model>.toml`, chosen on an ML-100K validation split), epoch-trained models "
                "with early stopping on this data's validation split."]
    out.append("")
    ebms = [m for m, s in models.items() if s.get("temperature")]
    if ebms:
        out += ["## Temperature trade-off", "",
                f"Top-{TRADEOFF_K} lists drawn by `recommend(temperature=T, rng={cfg['seeds'][0]})`: k distinct "
                "unseen items from softmax(score / T) (T = 0 is the exact ranking), model seed "
                f"{cfg['seeds'][0]}.", ""]
        for name in ebms:
            out += [f"`{name}`:", "", "| T | NDCG@10 | Recall@10 | Coverage@10 | Novelty@10 | Diversity@10 "
                    "| Personalization@10 | Gini@10 |", "|---|---|---|---|---|---|---|---|"]
            for row in models[name]["temperature"]:
                out.append(f"| {row['temperature']:g} | " + " | ".join(
                    _fmt(row.get(f"{m}@{TRADEOFF_K}")) for m in
                    ("ndcg", "recall", "coverage", "novelty", "diversity", "personalization", "gini")) + " |")
            out.append("")
        out += [f"![temperature trade-off]({plots['temperature']})", "",
                "## Energies of held-out positives vs random unseen items", "",
                "E = −score of every test (user, item) pair against one random item per pair that the user "
                "has neither in train nor in test. AUC = P(E_positive < E_random).", "",
                "| model | mean E, positives | mean E, random unseen | AUC |", "|---|---|---|---|"]
        for name in ebms:
            e = models[name]["energies"]
            out.append(f"| `{name}` | {e['positives']['mean']:.4f} ± {e['positives']['std']:.4f} | "
                       f"{e['random_unseen']['mean']:.4f} ± {e['random_unseen']['std']:.4f} | {e['auc']:.4f} |")
        out += ["", f"![energy histograms]({plots['energies']})", ""]
    out += ["## Timing", "", "| model | tuning (s) | refit + test, all seeds (s) | total (s) |", "|---|---|---|---|"]
    for name, section in models.items():
        t = section["timing"]
        out.append(f"| `{name}` | {t['tune_seconds']:.1f} | {t['refit_test_seconds']:.1f} | "
                   f"{t['total_seconds']:.1f} |")
    out += [f"| total | | | {total:.1f} |", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------- plots
def _figure(nrows: int, ncols: int, size: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(nrows, ncols, figsize=size, squeeze=False)


def _png(plt, fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=72)
    plt.close(fig)
    return buffer.getvalue()


def plot_metrics_vs_k(document: dict) -> bytes:
    """NDCG, recall, precision and coverage against k, one line per model (error bars: std)."""
    plt, fig, axes = _figure(2, 2, (10, 7))
    ks = document["config"]["ks"]
    for ax, metric in zip(axes.ravel(), ("ndcg", "recall", "precision", "coverage"), strict=True):
        for name, section in document["models"].items():
            mean = [section["mean"][f"{metric}@{k}"] for k in ks]
            std = [section["std"][f"{metric}@{k}"] or 0.0 for k in ks]
            ax.errorbar(ks, mean, yerr=std, marker="o", capsize=2, label=name)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k")
        ax.set_title(f"{metric}@k")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(document["title"])
    return _png(plt, fig)


def plot_temperature(document: dict) -> bytes:
    """NDCG@10, coverage, novelty and diversity of sampled lists against T, per EBM."""
    plt, fig, axes = _figure(1, 4, (14, 3.6))
    for ax, metric in zip(axes.ravel(), ("ndcg", "coverage", "novelty", "diversity"), strict=True):
        for name, section in document["models"].items():
            rows = section.get("temperature")
            if not rows or rows[0].get(f"{metric}@{TRADEOFF_K}") is None:
                continue
            ax.plot([r["temperature"] for r in rows], [r[f"{metric}@{TRADEOFF_K}"] for r in rows],
                    marker="o", label=name)
        ax.set_xlabel("temperature T")
        ax.set_title(f"{metric}@{TRADEOFF_K}")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"{document['title']}: temperature trade-off")
    return _png(plt, fig)


def plot_energies(document: dict) -> bytes:
    """Histograms of E for held-out positives and random unseen items, one panel per EBM."""
    ebms = [(m, s["energies"]) for m, s in document["models"].items() if s.get("energies")]
    plt, fig, axes = _figure(1, len(ebms), (5 * len(ebms), 3.6))
    for ax, (name, e) in zip(axes.ravel(), ebms, strict=True):
        edges = np.asarray(e["edges"])
        for key, label in (("random_unseen", "random unseen"), ("positives", "held-out positives")):
            counts = np.asarray(e[key]["counts"], dtype=float)
            ax.stairs(counts / counts.sum(), edges, fill=True, alpha=0.5, label=label)
        ax.set_xlabel("energy E = -score")
        ax.set_ylabel("share of pairs")
        ax.set_title(f"{name} (AUC {e['auc']:.3f})")
        ax.legend(fontsize=8)
    fig.suptitle(f"{document['title']}: energies")
    return _png(plt, fig)


def command_line(args) -> str:
    """The ``recsys-ebm report`` command reproducing parsed CLI ``args`` (without paths)."""
    parts = ["recsys-ebm report", f"--dataset {args.dataset}"]
    if args.dataset == "movielens":
        parts.append(f"--variant {args.variant}")
    parts.append(f"--protocol {args.protocol}")
    if args.models:
        parts.append(f"--models {args.models}")
    if args.seeds != "0,1,2":
        parts.append(f"--seeds {args.seeds}")
    if args.no_grid:
        parts.append("--no-grid")
    parts += [f"--set {key}={value}" for key, value in args.overrides]
    return " ".join(parts)


def summary_frame(document: dict) -> pd.DataFrame:
    """Headline metrics as a DataFrame (models x 'metric' and 'metric_std' columns)."""
    if document["protocol"]["name"] == RATING_PROTOCOL:
        return pd.DataFrame.from_dict(
            {name: {k: r[k] for k in ("rmse", "rmse_std", "mae", "mae_std")}
             for name, r in document["models"].items()}, orient="index")
    rows = {}
    for name, section in document["models"].items():
        row = {}
        for _, key in HEADLINE:
            row[key] = section["mean"].get(key)
            row[f"{key}_std"] = section["std"].get(key)
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - thin wrapper
    """``python -m recsys_ebm.experiments.report``: same as ``recsys-ebm report``."""
    from recsys_ebm.cli import main as cli_main

    return cli_main(["report", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
