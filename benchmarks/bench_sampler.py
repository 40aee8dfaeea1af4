"""Sampler benchmark: exploratory top-10 for every user at T = 0.5 against the exact ranking.

Same synthetic data and ALS factors as the export benchmark. Both methods run in their own
subprocess, seen items excluded:

* ``exact``: :func:`recsys_ebm.ranking.factored.rank_vectors` at T = 0 with k = 10;
* ``sampled``: the same kernel at T > 0, 10 distinct items per user drawn from
  p(i | u, T) ∝ exp(-E(u, i) / T) (exact sampling without replacement, keyed on the user), what
  ``recommend(..., temperature=T)`` runs for models with vectors.

    python -m benchmarks.bench_sampler [--scale 1.0] [--temperature 0.5] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from benchmarks.common import (
    data_config,
    environment,
    load_data,
    load_factors,
    name_for,
    peak_rss_mb,
    run_worker,
    table,
    write_result,
)

METHODS = ("exact", "sampled")


def worker(args: argparse.Namespace) -> None:
    from recsys_ebm.data.sparse import canonical_csr
    from recsys_ebm.ranking.factored import rank_vectors

    config = data_config(args)
    user_items = canonical_csr(load_data(config))
    user_factors, item_factors = load_factors(config, args.dim, args.iterations)
    biases = np.zeros(item_factors.shape[0], np.float32)
    threads = args.threads or None
    started = time.perf_counter()
    temperature = 0.0 if args.worker == "exact" else args.temperature
    ids, _, _ = rank_vectors(user_factors, item_factors, biases, args.k, temperature, seed=0,
                             exclude=user_items, n_threads=threads)
    seconds = time.perf_counter() - started
    n_users = user_items.shape[0]
    # a diversity figure for the table: distinct items over all lists
    coverage = np.unique(ids[ids >= 0]).size / item_factors.shape[0]
    print(json.dumps({"method": args.worker, "seconds": seconds, "users_per_s": n_users / seconds,
                      "coverage": coverage, "peak_rss_mb": peak_rss_mb()}))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--item-scale", type=float, default=None,
                        help="fraction of the 27,000 items (default: --scale)")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    config = data_config(args)
    user_items = load_data(config)
    load_factors(config, args.dim, args.iterations)
    common = ["--scale", str(args.scale), "--item-scale", str(args.item_scale or args.scale),
              "--k", str(args.k), "--temperature", str(args.temperature),
              "--dim", str(args.dim), "--iterations", str(args.iterations), "--threads", str(args.threads)]
    runs: dict[str, list[dict]] = {m: [] for m in METHODS}
    for _ in range(args.repeat):
        for method in METHODS:
            runs[method].append(run_worker("benchmarks.bench_sampler", ["--worker", method, *common]))
    rows = [{**min(runs[m], key=lambda r: r["seconds"]),
             "all_seconds": [round(r["seconds"], 3) for r in runs[m]]} for m in METHODS]
    by = {r["method"]: r for r in rows}
    result = {"benchmark": "sampler", "k": args.k, "temperature": args.temperature,
              "n_users": user_items.shape[0], "n_items": user_items.shape[1], "scale": args.scale,
              "methods": rows, "cost_ratio_sampled_vs_exact": by["sampled"]["seconds"] / by["exact"]["seconds"],
              "environment": environment()}
    path = write_result(name_for("sampler", args.scale, args.item_scale), result)
    print(f"\nSampler: top-{args.k} for {user_items.shape[0]:,} users, T = {args.temperature}")
    print(table(rows, [("method", "method", "s"), ("seconds", "seconds", ".2f"),
                       ("users_per_s", "users/s", ",.0f"), ("coverage", "coverage", ".3f")]))
    print(f"sampled / exact cost: {result['cost_ratio_sampled_vs_exact']:.2f}x")
    print(f"-> {path}")
    return result


if __name__ == "__main__":
    main()
