"""Baselines every report compares against: popularity, item-kNN, EASE, and `implicit` ALS/BPR.

All five implement the `Recommender` interface of `base.py` on binary interactions (every stored
nonzero counts as one interaction, stored zeros are not interactions):

- ``pop``: most popular, score = number of training users who interacted with the item.
- ``itemknn``: `implicit`'s ``CosineRecommender``: score(u, j) = sum_{i in u} S[i, j] with S the
  cosine similarity kept for the ``n_neighbors`` nearest items of each item.
- ``ease``: EASE (Steck 2019), closed form: P = (X^T X + l2 I)^-1, B = I - P / diag(P) (column
  j divided by P_jj), diag(B) = 0; score = x_u B.
- ``als``: `implicit`'s ``AlternatingLeastSquares`` (confidence = alpha * x_ui); new users are
  folded in by the exact least-squares solve against the item factors.
- ``bpr``: `implicit`'s ``BayesianPersonalizedRanking``; new users are folded in by maximising
  the same per-user BPR objective (popularity-weighted negatives, as implicit samples them) with
  the item factors fixed.

The item-item models (pop, itemknn, ease) score any user from a history, so fold-in is exact;
for a trained user without ``user_items`` they use the stored training rows.

None of these models trains in epochs: ``fit(validation=...)`` records the validation NDCG@10 /
Recall@10 once, in ``history`` (``best_epoch = 1``), and the runner refits with the same options.
Every config has a ``seed`` so all models take the same options; pop, itemknn and ease are
deterministic and ignore it. Config defaults are the values tuned on an ML-100K validation split
carved from train (grids in ``pipelines/grids.toml``, winners in ``pipelines/<name>.toml``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from scipy.special import expit
from threadpoolctl import threadpool_limits

from recsys_ebm.config import Config, check
from recsys_ebm.errors import ModelFitError
from recsys_ebm.io import save_model_dir
from recsys_ebm.models.base import (
    EmbeddingMixin,
    EpochCallback,
    Recommender,
    check_user_ids,
    check_user_items,
)
from recsys_ebm.models.training import TrainingHistory, ranking_validator

logger = logging.getLogger(__name__)

#: `implicit` runs single-threaded: its BPR is Hogwild SGD, bitwise reproducible only with one
#: thread; ALS gives identical factors for any thread count and was faster with one on 2 shared
#: cores. BLAS is limited to one thread around implicit calls (implicit's own advice).
IMPLICIT_THREADS = 1


# ---------------------------------------------------------------------------------- configs
def _check_ints(config: Config, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        check(isinstance(value, (int, np.integer)) and not isinstance(value, bool),
              f"{name} must be an integer, got {value!r}")


def _check_reals(config: Config, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        check(isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
              and math.isfinite(value), f"{name} must be a finite number, got {value!r}")


def _check_seed(config: Config) -> None:
    _check_ints(config, ("seed",))
    check(config.seed >= 0, f"seed must be >= 0, got {config.seed}")


@dataclasses.dataclass(frozen=True)
class MostPopularConfig(Config):
    """Most popular has no hyperparameters; ``seed`` is accepted and ignored (deterministic)."""

    seed: int = 0

    def __post_init__(self) -> None:
        _check_seed(self)


@dataclasses.dataclass(frozen=True)
class ItemKNNConfig(Config):
    """Item-kNN (cosine): ``n_neighbors`` most similar items kept per item."""

    n_neighbors: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        _check_ints(self, ("n_neighbors",))
        check(self.n_neighbors >= 1, f"n_neighbors must be >= 1, got {self.n_neighbors}")
        _check_seed(self)


@dataclasses.dataclass(frozen=True)
class EASEConfig(Config):
    """EASE: ``l2`` is the ridge penalty lambda added to the diagonal of X^T X."""

    l2: float = 500.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check_reals(self, ("l2",))
        check(self.l2 > 0, f"l2 must be > 0, got {self.l2}")
        _check_seed(self)


@dataclasses.dataclass(frozen=True)
class ALSConfig(Config):
    """`implicit` ALS (names as in implicit); ``seed`` seeds the factor initialisation."""

    factors: int = 64
    regularization: float = 30.0
    alpha: float = 3.0
    iterations: int = 15
    seed: int = 0

    def __post_init__(self) -> None:
        _check_ints(self, ("factors", "iterations"))
        _check_reals(self, ("regularization", "alpha"))
        check(self.factors >= 1, f"factors must be >= 1, got {self.factors}")
        check(self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}")
        check(self.regularization >= 0, f"regularization must be >= 0, got {self.regularization}")
        check(self.alpha > 0, f"alpha must be > 0, got {self.alpha}")
        _check_seed(self)


@dataclasses.dataclass(frozen=True)
class BPRConfig(Config):
    """`implicit` BPR (names as in implicit); ``seed`` seeds initialisation and sampling."""

    factors: int = 64
    learning_rate: float = 0.005
    regularization: float = 0.003
    iterations: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        _check_ints(self, ("factors", "iterations"))
        _check_reals(self, ("learning_rate", "regularization"))
        check(self.factors >= 1, f"factors must be >= 1, got {self.factors}")
        check(self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}")
        check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        check(self.regularization >= 0, f"regularization must be >= 0, got {self.regularization}")
        _check_seed(self)


# ---------------------------------------------------------------------------------- helpers
def _binarize(user_items: sp.csr_matrix) -> sp.csr_matrix:
    """A 0/1 float32 copy with sorted indices; stored zeros dropped (they are not interactions)."""
    binary = user_items.copy()
    binary.sum_duplicates()
    binary.eliminate_zeros()
    binary.data[:] = 1.0
    binary.sort_indices()
    return binary


def _csr_tensors(prefix: str, matrix: sp.csr_matrix) -> dict[str, np.ndarray]:
    return {f"{prefix}_data": matrix.data, f"{prefix}_indices": matrix.indices,
            f"{prefix}_indptr": matrix.indptr}


def _csr_from_tensors(prefix: str, tensors: dict, shape: tuple[int, int]) -> sp.csr_matrix:
    return sp.csr_matrix((tensors[f"{prefix}_data"].numpy(), tensors[f"{prefix}_indices"].numpy(),
                          tensors[f"{prefix}_indptr"].numpy()), shape=shape)


class _Baseline(Recommender):
    """Shared plumbing: config handling, input checks, validation record, save/load."""

    config_class: type[Config]
    model_name: str

    def __init__(self, config: Config | None = None, **options):
        if config is not None and options:
            raise ValueError("pass either a config or keyword options, not both")
        if config is not None and not isinstance(config, self.config_class):
            raise ValueError(f"{type(self).__name__} needs a {self.config_class.__name__}, "
                             f"got {type(config).__name__}")
        self.config = config if config is not None else self.config_class(**options)
        self.n_users = 0
        self.n_items = 0
        self.history = TrainingHistory()
        self._fitted = False

    # ------------------------------------------------------------------ training
    def fit(self, user_items: sp.csr_matrix, *, validation: sp.csr_matrix | None = None,
            callback: EpochCallback | None = None, show_progress: bool = True):
        """Fit on a users x items CSR (binarized); with ``validation`` (same shape), record
        NDCG@10 / Recall@10 of its items, ranked with ``user_items`` filtered, in ``history``."""
        # check_user_items may share the caller's arrays: binarize a copy
        user_items = _binarize(check_user_items(user_items))
        if user_items.nnz == 0:
            raise ValueError("user_items has no interactions to train on")
        if validation is not None:
            validation = check_user_items(validation, n_rows=user_items.shape[0],
                                          n_items=user_items.shape[1])
        self._fitted = False
        self.n_users, self.n_items = user_items.shape
        self._remember_seen(user_items)
        self._fit(user_items, show_progress)
        self._fitted = True
        metrics: dict[str, float] = {}
        if validation is not None and validation.nnz:
            validate = ranking_validator(lambda users: self.recommend(users, user_items, k=10)[0],
                                         validation, k=10)
            metrics = validate()
        self.history = TrainingHistory(epochs=[metrics], best_epoch=1,
                                       best_value=metrics.get("val_ndcg@10", math.nan))
        if callback is not None and metrics:
            callback(1, metrics)
        return self

    def _fit(self, user_items: sp.csr_matrix, show_progress: bool) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ inference
    def _require_fitted(self) -> None:
        if not self._fitted:
            raise RuntimeError("the model is not fitted: call fit() or load() first")

    def _query(self, user_ids, user_items) -> tuple[np.ndarray, sp.csr_matrix | None]:
        """Checked ids and, for fold-in, the binarized rows aligned with them."""
        self._require_fitted()
        if user_items is None:
            return check_user_ids(user_ids, self.n_users), None
        user_items = check_user_items(user_items, n_items=self.n_items)
        ids = check_user_ids(user_ids, None)
        if user_items.shape[0] != len(ids):
            raise ValueError(f"user_items has {user_items.shape[0]} rows for {len(ids)} user ids "
                             "(fold-in rows must align with user_ids)")
        return ids, _binarize(user_items)

    # ------------------------------------------------------------------ persistence
    def _tensors(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _restore(self, tensors: dict) -> None:
        raise NotImplementedError

    def save(self, path, meta: dict | None = None):
        """Write plain arrays (no pickle) + JSON config to directory ``path``."""
        self._require_fitted()
        info = {"n_users": self.n_users, "n_items": self.n_items,
                "best_epoch": self.history.best_epoch, **(meta or {})}
        tensors = {**self._tensors(), **self._seen_tensors()}
        return save_model_dir(path, self.model_name, self.config.to_dict(), tensors, info)

    @classmethod
    def load(cls, path):
        model, tensors, meta = cls._load_dir(path, cls.model_name)
        model._restore(tensors)
        model.history = TrainingHistory(best_epoch=int(meta.get("best_epoch", 0)))
        model.meta = meta
        model._fitted = True
        return model


class _ItemItemBaseline(_Baseline):
    """Models scoring a user from their history; trained users are scored from stored rows."""

    def __init__(self, config: Config | None = None, **options):
        super().__init__(config, **options)
        self.train_items: sp.csr_matrix | None = None  # (n_users, n_items) binary float32

    def _history(self, user_ids, user_items) -> sp.csr_matrix:
        ids, rows = self._query(user_ids, user_items)
        return self.train_items[ids] if rows is None else rows

    def _tensors(self) -> dict[str, np.ndarray]:
        return _csr_tensors("train", self.train_items)

    def _restore(self, tensors: dict) -> None:
        self.train_items = _csr_from_tensors("train", tensors, (self.n_users, self.n_items))


# ---------------------------------------------------------------------------------- pop
class MostPopular(_Baseline):
    """Most popular: score(u, i) = number of training users with an interaction with i."""
    deterministic = True

    config_class = MostPopularConfig
    model_name = "pop"

    def __init__(self, config: MostPopularConfig | None = None, **options):
        super().__init__(config, **options)
        self.item_counts: np.ndarray | None = None  # (n_items,) float32

    def _fit(self, user_items: sp.csr_matrix, show_progress: bool) -> None:
        self.item_counts = np.bincount(user_items.indices, minlength=self.n_items).astype(np.float32)

    def score(self, user_ids, user_items: sp.csr_matrix | None = None) -> np.ndarray:
        """Item counts for every user: float32 (n, n_items); ``user_items`` only checked."""
        ids, _ = self._query(user_ids, user_items)
        return np.tile(self.item_counts, (len(ids), 1))

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"item_counts": self.item_counts}

    def _restore(self, tensors: dict) -> None:
        self.item_counts = tensors["item_counts"].numpy()


# ---------------------------------------------------------------------------------- item-kNN
class ItemKNN(_ItemItemBaseline):
    """`implicit`'s ``CosineRecommender``: score = x_u S, S the top-``n_neighbors`` cosine graph.

    ``S[i, j]`` is the cosine similarity of items i and j (columns of the binary user x item
    matrix) for the ``n_neighbors`` most similar j of each i, 0 elsewhere; implicit's own
    ``recommend`` ranks by the same x_u S.
    """
    deterministic = True

    config_class = ItemKNNConfig
    model_name = "itemknn"

    def __init__(self, config: ItemKNNConfig | None = None, **options):
        super().__init__(config, **options)
        self.similarity: sp.csr_matrix | None = None  # (n_items, n_items) float32

    def _fit(self, user_items: sp.csr_matrix, show_progress: bool) -> None:
        from implicit.nearest_neighbours import CosineRecommender
        from implicit.utils import ParameterWarning

        with threadpool_limits(1, "blas"), warnings.catch_warnings():
            # implicit normalises to COO internally, then warns about its own conversion
            warnings.filterwarnings("ignore", category=ParameterWarning)
            knn = CosineRecommender(K=self.config.n_neighbors, num_threads=IMPLICIT_THREADS)
            knn.fit(user_items, show_progress=show_progress)
        similarity = sp.csr_matrix(knn.similarity, dtype=np.float32)
        similarity.sort_indices()
        self.similarity = similarity
        self.train_items = user_items

    def score(self, user_ids, user_items: sp.csr_matrix | None = None) -> np.ndarray:
        """sum of the similarities of the user's items to each item: float32 (n, n_items)."""
        history = self._history(user_ids, user_items)
        return (history @ self.similarity).toarray().astype(np.float32, copy=False)

    def _tensors(self) -> dict[str, np.ndarray]:
        return {**super()._tensors(), **_csr_tensors("similarity", self.similarity)}

    def _restore(self, tensors: dict) -> None:
        super()._restore(tensors)
        self.similarity = _csr_from_tensors("similarity", tensors, (self.n_items, self.n_items))


