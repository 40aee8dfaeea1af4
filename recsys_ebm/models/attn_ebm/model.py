"""``attnebm``: attention as an energy, a next-item model over ordered histories.

A causal self-attention encoder (``module.py``) reads a user's last ``max_len`` events and gives
a state h_t after each one; the energy of item i as the next event is
E(t, i) = -<h_t, q_i> / tau - b_i and p(i | history) = softmax_i(-E(t, i)) over the items the
history has not had (``mask_history``, the support the next-item protocol ranks). Every
position of every training sequence predicts its next event.

**Losses.** ``loss="exact"``: the negative log-likelihood with the exact partition function over
the catalog. This cross-entropy is InfoNCE with every other (unseen) item as a negative: for the
positive i+ the loss -log exp(-E(i+)) / sum_j exp(-E(j)) is the InfoNCE loss whose negative set
is the whole catalog, so nothing is sampled and the estimator has no bias. ``loss="sampled"``:
the logQ-corrected sampled softmax (as ``dot_ebm``): ``n_negatives`` items drawn from
Q proportional to popularity^``proposal_alpha``, shared by the batch, every logit minus log(m Q),
so the normaliser is an importance-sampling estimate of Z.

Training early-stops on validation NDCG@10 (``patience`` epochs); the refit on all of train runs
for the best epoch count. The defaults are the values tuned on the ML-100K loo validation split.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from recsys_ebm.config import Config, check
from recsys_ebm.data.sequences import Sequences
from recsys_ebm.models.attn_ebm.module import AttnEncoder
from recsys_ebm.models.baselines import check_ints, check_reals, check_seed
from recsys_ebm.models.sequential import NetSequenceRecommender


@dataclasses.dataclass(frozen=True)
class AttnEBMConfig(Config):
    """Hyperparameters of the attention energy model."""

    dim: int = 64
    n_blocks: int = 2
    n_heads: int = 1
    max_len: int = 200
    dropout: float = 0.3
    temperature: float = 1.0
    lr: float = 0.002
    l2: float = 0.0
    batch_size: int = 32
    epochs: int = 200
    patience: int = 10
    loss: str = "exact"
    n_negatives: int = 256
    proposal_alpha: float = 0.5
    mask_history: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_ints(self, ("dim", "n_blocks", "n_heads", "max_len", "batch_size", "epochs",
                          "patience", "n_negatives"))
        check_reals(self, ("dropout", "temperature", "lr", "l2", "proposal_alpha"))
        check(self.dim >= 1 and self.n_heads >= 1 and self.dim % self.n_heads == 0,
              f"dim ({self.dim}) must be a positive multiple of n_heads ({self.n_heads})")
        for name in ("n_blocks", "max_len", "batch_size", "epochs", "patience", "n_negatives"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        check(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        check(self.temperature > 0 and self.lr > 0 and self.l2 >= 0,
              "temperature and lr must be > 0 and l2 >= 0")
        check(self.loss in ("exact", "sampled"), f"loss must be 'exact' or 'sampled', got {self.loss!r}")
        check(isinstance(self.mask_history, bool), f"mask_history must be true or false, got {self.mask_history!r}")
        check_seed(self)


def windows(sequences: Sequences, length: int) -> np.ndarray:
    """Each row's last ``length`` events as item index + 1, left-padded with 0: int64 (n, length)."""
    out = np.zeros((len(sequences), length), dtype=np.int64)
    take = np.minimum(sequences.lengths, length)
    rows = np.repeat(np.arange(len(sequences)), take)
    offsets = np.arange(take.sum()) - np.repeat(np.cumsum(take) - take, take)
    source = np.repeat(sequences.indptr[1:] - take, take) + offsets
    out[rows, length - np.repeat(take, take) + offsets] = sequences.items[source] + 1
    return out


def seen_before(tokens: torch.Tensor, rows: torch.Tensor, steps: torch.Tensor, n_items: int) -> torch.Tensor:
    """bool (M, n_items): item i occurs in ``tokens[rows[m], :steps[m] + 1]`` (the history at step m)."""
    b, length = tokens.shape
    first = torch.full((b, n_items + 1), length, dtype=torch.long)
    positions = torch.arange(length).expand(b, length)
    first.scatter_reduce_(1, tokens, positions, reduce="amin")
    return first[rows, 1:] <= steps[:, None]


