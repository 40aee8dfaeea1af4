"""`Recommender`: the model interface, with `recommend` built once on top of each model's
`score` (or its vectors), through the serving core of :mod:`recsys_ebm.ranking`."""

from __future__ import annotations

import dataclasses
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from recsys_ebm.data.sequences import Sequences
from recsys_ebm.data.sparse import canonical_csr
from recsys_ebm.ranking.factored import rank_vectors
from recsys_ebm.ranking.select import select
from recsys_ebm.ranking.topk import (
    align_rows,
    check_k,
    check_temperature,
    item_mask,
    mask_rows,
)

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
    #: reads the order of a history (a sequence model, ``models/sequential.py``): ``fit`` also
    #: takes ``sequences=`` (a :class:`~recsys_ebm.data.sequences.Sequences`, one row per user)
    #: and scores trained users from those; set models never receive an order
    uses_order: bool = False

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

    # ------------------------------------------------------------------ the seen set
    #: the users x items pattern the model was fitted on (binary CSR), or None before ``fit``
    seen_items: sp.csr_matrix | None = None

    def serving(self) -> dict:
        """How this model's rankings are made, for records that must not mix two ways (an
        export's resumable parts): the exact path of the model itself."""
        return {"path": "exact", "model": type(self).__name__}

    def zeros_are_interactions(self) -> bool:
        """Whether a stored zero in ``user_items`` is an interaction (a rating of 0 for a model
        whose scale includes 0); for every other model it is not, as everywhere in the toolkit."""
        return False

    def _interaction_pattern(self, user_items: sp.csr_matrix, name: str = "user_items") -> sp.csr_matrix:
        """The canonical pattern of ``user_items`` as this model counts interactions: what the
        seen set holds and what an explicit ``user_items`` leaves out, by one rule."""
        return canonical_csr(user_items, name=name, drop_zeros=not self.zeros_are_interactions())

    def _remember_seen(self, user_items: sp.csr_matrix) -> None:
        """Keep the fitted interactions' pattern: what ``recommend`` leaves out by default."""
        pattern = sp.csr_matrix(self._interaction_pattern(user_items), dtype=np.float32, copy=True)
        pattern.data[:] = 1.0
        self.seen_items = pattern

    def _seen_tensors(self) -> dict[str, np.ndarray]:
        """The seen set as plain arrays for ``save`` (empty when the model has none)."""
        if self.seen_items is None:
            return {}
        return {"seen.indptr": self.seen_items.indptr.astype(np.int64),
                "seen.indices": self.seen_items.indices.astype(np.int64)}

    def _restore_seen(self, tensors: dict) -> None:
        """Rebuild the seen set saved by :meth:`_seen_tensors` (models saved without one keep None)."""
        if "seen.indptr" not in tensors:
            return
        indptr = np.asarray(tensors["seen.indptr"], dtype=np.int64)
        indices = np.asarray(tensors["seen.indices"], dtype=np.int64)
        if indptr.shape != (self.n_users + 1,) or indptr[-1] != indices.size or (
                indices.size and (indices.min() < 0 or indices.max() >= self.n_items)):
            raise ValueError(f"the saved seen set does not fit {self.n_users} users x {self.n_items} items")
        self.seen_items = sp.csr_matrix((np.ones(indices.size, np.float32), indices, indptr),
                                        shape=(self.n_users, self.n_items))

    @classmethod
    def _load_dir(cls, path, model_name: str) -> tuple[Recommender, dict, dict]:
        """Read a saved model directory, check it holds ``model_name``, and build the model
        (config, ``n_users``, ``n_items``, seen set) for ``load`` to fill: ``(model, tensors, meta)``."""
        from recsys_ebm.io import load_model_dir

        name, config, tensors, meta = load_model_dir(path)
        if name != model_name:
            raise ValueError(f"{path} holds a {name!r} model, not {model_name!r}")
        model = cls(cls.config_class.from_saved(config))
        model.n_users, model.n_items = int(meta["n_users"]), int(meta["n_items"])
        model._restore_seen(tensors)
        return model, tensors, meta

    # ------------------------------------------------------------------ ranking
    def recommend(
        self,
        user_ids,
        user_items: sp.csr_matrix | None = None,
        k: int = 10,
        *,
        filter_seen: bool = True,
        items=None,
        filter_items=None,
        temperature: float = 0.0,
        rng: np.random.Generator | int | None = None,
        batch_size: int | None = None,
        fold_in: bool = False,
        n_threads: int | None = 1,
        with_probabilities: bool = False,
        sequences: Sequences | None = None,
        **aliases,
    ):
        """Top-k (T = 0) or sampled (T > 0) items per user: the toolkit's one ranking.

        Parameters
        ----------
        user_ids : int (n,)
        user_items : CSR, either (n_users_trained, n_items) indexed by ``user_ids`` or (n,
            n_items) aligned with them; its items are left out when ``filter_seen``. Without
            it, the model's seen set (the interactions it was fitted on) is left out.
        items : allowed item ids (or a bool mask over items); ``filter_items``: blocked ones.
        temperature : 0 for the exact ranking (ties to the lower item id); > 0 samples k
            distinct items without replacement from softmax(score / T).
        rng : seed (int, default 0) or a ``np.random.Generator`` to draw one from. User
            ``u``'s draw depends only on (seed, u): not on batches, threads or other users.
        fold_in : score users from ``user_items`` (their histories) instead of trained vectors.
        n_threads : worker threads for models with vectors (None = every CPU).
        with_probabilities : also return p(i | u, T) of each returned item over the items
            the user may receive (at T = 1 for the ranking), float64 (n, k), NaN for padding.
        sequences : ordered histories aligned with ``user_ids`` (a ``Sequences``) for models
            that read the order (``uses_order``); ``user_items`` defaults to their set view, so
            set models rank the same histories as sets.
        aliases : implicit's names ``N`` (k), ``filter_already_liked_items`` (filter_seen)
            and ``recalculate_user`` (fold_in).

        Returns
        -------
        ids int64 (n, k) and scores float32 (n, k), best first (draw order when sampling),
        padded with -1 / -inf; with ``with_probabilities`` a third array.
        """
        k, filter_seen, fold_in = _implicit_aliases(aliases, k, filter_seen, fold_in)
        k, temperature = check_k(k), check_temperature(temperature)
        user_ids = check_user_ids(user_ids, None if fold_in else self.n_users)
        if sequences is not None:
            if len(sequences) != len(user_ids) or sequences.n_items != self.n_items:
                raise ValueError(f"sequences has {len(sequences)} rows over {sequences.n_items} items "
                                 f"for {len(user_ids)} user ids and a model of {self.n_items} items")
            user_items = sequences.to_csr() if user_items is None else user_items
        if user_items is not None:
            user_items = check_user_items(user_items, n_items=self.n_items)
        rows = align_rows(user_items, user_ids, None if fold_in else self.n_users,
                          aligned=fold_in or sequences is not None)
        if fold_in and rows is None:
            raise ValueError("fold_in=True needs user_items aligned with user_ids")
        exclude = None
        if filter_seen:
            exclude = rows if rows is not None else self._seen_rows(user_ids)
        request = RankRequest(
            user_ids=user_ids, history=rows if fold_in else None,
            exclude=None if exclude is None else self._interaction_pattern(exclude),
            mask=item_mask(self.n_items, items, filter_items), k=k, temperature=temperature,
            seed=seed_from(rng), keys=user_ids, with_log_p=with_probabilities,
            batch_size=batch_size, n_threads=n_threads, sequences=sequences)
        ids, scores, log_p = self._rank(request)
        if with_probabilities:
            return ids, scores, np.where(ids >= 0, np.exp(log_p), np.nan)
        return ids, scores

    def recommend_group(self, user_ids, k: int = 10, *, strategy: str = "poe", weights=None,
                        **options) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (or sampled) items for the group of trained users ``user_ids``: ids (k,) and
        scores (k,). Strategies, weights, the group's seen set and its sampling key are those
        of :func:`recsys_ebm.models.group.recommend_groups`, which takes the other options."""
        from recsys_ebm.models.group import recommend_groups

        ids, scores = recommend_groups(self, [user_ids], k, strategy=strategy,
                                       weights=None if weights is None else [weights], **options)
        return ids[0], scores[0]

    def recommend_mix(self, user_ids, weights, k: int = 10, **options) -> tuple[np.ndarray, np.ndarray]:
        """The taste mix E = Σ_u w_u E(u, ·) of trained users (a product of experts): for two
        users a number λ means weights (1 − λ, λ). Returns ids (k,) and scores (k,)."""
        from recsys_ebm.ranking.compose import mix_weights

        if np.ndim(weights) == 0:
            weights = mix_weights(weights)
        return self.recommend_group(user_ids, k, strategy="poe", weights=weights, **options)

    def _seen_rows(self, user_ids: np.ndarray) -> sp.csr_matrix | None:
        """The seen set's rows of trained users (None when the model has no seen set)."""
        if self.seen_items is None:
            return None
        return self.seen_items[user_ids]

    def _rank(self, request: RankRequest) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Rank through ``score``: users in blocks of ``batch_size``, each block masked and
        selected by :func:`recsys_ebm.ranking.select.select`. Models with a faster exact
        path (vectors, an index) override this, never ``recommend``."""
        r = request

        def block_scores(start: int, stop: int) -> np.ndarray:
            history = r.history[start:stop] if r.history is not None else None
            return self.score(r.user_ids[start:stop], history)

        return self._rank_blocks(r, block_scores)

    @staticmethod
    def _rank_blocks(r: RankRequest, block_scores: Callable[[int, int], np.ndarray]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The one block loop: ``block_scores(start, stop)`` (the scores of users
        ``start..stop-1`` of the request) masked and selected block by block."""
        n, step = len(r.user_ids), r.batch_size or 2048
        ids, values = np.empty((n, r.k), np.int64), np.empty((n, r.k), np.float32)
        log_p = np.empty((n, r.k)) if r.with_log_p else None
        for start in range(0, n, step):
            stop = min(start + step, n)
            scores = np.array(block_scores(start, stop), dtype=np.float32, order="C")
            mask_rows(scores, r.exclude, start)
            if r.mask is not None:
                scores[:, ~r.mask] = -np.inf
            block = select(scores, r.k, r.temperature, r.seed, r.keys[start:stop],
                           with_log_p=r.with_log_p)
            ids[start:stop], values[start:stop] = block[0], block[1]
            if log_p is not None:
                log_p[start:stop] = block[2]
        return ids, values, log_p