# ---------------------------------------------------------------------------------- EASE
def ease_weights(user_items: sp.csr_matrix, l2: float) -> np.ndarray:
    """EASE's item-item matrix B (n_items, n_items) float64, in closed form.

    P = (X^T X + l2 I)^-1 and B_ij = -P_ij / P_jj for i != j, B_jj = 0 (Steck 2019): the
    ridge regression of every item column on all the other items, with no self-weight.
    Memory and time grow as n_items^2 / n_items^3 (fine up to a few 10^4 items).
    """
    x = sp.csr_matrix(user_items, dtype=np.float64)
    gram = (x.T @ x).toarray()
    gram[np.diag_indices_from(gram)] += l2
    # X^T X + l2 I is symmetric positive definite for l2 > 0: Cholesky is exact and stable
    precision = scipy.linalg.cho_solve(scipy.linalg.cho_factor(gram), np.eye(gram.shape[0]))
    weights = precision / -np.diag(precision)[None, :]
    weights[np.diag_indices_from(weights)] = 0.0
    return weights


class EASE(_ItemItemBaseline):
    """EASE (Embarrassingly Shallow Autoencoder): score = x_u B with B from ``ease_weights``."""
    deterministic = True

    config_class = EASEConfig
    model_name = "ease"

    def __init__(self, config: EASEConfig | None = None, **options):
        super().__init__(config, **options)
        self.weights: np.ndarray | None = None  # (n_items, n_items) float32

    def _fit(self, user_items: sp.csr_matrix, show_progress: bool) -> None:
        weights = ease_weights(user_items, self.config.l2)
        if not np.all(np.isfinite(weights)):
            raise ModelFitError(f"EASE weights are not finite (l2={self.config.l2:g}); raise l2")
        self.weights = weights.astype(np.float32)
        self.train_items = user_items

    def score(self, user_ids, user_items: sp.csr_matrix | None = None) -> np.ndarray:
        """x_u B for every item: float32 (n, n_items)."""
        history = self._history(user_ids, user_items)
        return np.asarray(history @ self.weights, dtype=np.float32)

    def _tensors(self) -> dict[str, np.ndarray]:
        return {**super()._tensors(), "weights": self.weights}

    def _restore(self, tensors: dict) -> None:
        super()._restore(tensors)
        self.weights = tensors["weights"].numpy()