def length_batches(lengths: torch.Tensor, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Mini-batches of rows of similar length (attention costs the square of the padded length),
    in a random order: rows sorted by length plus a random jitter below one batch's spread, cut
    into batches, the batches shuffled; all draws from ``generator``."""
    jitter = torch.rand(len(lengths), generator=generator) * float(lengths.float().std().clamp(min=1.0))
    order = torch.argsort(lengths.float() + jitter)
    batches = list(torch.split(order, batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


class AttnEBM(NetSequenceRecommender):
    """Causal self-attention encoder; the energy of the next item is -<h_t, q_i>/tau - b_i."""

    is_ebm = True
    config_class = AttnEBMConfig
    model_name = "attnebm"

    def __init__(self, config: AttnEBMConfig | None = None, **options):
        super().__init__(config, **options)
        self.net: AttnEncoder | None = None

    def _build(self, generator: torch.Generator) -> AttnEncoder:
        cfg = self.config
        return AttnEncoder(self.n_items, cfg.dim, cfg.n_blocks, cfg.n_heads, cfg.max_len,
                           cfg.temperature, generator)

    # ------------------------------------------------------------------ training
    def _fit_sequences(self, sequences, validate, callback, show_progress):
        cfg = self.config
        generator = torch.Generator().manual_seed(cfg.seed)
        self.net = self._build(generator)
        optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.l2)
        tokens = torch.from_numpy(windows(sequences, cfg.max_len + 1))
        tokens = tokens[(tokens > 0).sum(1) >= 2]  # rows with at least one (input, next) pair
        popularity = np.bincount(sequences.items, minlength=self.n_items) + 1.0
        proposal = popularity ** cfg.proposal_alpha
        log_q = torch.from_numpy(np.log(proposal / proposal.sum()).astype(np.float32))

        def train_epoch(epoch: int) -> dict[str, float]:
            return self._train_epoch(tokens, optimizer, generator, log_q)

        return self._run_epochs(train_epoch, validate, callback, show_progress, "attnebm")

    def _train_epoch(self, tokens: torch.Tensor, optimizer, generator, log_q) -> dict[str, float]:
        cfg, net = self.config, self.net
        net.train()
        total, count = 0.0, 0
        for rows in length_batches((tokens > 0).sum(1), cfg.batch_size, generator):
            batch = tokens[rows]
            length = int((batch > 0).sum(1).max())
            batch = batch[:, -length:]
            inputs, targets = batch[:, :-1], batch[:, 1:] - 1
            states, _ = net(inputs, cfg.dropout, generator)
            rows, steps = torch.nonzero((inputs > 0) & (targets >= 0), as_tuple=True)
            loss = self._loss(states[rows, steps], targets[rows, steps], inputs, rows, steps,
                              log_q, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows)
            count += len(rows)
        return {"train_nll": total / max(count, 1)}

    def _loss(self, states, targets, inputs, rows, steps, log_q, generator) -> torch.Tensor:
        """Mean -log p(target | history) over the (row, step) pairs: exact or sampled softmax."""
        cfg, net = self.config, self.net
        seen = seen_before(inputs, rows, steps, self.n_items) if cfg.mask_history else None
        if cfg.loss == "exact":
            logits = net.neg_energy(states)
            if seen is not None:
                seen[torch.arange(len(targets)), targets] = False
                logits = logits.masked_fill(seen, float("-inf"))
            return torch.nn.functional.cross_entropy(logits, targets)
        negatives = torch.multinomial(log_q.exp(), cfg.n_negatives, replacement=True, generator=generator)
        log_mq = math.log(cfg.n_negatives) + log_q
        items = net.item_vectors()
        pos = (states * items[targets]).sum(1) / cfg.temperature + net.item_bias[targets] - log_mq[targets]
        neg = states @ items[negatives].T / cfg.temperature + net.item_bias[negatives] - log_mq[negatives]
        if seen is not None:
            neg = neg.masked_fill(seen[:, negatives] | (negatives[None] == targets[:, None]), float("-inf"))
        logits = torch.cat([pos[:, None], neg], dim=1)
        return (torch.logsumexp(logits, dim=1) - pos).mean()

    # ------------------------------------------------------------------ scoring
    def _states(self, sequences: Sequences) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """The state after each row's last event (n, dim), the attention weights, the tokens."""
        tokens = torch.from_numpy(windows(sequences, self.config.max_len))
        length = max(int((tokens > 0).sum(1).max()) if len(tokens) else 1, 1)
        tokens = tokens[:, -length:]
        self.net.eval()
        with torch.no_grad():
            states, attention = self.net(tokens)
        return states[:, -1], attention, tokens

    def _history_scores(self, sequences: Sequences) -> np.ndarray:
        """-E of every item after each row's history: float32 (n, n_items)."""
        out = np.empty((len(sequences), self.n_items), dtype=np.float32)
        order = np.argsort(sequences.lengths, kind="stable")  # blocks of similar length
        for start in range(0, len(sequences), 128):
            rows = order[start:start + 128]
            states, _, _ = self._states(sequences.take(rows))
            with torch.no_grad():
                out[rows] = self.net.neg_energy(states).numpy()
        return out

    def explain(self, sequence: Sequences) -> list[dict]:
        """For one history: the last block's attention at the last event, averaged over heads,
        as a Gibbs distribution over the past events (weights sum to 1, most recent first).

        Returns ``[{"position": steps back (0 = last), "item": index, "weight": p}]``.
        """
        self._require_fitted()
        if len(sequence) != 1 or sequence.lengths[0] == 0:
            raise ValueError("explain takes one non-empty history")
        _, attention, tokens = self._states(sequence)
        weights = attention[-1][0, :, -1].mean(0).numpy()
        present = tokens[0].numpy() > 0
        entries = [{"position": int(len(weights) - 1 - j), "item": int(tokens[0, j]) - 1,
                    "weight": float(weights[j])} for j in np.flatnonzero(present)]
        return sorted(entries, key=lambda e: e["position"])
