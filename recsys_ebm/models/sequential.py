"""`SequenceRecommender`: the base of the models that read the order of a history (next-item).

How ordered histories pass through the set-based interface, in one place:

- ``fit(user_items, *, sequences, validation=None, ...)``: ``user_items`` is the usual binary
  CSR (the seen set, what rankings leave out) and ``sequences`` the same events in order, a
  :class:`~recsys_ebm.data.sequences.Sequences` with one row per user
  (``Interactions.sequences()``; ``tuning`` passes it to every model with ``uses_order``).
  The model keeps these training sequences: a trained user is scored from its sequence.
- ``recommend(..., sequences=S)`` / ``score(..., sequences=S)``: ordered histories of any users
  (fold-in of an ordered history, the streaming monitor). A fold-in CSR alone carries no order
  and is refused with a message saying to pass ``sequences``.

A subclass implements ``_history_scores(sequences)``: float32 (n, n_items), the score (-E) of
every item as the next event of each row; ``log_next(sequences)`` normalises them over the
items a row has not had (the support the next-item protocol ranks).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from recsys_ebm.data.sequences import Sequences
from recsys_ebm.data.sparse import binarize
from recsys_ebm.models.base import EpochCallback, RankRequest, check_user_ids, check_user_items
from recsys_ebm.models.baselines import Baseline
from recsys_ebm.models.training import TrainingHistory, ranking_validator, run_training


class SequenceRecommender(Baseline):
    """Shared plumbing of next-item models: ordered training histories, scoring, save/load."""

    uses_order = True

    def __init__(self, config=None, **options):
        super().__init__(config, **options)
        self.train_sequences: Sequences | None = None

    # ------------------------------------------------------------------ training
    def fit(self, user_items: sp.csr_matrix, *, sequences: Sequences | None = None,
            validation: sp.csr_matrix | None = None, callback: EpochCallback | None = None,
            show_progress: bool = True):
        """Fit on ordered ``sequences`` (rows aligned with ``user_items``); with ``validation``
        (one held-out next item per user), early-stop (epoch models) or record NDCG@10 on it."""
        if sequences is None:
            raise ValueError(f"{self.model_name} reads the order of each history: call "
                             "fit(user_items, sequences=interactions.sequences())")
        user_items = binarize(check_user_items(user_items))
        if len(sequences) != user_items.shape[0] or sequences.n_items != user_items.shape[1]:
            raise ValueError(f"sequences has {len(sequences)} rows over {sequences.n_items} items, "
                             f"user_items is {user_items.shape}")
        if len(sequences.items) == 0:
            raise ValueError("the sequences hold no event to train on")
        if validation is not None:
            validation = check_user_items(validation, n_rows=user_items.shape[0],
                                          n_items=user_items.shape[1])
        self.n_users, self.n_items = user_items.shape
        self._remember_seen(user_items)
        self.train_sequences = sequences
        validate = None
        if validation is not None and validation.nnz:
            validate = ranking_validator(lambda users: self.recommend(users, k=10)[0], validation, k=10)
        self._fitted = True  # the validator ranks with the model as it trains
        history = self._fit_sequences(sequences, validate, callback, show_progress)
        if history is None:  # fitted in one step: the validation scores are recorded once
            metrics = validate() if validate is not None else {}
            history = TrainingHistory(epochs=[metrics], best_epoch=1,
                                      best_value=metrics.get("val_ndcg@10", math.nan))
            if callback is not None and metrics:
                callback(1, metrics)
        self.history = history
        return self

    def observe(self, sequences: Sequences) -> None:
        """Replace the trained users' histories with ``sequences`` (same rows; events that
        arrived since the fit), without retraining: the next items are then ranked after them."""
        self._require_fitted()
        if len(sequences) != self.n_users or sequences.n_items != self.n_items:
            raise ValueError(f"sequences has {len(sequences)} rows over {sequences.n_items} items, "
                             f"the model has {self.n_users} users x {self.n_items} items")
        self.train_sequences = sequences

    def _fit_sequences(self, sequences: Sequences, validate, callback, show_progress
                       ) -> TrainingHistory | None:
        raise NotImplementedError

    # ------------------------------------------------------------------ scoring
    def _history_scores(self, sequences: Sequences) -> np.ndarray:
        raise NotImplementedError

    def histories(self, user_ids, user_items: sp.csr_matrix | None = None,
                  sequences: Sequences | None = None) -> Sequences:
        """The ordered histories to score: ``sequences`` when given, else the training
        sequences of trained users; a fold-in CSR alone (no order) is refused."""
        self._require_fitted()
        if sequences is not None:
            if sequences.n_items != self.n_items:
                raise ValueError(f"sequences are over {sequences.n_items} items, the model has {self.n_items}")
            return sequences
        if user_items is not None:
            raise ValueError(f"{self.model_name} ranks from the order of a history, which a users x "
                             "items matrix does not hold: pass sequences= (ordered histories)")
        return self.train_sequences.take(check_user_ids(user_ids, self.n_users))

    def score(self, user_ids, user_items: sp.csr_matrix | None = None, *,
              sequences: Sequences | None = None) -> np.ndarray:
        """-E of every item as each user's next event: float32 (n, n_items)."""
        histories = self.histories(user_ids, user_items, sequences)
        if sequences is not None and len(histories) != len(np.atleast_1d(user_ids)):
            raise ValueError(f"sequences has {len(histories)} rows for {len(np.atleast_1d(user_ids))} users")
        return self._history_scores(histories)

    def log_next(self, sequences: Sequences) -> np.ndarray:
        """log p(next = i | history) over the items the row has not had (-inf on the others):
        float64 (n, n_items), each row normalised."""
        scores = np.asarray(self._history_scores(sequences), dtype=np.float64)
        rows = np.repeat(np.arange(len(sequences)), sequences.lengths)
        scores[rows, sequences.items] = -np.inf
        top = scores.max(axis=1, keepdims=True)
        return scores - top - np.log(np.exp(scores - top).sum(axis=1, keepdims=True))

    def _rank(self, request: RankRequest):
        r = request
        histories = self.histories(r.user_ids, r.history, r.sequences)
        return self._rank_blocks(r, lambda start, stop: self._history_scores(
            histories.take(np.arange(start, stop))))

    # ------------------------------------------------------------------ persistence
    def _tensors(self) -> dict[str, np.ndarray]:
        s = self.train_sequences
        return {"sequences.indptr": s.indptr, "sequences.items": s.items,
                "sequences.timestamps": s.timestamps, **self._model_tensors()}

    def _restore(self, tensors: dict) -> None:
        indptr = tensors.expect("sequences.indptr", (self.n_users + 1,)).numpy()
        self.train_sequences = Sequences(indptr, tensors["sequences.items"].numpy(),
                                         tensors["sequences.timestamps"].numpy(), self.n_items)
        self._restore_model(tensors)

    def _model_tensors(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _restore_model(self, tensors: dict) -> None:
        raise NotImplementedError


class NetSequenceRecommender(SequenceRecommender):
    """A sequence model whose parameters are one torch module ``self.net`` (built by
    ``_build(generator)``), trained in epochs with early stopping on validation NDCG@10."""

    trains_in_epochs = True
    net = None

    def _build(self, generator):
        raise NotImplementedError

    def _run_epochs(self, train_epoch, validate, callback, show_progress: bool, desc: str) -> TrainingHistory:
        """The one training loop over ``train_epoch`` with the config's epochs and patience;
        the best validation state is restored."""
        net = self.net
        return run_training(
            train_epoch, epochs=self.config.epochs, validate=validate,
            monitor="val_ndcg@10" if validate is not None else None, patience=self.config.patience,
            snapshot=lambda: {k: v.detach().clone() for k, v in net.state_dict().items()},
            restore=net.load_state_dict, callback=callback, show_progress=show_progress, desc=desc)

    def _model_tensors(self) -> dict:
        return {f"net.{k}": v for k, v in self.net.state_dict().items()}

    def _restore_model(self, tensors) -> None:
        import torch

        self.net = self._build(torch.Generator().manual_seed(0))
        self.net.load_state_dict({k[len("net."):]: v for k, v in tensors.items() if k.startswith("net.")})


def last_items(sequences: Sequences) -> np.ndarray:
    """The last item of each row, -1 for an empty row: int64 (n,)."""
    out = np.full(len(sequences), -1, dtype=np.int64)
    has = sequences.lengths > 0
    out[has] = sequences.items[sequences.indptr[1:][has] - 1]
    return out