# ---------------------------------------------------------------------------------- factor models
class _FactorBaseline(EmbeddingMixin, _Baseline):
    """score = user_vectors . item_vectors + item_biases, so FAISS retrieval can serve it."""

    def __init__(self, config: Config | None = None, **options):
        super().__init__(config, **options)
        self.user_factors: np.ndarray | None = None  # (n_users, dim) float32
        self.item_factors: np.ndarray | None = None  # (n_items, dim) float32
        self.item_bias: np.ndarray | None = None  # (n_items,) float32

    def _fold_in(self, rows: sp.csr_matrix) -> np.ndarray:
        raise NotImplementedError

    def user_vectors(self, user_ids, user_items: sp.csr_matrix | None = None) -> np.ndarray:
        """p_u (n, dim) float32: trained users, or users folded in from ``user_items`` rows."""
        ids, rows = self._query(user_ids, user_items)
        if rows is None:
            return self.user_factors[ids]
        return self._fold_in(rows)

    def _check_finite(self) -> None:
        for name in ("user_factors", "item_factors", "item_bias"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ModelFitError(f"{self.model_name}: non-finite values in {name} after "
                                    f"{getattr(self.config, 'iterations', '?')} iterations; "
                                    "lower the learning rate or raise the regularization")


class ALS(_FactorBaseline):
    """`implicit` ALS (Hu, Koren & Volinsky 2008; confidence alpha * x_ui on observed items).

    Fold-in solves each new user's weighted least squares exactly against the item factors
    (implicit's ``recalculate_user``); trained users' factors come from implicit's conjugate-
    gradient steps against the previous half-iteration's items, so folding a trained user's own
    history in gives close, not identical, scores. ``item_biases`` are zeros.
    """

    config_class = ALSConfig
    model_name = "als"

    def __init__(self, config: ALSConfig | None = None, **options):
        super().__init__(config, **options)
        self._implicit = None

    def _make_implicit(self):
        from implicit.cpu.als import AlternatingLeastSquares

        cfg = self.config
        with threadpool_limits(1, "blas"):
            return AlternatingLeastSquares(
                factors=cfg.factors, regularization=cfg.regularization, alpha=cfg.alpha,
                iterations=cfg.iterations, dtype=np.float32, num_threads=IMPLICIT_THREADS,
                random_state=cfg.seed,
            )

    def _fit(self, user_items: sp.csr_matrix, show_progress: bool) -> None:
        model = self._make_implicit()
        with threadpool_limits(1, "blas"):
            try:
                model.fit(user_items, show_progress=show_progress)
            except ValueError as exc:  # implicit's NaN check
                raise ModelFitError(f"als: {exc}") from exc
        self._implicit = model
        self.user_factors = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        self.item_bias = np.zeros(self.n_items, dtype=np.float32)
        self._check_finite()

    def _fold_in(self, rows: sp.csr_matrix) -> np.ndarray:
        if rows.shape[0] == 0:
            return np.zeros((0, self.config.factors), dtype=np.float32)
        with threadpool_limits(1, "blas"):
            vectors = self._implicit.recalculate_user(np.arange(rows.shape[0]), rows)
        return np.asarray(vectors, dtype=np.float32).reshape(rows.shape[0], -1)

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"user_factors": self.user_factors, "item_factors": self.item_factors}

    def _restore(self, tensors: dict) -> None:
        self.user_factors = tensors["user_factors"].numpy()
        self.item_factors = tensors["item_factors"].numpy()
        self.item_bias = np.zeros(self.n_items, dtype=np.float32)
        self._implicit = self._make_implicit()
        self._implicit.user_factors = self.user_factors.copy()
        self._implicit.item_factors = self.item_factors.copy()


