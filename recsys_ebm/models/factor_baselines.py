"""`implicit`'s factor models as `Recommender`s: ALS and BPR, with fold-in of new users.

- ``als``: `implicit`'s ``AlternatingLeastSquares`` (confidence = alpha * x_ui); new users are
  folded in by the exact least-squares solve against the item factors.
- ``bpr``: `implicit`'s ``BayesianPersonalizedRanking``; new users are folded in by maximising
  the same per-user BPR objective (popularity-weighted negatives, as implicit samples them) with
  the item factors fixed.

Both expose user vectors, item vectors and biases, so they rank through the factored kernel
and serve through the FAISS index like the dot-product EBM. Config defaults are tuned on an
ML-100K validation split (``pipelines/<name>.toml``).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import scipy.sparse as sp
from scipy.special import expit
from threadpoolctl import threadpool_limits

from recsys_ebm.config import Config, check
from recsys_ebm.errors import ModelFitError
from recsys_ebm.models.base import EmbeddingMixin
from recsys_ebm.models.baselines import (
    IMPLICIT_THREADS,
    Baseline,
    check_ints,
    check_reals,
    check_seed,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ALSConfig(Config):
    """`implicit` ALS (names as in implicit); ``seed`` seeds the factor initialisation."""

    factors: int = 64
    regularization: float = 30.0
    alpha: float = 3.0
    iterations: int = 15
    seed: int = 0

    def __post_init__(self) -> None:
        check_ints(self, ("factors", "iterations"))
        check_reals(self, ("regularization", "alpha"))
        check(self.factors >= 1, f"factors must be >= 1, got {self.factors}")
        check(self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}")
        check(self.regularization >= 0, f"regularization must be >= 0, got {self.regularization}")
        check(self.alpha > 0, f"alpha must be > 0, got {self.alpha}")
        check_seed(self)


@dataclasses.dataclass(frozen=True)
class BPRConfig(Config):
    """`implicit` BPR (names as in implicit); ``seed`` seeds initialisation and sampling."""

    factors: int = 64
    learning_rate: float = 0.005
    regularization: float = 0.003
    iterations: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        check_ints(self, ("factors", "iterations"))
        check_reals(self, ("learning_rate", "regularization"))
        check(self.factors >= 1, f"factors must be >= 1, got {self.factors}")
        check(self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}")
        check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        check(self.regularization >= 0, f"regularization must be >= 0, got {self.regularization}")
        check_seed(self)


# ---------------------------------------------------------------------------------- factor models
class _FactorBaseline(EmbeddingMixin, Baseline):
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
        factors = self.config.factors
        self.user_factors = tensors.expect("user_factors", (self.n_users, factors)).numpy()
        self.item_factors = tensors.expect("item_factors", (self.n_items, factors)).numpy()
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
        width = tensors["item_factors"].shape[1]
        self.user_factors = tensors.expect("user_factors", (self.n_users, width)).numpy()
        self.item_factors = tensors.expect("item_factors", (self.n_items, width)).numpy()
        self.item_bias = tensors.expect("item_bias", (self.n_items,)).numpy()
        self.item_counts = tensors.expect("item_counts", (self.n_items,)).numpy()


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
