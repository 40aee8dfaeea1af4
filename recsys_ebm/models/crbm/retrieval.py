"""FAISS retrieval for the joint CRBM: a one-inner-product proxy finds candidates, the exact
score re-ranks them.

The exact score of item i needs K x F softplus terms (``CRBM.score``), not one inner product,
so no index can search it directly. Its first-order expansion in the weights is one::

    L_i = logsumexp_k (a_i + b[i, k] + sum_f softplus(x_f + V[i, k, f]) - softplus(x_f))
        ~ <sigmoid(x), q_i> + beta_i,   q_i = sum_k pi[i, k] V[i, k],  beta_i = a_i + logsumexp_k b[i, k]

(softplus(x + d) - softplus(x) ~ sigmoid(x) d, and the logsumexp linearised around the item's
rating prior pi[i, k] = softmax_k b[i, k]). `CRBMRetrieval` exposes that proxy as the vectors an
:class:`~recsys_ebm.models.indexed.IndexedRecommender` indexes, and ``candidate_scores`` gives
the exact scores of the retrieved candidates, by which the index path re-ranks (T = 0) or
samples (T > 0, over the candidates). The ranking is exact whenever the exact top k lie among
the ``n_candidates`` proxy candidates; ``score`` and the exact path are the model's own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from recsys_ebm.models.crbm import joint
from recsys_ebm.models.crbm.cases import csr_lookup


class CRBMRetrieval:
    """The joint `CRBM` seen through its retrieval proxy; everything else is the model's."""

    def __init__(self, model: Any):
        if not getattr(model, "is_joint", False):
            raise TypeError("FAISS retrieval serves the joint CRBM (visible='joint') only: the "
                            "rating-only CRBM's scores have no inner-product proxy here")
        self.model = model

    def __getattr__(self, name: str) -> Any:  # n_users, n_items, seen_items, save, _rank, ...
        return getattr(self.model, name)

    @torch.no_grad()
    def user_vectors(self, user_ids, user_items: sp.csr_matrix | None = None) -> np.ndarray:
        """sigmoid(x_u) (n, F) float32: the users' hidden probabilities."""
        x, _ = self._inputs(user_ids, user_items)
        return torch.sigmoid(x).float().numpy()

    @torch.no_grad()
    def item_vectors(self) -> np.ndarray:
        """q_i = sum_k pi[i, k] (D[i] + W[i, k]) (N, F) float32."""
        module = self.model.module
        prior = torch.softmax(module.b, dim=1)
        return (torch.einsum("nk,nkf->nf", prior, module.W) + module.D).float().numpy()

    @torch.no_grad()
    def item_biases(self) -> np.ndarray:
        """beta_i = a_i + logsumexp_k b[i, k] (N,) float32."""
        module = self.model.module
        return (module.a + torch.logsumexp(module.b, dim=1)).float().numpy()

    @torch.no_grad()
    def candidate_scores(self, user_ids, user_items: sp.csr_matrix | None, candidates: np.ndarray
                         ) -> np.ndarray:
        """The exact ``score`` of each candidate (n, C) (ids, -1 padding -> -inf): float32."""
        model, module = self.model, self.model.module
        x, ratings = self._inputs(user_ids, user_items)
        rows, slots = np.nonzero(candidates >= 0)
        items = candidates[rows, slots]
        rated = csr_lookup(ratings.indptr.astype(np.int64), ratings.indices.astype(np.int64),
                           np.rint(ratings.data).astype(np.int64) - 1, rows, items)
        x_rows = x[torch.from_numpy(rows)].clone()
        own = np.flatnonzero(rated >= 0)  # a rated candidate is scored from the user's other items
        if own.size:
            q = torch.from_numpy(items[own])
            x_rows[own] -= module.W[q, torch.from_numpy(rated[own])] + module.D[q]
        g = joint.pair_log_weights(module, x_rows, torch.from_numpy(items))
        out = np.full(candidates.shape, -np.inf, dtype=np.float32)
        kind, levels = model.config.ranking_score, model.levels
        if kind in ("active", "active_liked"):
            out[rows, slots] = joint.activation_scores(g, model._liked_levels()).numpy()
        else:  # a rating kind: expected rating or P(rating >= threshold) given r_i = 1
            weights = levels if kind == "expected" else levels >= model.config.score_threshold - 1e-9
            out[rows, slots] = torch.softmax(g.double(), dim=1).numpy() @ weights
        return out

    def _inputs(self, user_ids, user_items: sp.csr_matrix | None) -> tuple[torch.Tensor, sp.csr_matrix]:
        model = self.model
        model._require_fitted()
        users = np.atleast_1d(np.asarray(user_ids, dtype=np.int64))
        fold = None if user_items is None else model._level_rows(user_items, len(users))
        return model._joint_inputs(users, fold)