class BPR(_FactorBaseline):
    """`implicit` BPR (Rendle et al. 2009), SGD on one thread (bitwise reproducible).

    implicit stores the item bias as the last item-factor column against a constant 1 in the
    user factors; here it is split off: ``item_vectors`` (n_items, factors), ``item_biases``
    (n_items,), ``user_vectors`` (n, factors), score = p_u . q_i + b_i.

    Fold-in (``bpr_fold_in``) maximises a new user's BPR objective with the items fixed:
    the expectation of what implicit's SGD optimises for that user (negatives drawn by training
    popularity, the user's own items excluded), so a trained user's folded-in vector is close
    to the trained one, up to the SGD noise.
    """

    config_class = BPRConfig
    model_name = "bpr"

    def __init__(self, config: BPRConfig | None = None, **options):
        super().__init__(config, **options)
        self.item_counts: np.ndarray | None = None  # (n_items,) float32: negative-sampling weights

    def _fit(self, user_items: sp.csr_matrix, show_progress: bool) -> None:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        cfg = self.config
        with threadpool_limits(1, "blas"):
            model = BayesianPersonalizedRanking(
                factors=cfg.factors, learning_rate=cfg.learning_rate,
                regularization=cfg.regularization, dtype=np.float32, iterations=cfg.iterations,
                num_threads=IMPLICIT_THREADS, verify_negative_samples=True, random_state=cfg.seed,
            )
            try:
                model.fit(user_items, show_progress=show_progress)
            except ValueError as exc:  # implicit's NaN check
                raise ModelFitError(f"bpr: {exc}") from exc
        # implicit: user_factors[:, -1] == 1 for every user, item_factors[:, -1] is the bias
        self.user_factors = np.ascontiguousarray(model.user_factors[:, :-1], dtype=np.float32)
        self.item_factors = np.ascontiguousarray(model.item_factors[:, :-1], dtype=np.float32)
        self.item_bias = np.ascontiguousarray(model.item_factors[:, -1], dtype=np.float32)
        self.item_counts = np.bincount(user_items.indices, minlength=self.n_items).astype(np.float32)
        self._check_finite()

    def _fold_in(self, rows: sp.csr_matrix) -> np.ndarray:
        # many small BLAS calls: extra BLAS threads only spin on a shared machine
        with threadpool_limits(1, "blas"):
            vectors = bpr_fold_in(rows, self.item_factors, self.item_bias, self.item_counts,
                                  self.config.regularization)
        return vectors.astype(np.float32)

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"user_factors": self.user_factors, "item_factors": self.item_factors,
                "item_bias": self.item_bias, "item_counts": self.item_counts}

    def _restore(self, tensors: dict) -> None:
        for name in ("user_factors", "item_factors", "item_bias", "item_counts"):
            setattr(self, name, tensors[name].numpy())


