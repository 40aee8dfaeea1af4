"""`Recommender`: `recommend` built once on top of each model's `score`."""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from recsys_ebm.ranking.topk import top_k

EpochCallback = Callable[[int, dict], None]


def check_user_items(user_items, n_rows: int | None = None, n_items: int | None = None) -> sp.csr_matrix:
    """Validate a users x items matrix and return it as float32 CSR.

    Raises ``ValueError`` naming the problem (not a matrix, wrong shape, negative values).
    """
    if not sp.issparse(user_items):
        if isinstance(user_items, np.ndarray) and user_items.ndim == 2:
            user_items = sp.csr_matrix(user_items)
        else:
            raise ValueError(
                f"user_items must be a scipy.sparse matrix (users x items), got {type(user_items).__name__}"
            )
    user_items = sp.csr_matrix(user_items, dtype=np.float32)
    if n_rows is not None and user_items.shape[0] != n_rows:
        raise ValueError(f"user_items has {user_items.shape[0]} rows, expected {n_rows} (one per user id)")
    if n_items is not None and user_items.shape[1] != n_items:
        raise ValueError(f"user_items has {user_items.shape[1]} columns, the model has {n_items} items")
    if user_items.nnz and (not np.all(np.isfinite(user_items.data))):
        raise ValueError("user_items contains NaN or inf values")
    return user_items


