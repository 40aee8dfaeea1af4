"""A vector model served through a FAISS :class:`~recsys_ebm.ranking.faiss_index.EnergyIndex`.

``IndexedRecommender(model, index)`` is a ``Recommender`` like any other (the shared contract
runs over it): ``score`` is the wrapped model's, ``recommend`` retrieves from the index.

* T = 0: the index's ``k`` lowest-energy unseen items (exact for ``flat``: the brute-force
  ranking, ties to the lower id; approximate for ``hnsw`` / ``ivf``).
* T > 0: a documented truncation of the Gibbs distribution. The index retrieves each user's
  ``n_candidates`` lowest-energy items and the one seeded sampler draws ``k`` of them at
  temperature T; items outside the candidates get probability 0, and probabilities (export)
  are normalised over the candidates. So are the ranked lists' probabilities of the
  approximate kinds; the flat index reports the model's exact ones.
* A model whose score is more than one inner product (the joint CRBM) is indexed through its
  ``retrieval_model()``: proxy vectors (``user_vectors`` ...) retrieve ``n_candidates`` items per
  user, and its ``candidate_scores`` (the exact score) re-ranks them at T = 0 or is sampled from
  at T > 0; probabilities are normalised over the candidates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys_ebm.models.base import RankRequest, Recommender
from recsys_ebm.ranking.faiss_index import (
    EnergyIndex,
    IndexConfig,
    index_path,
    load_or_build,
)
from recsys_ebm.ranking.select import log_probabilities, logsumexp_rows, select
from recsys_ebm.ranking.vectors import check_vector_model

#: candidates per user from which exploratory lists (and probabilities) are drawn
DEFAULT_CANDIDATES = 1000


class IndexedRecommender(Recommender):
    """Serve a model with vectors (dpebm, ALS, BPR) through a FAISS energy index."""

    def __init__(self, model: Recommender, index: EnergyIndex | None = None, *,
                 config: IndexConfig | None = None, n_candidates: int = DEFAULT_CANDIDATES):
        model = _retrieval_view(model)
        check_vector_model(model)
        if int(n_candidates) < 1:
            raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
        self.model = model
        self.index_config = config if config is not None else (
            index.config if index is not None else IndexConfig())
        self.index = index
        self.n_candidates = int(n_candidates)
        for name in ("fits_ratings", "is_ebm", "deterministic", "trains_in_epochs"):
            setattr(self, name, getattr(model, name))
        if index is not None:
            index.check(model)

    # ------------------------------------------------------------------ the wrapped model
    @property
    def n_users(self) -> int:
        return self.model.n_users

    @property
    def n_items(self) -> int:
        return self.model.n_items

    @property
    def seen_items(self) -> sp.csr_matrix | None:
        return self.model.seen_items

    @property
    def meta(self) -> dict:
        return getattr(self.model, "meta", {})

    @property
    def history(self):
        return self.model.history

    def fit(self, user_items: sp.csr_matrix, **kwargs: Any) -> IndexedRecommender:
        """Fit the wrapped model, then build the index over its items."""
        self.model.fit(user_items, **kwargs)
        self.index = EnergyIndex.build(self.model, config=self.index_config)
        return self

    def score(self, user_ids, user_items: sp.csr_matrix | None = None) -> np.ndarray:
        return self.model.score(user_ids, user_items)

    def user_vectors(self, user_ids, user_items: sp.csr_matrix | None = None) -> np.ndarray:
        return self.model.user_vectors(user_ids, user_items)

    def item_vectors(self) -> np.ndarray:
        return self.model.item_vectors()

    def item_biases(self) -> np.ndarray:
        return self.model.item_biases()

    # ------------------------------------------------------------------ ranking
    def serving(self) -> dict:
        """The index kind and the candidates exploratory lists are drawn from."""
        return {"path": "index", "model": type(self.model).__name__, "kind": self.index_config.kind,
                "metric": self.index_config.metric, "n_candidates": self.n_candidates}

    def _rank(self, request: RankRequest) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        r = request
        if self.index is None:
            raise RuntimeError("the index is not built: call fit() or load() first")
        vectors = np.asarray(self.model.user_vectors(r.user_ids, r.history), dtype=np.float32)
        if hasattr(self.model, "candidate_scores"):
            return self._rerank(r, vectors)
        if r.temperature == 0:
            ids, values = self.index.search(vectors, r.k, exclude=r.exclude, allowed=r.mask)
            if not r.with_log_p:
                return ids, values, None
            if self.index_config.kind == "flat":  # exact: the partition over every item
                _, _, log_p = self.model._rank(r)
                return ids, values, log_p
            # probabilities at T = 1 over the candidates; the ranking itself stays the k-search
            _, cand_scores = self.index.search(vectors, max(self.n_candidates, r.k),
                                               exclude=r.exclude, allowed=r.mask)
            log_norm = logsumexp_rows(np.ascontiguousarray(cand_scores),
                                      cand_scores[:, 0].astype(np.float64))
            return ids, values, log_probabilities(values, log_norm, 1.0)
        cand_ids, cand_scores = self.index.search(vectors, max(self.n_candidates, r.k),
                                                  exclude=r.exclude, allowed=r.mask)
        slots, values, log_p = select(np.ascontiguousarray(cand_scores), r.k, r.temperature,
                                      r.seed, r.keys, with_log_p=r.with_log_p)
        ids = np.where(slots >= 0, np.take_along_axis(cand_ids, np.maximum(slots, 0), axis=1), -1)
        return ids, values, log_p

    def _rerank(self, r: RankRequest, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Candidates by the proxy vectors, then the exact scores of the candidates ranked
        (T = 0) or sampled (T > 0) by the serving core."""
        cand_ids, _ = self.index.search(vectors, max(self.n_candidates, r.k), exclude=r.exclude,
                                        allowed=r.mask)
        exact = self.model.candidate_scores(r.user_ids, r.history, cand_ids)
        slots, values, log_p = select(np.ascontiguousarray(exact, dtype=np.float32), r.k,
                                      r.temperature, r.seed, r.keys, with_log_p=r.with_log_p)
        ids = np.where(slots >= 0, np.take_along_axis(cand_ids, np.maximum(slots, 0), axis=1), -1)
        return ids, values, log_p

    # ------------------------------------------------------------------ persistence
    def save(self, path, meta: dict | None = None) -> Path:
        """The wrapped model's directory, with the index saved inside it as ``index-<kind>/``."""
        if self.index is None:
            raise RuntimeError("the index is not built: call fit() first")
        path = Path(self.model.save(path, meta=meta))
        self.index.save(index_path(path, self.index_config.kind))
        return path

    @classmethod
    def load(cls, path, kind: str | None = None, n_candidates: int = DEFAULT_CANDIDATES
             ) -> IndexedRecommender:
        """A model directory and the index saved inside it (the only one, or of ``kind``)."""
        from recsys_ebm.models import load_model

        path = Path(path)
        if kind is None:
            kinds = sorted(p.name[len("index-"):] for p in path.glob("index-*") if p.is_dir())
            if len(kinds) != 1:
                raise FileNotFoundError(f"{path}: expected one saved index-<kind>/, found {kinds or 'none'}")
            kind = kinds[0]
        model = _retrieval_view(load_model(path))
        index = EnergyIndex.load(index_path(path, kind), model)
        return cls(model, index, n_candidates=n_candidates)

    @classmethod
    def for_saved(cls, model: Recommender, model_dir: str | Path, kind: str,
                  n_candidates: int = DEFAULT_CANDIDATES) -> IndexedRecommender:
        """Serve a loaded model through its saved index of ``kind``, built and saved on first use."""
        model = _retrieval_view(model)
        check_vector_model(model)
        index = load_or_build(model, model_dir, IndexConfig(kind=kind))
        return cls(model, index, n_candidates=n_candidates)


def _retrieval_view(model: Recommender) -> Recommender:
    """The model as retrieval sees it: its ``retrieval_model()`` when it has one (a score that
    is not one inner product), else the model itself."""
    if hasattr(model, "candidate_scores") or not hasattr(model, "retrieval_model"):
        return model
    return model.retrieval_model()