# ---------------------------------------------------------------------------------- BPR fold-in
#: the fold-in needs a strictly convex objective; regularization = 0 is floored to this
FOLD_IN_MIN_L2 = 1e-6
#: elements per temporary array (pairs x items, users x items x dim) in the fold-in passes
_FOLD_IN_BLOCK = 1 << 20


def bpr_fold_in(rows: sp.csr_matrix, item_vectors: np.ndarray, item_biases: np.ndarray,
                negative_weights: np.ndarray, regularization: float, *, max_iter: int = 50,
                tol: float = 1e-12) -> np.ndarray:
    """User vectors maximising each user's BPR objective with the item parameters fixed.

    For a user with items I (rows of ``rows``), s = Q p + b and w_j the sampling weight of
    negative j (zero on I, normalised to sum 1), minimise

        L(p) = 1/|I| sum_{i in I} sum_j w_j softplus(s_j - s_i) + regularization / 2 |p|^2,

    the stationary point of implicit's per-sample SGD for that user. L is strictly convex;
    damped Newton (exact Hessian, Armijo backtracking) runs per user, vectorised over users,
    and each user stops on its own Newton decrement, so a user's result does not depend on
    which other users share the call. Users with no items (or no possible negatives) get 0.

    Parameters
    ----------
    rows : CSR (n, n_items), binary
    item_vectors : (n_items, dim); item_biases : (n_items,)
    negative_weights : (n_items,) nonnegative, e.g. training popularity
    regularization : the model's L2 (floored at ``FOLD_IN_MIN_L2``)

    Returns
    -------
    float64 (n, dim)
    """
    rows = sp.csr_matrix(rows)
    n, n_items = rows.shape
    q = np.asarray(item_vectors, dtype=np.float64)
    b = np.asarray(item_biases, dtype=np.float64)
    reg = max(float(regularization), FOLD_IN_MIN_L2)
    vectors = np.zeros((n, q.shape[1]))
    negatives = np.where(rows.toarray() > 0, 0.0, np.asarray(negative_weights, dtype=np.float64))
    total = negatives.sum(axis=1)
    counts = np.diff(rows.indptr)
    active = np.flatnonzero((counts > 0) & (total > 0))
    # w_j / |I| for every (user item, j) pair of the user
    negatives[active] /= (total[active] * counts[active])[:, None]
    for _ in range(max_iter):
        if active.size == 0:
            break
        sub_rows, sub_neg = rows[active], negatives[active]
        loss, grad, hess = _bpr_objective(vectors[active], sub_rows, sub_neg, q, b, reg, True)
        step = -np.linalg.solve(hess, grad[:, :, None])[:, :, 0]
        decrement = -(grad * step).sum(axis=1)  # g^T H^-1 g >= 0
        keep = decrement / 2 > tol
        # backtracking per user: each user keeps halving its own step until Armijo holds
        t = np.ones(active.size)
        todo = keep.copy()
        for _ in range(40):
            if not todo.any():
                break
            idx = np.flatnonzero(todo)
            trial = vectors[active[idx]] + t[idx, None] * step[idx]
            new_loss = _bpr_objective(trial, sub_rows[idx], sub_neg[idx], q, b, reg, False)[0]
            ok = new_loss <= loss[idx] - 1e-4 * t[idx] * decrement[idx]
            vectors[active[idx[ok]]] = trial[ok]
            todo[idx[ok]] = False
            t[idx[~ok]] /= 2
        keep &= ~todo  # no acceptable step: the user is at the optimum up to rounding
        active = active[keep]
    return vectors


