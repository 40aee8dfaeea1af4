"""Next-item orchestration for the ``loo`` report: the next-item metrics of every model, the
training-method comparison of the sequence CRBM (validation NDCG@10 per epoch of CD-1, CD-5 and
the exact likelihood), and their Markdown section and PNG chart.
"""

from __future__ import annotations

import io
import logging
from typing import Any

from recsys_ebm.experiments import tuning

logger = logging.getLogger(__name__)

#: the training methods the CRBM chart compares: label -> options
CRBM_VARIANTS: dict[str, dict[str, Any]] = {
    "CD-1": {"training": "cd", "cd_steps": 1},
    "CD-5": {"training": "cd", "cd_steps": 5},
    "exact": {"training": "exact"},
}
#: the registry name of the model whose training methods are compared
CRBM_MODEL = "seqcrbm"
#: the next-item columns of the report, (label, key of a model's ``mean``)
COLUMNS = (("HR@10", "next_hr@10"), ("HR@20", "next_hr@20"), ("NDCG@10", "next_ndcg@10"),
           ("NDCG@20", "next_ndcg@20"), ("MRR", "next_mrr"))


def training_curves(data, seed: int, options: dict[str, Any] | None = None,
                    variants: dict[str, dict[str, Any]] = CRBM_VARIANTS) -> dict[str, dict]:
    """Early-stop the CRBM once per training method on the validation split: per variant the
    validation NDCG@10 of every epoch, the best epoch and its value."""
    curves: dict[str, dict] = {}
    for label, variant in variants.items():
        values: list[float] = []

        def record(epoch: int, metrics: dict, values=values) -> None:
            values.append(float(metrics["val_ndcg@10"]))

        chosen = {**tuning.tuned_defaults(CRBM_MODEL), **(options or {}), **variant, "seed": seed}
        model, seconds = tuning.early_stop(CRBM_MODEL, chosen, data, callback=record)
        curves[label] = {"options": chosen, "val_ndcg@10": values, "best_epoch": model.history.best_epoch,
                         "best_value": model.history.best_value, "fit_seconds": seconds}
        logger.info("%s %s: best validation NDCG@10 %.4f at epoch %d (%.0fs)", CRBM_MODEL, label,
                    model.history.best_value, model.history.best_epoch, seconds)
    return curves


def plot_training_curves(curves: dict[str, dict]) -> bytes:
    """Validation NDCG@10 against the epoch, one line per training method."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6, 4))
    for label, curve in curves.items():
        values = curve["val_ndcg@10"]
        axis.plot(range(1, len(values) + 1), values, marker=".", label=label)
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation NDCG@10")
    axis.set_title(f"{CRBM_MODEL}: CD-k vs the exact likelihood")
    axis.grid(alpha=0.3)
    axis.legend()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=72)
    plt.close(fig)
    return buffer.getvalue()


def markdown_section(document: dict, plot: str | None) -> list[str]:
    """The next-item table (and the CRBM chart) of a ``loo`` report; [] when there is none."""
    models = {m: s for m, s in document["models"].items() if "next_hr@10" in s["mean"]}
    if not models:
        return []
    tied = document["dataset"].get("n_tied_test")
    out = ["## Next item", "",
           "Each user's last event is the target, ranked against every item not in the user's "
           "history; HR@k, NDCG@k and the exact MRR from the target's rank (docs/protocols.md, "
           "Next-item). Timestamp ties are ordered by the protocol's seeded permutation"
           + (f"; {tied} of {document['dataset']['n_test']} test items were such ties." if tied is not None else "."),
           "", "| model | " + " | ".join(label for label, _ in COLUMNS) + " |",
           "|---|" + "---|" * len(COLUMNS)]
    for name, section in models.items():
        cells = [f"{section['mean'][key]:.4f} ± {section['std'][key]:.4f}" for _, key in COLUMNS]
        out.append(f"| `{name}` | " + " | ".join(cells) + " |")
    curves = document.get("crbm_training")
    if curves:
        out += ["", f"### `{CRBM_MODEL}`: CD-k against the exact likelihood", "",
                "| training | best validation NDCG@10 | at epoch | fit (s) |", "|---|---|---|---|"]
        out += [f"| {label} | {c['best_value']:.4f} | {c['best_epoch']} | {c['fit_seconds']:.0f} |"
                for label, c in curves.items()]
        if plot:
            out += ["", f"![{CRBM_MODEL} training]({plot})"]
    return [*out, ""]
