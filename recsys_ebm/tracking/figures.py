"""The figures logged with a training run: the training curve and a histogram of scores
(minus energies) of held-out items against the other unseen items. matplotlib, Agg backend.

Models are used only through ``model.recommend`` and ``model.history`` (duck typing), so this
package still imports no model code.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def training_curve(epochs: list) -> object | None:
    """One line per numeric metric of ``epochs`` (a list of per-epoch metric dicts) against the
    epoch number; None when there is nothing to plot."""
    names = sorted({name for metrics in epochs for name, value in dict(metrics).items()
                    if isinstance(value, (int, float, np.number)) and name != "epoch"})
    if not names:
        return None
    plt = _pyplot()
    columns = 1 if len(names) <= 3 else 2
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 2.2 * rows + 0.6),
                             squeeze=False)
    steps = np.arange(1, len(epochs) + 1)
    for ax, name in zip(axes.ravel(), names, strict=False):
        values = [float(dict(m).get(name, np.nan)) for m in epochs]
        ax.plot(steps, values, marker="o")
        ax.set_ylabel(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    fig.suptitle("training curve (per-epoch metrics)")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig


def held_out_scores(model, test: sp.csr_matrix, *, n_users: int = 100,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores of held-out (test) items and of the other unseen items, for up to ``n_users``
    users with test items, from one full ``model.recommend`` ranking of their unseen items."""
    test = sp.csr_matrix(test)
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    if len(users) > n_users:
        users = np.sort(np.random.default_rng(seed).choice(users, n_users, replace=False))
    if not len(users):
        return np.empty(0), np.empty(0)
    ids, scores = model.recommend(users, k=model.n_items)
    held_out, other = [], []
    for row, user in enumerate(users):
        valid = ids[row] >= 0
        positive = np.isin(ids[row], test[user].indices) & valid
        held_out.append(scores[row][positive])
        other.append(scores[row][valid & ~positive])
    return np.concatenate(held_out).astype(float), np.concatenate(other).astype(float)


def score_histogram(held_out: np.ndarray, other: np.ndarray, title: str) -> object:
    """Density histograms of held-out vs other unseen items' scores (score = minus energy)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    both = np.concatenate([held_out, other])
    finite = both[np.isfinite(both)]
    bins = np.linspace(finite.min(), finite.max(), 50) if finite.size else 10
    ax.hist(other[np.isfinite(other)], bins=bins, density=True, alpha=0.6,
            label=f"other unseen items (n={other.size})")
    ax.hist(held_out[np.isfinite(held_out)], bins=bins, density=True, alpha=0.6,
            label=f"held-out test items (n={held_out.size})")
    ax.set_xlabel("score = -energy (higher = recommended first)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig
