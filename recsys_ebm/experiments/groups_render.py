"""The group report as Markdown (counts, the two targets, every cell where the product of
experts loses, full tables) and the taste-interpolation plot, from the groups JSON alone."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from recsys_ebm.io import atomic_write_bytes

#: the classical aggregation strategies the product of experts is held against
CLASSICAL = ("average", "least-misery", "most-pleasure", "borda")
METRICS = (("ndcg@10_mean", "mean member NDCG@10", True), ("ndcg@10_min", "min member NDCG@10", True),
           ("zero_hit_share", "share of groups with a member without a hit", False))


def _cells(document: dict) -> dict[tuple, dict[str, dict]]:
    """(model, type, size) -> strategy -> row."""
    cells: dict[tuple, dict[str, dict]] = {}
    for row in document["results"]:
        cells.setdefault((row["model"], row["group_type"], row["size"]), {})[row["strategy"]] = row
    return cells


def _ci(row: dict, metric: str) -> str:
    ci = row.get(f"{metric}_vs_poe")
    if ci is None or ci.get("low") is None:
        return "–"
    return f"{ci['diff']:+.4f} [{ci['low']:+.4f}, {ci['high']:+.4f}]"


def target_random(document: dict) -> list[str]:
    """PoE against the best classical strategy on mean NDCG@10, random groups."""
    out = ["| model | size | PoE | best classical | its mean | Δ best − PoE [95% CI] | PoE matches? |",
           "|---|---|---|---|---|---|---|"]
    for (model, group_type, size), rows in _cells(document).items():
        if group_type != "random" or rows["poe"]["n_groups"] == 0:
            continue
        best = max((s for s in CLASSICAL if s in rows), key=lambda s: rows[s]["ndcg@10_mean"])
        ci = rows[best]["ndcg@10_mean_vs_poe"]
        ok = ci["low"] <= 0 if best != "poe" else True
        verdict = "yes" if ok else "**no: PoE loses**"
        out.append(f"| `{model}` | {size} | {rows['poe']['ndcg@10_mean']:.4f} | {best} | "
                   f"{rows[best]['ndcg@10_mean']:.4f} | {_ci(rows[best], 'ndcg@10_mean')} | {verdict} |")
    return out


def target_divergent(document: dict) -> list[str]:
    """PoE against the average of probabilities on min NDCG@10, divergent groups."""
    out = ["| model | size | n groups | PoE min | average min | Δ average − PoE [95% CI] | PoE beats average? |",
           "|---|---|---|---|---|---|---|"]
    for (model, group_type, size), rows in _cells(document).items():
        if group_type != "divergent" or "average" not in rows:
            continue
        if rows["poe"]["n_groups"] == 0:
            out.append(f"| `{model}` | {size} | 0 | – | – | – | no groups found |")
            continue
        ci = rows["average"]["ndcg@10_min_vs_poe"]
        if ci["high"] < 0:
            verdict = "yes (CI excludes 0)"
        elif ci["diff"] < 0:
            verdict = "higher, within the CI"
        elif ci["low"] > 0:
            verdict = "**no: PoE loses (CI excludes 0)**"
        else:
            verdict = "**no**: a tie" if ci["diff"] == 0 else "**no** (lower, within the CI)"
        out.append(f"| `{model}` | {size} | {rows['poe']['n_groups']} | {rows['poe']['ndcg@10_min']:.4f} | "
                   f"{rows['average']['ndcg@10_min']:.4f} | {_ci(rows['average'], 'ndcg@10_min')} | {verdict} |")
    return out


def summary(document: dict) -> list[str]:
    """Per model, in how many cells each target holds."""
    out = ["| model | target 1: PoE matches the best classical strategy (random groups) | "
           "target 2: PoE beats average on min NDCG@10 (divergent groups, CI excludes 0) | "
           "PoE min NDCG@10 ≥ average's (point estimate) |", "|---|---|---|---|"]
    tallies: dict[str, list[int]] = {}
    for (model, group_type, _), rows in _cells(document).items():
        tally = tallies.setdefault(model, [0, 0, 0, 0, 0])
        if rows["poe"]["n_groups"] == 0:
            continue
        if group_type == "random":
            best = max((s for s in CLASSICAL if s in rows), key=lambda s: rows[s]["ndcg@10_mean"])
            tally[0] += rows[best]["ndcg@10_mean_vs_poe"]["low"] <= 0
            tally[1] += 1
        elif group_type == "divergent" and "average" in rows:
            ci = rows["average"]["ndcg@10_min_vs_poe"]
            tally[2] += ci["high"] < 0
            tally[3] += ci["diff"] <= 0
            tally[4] += 1
    for model, (met, n_random, beats, higher, n_divergent) in tallies.items():
        out.append(f"| `{model}` | {met} of {n_random} sizes | {beats} of {n_divergent} sizes | "
                   f"{higher} of {n_divergent} sizes |")
    return out


def losses(document: dict) -> list[str]:
    """Every (model, type, size, strategy, metric) where a strategy beats PoE outside the CI."""
    out = []
    for (model, group_type, size), rows in _cells(document).items():
        for strategy, row in rows.items():
            if strategy == "poe" or row["n_groups"] == 0:
                continue
            for metric, label, higher_better in METRICS:
                ci = row[f"{metric}_vs_poe"]
                if ci is None or ci["low"] is None:
                    continue
                if (ci["low"] > 0) if higher_better else (ci["high"] < 0):
                    out.append(f"- `{model}`, {group_type}, size {size}: **{strategy}** beats PoE on "
                               f"{label} ({row[metric]:.4f} vs {rows['poe'][metric]:.4f}, Δ {_ci(row, metric)})")
    return out or ["- none: no strategy beats PoE outside its paired 95% CI in any cell"]


def counts(document: dict) -> list[str]:
    sizes = document["config"]["sizes"]
    seen: dict[str, dict[int, int]] = {}
    for row in document["results"]:
        by_size = seen.setdefault(row["group_type"], {})
        by_size[row["size"]] = max(by_size.get(row["size"], 0), row["n_groups"])
    out = ["| type | " + " | ".join(f"size {s}" for s in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for group_type, by_size in seen.items():
        out.append(f"| {group_type} | " + " | ".join(str(by_size.get(s, 0)) for s in sizes) + " |")
    return out


def full_table(document: dict, model: str) -> list[str]:
    out = [f"### `{model}`", "", "Δ = strategy − PoE, paired over the same groups, with its 95% t-interval.", "",
           "| type | size | strategy | mean NDCG@10 | Δ mean | min NDCG@10 | Δ min | zero-hit share | Δ zero-hit | n |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for (name, group_type, size), rows in _cells(document).items():
        if name != model:
            continue
        for strategy, row in rows.items():
            if row["n_groups"] == 0:
                out.append(f"| {group_type} | {size} | {strategy} | {row.get('note', '–')} | – | – | – | – | – | 0 |")
                continue
            out.append(f"| {group_type} | {size} | {strategy} | {row['ndcg@10_mean']:.4f} | "
                       f"{_ci(row, 'ndcg@10_mean')} | {row['ndcg@10_min']:.4f} | {_ci(row, 'ndcg@10_min')} | "
                       f"{row['zero_hit_share']:.3f} | {_ci(row, 'zero_hit_share')} | {row['n_groups']} |")
    return [*out, ""]


def plot_interpolation(document: dict) -> bytes | None:
    """Overlap of the mix's top-10 with each user's own top-10 as λ goes 0 -> 1."""
    paths = document.get("interpolation", {})
    if not any(paths.values()):
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    lambdas = document["config"]["lambdas"]
    fig, axes = plt.subplots(1, len(paths), figsize=(6 * len(paths), 4), squeeze=False)
    for axis, (model, pairs) in zip(axes[0], paths.items(), strict=True):
        for n, pair in enumerate(pairs):
            u, v = pair["users"]
            line, = axis.plot(lambdas, pair["overlap_u"], marker="o", label=f"pair {n + 1}: with u{u}'s list")
            axis.plot(lambdas, pair["overlap_v"], marker="s", linestyle="--", color=line.get_color(),
                      label=f"pair {n + 1}: with u{v}'s list")
        axis.set(xlabel="λ  (E = (1 − λ) E_u + λ E_v)", ylabel="overlap@10", ylim=(-0.02, 1.02),
                 title=f"{model}: taste interpolation, divergent pairs")
        axis.legend(fontsize=7)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=72)
    plt.close(fig)
    return buffer.getvalue()


def crbm_section(document: dict, plot_name: str | None) -> list[str]:
    """The user-oriented CRBM's energy path against its data path."""
    crbm = document.get("crbm_paths")
    if not crbm or not crbm.get("pairs"):
        return []
    lambdas = crbm["pairs"][0]["lambdas"]
    middle = [i for i, lam in enumerate(lambdas) if 0 < lam < 1]
    out = ["### The CRBM: interpolating energies is not interpolating data", "",
           "A CRBM's free energy F(V) is not linear in the visible state V, so mixing two users' "
           "energies (the *energy path*: F_E = (1 − λ) F(V_u) + λ F(V_v), item predictions the product "
           "of the two users' predictive distributions) and mixing their data (the *data path*: the "
           "soft visible state V_λ = (1 − λ) V_u + λ V_v, F(V_λ), predictions given V_λ) are two "
           "different paths. F is concave in V (it is linear minus a sum of softplus of affine "
           "functions), so the data path's free energy lies above the energy path's between the ends. "
           f"A CRBM with its tuned options except {crbm['options']} (fitted on train, no early "
           "stopping: the paths show a property of the energy, not accuracy), same split and pairs:", "",
           "| pair | max F(V_λ) − F_E(λ) over 0 < λ < 1 | min overlap@10 of the two paths' lists | "
           "largest gap in log p over items and levels |", "|---|---|---|---|"]
    for pair in crbm["pairs"]:
        gap = max(pair["free_energy_data"][i] - pair["free_energy_mix"][i] for i in middle)
        overlap = min(pair["overlap_paths"][i] for i in middle)
        out.append(f"| u{pair['users'][0]}, u{pair['users'][1]} | {gap:.3f} | {overlap:.1f} | "
                   f"{max(pair['max_log_p_gap']):.3f} |")
    if plot_name:
        out += ["", f"![CRBM paths]({plot_name})"]
    return [*out, ""]


