"""The report pages and plots, rendered from a report's JSON document alone (so every number on
the page is the one in the JSON): Markdown, PNG plots, the files written, the summary table.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys_ebm.evaluation.evaluate import RANKING_METRICS
from recsys_ebm.experiments.next_item import markdown_section as next_item_section
from recsys_ebm.experiments.next_item import plot_training_curves
from recsys_ebm.experiments.reporting import (
    RATING_PROTOCOL,
    TRADEOFF_K,
    VALIDATION_TEXT,
    VERDICT_METRICS,
)
from recsys_ebm.io import atomic_write_bytes
from recsys_ebm.models.rating_baselines import SURPRISE_BASELINES


@dataclasses.dataclass(frozen=True)
class ReportResult:
    """The JSON document and the files written."""

    document: dict[str, Any]
    markdown: Path
    json: Path
    plots: dict[str, Path]


# ---------------------------------------------------------------------------------- files
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
    if document.get("crbm_training"):
        plots["crbm_training"] = folder / f"{protocol}-seqcrbm-training.png"
        atomic_write_bytes(plots["crbm_training"], plot_training_curves(document["crbm_training"]))
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



def write_rating_report(document: dict, folder: Path) -> ReportResult:
    """Write ``ratings.json``, the per-fold plot and ``ratings.md`` (from ``document`` alone)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "ratings.json", "md": folder / "ratings.md",
             "png": folder / "ratings-folds.png"}
    atomic_write_bytes(paths["json"], (json.dumps(document, indent=1) + "\n").encode())
    atomic_write_bytes(paths["png"], plot_rating_folds(document))
    atomic_write_bytes(paths["md"], render_rating_markdown(document, paths["png"].name).encode())
    for path in paths.values():
        path.chmod(0o644)  # atomic_write_bytes' temporary files are private (0600)
    return ReportResult(document, paths["md"], paths["json"], {"folds": paths["png"]})


# ---------------------------------------------------------------------------------- ranking page
def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pm(section: dict, key: str, digits: int = 4) -> str:
    mean, std = section["mean"].get(key), section["std"].get(key)
    if mean is None:
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


HEADLINE = [("NDCG@10", "ndcg@10"), ("Recall@20", "recall@20"), ("Recall_allrel@20", "recall_allrel@20"),
            ("Precision@10", "precision@10"), ("MAP@10", "map@10"), ("MAP_allrel@10", "map_allrel@10"),
            ("HitRate@10", "hitrate@10"), ("MRR", "mrr"),
            ("Coverage@10", "coverage@10"), ("Gini@10", "gini@10"), ("Novelty@10", "novelty@10"),
            ("Diversity@10", "diversity@10"), ("Personalization@10", "personalization@10")]
PER_K = [*RANKING_METRICS, "coverage", "gini", "novelty", "diversity", "personalization"]
#: which Recall/MAP definition a column uses (R = the user's number of test items)
TRUNCATED_DEFINITION = ("Recall and MAP without a suffix divide by min(k, R), R = the user's test items "
                        "(Liang et al. 2018's normalisation: a perfect top-k list scores 1 even when "
                        "R > k)")
STANDARD_DEFINITION = "the `_allrel` ones divide by R (the standard definitions, as in ranx)"


def _definitions(standard: bool = False) -> str:
    """The sentence under a table with Recall/MAP columns; ``standard``: it has ``_allrel`` ones."""
    return f"{TRUNCATED_DEFINITION}; {STANDARD_DEFINITION}." if standard else f"{TRUNCATED_DEFINITION}."


def _headline(document: dict) -> list[tuple[str, str]]:
    """The HEADLINE columns the document has (reports written before a metric existed lack it)."""
    return [(label, key) for label, key in HEADLINE
            if any(key in section["mean"] for section in document["models"].values())]


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
    out = [f"# {document['title']}", "", *_header(document), ""]
    out += ["## Protocol", "", *_protocol(document), ""]
    described = " (the dot-product EBM)" if document["reference"] == "dpebm" else ""
    out += ["## Verdict", "", f"Reference: `{document['reference']}`{described} against every "
            "other model on NDCG@10 and Recall@20 (hits in the top 20 / min(20, R), R = the user's test "
            "items; means over seeds).", "", *_verdict(document), ""]
    out += _results(document, plots)
    out += next_item_section(document, plots.get("crbm_training"))
    out += _tuning(document)
    if any(s.get("temperature") for s in document["models"].values()):
        out += _temperature(document, plots)
        out += _energies(document, plots)
    out += _timing(document)
    return "\n".join(out)


