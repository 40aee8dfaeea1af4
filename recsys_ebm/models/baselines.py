"""Item-based baselines (popularity, item-kNN, EASE) and the base class every baseline shares.

All baselines (these and ALS/BPR of ``factor_baselines.py``) implement the `Recommender` interface of `base.py` on binary interactions (every stored
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
from threadpoolctl import threadpool_limits

from recsys_ebm.config import Config, check
from recsys_ebm.data.sparse import binarize
from recsys_ebm.errors import ModelFitError
from recsys_ebm.io import save_model_dir
from recsys_ebm.models.base import (
    EpochCallback,
    Recommender,
    check_user_ids,
    check_user_items,
)
from recsys_ebm.models.similarity import check_ids, nearest_in_matrix
from recsys_ebm.models.training import TrainingHistory, ranking_validator

logger = logging.getLogger(__name__)

#: `implicit` runs single-threaded: its BPR is Hogwild SGD, bitwise reproducible only with one
#: thread; ALS gives identical factors for any thread count and was faster with one on 2 shared
#: cores. BLAS is limited to one thread around implicit calls (implicit's own advice).
IMPLICIT_THREADS = 1


# ---------------------------------------------------------------------------------- configs
def check_ints(config: Config, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        check(isinstance(value, (int, np.integer)) and not isinstance(value, bool),
              f"{name} must be an integer, got {value!r}")


def check_reals(config: Config, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        check(isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
              and math.isfinite(value), f"{name} must be a finite number, got {value!r}")


def check_seed(config: Config) -> None:
    check_ints(config, ("seed",))
    check(config.seed >= 0, f"seed must be >= 0, got {config.seed}")


@dataclasses.dataclass(frozen=True)
class MostPopularConfig(Config):
    """Most popular has no hyperparameters; ``seed`` is accepted and ignored (deterministic)."""

    seed: int = 0

    def __post_init__(self) -> None:
        check_seed(self)


@dataclasses.dataclass(frozen=True)
class ItemKNNConfig(Config):
    """Item-kNN (cosine): ``n_neighbors`` most similar items kept per item."""

    n_neighbors: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        check_ints(self, ("n_neighbors",))
        check(self.n_neighbors >= 1, f"n_neighbors must be >= 1, got {self.n_neighbors}")
        check_seed(self)


@dataclasses.dataclass(frozen=True)
class EASEConfig(Config):
    """EASE: ``l2`` is the ridge penalty lambda added to the diagonal of X^T X."""

    l2: float = 500.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_reals(self, ("l2",))
        check(self.l2 > 0, f"l2 must be > 0, got {self.l2}")
        check_seed(self)


# ---------------------------------------------------------------------------------- helpers
def csr_tensors(prefix: str, matrix: sp.csr_matrix) -> dict[str, np.ndarray]:
    return {f"{prefix}_data": matrix.data, f"{prefix}_indices": matrix.indices,
            f"{prefix}_indptr": matrix.indptr}


def csr_from_tensors(prefix: str, tensors: dict, shape: tuple[int, int]) -> sp.csr_matrix:
    return sp.csr_matrix((tensors[f"{prefix}_data"].numpy(), tensors[f"{prefix}_indices"].numpy(),
                          tensors[f"{prefix}_indptr"].numpy()), shape=shape)


class Baseline(Recommender):
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
        user_items = binarize(check_user_items(user_items))
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
        return ids, binarize(user_items)

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


class _ItemItemBaseline(Baseline):
    """Models scoring a user from their history; trained users are scored from stored rows."""

    def __init__(self, config: Config | None = None, **options):
        super().__init__(config, **options)
        self.train_items: sp.csr_matrix | None = None  # (n_users, n_items) binary float32

    def _history(self, user_ids, user_items) -> sp.csr_matrix:
        ids, rows = self._query(user_ids, user_items)
        return self.train_items[ids] if rows is None else rows

    def _tensors(self) -> dict[str, np.ndarray]:
        return csr_tensors("train", self.train_items)

    def _restore(self, tensors: dict) -> None:
        self.train_items = csr_from_tensors("train", tensors, (self.n_users, self.n_items))

    def _item_item(self):
        """The model's item-item matrix (n_items, n_items): its neighbour weights."""
        raise NotImplementedError

    def similar_items(self, item_ids, k: int = 10, *, N: int | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items with the largest weights in each item's row of the model's item-item
        matrix (itself excluded); ``N`` is implicit's name for ``k``."""
        self._require_fitted()
        ids = check_ids(item_ids, self.n_items, "item")
        return nearest_in_matrix(self._item_item(), ids, N if N is not None else k)


# ---------------------------------------------------------------------------------- pop
class MostPopular(Baseline):
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
        self.item_counts = tensors.expect("item_counts", (self.n_items,)).numpy()


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

    def _item_item(self):
        return self.similarity

    def _tensors(self) -> dict[str, np.ndarray]:
        return {**super()._tensors(), **csr_tensors("similarity", self.similarity)}

    def _restore(self, tensors: dict) -> None:
        super()._restore(tensors)
        self.similarity = csr_from_tensors("similarity", tensors, (self.n_items, self.n_items))


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

    def _item_item(self):
        return self.weights

    def _tensors(self) -> dict[str, np.ndarray]:
        return {**super()._tensors(), "weights": self.weights}

    def _restore(self, tensors: dict) -> None:
        super()._restore(tensors)
        self.weights = tensors.expect("weights", (self.n_items, self.n_items)).numpy()
