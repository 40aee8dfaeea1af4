"""Scale-out benchmark: export on Ray against the single-process export, the dpebm sampled
softmax epoch against an `implicit` ALS iteration, and the CRBM epoch against its ratings.

On the synthetic ML-20M shape (``--scale`` of its users, items and interactions; dim 64):

* export: top-100 for every user of fixed ALS factors (:class:`benchmarks.common.FactorModel`),
  single process on 1 thread and on every CPU, and :func:`distributed_export` on a private
  local Ray cluster of 1 and 2 workers (one CPU each). Every method runs twice and the second,
  warm run is reported (the first, on a fresh cluster, also starts the workers: reported apart,
  as is the cluster's start); Ray's overhead is its 1-worker time over the single process's
  1-thread time;
* training: one epoch of dpebm with the logQ-corrected sampled softmax (free user vectors, 256
  popularity negatives per batch of 1,024 users) and one ALS iteration of `implicit` on the same
  interactions, both on one thread: the medians of 3 alternating warm runs (the first run of
  each, which pays one-time costs such as PyTorch's imports, reported apart);
* CRBM: the time of one training epoch at 3 data sizes, and its time per million ratings.

    python -m benchmarks.bench_scaling [--scale 0.1] [--skip export,train,crbm]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from benchmarks.common import (
    FactorModel,
    data_config,
    environment,
    load_data,
    load_factors,
    table,
    write_result,
)
from benchmarks.synthetic import SyntheticConfig


def _timed(fn, *args, **kwargs) -> float:
    started = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - started


def bench_export(user_items: sp.csr_matrix, user_factors, item_factors, k: int) -> dict:
    from recsys_ebm.distributed.cluster import ray_cluster
    from recsys_ebm.distributed.export import distributed_export
    from recsys_ebm.export.writer import ExportConfig, export_recommendations

    model = FactorModel(user_factors, item_factors, user_items=user_items)
    n_users = user_items.shape[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for threads in (1, 2):
            cold, seconds = (_timed(export_recommendations, model, Path(tmp) / f"single-{run}.parquet",
                                    k=k, n_threads=threads, show_progress=False) for run in ("cold", "warm"))
            rows.append({"method": f"single process, {threads} thread(s)", "seconds": seconds,
                         "cold_seconds": cold})
        for workers in (1, 2):
            started = time.perf_counter()
            with ray_cluster("local", workers):  # started once, reused by both exports
                startup = time.perf_counter() - started
                # the first export on a fresh cluster also starts its worker processes and
                # imports the toolkit in them: timed apart from the second, the steady state
                cold, seconds = (_timed(distributed_export, model, Path(tmp) / f"ray{workers}-{run}",
                                        address="local", num_workers=workers,
                                        config=ExportConfig(k=k), show_progress=False)
                                 for run in ("cold", "warm"))
            rows.append({"method": f"Ray, {workers} worker(s)", "seconds": seconds,
                         "cold_seconds": cold, "cluster_start_seconds": startup})
    for row in rows:
        row["users_per_s"] = n_users / row["seconds"]
    single, ray1, ray2 = rows[0]["seconds"], rows[2]["seconds"], rows[3]["seconds"]
    return {"rows": rows, "ray_overhead_1_worker": ray1 / single, "ray_speedup_2_vs_1": ray1 / ray2,
            "users_per_s_per_core_single": n_users / single}


def bench_train(user_items: sp.csr_matrix, dim: int, repeat: int = 3) -> dict:
    import torch
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    from recsys_ebm.models.dot_ebm import DotEBM

    torch.set_num_threads(1)

    def dpebm() -> float:
        model = DotEBM(dim=dim, user_model="free", loss="sampled", n_negatives=256,
                       batch_size=1024, epochs=1, seed=0)
        return _timed(model.fit, user_items, show_progress=False)

    def als() -> float:
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(factors=dim, iterations=1, random_state=0, num_threads=1)
            return _timed(model.fit, user_items, show_progress=False)

    # the first run of each pays the process's one-time costs (PyTorch imports its compiler
    # stack when the first optimizer is built, about 1 s): reported apart; then the two
    # alternate and the medians of the warm runs are compared
    cold = {"dpebm": dpebm(), "als": als()}
    warm: dict[str, list[float]] = {"dpebm": [], "als": []}
    for _ in range(repeat):
        warm["dpebm"].append(dpebm())
        warm["als"].append(als())
    epoch, iteration = float(np.median(warm["dpebm"])), float(np.median(warm["als"]))
    return {"dpebm_sampled_epoch_seconds": epoch, "als_iteration_seconds": iteration,
            "ratio_dpebm_vs_als": epoch / iteration,
            "dpebm_first_epoch_seconds": cold["dpebm"], "als_first_iteration_seconds": cold["als"],
            "warm_runs": warm, "dpebm_interactions_per_s": user_items.nnz / epoch}


def bench_crbm(scales: list[float]) -> dict:
    import torch

    from recsys_ebm.models.crbm import CRBM

    torch.set_num_threads(1)
    rows = []
    for scale in scales:
        config = SyntheticConfig().scaled(scale)
        binary = load_data(config)
        ratings = binary.copy()
        ratings.data = np.random.default_rng(0).integers(1, 6, ratings.nnz).astype(np.float32)
        seconds = _timed(CRBM(epochs=1, val_fraction=0.0, seed=0).fit, ratings, show_progress=False)
        rows.append({"scale": scale, "n_users": ratings.shape[0], "n_items": ratings.shape[1],
                     "ratings": int(ratings.nnz), "epoch_seconds": seconds,
                     "seconds_per_million_ratings": seconds / ratings.nnz * 1e6})
    return {"rows": rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.1, help="fraction of the ML-20M shape")
    parser.add_argument("--item-scale", type=float, default=1.0, help="fraction of the 27,000 items")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--crbm-scales", default="0.005,0.01,0.02")
    parser.add_argument("--skip", default="", help="comma-separated: export,train,crbm")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    config = data_config(args)
    user_items = load_data(config)
    result = {"benchmark": "scaling", "scale": args.scale, "n_users": user_items.shape[0],
              "n_items": user_items.shape[1], "n_interactions": int(user_items.nnz),
              "config": dataclasses.asdict(config), "environment": environment()}
    if "export" not in skip:
        user_factors, item_factors = load_factors(config, args.dim)
        result["export"] = bench_export(user_items, user_factors, item_factors, args.k)
        print(f"\nExport top-{args.k}, {user_items.shape[0]:,} users x {user_items.shape[1]:,} items")
        print(table(result["export"]["rows"],
                    [("method", "method", "s"), ("seconds", "seconds", ".2f"),
                     ("users_per_s", "users/s", ",.0f"), ("cold_seconds", "first run s", ".2f")]))
        print(f"Ray overhead (1 worker vs 1 thread): {result['export']['ray_overhead_1_worker']:.2f}x; "
              f"2 workers vs 1: {result['export']['ray_speedup_2_vs_1']:.2f}x")
    if "train" not in skip:
        result["train"] = bench_train(user_items, args.dim)
        t = result["train"]
        print(f"\ndpebm sampled-softmax epoch {t['dpebm_sampled_epoch_seconds']:.2f} s vs ALS iteration "
              f"{t['als_iteration_seconds']:.2f} s: {t['ratio_dpebm_vs_als']:.2f}x (goal <= 2x; "
              f"first runs {t['dpebm_first_epoch_seconds']:.2f} s and {t['als_first_iteration_seconds']:.2f} s)")
    if "crbm" not in skip:
        result["crbm"] = bench_crbm([float(s) for s in args.crbm_scales.split(",")])
        print("\nCRBM epoch time against ratings")
        print(table(result["crbm"]["rows"], [("ratings", "ratings", ",d"), ("epoch_seconds", "seconds", ".2f"),
                                             ("seconds_per_million_ratings", "s / M ratings", ".2f")]))
    path = write_result(f"scaling-scale{args.scale:g}", result)
    print(f"-> {path}")
    return result


if __name__ == "__main__":
    main()