def _commit(env: dict) -> str:
    return (env.get("git_commit") or "unknown")[:10] + (" (uncommitted changes)" if env.get("git_dirty") else "")


def _header(document: dict) -> list[str]:
    cfg, env, protocol = document["config"], document["environment"], document["protocol"]
    total = document["timing"]["total_seconds"]
    return [f"Generated {env['generated']} from git {_commit(env)} by "
            f"`{cfg.get('command') or 'recsys_ebm.experiments.report.run_report'}`. Total time "
            f"{total / 60:.1f} min with {cfg['threads']} thread(s) per process on {env['cpu_count']} cores "
            f"(load average {_fmt(env.get('load_average_at_start'), 1)} at start). Every number is also in "
            f"[`{protocol['name']}.json`]({protocol['name']}.json)."]


def _protocol(document: dict) -> list[str]:
    ds, protocol, cfg = document["dataset"], document["protocol"], document["config"]
    models = document["models"]
    return [
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
        "are fitted once (std 0)."]


def _results(document: dict, plots: dict[str, str]) -> list[str]:
    models, ks = document["models"], document["config"]["ks"]
    out = ["## Results", "", "Test metrics, mean ± std over seeds; beyond-accuracy columns on the top-10 lists "
           "(novelty in bits; diversity = mean pairwise cosine distance of genre vectors).", ""]
    headline = _headline(document)
    out.append("| model | " + " | ".join(label for label, _ in headline) + " |")
    out.append("|---|" + "---|" * len(headline))
    for name, section in models.items():
        out.append(f"| `{name}` | " + " | ".join(_pm(section, key) for _, key in headline) + " |")
    standard = any(key.startswith(("recall_allrel", "map_allrel")) for _, key in headline)
    out += ["", _definitions(standard), "", f"![metrics vs k]({plots['metrics_vs_k']})", "",
            "<details><summary>Every metric at every cut-off</summary>", ""]
    out.append("| model | metric | " + " | ".join(f"@{k}" for k in ks) + " |")
    out.append("|---|---|" + "---|" * len(ks))
    for name, section in models.items():
        for metric in PER_K:
            if f"{metric}@{ks[0]}" in section["mean"]:
                out.append(f"| `{name}` | {metric} | "
                           + " | ".join(_pm(section, f"{metric}@{k}") for k in ks) + " |")
    return [*out, "", _definitions(standard), "", "</details>", ""]


def _tuning(document: dict) -> list[str]:
    models, cfg = document["models"], document["config"]
    out = ["## Tuning", "", "| model | grid points | chosen options | validation NDCG@10 | "
           "validation Recall@20 | refit epochs |", "|---|---|---|---|---|---|"]
    for name, section in models.items():
        best = max(section["grid"], key=lambda g: g["val_ndcg@10"])
        options = ", ".join(f"{k}={v}" for k, v in section["chosen"].items() if k != "seed") or "–"
        out.append(f"| `{name}` | {len(section['grid'])} | {options} | {best['val_ndcg@10']:.4f} | "
                   f"{best['val_recall@20']:.4f} | {section['refit_epochs'] or '–'} |")
    out += ["", "Validation Recall@20 divides by min(20, R), R = the user's validation items."]
    undeclared = [f"`{m}`" for m, s in models.items() if not s.get("grid_declared")]
    if undeclared and cfg.get("use_grids"):
        out += ["", f"No grid is declared for {', '.join(undeclared)}: they run with their tuned defaults "
                "(`pipelines/<model>.toml`, chosen on an ML-100K validation split), epoch-trained models "
                "with early stopping on this data's validation split."]
    return [*out, ""]


