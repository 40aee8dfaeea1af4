"""``seqcrbm``: the conditional RBM of ``module.py`` as a next-item recommender.

Training maximises log p(next | history) at sampled positions of the training sequences
(``positions_per_epoch`` per epoch, every position of a row after its first):

- ``training="exact"``: the exact negative log-likelihood, F(v_data) + log sum_v exp(-F(v)),
  over the items the history has not had (``mask_history``);
- ``training="cd"``: contrastive divergence with ``cd_steps`` (k) rounds of block Gibbs
  sampling from the data item, the gradient of F(v_data) - F(v_k) (the CD-k update of the
  seed's CRBM, with the chain's visible unit restricted to the same support).

Scores are -F(v | history) (log p up to the row's normaliser). Early stopping on validation
NDCG@10 then a refit for the best epoch count, as for every epoch-trained model.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from recsys_ebm.config import Config, check
from recsys_ebm.data.sequences import Sequences
from recsys_ebm.models.baselines import check_ints, check_reals, check_seed
from recsys_ebm.models.seq_crbm.module import SeqCRBMNet, gap_buckets
from recsys_ebm.models.sequential import NetSequenceRecommender


@dataclasses.dataclass(frozen=True)
class SeqCRBMConfig(Config):
    """Hyperparameters of the sequence CRBM (defaults tuned on the ML-100K loo validation split)."""

    n_hidden: int = 32
    n_lags: int = 3
    rank: int = 32
    time_gaps: bool = False
    training: str = "exact"
    cd_steps: int = 1
    lr: float = 0.005
    l2: float = 0.0
    batch_size: int = 256
    positions_per_epoch: int = 8000
    epochs: int = 60
    patience: int = 6
    mask_history: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_ints(self, ("n_hidden", "n_lags", "rank", "cd_steps", "batch_size",
                          "positions_per_epoch", "epochs", "patience"))
        check_reals(self, ("lr", "l2"))
        for name in ("n_hidden", "n_lags", "cd_steps", "batch_size", "positions_per_epoch",
                     "epochs", "patience"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        check(self.rank >= 0, f"rank must be >= 0, got {self.rank}")
        check(self.lr > 0 and self.l2 >= 0, "lr must be > 0 and l2 >= 0")
        check(self.training in ("exact", "cd"), f"training must be 'exact' or 'cd', got {self.training!r}")
        for name in ("time_gaps", "mask_history"):
            check(isinstance(getattr(self, name), bool), f"{name} must be true or false")
        check_seed(self)


def contexts(sequences: Sequences, ends: np.ndarray, rows: np.ndarray, n_lags: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """Lag items (index + 1, 0 = none) and gap buckets of the events before global position
    ``ends[m]`` of row ``rows[m]``: two int64 arrays (M, n_lags), lag 1 first."""
    starts = sequences.indptr[rows]
    gaps = sequences.gaps
    lags = np.zeros((len(ends), n_lags), dtype=np.int64)
    lag_gaps = np.full((len(ends), n_lags), -1, dtype=np.int64)
    for lag in range(1, n_lags + 1):
        source = ends - lag
        ok = source >= starts
        lags[ok, lag - 1] = sequences.items[source[ok]] + 1
        lag_gaps[ok, lag - 1] = gaps[source[ok]]
    return lags, gap_buckets(torch.from_numpy(lag_gaps)).numpy()


def history_mask(sequences: Sequences, ends: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    """bool (M, n_items): the items row ``rows[m]`` holds before global position ``ends[m]``."""
    starts = sequences.indptr[rows]
    counts = ends - starts
    which = np.repeat(np.arange(len(ends)), counts)
    source = np.repeat(starts, counts) + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    mask = torch.zeros((len(ends), sequences.n_items), dtype=torch.bool)
    mask[torch.from_numpy(which), torch.from_numpy(sequences.items[source])] = True
    return mask


class SeqCRBM(NetSequenceRecommender):
    """Conditional RBM over event sequences: exact p(next | previous n events)."""

    is_ebm = True
    config_class = SeqCRBMConfig
    model_name = "seqcrbm"

    def __init__(self, config: SeqCRBMConfig | None = None, **options):
        super().__init__(config, **options)
        self.net: SeqCRBMNet | None = None

    def _build(self, generator: torch.Generator) -> SeqCRBMNet:
        cfg = self.config
        return SeqCRBMNet(self.n_items, cfg.n_hidden, cfg.n_lags, cfg.rank, cfg.time_gaps, generator)

    def _fit_sequences(self, sequences, validate, callback, show_progress):
        cfg = self.config
        generator = torch.Generator().manual_seed(cfg.seed)
        self.net = net = self._build(generator)
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.l2)
        rows_of = np.repeat(np.arange(len(sequences)), sequences.lengths)
        positions = np.flatnonzero(np.arange(len(sequences.items)) > sequences.indptr[rows_of])

        def train_epoch(epoch: int) -> dict[str, float]:
            pick = torch.randperm(len(positions), generator=generator)[:cfg.positions_per_epoch]
            chosen = positions[np.sort(pick.numpy())]
            return self._train_positions(sequences, chosen, rows_of[chosen], optimizer, generator)

        return self._run_epochs(train_epoch, validate, callback, show_progress, f"seqcrbm-{cfg.training}")

    def _train_positions(self, sequences, ends, rows, optimizer, generator) -> dict[str, float]:
        cfg, net = self.config, self.net
        order = torch.randperm(len(ends), generator=generator).numpy()
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            part = order[start:start + cfg.batch_size]
            lags, gaps = (torch.from_numpy(a) for a in contexts(sequences, ends[part], rows[part], cfg.n_lags))
            targets = torch.from_numpy(sequences.items[ends[part]])
            allowed = None
            if cfg.mask_history:
                allowed = ~history_mask(sequences, ends[part], rows[part])
            visible, hidden = net.dynamic_biases(lags, gaps)
            positive = net.free_energy_of(targets, visible, hidden)
            if cfg.training == "exact":
                energies = net.free_energy_all(visible, hidden)
                if allowed is not None:
                    energies = energies.masked_fill(~allowed, float("inf"))
                loss = (positive + torch.logsumexp(-energies, dim=1)).mean()
            else:
                with torch.no_grad():
                    negatives = net.gibbs(targets, visible, hidden, cfg.cd_steps, allowed, generator)
                loss = (positive - net.free_energy_of(negatives, visible, hidden)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(part)
        name = "train_nll" if cfg.training == "exact" else "train_cd_gap"
        return {name: total / max(len(order), 1)}

    def _history_scores(self, sequences: Sequences) -> np.ndarray:
        """-F(v | history) of every item after each row: float32 (n, n_items)."""
        rows = np.arange(len(sequences))
        lags, gaps = contexts(sequences, sequences.indptr[1:], rows, self.config.n_lags)
        with torch.no_grad():
            visible, hidden = self.net.dynamic_biases(torch.from_numpy(lags), torch.from_numpy(gaps))
            return (-self.net.free_energy_all(visible, hidden)).numpy().astype(np.float32)