def _bpr_objective(p: np.ndarray, rows: sp.csr_matrix, negatives: np.ndarray, q: np.ndarray,
                   b: np.ndarray, reg: float, derivatives: bool):
    """Per-user loss (m,), and with ``derivatives`` gradient (m, dim) and Hessian (m, dim, dim).

    ``negatives`` (m, n_items) holds w_j / |I| (zero on the user's items).

    One pass over the (user item, catalog item) pairs in blocks; pair rows are grouped by
    user (CSR order), so per-user sums are ``np.add.reduceat`` over contiguous segments.
    """
    m, dim = p.shape
    n_items = q.shape[0]
    counts = np.diff(rows.indptr)
    pair_user = np.repeat(np.arange(m), counts)
    pair_item = rows.indices
    scores = p @ q.T + b
    loss = reg / 2 * (p**2).sum(axis=1)
    if derivatives:
        d_scores = np.zeros((m, n_items))
        curvature = np.zeros((m, n_items))
        right = np.empty((pair_user.size, dim))
    block = max(1, _FOLD_IN_BLOCK // n_items)
    for start in range(0, pair_user.size, block):
        u, i = pair_user[start:start + block], pair_item[start:start + block]
        first = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
        owners = u[first]
        weight = negatives[u]
        diff = scores[u] - scores[u, i][:, None]  # s_j - s_i
        loss[owners] += np.add.reduceat((weight * np.logaddexp(0.0, diff)).sum(axis=1), first)
        if not derivatives:
            continue
        sig = expit(diff)
        g = weight * sig
        d_scores[owners] += np.add.reduceat(g, first, axis=0)
        d_scores[u, i] -= g.sum(axis=1)
        h = g * (1.0 - sig)
        curvature[owners] += np.add.reduceat(h, first, axis=0)
        right[start:start + block] = 0.5 * h.sum(axis=1)[:, None] * q[i] - h @ q
    if not derivatives:
        return loss, None, None
    grad = d_scores @ q + reg * p
    # sum_ij h_ij (q_j - q_i)(q_j - q_i)^T = Q^T diag(c) Q + M + M^T with
    # M = sum_i q_i (e_i / 2 q_i - h_i Q)^T = Q_I^T Right_I: batched over users, zero-padded
    width = int(counts.max())
    slot = np.arange(pair_user.size) - rows.indptr[pair_user]
    hess = np.empty((m, dim, dim))
    users_per_chunk = max(1, _FOLD_IN_BLOCK // (max(width, n_items) * dim))
    for start in range(0, m, users_per_chunk):
        stop = min(start + users_per_chunk, m)
        pairs = slice(rows.indptr[start], rows.indptr[stop])
        q_pad = np.zeros((stop - start, width, dim))
        r_pad = np.zeros((stop - start, width, dim))
        q_pad[pair_user[pairs] - start, slot[pairs]] = q[pair_item[pairs]]
        r_pad[pair_user[pairs] - start, slot[pairs]] = right[pairs]
        cross = np.matmul(q_pad.transpose(0, 2, 1), r_pad)
        c = curvature[start:stop]
        hess[start:stop] = np.matmul(q.T[None] * c[:, None, :], q) + cross + cross.transpose(0, 2, 1)
    hess[:, np.arange(dim), np.arange(dim)] += reg
    return loss, grad, hess