def check_user_ids(user_ids, n_users: int | None) -> np.ndarray:
    """Return user ids as int64 1-D; ``IndexError`` names an id outside ``0..n_users-1``."""
    ids = np.atleast_1d(np.asarray(user_ids))
    if ids.ndim != 1:
        raise ValueError(f"user_ids must be 1-D, got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"user_ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    if n_users is not None:
        bad = (ids < 0) | (ids >= n_users)
        if np.any(bad):
            raise IndexError(
                f"user id {int(ids[bad][0])} is not a trained user (0..{n_users - 1}); "
                "pass user_items to fold new users in"
            )
    return ids


class Recommender(ABC):
    """Minimal model interface: ``fit``, ``score``, ``recommend``, ``save``/``load``."""

    n_users: int
    n_items: int
    # Capabilities, read by the registry's users (reports, CLI) instead of lists of names.
    #: explicit-feedback model: fits on (and folds users in from) the ratings CSR
    fits_ratings: bool = False
    #: scores are negative energies -E/T of a Gibbs distribution (temperature sections apply)
    is_ebm: bool = False
    #: ignores its seed: one fit stands for every seed
    deterministic: bool = False
    #: trains in epochs with early stopping on a validation split (``epochs`` is refit)
    trains_in_epochs: bool = False

    @abstractmethod
    def fit(self, user_items: sp.csr_matrix, *, callback: EpochCallback | None = None,
            show_progress: bool = True) -> Recommender:
        """Train on a users x items CSR."""

    @abstractmethod
    def score(self, user_ids, user_items: sp.csr_matrix | None = None) -> np.ndarray:
        """Scores float32 (n, n_items), higher is better (for an EBM, -E).

        With ``user_items`` (rows aligned with ``user_ids``), users are scored from these
        interactions (fold-in), which also serves users unseen in training.
        """

    @classmethod
    def _load_dir(cls, path, model_name: str) -> tuple[Recommender, dict, dict]:
        """Read a saved model directory, check it holds ``model_name``, and build the model
        (config, ``n_users``, ``n_items`` set) for ``load`` to fill: ``(model, tensors, meta)``."""
        from recsys_ebm.io import load_model_dir

        name, config, tensors, meta = load_model_dir(path)
        if name != model_name:
            raise ValueError(f"{path} holds a {name!r} model, not {model_name!r}")
        model = cls(cls.config_class.from_saved(config))
        model.n_users, model.n_items = int(meta["n_users"]), int(meta["n_items"])
        return model, tensors, meta

    def recommend(
        self,
        user_ids,
        user_items: sp.csr_matrix | None = None,
        k: int = 10,
        *,
        filter_seen: bool = True,
        items=None,
        temperature: float = 0.0,
        rng: np.random.Generator | int | None = None,
        batch_size: int = 2048,
        fold_in: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (T = 0) or sampled (T > 0) items per user.

        Parameters
        ----------
        user_ids : int (n,)
        user_items : CSR, either (n_users_trained, n_items) indexed by ``user_ids``
            or (n, n_items) aligned with ``user_ids`` (any other row count raises
            ``ValueError``); its items are filtered when ``filter_seen``.
        items : optional allowed item ids (or bool mask over items).
        temperature : 0 for the exact ranking; > 0 samples k distinct items without
            replacement from softmax(score / T) (Gumbel-top-k).
        fold_in : score users from ``user_items`` instead of their trained vectors.

        Returns
        -------
        ids int64 (n, k) and scores float32 (n, k), best first, padded with -1 / -inf.
        """
        from recsys_ebm.ranking.sampling import gumbel_top_k

        try:
            k = operator.index(k)
        except TypeError:
            raise ValueError(f"k must be an integer, got {k!r}") from None
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        user_ids = check_user_ids(user_ids, None if fold_in else self.n_users)
        rows = None
        if user_items is not None:
            user_items = check_user_items(user_items, n_items=self.n_items)
            n_rows = user_items.shape[0]
            if n_rows == len(user_ids) and (fold_in or n_rows != self.n_users):
                rows = user_items
            elif n_rows == self.n_users:
                bad = (user_ids < 0) | (user_ids >= n_rows)  # only unchecked when fold_in
                if np.any(bad):
                    raise IndexError(f"user id {int(user_ids[bad][0])} has no row in user_items "
                                     f"({n_rows} rows)")
                rows = user_items[user_ids]
            else:
                # neither layout: indexing would silently filter other users' rows
                raise ValueError(
                    f"user_items has {n_rows} rows: expected {len(user_ids)} (aligned with "
                    f"user_ids) or {self.n_users} (one per trained user, indexed by user_ids)"
                )
        if fold_in and rows is None:
            raise ValueError("fold_in=True needs user_items aligned with user_ids")
        if not temperature >= 0:  # also rejects NaN, which would silently mean T = 0
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        out_ids = np.empty((len(user_ids), k), dtype=np.int64)
        out_scores = np.empty((len(user_ids), k), dtype=np.float32)
        for start in range(0, len(user_ids), batch_size):
            stop = min(start + batch_size, len(user_ids))
            chunk_rows = rows[start:stop] if rows is not None else None
            scores = self.score(user_ids[start:stop], chunk_rows if fold_in else None)
            exclude = chunk_rows if filter_seen else None
            if temperature > 0:
                ids, vals = gumbel_top_k(scores, k, temperature, generator, exclude=exclude, allowed=items)
            else:
                ids, vals = top_k(scores, k, exclude=exclude, allowed=items)
            out_ids[start:stop], out_scores[start:stop] = ids, vals
        return out_ids, out_scores


class EmbeddingMixin:
    """Scores from user and item vectors: -E(u, i) = <p_u, q_i> + b_i.

    A model provides ``user_vectors(user_ids, user_items=None)``, the arrays ``item_factors``
    (n_items, dim) and ``item_bias`` (n_items,), and ``_require_fitted()``; FAISS retrieval
    (``recsys_ebm.ranking.faiss_index``) serves any model with these three methods.
    """

    item_factors: np.ndarray | None
    item_bias: np.ndarray | None

    def item_vectors(self) -> np.ndarray:
        """q_i (n_items, dim) float32."""
        self._require_fitted()
        return self.item_factors

    def item_biases(self) -> np.ndarray:
        """b_i (n_items,) float32."""
        self._require_fitted()
        return self.item_bias

    def score(self, user_ids, user_items: sp.csr_matrix | None = None) -> np.ndarray:
        """<p_u, q_i> + b_i for every item: float32 (n, n_items)."""
        vectors = self.user_vectors(user_ids, user_items)
        return (vectors @ self.item_factors.T + self.item_bias).astype(np.float32, copy=False)
