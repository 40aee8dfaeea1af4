"""CRBM benchmark: one CD-1 epoch of the joint visible layer at the ML-20M shape.

The negative phase samples every item's (K + 1)-way state for every user of a minibatch: a
users x items x K x F product per Gibbs step, done in item chunks (``item_chunk``). The data is
the synthetic ML-20M-shaped matrix of :mod:`benchmarks.synthetic` (binary) with seeded ratings
1..5 put on its interactions. The run times ``--batches`` minibatches of real CD-1 updates
(the full catalog, positive and negative phase, the parameter update) and extrapolates the
epoch (all users) from the time per user; ``--full-epoch`` times a whole epoch instead.

    python -m benchmarks.bench_crbm [--scale 1.0] [--hidden 100] [--batches 20] [--full-epoch]
    python -m benchmarks.bench_crbm --quick      # 10% of the users and items
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import (
    data_config,
    environment,
    load_data,
    name_for,
    peak_rss_mb,
    table,
    write_result,
)


def _ratings(user_items):
    """Seeded ratings 1..5 on the interactions (skewed towards 4, like MovieLens)."""
    rng = np.random.default_rng(0)
    ratings = user_items.copy().astype(np.float32)
    ratings.data = rng.choice(np.arange(1, 6, dtype=np.float32), size=ratings.nnz,
                              p=[0.06, 0.11, 0.27, 0.34, 0.22])
    return ratings


def run(args: argparse.Namespace) -> dict:
    import torch

    from recsys_ebm.models.crbm import joint
    from recsys_ebm.models.crbm.cases import CaseData, rating_levels
    from recsys_ebm.models.crbm.config import CRBMConfig
    from recsys_ebm.models.crbm.joint_model import JointTrainer
    from recsys_ebm.models.crbm.module import CRBMModule, initial_visible_bias

    torch.set_num_threads(args.threads)
    config = data_config(args)
    ratings = _ratings(load_data(config))
    data = CaseData.from_csr(rating_levels(ratings, np.arange(1.0, 6.0)), None)
    cfg = CRBMConfig(visible="joint", n_hidden=args.hidden, batch_size=args.batch_size,
                     item_chunk=args.item_chunk, cd_schedule=((1, 1),), persistent=args.persistent)
    gen = torch.Generator().manual_seed(0)
    module = CRBMModule(data.n_units, 5, args.hidden, True, gen, joint=True).requires_grad_(False)
    with torch.no_grad():
        module.b.copy_(initial_visible_bias(data, 5))
        module.a.copy_(joint.initial_rating_bias(np.bincount(data.indices, minlength=data.n_units), data.n_cases))
    trainer = JointTrainer(cfg, module, module, data, gen)
    if not args.full_epoch:  # a sample of the users: ``batches`` minibatches of the epoch
        trainer.active = trainer.active[np.random.default_rng(1).permutation(len(trainer.active))[
            :args.batches * args.batch_size]]
    started = time.perf_counter()
    metrics = trainer.epoch(1)
    seconds = time.perf_counter() - started
    per_user = seconds / len(trainer.active)
    return {"n_users": data.n_cases, "n_items": data.n_units, "n_ratings": int(ratings.nnz),
            "hidden": args.hidden, "batch_size": args.batch_size, "item_chunk": args.item_chunk,
            "persistent": args.persistent, "threads": args.threads,
            "users_timed": int(len(trainer.active)), "seconds_timed": seconds,
            "ms_per_user": 1e3 * per_user, "epoch_seconds": per_user * data.n_cases,
            "extrapolated": not args.full_epoch, "recon_error": metrics["recon_error"],
            "peak_rss_mb": peak_rss_mb()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="users / items / interactions share")
    parser.add_argument("--item-scale", type=float, default=None, help="items share (default: --scale)")
    parser.add_argument("--quick", action="store_true", help="--scale 0.1 (10%% of users and items)")
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--item-chunk", type=int, default=2048)
    parser.add_argument("--batches", type=int, default=20, help="minibatches timed (without --full-epoch)")
    parser.add_argument("--full-epoch", action="store_true", help="time a whole epoch")
    parser.add_argument("--persistent", action="store_true", help="persistent CD")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.quick:
        args.scale = 0.1
    result = {"benchmark": "crbm_joint_epoch", **run(args), "environment": environment()}
    print(table([result], [("n_users", "users", ",d"), ("n_items", "items", ",d"),
                           ("hidden", "F", "d"), ("users_timed", "users timed", ",d"),
                           ("ms_per_user", "ms/user", ".2f"), ("epoch_seconds", "epoch s", ",.0f"),
                           ("peak_rss_mb", "peak MB", ",.0f")]))
    path = write_result(name_for("crbm", args.scale, args.item_scale), result)
    print(f"-> {path}")
    return result


if __name__ == "__main__":
    main()
