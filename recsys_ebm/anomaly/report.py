"""Rendering of detection-grid results: the Markdown report (setup, headline comparison, summary,
per-cell tables) and the score-histogram plot."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_ebm.anomaly.attacks import ATTACK_KINDS
from recsys_ebm.anomaly.detectors import CLASSIC_DETECTORS, DETECTORS, ENERGY_DETECTORS
from recsys_ebm.anomaly.protocol import SETTINGS, TARGET_AUC, GridResult, headline_comparison
from recsys_ebm.anomaly.scoring import roc_auc
from recsys_ebm.anomaly.versus import PAIR, TIE_MARGIN, ebm_vs_vae, tally

logger = logging.getLogger(__name__)

#: (setting, detector) pairs whose score histograms the report plots.
PLOTTED = (("clean", "crbm_raw"), ("clean", "crbm_per_rating"), ("clean", "dpebm"),
           ("clean", "multvae"), ("contaminated", "crbm_raw"), ("contaminated", "crbm"),
           ("contaminated", "dpebm"), ("contaminated", "multvae"))


def _fmt(value, digits: int = 3) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "**no**"
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub markdown table of ``frame`` (index dropped)."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(_fmt(v, digits) for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _pivot(table: pd.DataFrame, setting: str, metric: str, seed: int) -> pd.DataFrame:
    sub = table[(table["setting"] == setting) & (table["seed"] == seed)]
    pivot = sub.pivot_table(index=["attack", "attack_size", "filler_size"], columns="detector",
                            values=metric, sort=False)
    order = [d for d in DETECTORS if d in pivot.columns]
    pivot = pivot[order].reset_index()
    pivot["attack_size"] = (100 * pivot["attack_size"]).round(0).astype(int).astype(str) + "%"
    pivot["filler_size"] = (100 * pivot["filler_size"]).round(0).astype(int).astype(str) + "%"
    return pivot


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"



# ----------------------------------------------------------------------------- summary


def _summary_table(grid: pd.DataFrame, settings: list[str], detectors: list[str],
                   auc: pd.DataFrame) -> pd.DataFrame:
    """Mean AUC, detection rate and filtered shift per detector and setting."""
    dr = grid.pivot_table(index="detector", columns="setting", values="detection_rate")
    shift = grid.pivot_table(index="detector", columns="setting", values="shift_filtered")
    frame = pd.DataFrame({"detector": detectors})
    for setting in settings:
        frame[f"AUC {setting}"] = auc[setting].to_numpy()
        frame[f"detection rate {setting}"] = dr[setting].reindex(detectors).to_numpy()
        frame[f"shift after filtering {setting}"] = shift[setting].reindex(detectors).to_numpy()
    return frame


def _win_notes(grid: pd.DataFrame) -> list[str]:
    """Cells where the best energy detector matches the better classic baseline, and where not."""
    cells = grid.pivot_table(index=["setting", "attack", "attack_size", "filler_size"],
                             columns="detector", values="auc")
    energy = [d for d in ENERGY_DETECTORS if d in cells.columns]
    classic = [d for d in CLASSIC_DETECTORS if d in cells.columns]
    if not (energy and classic):
        return []
    wins = cells[energy].max(axis=1) >= cells[classic].max(axis=1)
    counts = wins.groupby(level="setting").agg(["sum", "count"])
    notes = ["Cells where the best energy detector's AUC is at least the better classic "
             "baseline's: " + ", ".join(f"{s} {int(r['sum'])}/{int(r['count'])}"
                                        for s, r in counts.iterrows()) + "."]
    losses = cells[~wins]
    if len(losses):
        notes.append("Cells where it loses: " + "; ".join(
            f"{s} {a} {100 * z:g}%/{100 * f:g}% ({cells.loc[(s, a, z, f), energy].max():.4f} vs "
            f"{cells.loc[(s, a, z, f), classic].max():.4f})" for s, a, z, f in losses.index) + ".")
    return notes


def _crbm_notes(grid: pd.DataFrame, settings: list[str], detectors: list[str],
                auc: pd.DataFrame) -> list[str]:
    """What the CRBM scores do in the contaminated setting and on the clean average attack."""
    notes = []
    if "contaminated" in settings and {"crbm", "crbm_per_rating", "crbm_raw"} <= set(detectors):
        notes.append(
            "Contaminated setting: the one-sided CRBM scores average AUC "
            f"{auc.loc['crbm_per_rating', 'contaminated']:.3f} (per rating) and "
            f"{auc.loc['crbm_raw', 'contaminated']:.3f} (raw); below 0.5 means the model, trained "
            "on the attack, gives the injected profiles *lower* free energy than genuine ones. "
            f"The two-sided `crbm` averages {auc.loc['crbm', 'contaminated']:.3f}.")
    if "clean" in settings and {"crbm_per_rating", "dpebm"} <= set(detectors):
        avg = grid[(grid["setting"] == "clean") & (grid["attack"] == "average")]
        if len(avg):
            by = avg.groupby("detector")["auc"].mean()
            best_crbm = max((d for d in by.index if d.startswith("crbm")), key=lambda d: by[d])
            notes.append(
                f"Clean setting, average attack: the best CRBM score ({best_crbm}) averages AUC "
                f"{by[best_crbm]:.3f}, dpebm {by['dpebm']:.3f}. Average-attack ratings sit at "
                "each item's mean, the most typical values there are, and the conditional RBM "
                "models the ratings *given* which items were rated, so the giveaway (filler items "
                "drawn uniformly from the catalog, mostly obscure) is invisible to its free "
                "energy; the dot-product EBM models exactly which items a user picks.")
    return notes


def _summary_lines(table: pd.DataFrame, seed: int) -> list[str]:
    """Means over the grid's cells and the facts the notes below them rest on."""
    grid = table[table["seed"] == seed]
    settings = [s for s in SETTINGS if (grid["setting"] == s).any()]
    detectors = [d for d in DETECTORS if (grid["detector"] == d).any()]
    n_cells = grid.groupby(["attack", "attack_size", "filler_size"]).ngroups
    auc = grid.pivot_table(index="detector", columns="setting", values="auc").reindex(detectors)
    shift = grid.groupby(["attack", "attack_size", "filler_size"])["shift_attacked"].first().mean()
    lines = [f"## Summary: means over the {n_cells} attack cells (attack seed {seed})", "",
             markdown_table(_summary_table(grid, settings, detectors, auc)), "",
             f"Mean prediction shift of the target with the attack and no defence: "
             f"{shift:+.3f} "
             "stars (per attack: " + ", ".join(
                 f"{k} {v:+.3f}" for k, v in
                 grid.groupby("attack")["shift_attacked"].mean().items()) + ").", ""]
    notes = _win_notes(grid) + _crbm_notes(grid, settings, detectors, auc)
    if notes:
        lines += ["Notes:", "", *[f"- {n}" for n in notes], ""]
    return lines


