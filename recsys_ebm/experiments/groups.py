"""The group protocol: every strategy of every model on seeded random, similar and divergent
groups of ML-100K users, judged by each member against their own test items.

1. data: the random split of ``docs/protocols.md`` (seed 0); each model fitted with its tuned
   defaults (``pipelines/<model>.toml``), early-stopped on the validation split carved from
   train, refit on train (``runner.fit_with_validation``).
2. groups: users with test items, ``n_groups`` distinct groups per type and size
   (``evaluation.groups.draw_groups``; correlations are Pearson on co-rated training ratings).
3. each group's top-10 (``models.group.recommend_groups``, the union of the members' training
   items left out) is scored by each member's NDCG@10 on their own test items: per group the
   mean (satisfaction), the minimum (fairness) and whether some member has no hit; each
   strategy against the product of experts by paired per-group 95% t-intervals.
4. taste interpolation: for a few divergent pairs, the list of the mix E_λ = (1 − λ) E_u + λ E_v
   as λ goes 0 -> 1, its overlap with each user's own list (``interpolation_paths``); and for a
   user-oriented CRBM the energy path against the data path (``crbm_taste_paths``).

``groups_render`` writes the Markdown report and the plot from the JSON document alone.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from recsys_ebm.evaluation.groups import (
    DIVERGENT_MAX,
    GROUP_TYPES,
    MIN_COMMON,
    SIMILAR_MIN,
    draw_groups,
    group_measures,
    member_ndcg,
    paired_ci,
    pearson_matrix,
)
from recsys_ebm.experiments import runner
from recsys_ebm.experiments.reporting import clean_json, environment, limit_threads, load_average
from recsys_ebm.experiments.tuning import model_input, tuned_defaults
from recsys_ebm.models.group import recommend_groups
from recsys_ebm.ranking.compose import STRATEGIES, mix_weights

logger = logging.getLogger(__name__)

GROUP_MODELS = ("dpebm", "ease", "als", "crbm")
GROUP_SIZES = (2, 3, 4, 6, 8)
#: the reference strategy every other one is compared with
REFERENCE = "poe"
LAMBDAS = tuple(round(x, 2) for x in np.linspace(0.0, 1.0, 11))


@dataclasses.dataclass(frozen=True)
class GroupsConfig:
    """What one run of the group protocol does (defaults: the report's settings)."""

    dataset: str = "movielens"
    variant: str = "100k"
    data_dir: str | None = None
    download: bool = True
    models: tuple[str, ...] = GROUP_MODELS
    strategies: tuple[str, ...] = STRATEGIES
    group_types: tuple[str, ...] = GROUP_TYPES
    sizes: tuple[int, ...] = GROUP_SIZES
    n_groups: int = 1000
    seed: int = 0
    k: int = 10
    n_pairs: int = 4
    #: also fit a user-oriented CRBM and trace both of its taste paths for the same pairs
    crbm_paths: bool = True
    threads: int | None = 1
    show_progress: bool = False
    #: the command line that ran it, for the report
    command: str = ""


def run_groups(config: GroupsConfig) -> dict[str, Any]:
    """Run the protocol; returns the JSON-able document (``results`` holds every cell)."""
    if REFERENCE not in config.strategies:
        raise ValueError(f"the strategies must include {REFERENCE!r}: every other one is compared with it")
    started, load = time.perf_counter(), load_average()
    dataset = runner.load_dataset(config.dataset, config.variant, config.data_dir, config.download)
    split = runner.make_split(dataset.ratings, "random", seed=0)
    data = runner.prepare(split, "random")
    pearson = pearson_matrix(data.train.rating_matrix)
    candidates = np.flatnonzero(np.diff(data.test.user_items.indptr) > 0)
    groups = {(t, s): draw_groups(candidates, pearson, s, config.n_groups, t, config.seed)
              for t in config.group_types for s in config.sizes}
    results, timing, paths = [], {}, {}
    with limit_threads(config.threads):
        for name in config.models:
            t0 = time.perf_counter()
            model = runner.fit_with_validation(name, tuned_defaults(name), data,
                                               show_progress=config.show_progress)
            fitted = time.perf_counter()
            history = model_input(model, data.train)
            model = ScoreCache(model)
            for (group_type, size), cell in groups.items():
                results += evaluate_cell(model, name, cell, history, data.test.user_items,
                                         config, group_type, size)
            if name == "dpebm":
                pairs = groups.get(("divergent", 2), [])[:config.n_pairs]
                paths[name] = interpolation_paths(model, pairs, history, config.k)
            timing[name] = {"fit_seconds": fitted - t0, "groups_seconds": time.perf_counter() - fitted}
            logger.info("%s: fitted in %.1f s, groups in %.1f s", name, fitted - t0,
                        timing[name]["groups_seconds"])
        crbm = None
        if config.crbm_paths:
            t0 = time.perf_counter()
            crbm = crbm_taste_paths(data, groups.get(("divergent", 2), [])[:config.n_pairs], config.k)
            fit_seconds = crbm.pop("fit_seconds")
            timing["crbm (user orientation, paths only)"] = {
                "fit_seconds": fit_seconds, "groups_seconds": time.perf_counter() - t0 - fit_seconds}
    return clean_json({
        "protocol": "groups", "dataset": dataset.name, "dataset_checksum": dataset.checksum,
        "config": {**dataclasses.asdict(config), "data_dir": None, "similar_min": SIMILAR_MIN,
                   "divergent_max": DIVERGENT_MAX, "min_common": MIN_COMMON,
                   "n_candidates": int(candidates.size), "n_test_dropped": split.n_dropped,
                   "lambdas": LAMBDAS},
        "results": results, "interpolation": paths, "crbm_paths": crbm, "timing": {
            "models": timing, "total_seconds": time.perf_counter() - started},
        "environment": environment(load)})


class ScoreCache:
    """A fitted model whose trained users' scores are computed once: every cell and strategy
    asks for the same users' score rows again. Everything else is the model's own."""

    #: users x items scores held at most (float32), else every call goes to the model
    MAX_ENTRIES = 50_000_000

    def __init__(self, model):
        self._model = model
        self._scores = None
        if model.n_users * model.n_items <= self.MAX_ENTRIES:
            self._scores = np.asarray(model.score(np.arange(model.n_users)), dtype=np.float32)

    def score(self, user_ids, user_items=None):
        if user_items is not None or self._scores is None:
            return self._model.score(user_ids, user_items)
        return self._scores[np.asarray(user_ids, dtype=np.int64)]

    def __getattr__(self, name: str):
        return getattr(self._model, name)


def evaluate_cell(model, name: str, groups: list[np.ndarray], history, test, config: GroupsConfig,
                  group_type: str, size: int) -> list[dict[str, Any]]:
    """One result row per strategy for the groups of one type and size."""
    if not groups:
        return [_row(name, s, group_type, size, None, None) for s in config.strategies]
    measures = {}
    for strategy in config.strategies:
        if strategy == "pseudo-user" and model.fits_ratings:
            continue  # the union of rating histories is not one user's ratings
        ids, _ = recommend_groups(model, groups, config.k, strategy=strategy, user_items=history)
        measures[strategy] = group_measures(member_ndcg(ids, groups, test, config.k))
    rows = []
    for s in config.strategies:
        row = _row(name, s, group_type, size, measures.get(s), measures[REFERENCE])
        if s not in measures:
            row["note"] = "not served: the model fits ratings"
        rows.append(row)
    return rows


def _row(model: str, strategy: str, group_type: str, size: int, measures, reference) -> dict[str, Any]:
    row: dict[str, Any] = {"model": model, "strategy": strategy, "group_type": group_type,
                           "size": size, "n_groups": 0 if measures is None else measures["mean"].size}
    keys = {"ndcg@10_mean": "mean", "ndcg@10_min": "min", "zero_hit_share": "zero_hit"}
    for out, key in keys.items():
        row[out] = None if measures is None else float(measures[key].mean())
        row[f"{out}_vs_{REFERENCE}"] = (None if measures is None
                                        else paired_ci(measures[key], reference[key]))
    return row


def interpolation_paths(model, pairs: list[np.ndarray], history, k: int) -> list[dict[str, Any]]:
    """For each pair (u, v), the overlap@k of the mix λ's list with u's own and v's own list
    (λ = 0 and 1), λ in :data:`LAMBDAS`, both users' items left out all along; and, for vector models, the largest gap between the mixed energies
    and the energies of the interpolated user vector (0 up to rounding: the energy is linear
    in p_u)."""
    out = []
    for pair in pairs:
        # one seen set along the whole path (both users' items), so the lists move only with λ
        seen = np.unique(history[pair].indices)
        lists = [recommend_groups(model, [pair], k, weights=[mix_weights(lam)], filter_seen=False,
                                  filter_items=seen)[0][0] for lam in LAMBDAS]
        own_u, own_v = set(lists[0].tolist()), set(lists[-1].tolist())
        entry = {"users": [int(u) for u in pair],
                 "overlap_u": [len(own_u & set(row.tolist())) / k for row in lists],
                 "overlap_v": [len(own_v & set(row.tolist())) / k for row in lists]}
        if hasattr(model, "user_vectors"):
            entry["max_energy_gap"] = max(vector_gap(model, pair, lam) for lam in LAMBDAS)
        out.append(entry)
    return out


#: the CRBM of the taste paths: its tuned options with one visible state per user, fitted on
#: train for a fixed number of epochs (the paths show a property of the energy, not accuracy)
CRBM_PATH_OPTIONS = {"orientation": "user", "epochs": 15}


def crbm_taste_paths(data: runner.PreparedData, pairs: list[np.ndarray], k: int) -> dict[str, Any]:
    """Fit a user-oriented CRBM (tuned options with :data:`CRBM_PATH_OPTIONS`) on train and trace
    the energy path and the data path (``models.crbm_paths``) for each pair."""
    from recsys_ebm.experiments.tuning import fit_on_train
    from recsys_ebm.models.crbm_paths import crbm_paths

    model, fitted = fit_on_train("crbm", {**tuned_defaults("crbm"), **CRBM_PATH_OPTIONS}, data.train)
    return {"options": CRBM_PATH_OPTIONS, "fit_seconds": fitted,
            "pairs": [crbm_paths(model, int(u), int(v), LAMBDAS, k) for u, v in pairs]}


def vector_gap(model, pair: np.ndarray, lam: float) -> float:
    """max_i |(1 − λ) s_u(i) + λ s_v(i) − s(p_λ)(i)| with p_λ = (1 − λ) p_u + λ p_v."""
    scores = model.score(pair).astype(np.float64)
    mixed = (1 - lam) * scores[0] + lam * scores[1]
    vectors = model.user_vectors(pair).astype(np.float64)
    p = (1 - lam) * vectors[0] + lam * vectors[1]
    direct = model.item_vectors().astype(np.float64) @ p + model.item_biases()
    return float(np.abs(mixed - direct).max())


def write_groups(document: dict[str, Any], json_path: str | Path | None = None,
                 markdown_path: str | Path | None = None) -> list[Path]:
    """Write the JSON document and, when asked, the Markdown report and its plot."""
    import json

    from recsys_ebm.io import atomic_write_bytes

    written = []
    if json_path is not None:
        atomic_write_bytes(json_path, json.dumps(document, indent=2).encode())
        written.append(Path(json_path))
    if markdown_path is not None:
        from recsys_ebm.experiments.groups_render import write_markdown

        written += write_markdown(document, Path(markdown_path))
    return written
