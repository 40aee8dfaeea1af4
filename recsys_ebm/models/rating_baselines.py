"""Reference rating predictors for the rating-prediction protocol: damped biases and scikit-surprise.

They only predict ratings (``fit`` on a users x items ratings CSR, ``predict`` aligned pairs: the
``RatingModel`` protocol of ``evaluation/rating_folds.py``); they do not rank a catalog, so they
are not in ``MODELS``. The rating report and ``recsys-ebm evaluate --protocol official-folds``
run them on exactly the folds, fallback rows and clipping of the CRBM, so the numbers compare.

- ``bias``: mu + b_u + b_i with damped means (Koren 2010, sec. 2.1), closed form.
- ``surprise-baseline``, ``surprise-svd``, ``surprise-svdpp``, ``surprise-knnbaseline``:
  scikit-surprise's ``BaselineOnly``, ``SVD``, ``SVDpp`` and ``KNNBaseline`` with the library's
  defaults (seeded: ``random_state=0`` unless a ``seed`` / ``random_state`` option says
  otherwise). scikit-surprise is the optional ``bench`` extra: ``pip install "recsys-ebm[bench]"``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys_ebm.errors import MissingDependencyError

__all__ = ["BiasBaseline", "SurpriseRating", "RATING_BASELINES", "SURPRISE_BASELINES",
           "make_rating_baseline", "require_surprise", "surprise_available"]

#: registry name -> scikit-surprise class name
SURPRISE_BASELINES = {
    "surprise-baseline": "BaselineOnly",
    "surprise-svd": "SVD",
    "surprise-svdpp": "SVDpp",
    "surprise-knnbaseline": "KNNBaseline",
}
#: every rating-only reference predictor, by registry name
RATING_BASELINES = ("bias", *SURPRISE_BASELINES)
#: surprise algorithms whose fit draws random numbers (they take ``random_state``)
_SEEDED = ("SVD", "SVDpp")


class BiasBaseline:
    """Reference rating predictor mu + b_u + b_i with damped means (Koren 2010, sec. 2.1).

    b_i = sum_u (r_ui - mu) / (reg_items + n_i), then b_u = sum_i (r_ui - mu - b_i) /
    (reg_users + n_u): one closed-form pass, deterministic.
    """

    history = None

    def __init__(self, reg_items: float = 10.0, reg_users: float = 15.0) -> None:
        self.reg_items, self.reg_users = float(reg_items), float(reg_users)

    @property
    def options(self) -> dict[str, Any]:
        return {"reg_items": self.reg_items, "reg_users": self.reg_users}

    def fit(self, user_items: sp.csr_matrix, *, callback=None, show_progress: bool = True):
        ratings = sp.csr_matrix(user_items, dtype=np.float64)
        ratings.eliminate_zeros()
        rows = np.repeat(np.arange(ratings.shape[0]), np.diff(ratings.indptr))
        cols, values = ratings.indices, ratings.data
        self.mu = float(values.mean())
        n_items = np.bincount(cols, minlength=ratings.shape[1])
        self.item_bias = np.bincount(cols, values - self.mu, ratings.shape[1]) / (self.reg_items + n_items)
        residual = values - self.mu - self.item_bias[cols]
        n_users = np.bincount(rows, minlength=ratings.shape[0])
        self.user_bias = np.bincount(rows, residual, ratings.shape[0]) / (self.reg_users + n_users)
        return self

    def predict(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        return self.mu + self.user_bias[np.asarray(user_ids)] + self.item_bias[np.asarray(item_ids)]


def surprise_available() -> bool:
    """True when scikit-surprise can be imported (the optional ``bench`` extra)."""
    return importlib.util.find_spec("surprise") is not None


def require_surprise():
    """The ``surprise`` module, or ``MissingDependencyError`` naming the extra to install."""
    try:
        return importlib.import_module("surprise")
    except ImportError as exc:
        raise MissingDependencyError(
            "the scikit-surprise baselines need the optional 'bench' extra: "
            "pip install \"recsys-ebm[bench]\" (or pip install scikit-surprise)"
        ) from exc


class SurpriseRating:
    """A scikit-surprise algorithm behind the ``RatingModel`` protocol.

    ``fit`` hands the CSR's (user, item, rating) triples, with the internal ids as surprise's
    raw ids, to ``surprise.Dataset.load_from_df``; the rating scale is the data's min and max.
    ``predict`` calls the algorithm's own ``predict`` for each pair (surprise has no batched
    predict), so the numbers are surprise's, clipping included.

    Parameters
    ----------
    algorithm : a surprise class name: ``"BaselineOnly"``, ``"SVD"``, ``"SVDpp"``, ``"KNNBaseline"``
    options : keyword arguments of that class; ``seed`` sets ``random_state`` of the seeded ones
        (SVD, SVDpp) and is ignored by the deterministic ones. An unknown name raises
        ``ValueError`` naming it and the accepted ones.
    """

    history = None

    def __init__(self, algorithm: str, **options: Any) -> None:
        surprise = require_surprise()
        if algorithm not in SURPRISE_BASELINES.values():
            raise ValueError(f"unknown surprise algorithm {algorithm!r}; "
                             f"choose one of {', '.join(SURPRISE_BASELINES.values())}")
        self.algorithm = algorithm
        self._cls = getattr(surprise, algorithm)
        options = dict(options)
        seed = options.pop("seed", None)
        if seed is not None and algorithm in _SEEDED:  # the deterministic ones have no seed to set
            options.setdefault("random_state", int(seed))
        accepted = [name for name, p in inspect.signature(self._cls.__init__).parameters.items()
                    if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if algorithm == "KNNBaseline":  # these arrive through **kwargs in surprise's signature
            accepted += [name for name in ("sim_options", "bsl_options") if name not in accepted]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for surprise {algorithm}; "
                             f"accepted: {', '.join(sorted(accepted))}")
        defaults: dict[str, Any] = {"verbose": False} if "verbose" in accepted else {}
        if algorithm in _SEEDED:
            defaults["random_state"] = 0
        self.options = {**defaults, **options}

    def fit(self, user_items: sp.csr_matrix, *, callback=None, show_progress: bool = True):
        import pandas as pd

        surprise = require_surprise()
        ratings = sp.coo_matrix(user_items)
        if ratings.nnz == 0:
            raise ValueError("surprise baselines need at least one rating; the matrix is empty")
        frame = pd.DataFrame({"user": ratings.row.astype(np.int64), "item": ratings.col.astype(np.int64),
                              "rating": ratings.data.astype(np.float64)})
        scale = (float(frame["rating"].min()), float(frame["rating"].max()))
        reader = surprise.Reader(rating_scale=scale)
        trainset = surprise.Dataset.load_from_df(frame, reader).build_full_trainset()
        self.model = self._cls(**self.options).fit(trainset)
        return self

    def predict(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        users = np.asarray(user_ids, dtype=np.int64)
        items = np.asarray(item_ids, dtype=np.int64)
        if users.shape != items.shape or users.ndim != 1:
            raise ValueError(f"user_ids and item_ids must be 1-D and aligned, got shapes "
                             f"{users.shape} and {items.shape}")
        predict = self.model.predict
        return np.fromiter((predict(int(u), int(i)).est for u, i in zip(users, items, strict=True)),
                           dtype=np.float64, count=len(users))


def make_rating_baseline(name: str, options: dict[str, Any] | None = None):
    """The rating baseline registered under ``name`` (see ``RATING_BASELINES``), unfitted."""
    options = dict(options or {})
    if name == "bias":
        options.pop("seed", None)  # deterministic: nothing to seed (as for surprise's own)
        unknown = sorted(set(options) - {"reg_items", "reg_users"})
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for bias; accepted: reg_items, reg_users")
        return BiasBaseline(**options)
    if name in SURPRISE_BASELINES:
        return SurpriseRating(SURPRISE_BASELINES[name], **options)
    raise KeyError(f"unknown rating baseline {name!r}; known: {', '.join(RATING_BASELINES)}")