@dataclasses.dataclass(frozen=True, eq=False)
class RankRequest:
    """One checked ranking request, as ``recommend`` hands it to a model's ``_rank``.

    ``history`` (n, n_items) is set for fold-in; ``exclude`` (n, n_items) canonical CSR rows
    aligned with ``user_ids``; ``mask`` bool (n_items,) of returnable items; ``keys`` the users'
    sampling keys; ``sequences`` the ordered histories aligned with ``user_ids`` when the caller
    gave them (read only by models that ``uses_order``).
    """

    user_ids: np.ndarray
    history: sp.csr_matrix | None
    exclude: sp.csr_matrix | None
    mask: np.ndarray | None
    k: int
    temperature: float
    seed: int
    keys: np.ndarray
    with_log_p: bool
    batch_size: int | None
    n_threads: int | None
    sequences: Sequences | None = None


def seed_from(rng: np.random.Generator | int | None) -> int:
    """A sampling seed: the int given (0 when None), or one drawn from a Generator."""
    if rng is None:
        return 0
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(0, 2**63 - 1))
    try:
        seed = operator.index(rng)
    except TypeError:
        raise ValueError(f"rng must be an int seed or a numpy Generator, got {rng!r}") from None
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return seed


def _implicit_aliases(aliases: dict, k: int, filter_seen: bool, fold_in: bool) -> tuple[int, bool, bool]:
    """Accept implicit's keyword names beside the toolkit's."""
    names = {"N": "k", "filter_already_liked_items": "filter_seen", "recalculate_user": "fold_in"}
    unknown = sorted(set(aliases) - set(names))
    if unknown:
        raise TypeError(f"recommend() got unexpected keyword argument(s) {unknown}")
    k = aliases.get("N", k)
    filter_seen = aliases.get("filter_already_liked_items", filter_seen)
    fold_in = aliases.get("recalculate_user", fold_in)
    return k, bool(filter_seen), bool(fold_in)


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

    def _rank(self, request: RankRequest) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The factored kernel: one BLAS product per block of users, blocks on worker threads."""
        r = request
        vectors = self.user_vectors(r.user_ids, r.history)
        return rank_vectors(vectors, self.item_vectors(), self.item_biases(), r.k, r.temperature,
                            r.seed, keys=r.keys, exclude=r.exclude, mask=r.mask,
                            with_log_p=r.with_log_p, batch_size=r.batch_size,
                            n_threads=r.n_threads)

    def similar_items(self, item_ids, k: int = 10, *, metric: str = "cosine", N: int | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items nearest to each of ``item_ids`` (itself excluded): by the cosine of
        the item vectors, or ``metric="energy"``, the items of lowest energy for a query that is
        the item's vector. ``N`` is implicit's name for ``k``. Returns ids (n, k), scores (n, k)."""
        self._require_fitted()
        from recsys_ebm.models.similarity import check_ids, nearest_rows

        ids = check_ids(item_ids, self.n_items, "item")
        return nearest_rows(self.item_vectors(), ids, N if N is not None else k, metric=metric,
                            biases=self.item_biases())

    def similar_users(self, user_ids, k: int = 10, *, N: int | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` trained users whose vectors are nearest (cosine) to each of ``user_ids``,
        themselves excluded. Returns ids (n, k), scores (n, k)."""
        self._require_fitted()
        from recsys_ebm.models.similarity import check_ids, nearest_rows

        ids = check_ids(user_ids, self.n_users, "user")
        return nearest_rows(self.user_vectors(np.arange(self.n_users)), ids, N if N is not None else k)

