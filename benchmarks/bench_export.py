"""Export benchmark: top-100 unseen items for every user, the toolkit's exact path vs `implicit`.

Both score the same ALS factors (dim 64, fitted by `implicit` on the synthetic ML-20M-shaped
data). Each method runs in its own subprocess (wall time of the call, peak RSS of the process):

* ``implicit``: ``AlternatingLeastSquares.recommend(all users, user_items, N=k,
  filter_already_liked_items=True)``, BLAS at one thread as `implicit` asks;
* ``exact``: :func:`recsys_ebm.ranking.factored.rank_vectors` at T = 0 (the ranking kernel
  that ``recommend``, and so export, runs for models with vectors);
* ``export``: :func:`recsys_ebm.export.export_recommendations` end to end on the factors as a
  model (:class:`benchmarks.common.FactorModel`, its seen set the interactions), rows from
  ``model.recommend(..., with_probabilities=True)``: energies, T = 1 probabilities and the
  Parquet file.

Top-k agreement: the fraction of users whose two top-k sets are identical, and identical up to
ties (same multiset of scores, recomputed in float64, within 1e-5 relative).

    python -m benchmarks.bench_export [--scale 1.0] [--k 100] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from benchmarks.common import (
    CACHE,
    FactorModel,
    data_config,
    environment,
    load_data,
    load_factors,
    name_for,
    peak_rss_mb,
    rss_mb,
    run_worker,
    table,
    write_result,
)

METHODS = ("implicit", "exact", "export")


def worker(args: argparse.Namespace) -> None:
    config = data_config(args)
    user_items = load_data(config)
    user_factors, item_factors = load_factors(config, args.dim, args.iterations)
    n_users = user_items.shape[0]
    threads = args.threads or None
    rss_before = rss_mb()
    ids, peak = None, None
    if args.worker == "implicit":
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        model = AlternatingLeastSquares(factors=args.dim, num_threads=args.threads)
        model.user_factors, model.item_factors = user_factors, item_factors
        with threadpool_limits(1, "blas"):
            started = time.perf_counter()
            ids, _ = model.recommend(np.arange(n_users), user_items, N=args.k,
                                     filter_already_liked_items=True)
            seconds = time.perf_counter() - started
    elif args.worker == "exact":
        from recsys_ebm.data.sparse import canonical_csr
        from recsys_ebm.ranking.factored import rank_vectors

        started = time.perf_counter()
        ids, _, _ = rank_vectors(user_factors, item_factors, np.zeros(item_factors.shape[0], np.float32),
                                 args.k, exclude=canonical_csr(user_items), n_threads=threads)
        seconds = time.perf_counter() - started
    else:
        from recsys_ebm.export.writer import export_recommendations

        output = CACHE / "bench-export.parquet"
        model = FactorModel(user_factors, item_factors, user_items=user_items)
        started = time.perf_counter()
        # user_items defaults to the model's seen set: the interactions, as implicit filters
        export_recommendations(model, output, k=args.k, n_threads=args.threads, show_progress=False)
        seconds = time.perf_counter() - started
        peak = peak_rss_mb()  # before reading the file back for the check
        if args.check:  # the file holds every user's top-k unseen items: compare with implicit
            import pyarrow.parquet as pq

            items = pq.read_table(output, columns=["user_id", "item_id"])
            counts = np.bincount(items["user_id"].to_numpy(), minlength=n_users)
            if (counts == args.k).all():
                ids = items["item_id"].to_numpy().reshape(n_users, args.k)
        output.unlink()
    if ids is not None:
        np.save(CACHE / f"ids-{args.worker}.npy", np.asarray(ids, dtype=np.int64))
    print(json.dumps({"method": args.worker, "seconds": seconds, "users_per_s": n_users / seconds,
                      "rss_before_mb": rss_before,
                      "peak_rss_mb": peak if peak is not None else peak_rss_mb()}))


def agreement(user_factors: np.ndarray, item_factors: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict:
    """Identical top-k sets, and identical up to ties, between two (n, k) id arrays."""
    same = np.all(np.sort(a, axis=1) == np.sort(b, axis=1), axis=1)
    differ = np.flatnonzero(~same)
    tied = np.zeros(differ.size, dtype=bool)
    for start in range(0, differ.size, 4096):
        rows = differ[start:start + 4096]
        users = user_factors[rows].astype(np.float64)
        sa = np.sort(np.einsum("nd,nkd->nk", users, item_factors[a[rows]].astype(np.float64)), axis=1)
        sb = np.sort(np.einsum("nd,nkd->nk", users, item_factors[b[rows]].astype(np.float64)), axis=1)
        tied[start:start + rows.size] = np.all(np.isclose(sa, sb, rtol=1e-5, atol=1e-7), axis=1)
    return {"identical_sets": float(same.mean()),
            "identical_up_to_ties": float((same.sum() + tied.sum()) / same.size),
            "users_differing_beyond_ties": int((~tied).sum())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--item-scale", type=float, default=None,
                        help="fraction of the 27,000 items (default: --scale)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the ML-20M shape")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=3, help="ALS iterations for the factors")
    parser.add_argument("--threads", type=int, default=0, help="0 = every CPU, for both methods")
    parser.add_argument("--repeat", type=int, default=1, help="runs per method (best time kept)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="do not compare the exported lists with implicit's")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    config = data_config(args)
    user_items = load_data(config)
    user_factors, item_factors = load_factors(config, args.dim, args.iterations)
    common = ["--scale", str(args.scale), "--item-scale", str(args.item_scale or args.scale),
              "--k", str(args.k), "--dim", str(args.dim),
              "--iterations", str(args.iterations), "--threads", str(args.threads),
              *([] if args.check else ["--no-check"])]
    methods = args.methods.split(",")
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for _ in range(args.repeat):  # interleaved, so load changes hit every method alike
        for method in methods:
            runs[method].append(run_worker("benchmarks.bench_export", ["--worker", method, *common]))
    rows = []
    for method in methods:
        best = min(runs[method], key=lambda r: r["seconds"])
        rows.append({**best, "all_seconds": [round(r["seconds"], 3) for r in runs[method]],
                     "peak_rss_mb": max(r["peak_rss_mb"] for r in runs[method])})
    by = {r["method"]: r for r in rows}
    result = {
        "benchmark": "export", "k": args.k, "dim": args.dim, "n_users": user_items.shape[0],
        "n_items": user_items.shape[1], "n_interactions": int(user_items.nnz), "scale": args.scale,
        "methods": rows, "environment": environment(),
    }
    if "implicit" in by and "exact" in by:
        result["speedup_exact_vs_implicit"] = by["implicit"]["seconds"] / by["exact"]["seconds"]
        result["agreement"] = agreement(user_factors, item_factors, np.load(CACHE / "ids-exact.npy"),
                                        np.load(CACHE / "ids-implicit.npy"))
    if "implicit" in by and "export" in by:
        result["speedup_export_vs_implicit"] = by["implicit"]["seconds"] / by["export"]["seconds"]
        if (CACHE / "ids-export.npy").is_file():
            result["agreement_export"] = agreement(user_factors, item_factors,
                                                   np.load(CACHE / "ids-export.npy"),
                                                   np.load(CACHE / "ids-implicit.npy"))
    for method in methods:
        (CACHE / f"ids-{method}.npy").unlink(missing_ok=True)
    path = write_result(name_for("export", args.scale, args.item_scale), result)
    print(f"\nExport: top-{args.k} unseen items for {user_items.shape[0]:,} users x "
          f"{user_items.shape[1]:,} items ({user_items.nnz:,} interactions), ALS dim {args.dim}")
    print(table(rows, [("method", "method", "s"), ("seconds", "seconds", ".2f"),
                       ("users_per_s", "users/s", ",.0f"), ("peak_rss_mb", "peak RSS MB", ",.0f")]))
    if "speedup_exact_vs_implicit" in result:
        agree = result["agreement"]
        print(f"exact vs implicit: {result['speedup_exact_vs_implicit']:.2f}x; identical top-k sets "
              f"{agree['identical_sets']:.4%}, up to ties {agree['identical_up_to_ties']:.4%}")
    if "speedup_export_vs_implicit" in result:
        print(f"full export (energies, probabilities, Parquet) vs implicit: "
              f"{result['speedup_export_vs_implicit']:.2f}x")
    if "agreement_export" in result:
        agree = result["agreement_export"]
        print(f"exported lists vs implicit: identical top-k sets {agree['identical_sets']:.4%}, "
              f"up to ties {agree['identical_up_to_ties']:.4%}")
    print(f"-> {path}")
    return result


if __name__ == "__main__":
    main()