def plot_crbm_paths(document: dict) -> bytes | None:
    """Free energy along both paths, and the overlap of the two paths' lists, per pair."""
    crbm = document.get("crbm_paths")
    if not crbm or not crbm.get("pairs"):
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for n, pair in enumerate(crbm["pairs"]):
        line, = left.plot(pair["lambdas"], pair["free_energy_data"], marker="o", label=f"pair {n + 1}: data path F(V_λ)")
        left.plot(pair["lambdas"], pair["free_energy_mix"], linestyle="--", color=line.get_color(),
                  label=f"pair {n + 1}: energy path")
        right.plot(pair["lambdas"], pair["overlap_paths"], marker="o", color=line.get_color(), label=f"pair {n + 1}")
    left.set(xlabel="λ", ylabel="free energy", title="CRBM: F along the two paths")
    right.set(xlabel="λ", ylabel="overlap@10", ylim=(-0.02, 1.02), title="energy-path list vs data-path list")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=72)
    plt.close(fig)
    return buffer.getvalue()


def _load(value) -> str:
    return "unknown" if value is None else f"{value:.1f}"


def render(document: dict, plot_name: str | None, crbm_plot: str | None = None) -> str:
    cfg, env = document["config"], document["environment"]
    models = list(dict.fromkeys(row["model"] for row in document["results"]))
    lines = [
        f"# Group recommendations and taste interpolation on {document['dataset']}", "",
        f"Generated {env['generated']} from git {str(env['git_commit'])[:10]}"
        f"{' (uncommitted changes)' if env['git_dirty'] else ''} by `{cfg.get('command') or 'recsys-ebm groups'}`. "
        f"Total time {document['timing']['total_seconds'] / 60:.1f} min (load average "
        f"{_load(env['load_average_at_start'])} at start on {env['cpu_count']} cores, 1 thread). Every number is also in the JSON beside this file.", "",
        "## Protocol", "",
        "- Data: the random split (per user, floor(20%) of the interactions, at least 1, to test; seed 0). "
        "Each model runs with its tuned defaults (`pipelines/<model>.toml`), early-stopped on the "
        "validation split carved from train (seed 1), then refit on train.",
        f"- Groups: {cfg['n_groups']} distinct groups per type and size, drawn (seed {cfg['seed']}) from the "
        f"{cfg['n_candidates']} users with test items. Correlation: Pearson of two users' training ratings on "
        f"the items both rated (defined with at least {cfg['min_common']} such items); a group's similarity is "
        f"the mean over its pairs. *similar*: mean ≥ {cfg['similar_min']} (Baltrunas et al. 2010); "
        f"*divergent*: mean ≤ {cfg['divergent_max']}; every pair must be defined. Similar and divergent "
        "groups grow one member at a time, each new member drawn uniformly among the users whose mean "
        "correlation with the members so far is on the right side of the threshold (which keeps the "
        "mean over all pairs there).",
        "- Each group gets one top-10 list; items any member has in train are left out (the group's "
        "seen set is the union of the members'). Each member judges it against their own test items "
        "(NDCG@10). Per group: mean over members (satisfaction), minimum (fairness), and whether some "
        "member has no hit.",
        "- Strategies (`recsys_ebm/ranking/compose.py`): **poe** E_g = Σ_u E(u, i) / n (product of "
        "experts); **average** of the members' probabilities p_u = softmax(−E) (mixture of experts); "
        "**least-misery** / **most-pleasure** the largest / smallest member energy after putting each "
        "member in the gauge −log p_u; **borda** count; **pseudo-user**: the union of the members' "
        "training items folded in as one new user. For EASE and ALS the score plays the role of −E.",
        "", "## Groups found", "", *counts(document), "",
        "## Summary", "", *summary(document), "",
        "## Target 1: random groups, PoE vs the best classical strategy (mean member NDCG@10)", "",
        "PoE matches when the paired 95% CI of (best classical − PoE) reaches 0 or below.", "",
        *target_random(document), "",
        "## Target 2: divergent groups, PoE vs average of probabilities (min member NDCG@10)", "",
        *target_divergent(document), "",
        "## Every cell where a strategy beats PoE (paired 95% CI excludes 0)", "",
        "Lower is better for the zero-hit share; higher for the NDCGs.", "", *losses(document), "",
    ]
    lines += ["## Taste interpolation", "",
              "For divergent pairs (u, v) the list of E_λ = (1 − λ) E_u + λ E_v, both users' training "
              "items left out all along, against u's own list (λ = 0) and v's (λ = 1)."]
    for model, pairs in document.get("interpolation", {}).items():
        gaps = [p["max_energy_gap"] for p in pairs if "max_energy_gap" in p]
        if gaps:
            lines.append(f"For `{model}` the mixed energies equal the energies of the interpolated user "
                         f"vector (1 − λ) p_u + λ p_v up to float32 rounding: largest gap {max(gaps):.2e} "
                         "over every item, pair and λ.")
    if plot_name:
        lines += ["", f"![taste interpolation]({plot_name})"]
    lines += ["", *crbm_section(document, crbm_plot)]
    lines += ["## All cells", ""]
    for model in models:
        lines += full_table(document, model)
    lines += ["## Timing", "", "| model | fit (s) | groups (s) |", "|---|---|---|"]
    lines += [f"| `{m}` | {t['fit_seconds']:.1f} | {t['groups_seconds']:.1f} |"
              for m, t in document["timing"]["models"].items()]
    return "\n".join(lines) + "\n"


def write_markdown(document: dict[str, Any], path: Path) -> list[Path]:
    """``path`` (Markdown) and ``<stem>-interpolation.png`` (and ``<stem>-crbm-paths.png``) beside it."""
    written, names = [], []
    for suffix, plot in (("interpolation", plot_interpolation), ("crbm-paths", plot_crbm_paths)):
        png, plot_path = plot(document), path.with_name(f"{path.stem}-{suffix}.png")
        names.append(None if png is None else plot_path.name)
        if png is not None:
            atomic_write_bytes(plot_path, png)
            written.append(plot_path)
    atomic_write_bytes(path, render(document, *names).encode())
    return [path, *written]
