"""Run the export, retrieval and sampler benchmarks and check the issue's bars.

    python -m benchmarks.run_all              # full scale: ML-20M shape, 1M-item catalog
    python -m benchmarks.run_all --quick      # 10% of the users, 100k-item catalog
    python -m benchmarks.run_all --summarize  # bars from the JSON results already written

Each benchmark writes its own JSON under ``benchmarks/results/``; this writes ``summary.json``
(``summary-quick.json`` with --quick) with the bars:

* exact export at least as fast as `implicit` (goal 2x), identical top-k sets up to ties,
  peak memory under 2 GB;
* an approximate index with recall@100 >= 0.95 at >= 5x the flat index's queries/s;
* exploratory sampling at most 1.5x the cost of the exact ranking;
* scale-out (``bench_scaling``): the export on 1 and 2 Ray workers against the single process
  (Ray's overhead, informative), the dpebm sampled-softmax epoch at most 2x an ALS iteration,
  the CRBM's epoch time per million ratings (informative).
* (information) the joint CRBM's CD-1 epoch at the ML-20M shape (``bench_crbm``).
"""

from __future__ import annotations

import argparse
import json

from benchmarks import (
    bench_crbm,
    bench_export,
    bench_monitor,
    bench_retrieval,
    bench_sampler,
    bench_scaling,
)
from benchmarks.common import RESULTS, environment, table, write_result


def _run_or_load(run: bool, name: str, bench, argv: list[str]) -> dict:
    if run:
        return bench.main(argv)
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run the benchmark first")
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small scale, for a quick check")
    parser.add_argument("--repeat", type=int, default=1, help="runs per method in export/sampler")
    parser.add_argument("--skip", default="", help="comma-separated: export,retrieval,sampler,scaling,monitor,crbm")
    parser.add_argument("--summarize", action="store_true", help="read results/*.json, run nothing")
    args = parser.parse_args(argv)
    run = not args.summarize
    tag = "-scale0.1-items1" if args.quick else ""
    skip = set(filter(None, args.skip.split(",")))
    scale = ["--scale", "0.1", "--item-scale", "1"] if args.quick else []
    repeat = ["--repeat", str(args.repeat)]
    bars = []
    if "export" not in skip:
        export = _run_or_load(run, f"export{tag}", bench_export, [*scale, *repeat])
        by = {m["method"]: m for m in export["methods"]}
        speedup = export["speedup_exact_vs_implicit"]
        bars.append({"bar": "exact export vs implicit (>= 1x, goal 2x)", "value": f"{speedup:.2f}x",
                     "met": speedup >= 1.0, "goal_met": speedup >= 2.0})
        ties = export["agreement"]["identical_up_to_ties"]
        bars.append({"bar": "identical top-k sets up to ties", "value": f"{ties:.4%}", "met": ties == 1.0})
        memory = by["exact"]["peak_rss_mb"]
        bars.append({"bar": "exact path peak memory < 2 GB", "value": f"{memory:,.0f} MB",
                     "met": memory < 2048})
        if "export" in by:
            bars.append({"bar": "full export (probabilities + Parquet) vs implicit (info)",
                         "value": f"{export['speedup_export_vs_implicit']:.2f}x, "
                                  f"{by['export']['peak_rss_mb']:,.0f} MB", "met": None})
        if "agreement_export" in export:
            exported = export["agreement_export"]["identical_up_to_ties"]
            bars.append({"bar": "exported lists = implicit's top-k up to ties", "value": f"{exported:.4%}",
                         "met": exported == 1.0})
    if "retrieval" not in skip:
        retrieval = _run_or_load(run, "retrieval-100000" if args.quick else "retrieval", bench_retrieval,
                                 ["--n-items", "100000", "--queries", "1000"] if args.quick else [])
        best = retrieval["best_at_recall_0.95"]
        bars.append({"bar": "approximate recall@100 >= 0.95 at >= 5x flat QPS",
                     "value": (f"{best['kind']} {best['setting']}: recall {best['recall']:.3f}, "
                               f"{best['speedup']:.1f}x") if best else "no setting reached 0.95",
                     "met": retrieval["bar"]["met"]})
    if "sampler" not in skip:
        sampler = _run_or_load(run, f"sampler{tag}", bench_sampler, [*scale, *repeat])
        ratio = sampler["cost_ratio_sampled_vs_exact"]
        bars.append({"bar": "sampling T=0.5 top-10 <= 1.5x exact", "value": f"{ratio:.2f}x",
                     "met": ratio <= 1.5})
    if "scaling" not in skip:
        bars.extend(_scaling_bars(_run_or_load(run, f"scaling-scale{0.1 if args.quick else 1.0:g}",
                                               bench_scaling, ["--scale", "0.1" if args.quick else "1.0"])))
    if "monitor" not in skip:
        monitor = _run_or_load(run, "monitor", bench_monitor, ["--events", "10000"] if args.quick else [])
        bars.append({"bar": "stream watchdog throughput (info)",
                     "value": f"{monitor['events_per_second']:,.0f} events/s", "met": None})
    if "crbm" not in skip:
        crbm = _run_or_load(run, "crbm-scale0.1" if args.quick else "crbm", bench_crbm,
                            ["--quick"] if args.quick else [])
        bars.append({"bar": "joint CRBM CD-1 epoch, F = 100 (info)",
                     "value": f"{crbm['epoch_seconds']:,.0f} s ({crbm['ms_per_user']:.1f} ms/user, "
                              f"{crbm['n_users']:,} x {crbm['n_items']:,}, {crbm['peak_rss_mb']:,.0f} MB)",
                     "met": None})
    for row in bars:
        row["status"] = {True: "met", False: "MISSED", None: "-"}[row["met"]]
        if row.get("goal_met") is not None:
            row["status"] += " (goal met)" if row["goal_met"] else " (goal not met)"
    print("\nBars")
    print(table(bars, [("bar", "bar", "s"), ("value", "measured", "s"), ("status", "status", "s")]))
    summary = {"quick": args.quick, "bars": bars, "environment": environment()}
    path = write_result("summary-quick" if args.quick else "summary", summary)
    print(f"-> {path}")
    return summary


def _scaling_bars(scaling: dict) -> list[dict]:
    export, train, crbm = scaling["export"], scaling["train"], scaling["crbm"]["rows"]
    by = {row["method"]: row for row in export["rows"]}
    return [
        {"bar": "export on 1 Ray worker vs 1 process thread (Ray's overhead, info)",
         "value": f"{export['ray_overhead_1_worker']:.2f}x the time", "met": None},
        {"bar": "export on 2 Ray workers vs 1 (info; ideal 2x on 2 cores)",
         "value": f"{export['ray_speedup_2_vs_1']:.2f}x, {by['Ray, 2 worker(s)']['users_per_s']:,.0f} users/s",
         "met": None},
        {"bar": "dpebm sampled-softmax epoch <= 2x an ALS iteration",
         "value": f"{train['ratio_dpebm_vs_als']:.2f}x ({train['dpebm_sampled_epoch_seconds']:.1f} s "
                  f"vs {train['als_iteration_seconds']:.1f} s)", "met": train["ratio_dpebm_vs_als"] <= 2.0},
        {"bar": "CRBM epoch per million ratings (info)",
         "value": ", ".join(f"{r['seconds_per_million_ratings']:.1f} s at {r['ratings'] / 1e6:.2f}M"
                            for r in crbm), "met": None},
    ]


if __name__ == "__main__":
    main()
