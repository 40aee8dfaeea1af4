"""``recsys-ebm anomaly``: inject shilling attacks and score every profile by energy (the
streams/anomaly protocol in docs/protocols.md)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from recsys_ebm.cli.common import (
    add_data_args,
    add_tracking_args,
    dataset_from_args,
    parse_override,
    tracker_from_args,
    write_out,
)
from recsys_ebm.io import atomic_write_bytes

logger = logging.getLogger("recsys_ebm.cli")


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    from recsys_ebm.anomaly.attacks import ATTACK_KINDS, INTENTS
    from recsys_ebm.anomaly.detectors import DETECTORS

    anomaly = sub.add_parser(
        "anomaly", parents=[common],
        help="inject a shilling attack and detect it: energy detectors vs RDMA and PCA-VarSelect")
    add_data_args(anomaly)
    add_tracking_args(anomaly)
    attack = anomaly.add_argument_group("attack")
    attack.add_argument("--attack", default="average", choices=ATTACK_KINDS)
    attack.add_argument("--intent", default="push", choices=INTENTS)
    attack.add_argument("--attack-size", type=float, default=0.05,
                        help="fake profiles as a share of the genuine users")
    attack.add_argument("--filler-size", type=float, default=0.05,
                        help="filler items per profile as a share of the catalog")
    attack.add_argument("--seed", type=int, default=0, help="attack seed (targets and profiles)")
    detect = anomaly.add_argument_group("detection")
    detect.add_argument("--detector", dest="detectors", action="append",
                        choices=[*DETECTORS, "all"],
                        help="detector (repeatable; default all but random); RDMA and "
                             "PCA-VarSelect always run alongside")
    detect.add_argument("--setting", default="both", choices=("clean", "contaminated", "both"))
    detect.add_argument("--fpr", type=float, default=0.01, help="target false-positive rate")
    detect.add_argument("--split-seed", type=int, default=0, help="seed of the genuine user split")
    detect.add_argument("--set", dest="overrides", action="append", default=[], type=parse_override,
                        metavar="KEY=VALUE",
                        help="override an AnomalyConfig option, dotted for the models "
                             "(crbm.epochs=10, dpebm.dim=32, multvae.epochs=30; repeatable)")
    detect.add_argument("--threads", type=int, default=None,
                        help="torch threads (1 is fastest for these small models on a busy machine)")
    detect.add_argument("--json", dest="json_path", default=None, help="write the results here")
    detect.add_argument("--grid", action="store_true",
                        help="run every attack (random/average/bandwagon/segment) x size (1/5/10%%) "
                             "x filler (3/5/10%%) and write the markdown report + plot")
    detect.add_argument("--headline", action="store_true",
                        help="run only the headline cells (average/random/bandwagon at 5%% attack, "
                             "5%% filler, attack seeds 0, 1, 2) and write anomaly-headline.md + plot")
    detect.add_argument("--report-dir", default=None,
                        help="where --grid writes anomaly.md/.png (default reports/<dataset>-<variant>)")


def _anomaly_config(args):
    import dataclasses

    from recsys_ebm.anomaly.detectors import CLASSIC_DETECTORS
    from recsys_ebm.anomaly.protocol import AnomalyConfig

    values = dataclasses.asdict(AnomalyConfig())
    for key, value in args.overrides:
        target, *path = key.split(".")
        if path:
            if target not in ("crbm", "dpebm", "multvae") or len(path) != 1:
                raise ValueError(f"--set {key}: dotted keys are crbm.<option>, dpebm.<option> "
                                 "or multvae.<option>")
            values[target][path[0]] = value
        else:
            values[target] = value
    chosen = args.detectors or ["all"]
    if "all" not in chosen:
        values["detectors"] = tuple(dict.fromkeys([*chosen, *CLASSIC_DETECTORS]))
    values["settings"] = ("clean", "contaminated") if args.setting == "both" else (args.setting,)
    values["fpr"] = args.fpr
    values["split_seed"] = args.split_seed
    return AnomalyConfig.from_dict(values)


def _cell_metrics(cell) -> dict[str, float]:
    metrics = {"shift_attacked": cell.shift_attacked}
    for outcome in cell.outcomes:
        for name, value in outcome.metrics.items():
            metrics[f"{outcome.setting}.{outcome.detector}.{name}"] = value
    return metrics


def cmd_anomaly(args) -> int:
    import dataclasses

    from recsys_ebm.anomaly.protocol import headline_comparison
    from recsys_ebm.anomaly.versus import ebm_vs_vae
    from recsys_ebm.data.interactions import Interactions

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    config = _anomaly_config(args)
    dataset = dataset_from_args(args)
    genuine = Interactions.from_frame(dataset.ratings, name=dataset.name)
    if args.grid and args.headline:
        raise ValueError("--grid and --headline are alternatives: pass one of them")
    run_name = ("anomaly-grid" if args.grid else "anomaly-headline" if args.headline
                else f"anomaly-{args.attack}-{args.intent}")
    with tracker_from_args(args, run_name) as tracker:
        tracker.log_params({"anomaly": dataclasses.asdict(config), "grid": args.grid,
                            "attack": {"kind": args.attack, "intent": args.intent,
                                       "attack_size": args.attack_size,
                                       "filler_size": args.filler_size, "seed": args.seed}})
        tracker.log_dataset(dataset.name, dataset.checksum, source=dataset.source,
                            n_users=genuine.n_users, n_items=genuine.n_items, n_ratings=len(genuine))
        result = _run(args, genuine, config, tracker)
        headline = headline_comparison(result.table)
        document = {"dataset": dataset.name, "config": dataclasses.asdict(config),
                    "info": result.info, "results": result.table.to_dict("records"),
                    "interactions": result.interactions.to_dict("records"),
                    "headline": headline.to_dict("records"),
                    "ebm_vs_vae": ebm_vs_vae(result.table).to_dict("records")}
        tracker.log_dict(document, "anomaly.json")
        tracker.log_table(result.table, "anomaly_cells.csv")
        for row in document["headline"]:
            key = f"headline.{row['setting']}.{row['attack']}"
            tracker.log_metrics({f"{key}.auc": row["auc"], f"{key}.classic_auc": row["classic_auc"]})
        _log_plots(args, result, dataset, tracker)
    if args.json_path:
        atomic_write_bytes(args.json_path, json.dumps(document, indent=2, default=_anomaly_jsonable).encode())
        logger.info("results written to %s", args.json_path)
    _write_tables(args, result, headline)
    return 0


def _run(args, genuine, config, tracker):
    """The grid (``--grid``) or the one attack cell of the arguments, each cell logged."""
    import dataclasses

    from recsys_ebm.anomaly.protocol import HEADLINE_ATTACKS, HEADLINE_SIZE, run_grid

    def log_cell(cell) -> None:
        name = (f"{cell.attack.kind}-{cell.attack.attack_size:g}-{cell.attack.filler_size:g}"
                f"-s{cell.attack.seed}")
        if args.grid or args.headline:
            with tracker.child(name) as child:
                child.log_params(dataclasses.asdict(cell.attack))
                child.log_metrics(_cell_metrics(cell))
        else:
            tracker.log_metrics(_cell_metrics(cell))

    if args.grid:
        return run_grid(genuine, config, intent=args.intent, seed=args.seed, on_cell=log_cell)
    if args.headline:
        return run_grid(genuine, config, kinds=HEADLINE_ATTACKS, attack_sizes=(HEADLINE_SIZE,),
                        filler_sizes=(HEADLINE_SIZE,), intent=args.intent, seed=args.seed,
                        on_cell=log_cell)
    return run_grid(genuine, config, kinds=(args.attack,), attack_sizes=(args.attack_size,),
                    filler_sizes=(args.filler_size,), intent=args.intent, seed=args.seed,
                    headline_seeds=(), on_cell=log_cell)


def _log_plots(args, result, dataset, tracker) -> None:
    """``--grid`` / ``--headline``: the markdown report and plot (``anomaly`` /
    ``anomaly-headline``), written and logged; otherwise the plot alone."""
    import tempfile

    from recsys_ebm.anomaly.report import plot_histograms, write_report

    if args.grid or args.headline:
        label = f"{args.dataset}-{args.variant}" if args.dataset == "movielens" else dataset.name
        out = Path(args.report_dir or Path("reports") / label)
        stem = "anomaly" if args.grid else "anomaly-headline"
        write_report(result, out / f"{stem}.md", out / f"{stem}.png", dataset=dataset.name,
                     command="make anomaly" if args.grid else "make anomaly-headline")
        tracker.log_artifact(out / f"{stem}.md", "report")
        tracker.log_artifact(out / f"{stem}.png", "report")
    elif result.histograms:
        with tempfile.TemporaryDirectory() as tmp:
            plot = Path(tmp) / "anomaly.png"
            plot_histograms(result, plot)
            tracker.log_artifact(plot, "report")


def _write_tables(args, result, headline) -> None:
    """The results as markdown tables on stdout, and the headline comparison when the cells hold it."""
    from recsys_ebm.anomaly.report import markdown_table
    from recsys_ebm.anomaly.versus import ebm_vs_vae

    columns = ["setting", "attack", "attack_size", "filler_size", "detector", "auc", "fpr",
               "detection_rate", "precision", "f1", "shift_filtered"]
    if not args.grid:
        write_out(markdown_table(result.table[columns]) + "\n")
        if len(result.interactions):
            write_out("\ninteraction level:\n" + markdown_table(result.interactions[
                ["corruption", "detector", "auc", "fpr", "detection_rate", "f1"]]) + "\n")
        if len(result.table):
            write_out(f"\nprediction shift of the target with the attack: "
                      f"{result.table['shift_attacked'].iloc[0]:+.3f}\n")
    if len(headline):
        write_out("\n" + markdown_table(headline) + "\n")
    versus = ebm_vs_vae(result.table)
    if len(versus):
        write_out("\nenergy-based models vs the VAE:\n" + markdown_table(versus) + "\n")


def _anomaly_jsonable(obj: Any) -> Any:
    return obj.tolist() if hasattr(obj, "tolist") else str(obj)

