"""``markov``: a first-order Markov chain of item transitions, backed off to popularity.

C[a, b] counts how often item b directly follows item a in the training sequences. The next
item after a history ending in a has the Dirichlet-smoothed probability

    p(b | a) = (C[a, b] + alpha * pop(b)) / (sum_b' C[a, b'] + alpha)

with pop(b) the share of training events on b (plus one pseudo-count per item, so every item
has some mass). A transition never seen falls back to popularity; as alpha -> 0 the ranking
is the transition counts with popularity breaking their ties. The score is log p(b | a) (so
E = -log p is the surprisal the streaming monitor reads); a history with no event is scored by
popularity alone.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp

from recsys_ebm.config import Config, check
from recsys_ebm.data.sequences import Sequences
from recsys_ebm.models.baselines import check_reals, check_seed, csr_from_tensors, csr_tensors
from recsys_ebm.models.sequential import SequenceRecommender, last_items


@dataclasses.dataclass(frozen=True)
class MarkovConfig(Config):
    """``alpha``: the pseudo-count mass of the popularity back-off (defaults tuned on ML-100K)."""

    alpha: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_reals(self, ("alpha",))
        check(self.alpha > 0, f"alpha must be > 0, got {self.alpha}")
        check_seed(self)


def transition_counts(sequences: Sequences) -> sp.csr_matrix:
    """C (n_items, n_items) float32: C[a, b] = times b directly follows a within a row."""
    items, n = sequences.items, sequences.n_items
    follows = np.ones(len(items), dtype=bool)
    follows[sequences.indptr[:-1][sequences.lengths > 0]] = False  # a row's first event
    nxt = np.flatnonzero(follows)
    counts = sp.csr_matrix((np.ones(nxt.size, np.float32), (items[nxt - 1], items[nxt])), shape=(n, n))
    counts.sum_duplicates()
    return counts


class MarkovChain(SequenceRecommender):
    """First-order transitions from the last item, smoothed toward popularity."""

    deterministic = True
    is_ebm = True
    config_class = MarkovConfig
    model_name = "markov"

    def __init__(self, config: MarkovConfig | None = None, **options):
        super().__init__(config, **options)
        self.transitions: sp.csr_matrix | None = None
        self.popularity: np.ndarray | None = None  # (n_items,) float64, sums to 1

    def _fit_sequences(self, sequences, validate, callback, show_progress):
        self.transitions = transition_counts(sequences)
        counts = np.bincount(sequences.items, minlength=self.n_items).astype(np.float64) + 1.0
        self.popularity = counts / counts.sum()
        return None

    def _history_scores(self, sequences: Sequences) -> np.ndarray:
        """log p(b | last item) for every b: float32 (n, n_items)."""
        last = last_items(sequences)
        alpha = self.config.alpha
        rows = self.transitions[np.maximum(last, 0)].toarray().astype(np.float64)
        rows[last < 0] = 0.0
        smoothed = rows + alpha * self.popularity
        log_p = np.log(smoothed) - np.log(smoothed.sum(axis=1, keepdims=True))
        return log_p.astype(np.float32)

    def _model_tensors(self) -> dict[str, np.ndarray]:
        return {**csr_tensors("transitions", self.transitions), "popularity": self.popularity}

    def _restore_model(self, tensors) -> None:
        self.transitions = csr_from_tensors("transitions", tensors, (self.n_items, self.n_items))
        self.popularity = tensors.expect("popularity", (self.n_items,)).numpy()