# ----------------------------------------------------------------------------- plot


def plot_histograms(result: GridResult, path) -> None:
    """Score histograms, genuine test users vs injected profiles, of the 5% / 5% cells."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kinds = [k for k in ATTACK_KINDS if any(key[1] == k for key in result.histograms)]
    panels = [p for p in PLOTTED if any(key[0] == p[0] and key[2] == p[1] for key in result.histograms)]
    if not kinds or not panels:
        raise ValueError("no 5% / 5% cell to plot")
    figure = Figure(figsize=(3.0 * len(panels), 2.3 * len(kinds)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(kinds), len(panels), squeeze=False)
    for i, kind in enumerate(kinds):
        for j, (setting, detector) in enumerate(panels):
            key = (setting, kind, detector)
            if key in result.histograms:
                _histogram(axes[i][j], key, *result.histograms[key])
            else:
                axes[i][j].set_axis_off()
    axes[0][0].legend(fontsize=7)
    figure.suptitle("Anomaly scores of genuine test users vs injected profiles (5% attack, "
                    "5% filler; dashed: threshold at the target FPR)", fontsize=9)
    figure.savefig(path, dpi=110)


def _histogram(ax, key: tuple[str, str, str], scores: np.ndarray, labels: np.ndarray,
               threshold: float) -> None:
    """One panel: genuine vs injected score densities and the threshold."""
    setting, kind, detector = key
    bins = np.histogram_bin_edges(scores[np.isfinite(scores)], bins=40)
    ax.hist(scores[~labels], bins=bins, density=True, alpha=0.6, label="genuine")
    ax.hist(scores[labels], bins=bins, density=True, alpha=0.6, label="injected")
    if np.isfinite(threshold):
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1)
    ax.set_title(f"{kind}: {setting} {detector}\nAUC {roc_auc(scores, labels):.3f}", fontsize=8)
    ax.tick_params(labelsize=6)


# ----------------------------------------------------------------------------- report


def _threshold_line(config, info: dict) -> str:
    """The setup bullet on the conformal threshold and what it guarantees."""
    n_cal = info["n_calibration"]
    return (
        f"- Threshold: conformal (1 - {config.fpr:g}) quantile of the calibration users' scores "
        "(injected users are never in the calibration set). Reported at that threshold: achieved "
        "FPR and detection rate on the test users, precision, F1; ROC AUC is threshold-free. "
        f"With {n_cal} calibration users the threshold is their "
        f"{_ordinal(math.ceil((n_cal + 1) * (1 - config.fpr) - 1e-9))} smallest "
        "score and a new genuine user exceeds it with probability "
        f"{math.floor(config.fpr * (n_cal + 1)) / (n_cal + 1):.4f}"
        " (conformal guarantee: at most the target). In the clean setting the genuine test users "
        "and their scores are the same in every cell, so its achieved FPR is one draw per "
        f"detector on {info['n_test']} users (binomial sd about "
        f"{math.sqrt(config.fpr * (1 - config.fpr) / max(info['n_test'], 1)):.3f}), repeated "
        "down the column.")


def _setup_lines(result: GridResult, dataset: str, command: str) -> list[str]:
    """Title, provenance and the setup section."""
    config, info = result.config, result.info
    return [
        f"# Shilling-attack detection on {dataset}: energy vs classic detectors", "",
        f"Generated by `{command}` (`recsys_ebm.anomaly.protocol.run_grid`) in "
        f"{info['seconds'] / 60:.1f} min; every number below comes from that run.", "",
        "## Setup", "",
        f"- Data: {info['n_users']} genuine users, {info['n_items']} items, {info['n_ratings']} "
        f"ratings. Genuine users split once (seed {config.split_seed}): {info['n_train']} train "
        f"(clean-setting models only), {info['n_calibration']} calibration, {info['n_test']} test.",
        f"- Attacks (`recsys_ebm.anomaly.attacks`, {info['intent']} intent, one target item chosen by the "
        "documented rule, attack seed "
        f"{info['seed']}): random, average, bandwagon (5 most-rated items at the maximum), segment (5 "
        "items nearest the target at the maximum, filler at the minimum); attack size = fake "
        "profiles as a share of genuine users, filler size = share of the catalog rated as filler.",
        "- Settings. **clean**: models fitted on the genuine training users only; calibration, "
        "test and injected profiles arrive later and are scored by fold-in. **contaminated**: "
        "models fitted on all genuine users plus the attack, everyone scored in-sample; test "
        "users are all genuine users outside the calibration set plus the injected ones.",
        _threshold_line(config, info),
        f"- Models, short training (one per cell in the contaminated setting): CRBM user-oriented, "
        f"F={config.crbm.n_hidden} hiddens, {config.crbm.epochs} epochs CD, conditional="
        f"{config.crbm.conditional}; dot-product EBM dim {config.dpebm.dim}, {config.dpebm.epochs} "
        f"epochs exact softmax, fold-in {config.dpebm.fold_in_epochs} steps; Mult-VAE "
        f"{config.multvae.hidden} -> {config.multvae.latent}, {config.multvae.epochs} epochs, "
        f"beta annealed to {config.multvae.beta_max:g} over {config.multvae.total_anneal_steps} "
        f"updates, input dropout {config.multvae.dropout:g}.",
        "- Detectors: `crbm` = |z|, z = the free energy per rating F / n_u z-scored against the "
        "genuine calibration profiles of similar length (local-linear kernel fit in log n_u, "
        "each calibration user left out of its own z; two-sided typicality test, the default); "
        "`crbm_length_z` = z, one-sided; `crbm_per_rating` = F / n_u; `crbm_raw` = F; "
        "`dpebm` = mean -log p(i|u) of "
        "the profile's items; `multvae` = the negative ELBO of the profile's items under "
        "Mult-VAE (beta = 1, 8 seeded samples of z) per rated item, `multvae_raw` = the "
        "negative ELBO, `multvae_z` = its two-sided length z like `crbm`; `rdma` = RDMA (Chirita et al. 2005); `pca` = PCA-VarSelect "
        "(Mehta & Nejdl 2009, 3 components).",
        f"- Prediction shift: mean change of the target's predicted rating by a user-kNN "
        f"recommender (k={config.knn_k}, mean-centred cosine) for genuine users who did not rate "
        "it, relative to the genuine data alone: `shift_attacked` with the attack, "
        "`shift_filtered` after removing the profiles the detector flagged.", "",
    ]


def _headline_lines(result: GridResult, target_auc: float) -> list[str]:
    """The headline comparison section (empty without the headline cells)."""
    headline = headline_comparison(result.table, target_auc)
    if not len(headline):
        return []
    return ["## Energy vs classic detectors at 5% attack, 5% filler", "",
            f"Best energy detector per setting (highest mean AUC over the three attacks; "
            f"attack seeds {result.info['headline_seeds']}, mean ± std) against the better of "
            f"RDMA and PCA-VarSelect; pass = AUC >= the target {target_auc} and >= the classic "
            "one.", "",
            markdown_table(headline), ""]


def _versus_lines(result: GridResult) -> list[str]:
    """The energy-based detectors against the VAE, every cell (empty without both)."""
    comparison = ebm_vs_vae(result.table)
    if not len(comparison):
        return []
    counts = tally(comparison)
    lines = ["## Energy-based models vs the VAE, cell by cell", "",
             "Per cell (setting, attack, size, filler, attack seed): the best energy detector "
             "(the CRBM scores and dpebm) against the best Mult-VAE detector by ROC AUC; "
             f"`winner` is the family ahead by more than {TIE_MARGIN:g} AUC, else a tie. The "
             f"like-for-like pair `{PAIR[0]}` / `{PAIR[1]}` (both score which items a profile "
             "holds, per item) is compared the same way.", ""]
    for setting, count in counts.items():
        line = f"- {setting}: EBM better in {count['EBM']} cells, VAE in {count['VAE']}, tie in {count['tie']}"
        column = f"{PAIR[0]} vs {PAIR[1]}"
        if column in comparison.columns:
            pair = tally(comparison, column)[setting]
            line += (f"; {PAIR[0]} vs {PAIR[1]}: {PAIR[0]} better in {pair['EBM']}, "
                     f"{PAIR[1]} in {pair['VAE']}, tie in {pair['tie']}")
        lines.append(line + ".")
    shown = comparison.copy()
    for column in ("attack_size", "filler_size"):
        shown[column] = (100 * shown[column]).round(0).astype(int).astype(str) + "%"
    return [*lines, "", markdown_table(shown), ""]


def _setting_lines(result: GridResult) -> list[str]:
    """ROC AUC, detection rate and achieved FPR tables per setting."""
    config, table, seed = result.config, result.table, result.info["seed"]
    settings = [s for s in config.settings if (table["setting"] == s).any()]
    lines = []
    for setting in settings:
        lines += [f"## ROC AUC, {setting} setting (attack seed {seed})", "",
                  markdown_table(_pivot(table, setting, "auc", seed)), ""]
    for setting in settings:
        lines += [f"## Detection rate at {config.fpr:g} target FPR, {setting} setting", "",
                  markdown_table(_pivot(table, setting, "detection_rate", seed)), "",
                  f"Achieved FPR on the genuine test users, {setting} setting:", "",
                  markdown_table(_pivot(table, setting, "fpr", seed)), ""]
    return lines


def _interaction_lines(result: GridResult) -> list[str]:
    """The interaction-level section (empty without interaction-level results)."""
    if not len(result.interactions):
        return []
    return ["## Interaction-level scores (clean setting)", "",
            f"{100 * result.config.interaction_share:g}% of each test user's ratings (at least "
            "one) corrupted: `flip` moves a rating to the far end of the scale, `insert` adds an "
            "unrated item with a uniformly random rating. `crbm` = -log p(v_ui | the rest of "
            "the profile) (exact), `dpebm` = -log p(i | u) (sees the item, not the rating), "
            "`item_z` = |r_ui - mean_i| / std_i. Threshold calibrated on the calibration "
            "users' uncorrupted ratings.", "",
            markdown_table(result.interactions[["corruption", "detector", "n_ratings",
                                                "n_corrupted", "auc", "fpr",
                                                "detection_rate", "precision", "f1"]]), ""]


def _cell_lines(table: pd.DataFrame) -> list[str]:
    """Every cell, one row per attack cell, seed, setting and detector."""
    full = table[["setting", "attack", "attack_size", "filler_size", "seed", "detector", "auc",
                  "fpr", "detection_rate", "precision", "f1", "shift_attacked",
                  "shift_filtered"]].copy()
    full["attack_size"] = (100 * full["attack_size"]).round(0).astype(int).astype(str) + "%"
    full["filler_size"] = (100 * full["filler_size"]).round(0).astype(int).astype(str) + "%"
    return ["## Every cell", "", "One row per attack cell, seed, setting and detector.", "",
            markdown_table(full), ""]


def write_report(result: GridResult, markdown_path, plot_path, *, dataset: str = "ml-100k",
                 command: str = "make anomaly", target_auc: float = TARGET_AUC) -> str:
    """Write the markdown report and the histogram plot; returns the markdown text."""
    markdown_path, plot_path = Path(markdown_path), Path(plot_path)
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    plot_histograms(result, plot_path)
    lines = [*_setup_lines(result, dataset, command), *_headline_lines(result, target_auc),
             *_versus_lines(result),
             *_summary_lines(result.table, result.info["seed"]), *_setting_lines(result),
             *_interaction_lines(result), f"![score histograms]({plot_path.name})", "",
             *_cell_lines(result.table)]
    text = "\n".join(lines)
    markdown_path.write_text(text)
    logger.info("report written to %s (plot %s)", markdown_path, plot_path)
    return text
