"""The energy-based detectors against the variational autoencoder, cell by cell: which family
detects an attack better (ROC AUC), whatever the answer."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys_ebm.anomaly.detectors import ENERGY_DETECTORS, VAE_DETECTORS

#: AUC differences within this margin are reported as ties (the AUC of 188 genuine test users
#: against a few dozen injected profiles moves by more than this between attack seeds)
TIE_MARGIN = 0.005
#: the like-for-like pair: the mean -log p(i | u) of a profile's items under the dot-product
#: EBM, and the negative ELBO per rated item under Mult-VAE; both see which items, not ratings
PAIR = ("dpebm", "multvae")


def ebm_vs_vae(table: pd.DataFrame, margin: float = TIE_MARGIN) -> pd.DataFrame:
    """One row per (setting, attack cell, attack seed): the best energy detector and the best
    VAE detector by ROC AUC, their difference and the ``winner`` ("EBM", "VAE" or "tie" when
    |difference| <= ``margin``), plus the AUCs of the like-for-like :data:`PAIR` and its winner.

    ``table`` is ``GridResult.table`` (one row per cell, seed, setting and detector); cells
    lacking either family are left out (an empty frame when none has both).
    """
    keys = ["setting", "attack", "attack_size", "filler_size", "seed"]
    auc = table.pivot_table(index=keys, columns="detector", values="auc", sort=False)
    energy = [d for d in ENERGY_DETECTORS if d in auc.columns]
    vae = [d for d in VAE_DETECTORS if d in auc.columns]
    if not (energy and vae):
        return pd.DataFrame()
    out = auc.reset_index()[keys].copy()
    out["best_ebm"] = auc[energy].idxmax(axis=1).to_numpy()
    out["ebm_auc"] = auc[energy].max(axis=1).to_numpy()
    out["best_vae"] = auc[vae].idxmax(axis=1).to_numpy()
    out["vae_auc"] = auc[vae].max(axis=1).to_numpy()
    out["difference"] = out["ebm_auc"] - out["vae_auc"]
    out["winner"] = _winner(out["difference"].to_numpy(), margin)
    if set(PAIR) <= set(auc.columns):
        out[f"{PAIR[0]}_auc"] = auc[PAIR[0]].to_numpy()
        out[f"{PAIR[1]}_auc"] = auc[PAIR[1]].to_numpy()
        out[f"{PAIR[0]} vs {PAIR[1]}"] = _winner((auc[PAIR[0]] - auc[PAIR[1]]).to_numpy(), margin)
    return out


def _winner(difference: np.ndarray, margin: float) -> np.ndarray:
    return np.where(difference > margin, "EBM", np.where(difference < -margin, "VAE", "tie"))


def tally(comparison: pd.DataFrame, column: str = "winner") -> dict[str, dict[str, int]]:
    """Per setting, how many cells each of "EBM", "VAE" and "tie" won in ``column``."""
    counts: dict[str, dict[str, int]] = {}
    for setting, group in comparison.groupby("setting", sort=False):
        values = group[column].value_counts()
        counts[str(setting)] = {name: int(values.get(name, 0)) for name in ("EBM", "VAE", "tie")}
    return counts
