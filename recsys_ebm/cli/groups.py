"""``recsys-ebm groups`` (the group protocol and its report) and the composed forms of
``recommend``: ``--group 1,2,3 [--strategy ...]`` and ``--user U --user V --mix λ``."""

from __future__ import annotations

import argparse
import logging

from recsys_ebm.cli.common import add_data_args, split_ids, write_out
from recsys_ebm.cli.train import _format_row, cmd_recommend
from recsys_ebm.ranking.compose import STRATEGIES

logger = logging.getLogger("recsys_ebm.cli")


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    """The groups subcommand, and the group / mix options of the recommend subcommand."""
    from recsys_ebm.experiments.groups import GROUP_MODELS, GROUP_SIZES

    recommend = sub.choices["recommend"]
    composed = recommend.add_argument_group("groups and taste mixes")
    composed.add_argument("--group", default=None, metavar="USER,USER,...",
                          help="raw ids of trained users watching together: one list for the group")
    composed.add_argument("--strategy", default="poe", choices=STRATEGIES,
                          help="how the members' energies compose (default poe: the product of experts)")
    composed.add_argument("--mix", type=float, default=None, metavar="LAMBDA",
                          help="with two --user: the taste mix E = (1 - λ) E_u + λ E_v, λ in [0, 1]")

    groups = sub.add_parser("groups", parents=[common],
                            help="the group protocol: strategies x models x group types and sizes, "
                                 "member NDCG@10 with paired CIs against PoE; JSON and Markdown")
    add_data_args(groups)
    groups.add_argument("--model", dest="models", action="append", default=None,
                        help=f"a model (repeatable; default: {', '.join(GROUP_MODELS)})")
    groups.add_argument("--n-groups", type=int, default=1000, help="groups per type and size")
    groups.add_argument("--sizes", default=",".join(map(str, GROUP_SIZES)), help="comma-separated group sizes")
    groups.add_argument("--seed", type=int, default=0, help="seed of the group draws")
    groups.add_argument("--json", dest="json_path", default=None, help="write the results here")
    groups.add_argument("--markdown", default=None, metavar="PATH",
                        help="also write the Markdown report (and its interpolation plot beside it)")
    groups.add_argument("--no-crbm-paths", action="store_true",
                        help="skip the user-oriented CRBM's energy path vs data path")
    groups.add_argument("--threads", type=int, default=1, help="torch/BLAS threads (0 = the libraries' defaults)")


def cmd_groups(args) -> int:
    from recsys_ebm.experiments.groups import GroupsConfig, run_groups, write_groups

    try:
        sizes = tuple(int(s) for s in split_ids(args.sizes))
    except ValueError:
        raise ValueError(f"--sizes must be comma-separated integers, got {args.sizes!r}") from None
    models = tuple(args.models) if args.models else GroupsConfig.models
    command = (f"recsys-ebm groups --dataset {args.dataset} --variant {args.variant} "
               + " ".join(f"--model {m}" for m in models)
               + (f" --n-groups {args.n_groups}" if args.n_groups != 1000 else "")
               + (" --no-crbm-paths" if args.no_crbm_paths else ""))
    config = GroupsConfig(dataset=args.dataset, variant=args.variant, data_dir=args.data_dir,
                          download=not args.no_download, models=models, sizes=sizes,
                          n_groups=args.n_groups, seed=args.seed, threads=args.threads or None,
                          crbm_paths=not args.no_crbm_paths,
                          show_progress=not args.quiet, command=command)
    document = run_groups(config)
    written = write_groups(document, args.json_path, args.markdown)
    for row in document["results"]:
        if row["strategy"] == "poe":
            continue
        ci = row["ndcg@10_mean_vs_poe"]
        delta = "" if ci is None else f"  Δmean vs poe {ci['diff']:+.4f}"
        write_out(f"{row['model']:6s} {row['group_type']:9s} {row['size']} {row['strategy']:13s} "
                  f"mean {_num(row['ndcg@10_mean'])} min {_num(row['ndcg@10_min'])} "
                  f"zero-hit {_num(row['zero_hit_share'])} n {row['n_groups']}{delta}\n")
    write_out("".join(f"written: {path}\n" for path in written))
    return 0


def _num(value) -> str:
    return "  –   " if value is None else f"{value:.4f}"


def cmd_recommend_any(args) -> int:
    """``recommend``: a group or a taste mix here, everything else in ``train.cmd_recommend``."""
    if args.group is None and args.mix is None:
        if args.strategy != "poe":
            raise ValueError("--strategy is for --group")
        return cmd_recommend(args)
    from recsys_ebm.experiments.jobs import raw_to_index, saved_id_maps, serving_model

    if args.history or args.history_file:
        raise ValueError("--group and --mix rank trained users; --history folds in a new user "
                         "alone")
    if args.group is not None and (args.mix is not None or args.users):
        raise ValueError("give --group USER,USER,... or --user U --user V --mix λ, not both")
    if args.mix is not None and len(args.users) != 2:
        raise ValueError(f"--mix λ mixes two users: give --user twice (got {len(args.users)})")
    if args.mix is not None and args.strategy != "poe":
        raise ValueError("--mix is the product of experts with weights (1 - λ, λ); drop --strategy")
    model = serving_model(args.model_path, args.index)
    user_map, item_map = saved_id_maps(model, args.model_path)
    raw = split_ids(args.group) if args.group is not None else args.users
    users = raw_to_index(user_map, raw, "--group" if args.group is not None else "--user")
    options = {"temperature": args.temperature, "rng": args.seed, "filter_seen": not args.include_seen,
               "filter_items": None if args.filter_items is None else raw_to_index(
                   item_map, split_ids(args.filter_items), "--filter-items")}
    if args.mix is not None:
        ids, scores = model.recommend_mix(users, args.mix, args.k, **options)
        label = f"mix {1 - args.mix:g} x user {raw[0]} + {args.mix:g} x user {raw[1]}"
    else:
        ids, scores = model.recommend_group(users, args.k, strategy=args.strategy, **options)
        label = f"group {','.join(raw)} ({args.strategy})"
    write_out(_format_row(label, item_map, ids, scores) + "\n")
    return 0