def _temperature(document: dict, plots: dict[str, str]) -> list[str]:
    models, seed = document["models"], document["config"]["seeds"][0]
    chains = any((s.get("chosen") or {}).get("visible") == "joint" for s in models.values()
                 if s.get("temperature"))
    out = ["## Temperature trade-off", "",
           f"Top-{TRADEOFF_K} lists drawn by `recommend(temperature=T, rng={seed})`: k distinct "
           "unseen items from softmax(score / T) (T = 0 is the exact ranking), model seed "
           f"{seed}." + (" The joint CRBM draws from a sampler of its own instead: its lists are "
                         "the first k items its block Gibbs chains at T activate "
                         "(`recsys_ebm/models/crbm/gibbs.py`)." if chains else ""), ""]
    for name in (m for m, s in models.items() if s.get("temperature")):
        out += [f"`{name}`:", "", "| T | NDCG@10 | Recall@10 | Coverage@10 | Novelty@10 | Diversity@10 "
                "| Personalization@10 | Gini@10 |", "|---|---|---|---|---|---|---|---|"]
        for row in models[name]["temperature"]:
            out.append(f"| {row['temperature']:g} | " + " | ".join(
                _fmt(row.get(f"{m}@{TRADEOFF_K}")) for m in
                ("ndcg", "recall", "coverage", "novelty", "diversity", "personalization", "gini")) + " |")
        out += ["", f"Recall@{TRADEOFF_K} divides by min({TRADEOFF_K}, R), R = the user's test items.", ""]
    return [*out, f"![temperature trade-off]({plots['temperature']})", ""]


def _energies(document: dict, plots: dict[str, str]) -> list[str]:
    out = ["## Energies of held-out positives vs random unseen items", "",
           "E = −score of every test (user, item) pair against one random item per pair that the user "
           "has neither in train nor in test. AUC = P(E_positive < E_random).", "",
           "| model | mean E, positives | mean E, random unseen | AUC |", "|---|---|---|---|"]
    for name, section in document["models"].items():
        if not section.get("temperature"):
            continue
        e = section["energies"]
        out.append(f"| `{name}` | {e['positives']['mean']:.4f} ± {e['positives']['std']:.4f} | "
                   f"{e['random_unseen']['mean']:.4f} ± {e['random_unseen']['std']:.4f} | {e['auc']:.4f} |")
    return [*out, "", f"![energy histograms]({plots['energies']})", ""]


def _timing(document: dict) -> list[str]:
    out = ["## Timing", "", "| model | tuning (s) | refit + test, all seeds (s) | total (s) |", "|---|---|---|---|"]
    for name, section in document["models"].items():
        t = section["timing"]
        out.append(f"| `{name}` | {t['tune_seconds']:.1f} | {t['refit_test_seconds']:.1f} | "
                   f"{t['total_seconds']:.1f} |")
    return [*out, f"| total | | | {document['timing']['total_seconds']:.1f} |", ""]


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


# ---------------------------------------------------------------------------------- rating page
def render_rating_markdown(document: dict, plot: str) -> str:
    """The rating report page, from its JSON document only."""
    env, models, cfg = document["environment"], document["models"], document["config"]
    ref = document["reference"]
    out = [f"# {document['title']}", "",
           f"Generated {env['generated']} from git {_commit(env)} by "
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


# ---------------------------------------------------------------------------------- summary
def summary_frame(document: dict) -> pd.DataFrame:
    """Headline metrics as a DataFrame (models x 'metric' and 'metric_std' columns)."""
    if document["protocol"]["name"] == RATING_PROTOCOL:
        return pd.DataFrame.from_dict(
            {name: {k: r[k] for k in ("rmse", "rmse_std", "mae", "mae_std")}
             for name, r in document["models"].items()}, orient="index")
    rows = {}
    for name, section in document["models"].items():
        row = {}
        for _, key in _headline(document):
            row[key] = section["mean"].get(key)
            row[f"{key}_std"] = section["std"].get(key)
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")
