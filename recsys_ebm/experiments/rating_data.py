"""Rating-prediction folds built from a dataset, for ``rating_folds.evaluate_folds``.

ML-100K gets its official folds u1..u5 (``uK.base`` train, ``uK.test`` test, unchanged); any
other dataset, a MovieLens variant or a user's ratings file, the seeded k-fold of its rows
(``data.split.kfold``: rows permuted with the seed, cut into ``n_folds`` chunks). The protocols
are described in ``docs/protocols.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from recsys_ebm.data.movielens import load_official_fold
from recsys_ebm.data.split import kfold
from recsys_ebm.data.variants import RatingScale, get_variant
from recsys_ebm.experiments import runner
from recsys_ebm.experiments.rating_folds import (
    PROTOCOLS,
    FoldCallback,
    RatingFolds,
    RatingModel,
    evaluate_folds,
)

OFFICIAL = "official-folds"
KFOLD = "kfold"
#: the only variant with official rating-prediction folds
OFFICIAL_VARIANT = "ml-100k"


def default_protocol(dataset: runner.Dataset) -> str:
    """``official-folds`` for ML-100K, ``kfold`` for everything else."""
    return OFFICIAL if dataset.variant == OFFICIAL_VARIANT else KFOLD


def official_folds(data_dir=None, *, download: bool = True) -> RatingFolds:
    """ML-100K's official folds u1..u5."""
    folds = tuple((f"u{k}", load_official_fold(k, data_dir, download=download)) for k in range(1, 6))
    scale = get_variant(OFFICIAL_VARIANT).rating_scale
    return RatingFolds(folds, scale, dataset=OFFICIAL_VARIANT, protocol=OFFICIAL)


def kfold_folds(dataset: runner.Dataset, n_folds: int = 5, seed: int = 0) -> RatingFolds:
    """The seeded k-fold of the dataset's rows (``fold1``..``foldK``)."""
    scale = dataset.rating_scale or infer_rating_scale(dataset.ratings["rating"].to_numpy())
    folds = tuple((f"fold{k + 1}", split)
                  for k, split in enumerate(kfold(dataset.ratings, n_folds, seed)))
    return RatingFolds(folds, scale, dataset=dataset.name, protocol=KFOLD, seed=seed)


def build_rating_folds(dataset: runner.Dataset, protocol: str | None = None, *, n_folds: int = 5,
                       seed: int = 0, data_dir=None, download: bool = True) -> RatingFolds:
    """The folds of ``dataset`` under ``protocol`` (default: :func:`default_protocol`).

    ``official-folds`` exists for ML-100K only (5 folds, read from ``data_dir``); ``kfold``
    cuts the dataset's rows into ``n_folds`` with ``seed``.
    """
    protocol = protocol or default_protocol(dataset)
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == KFOLD:
        return kfold_folds(dataset, n_folds, seed)
    _check_official(dataset.variant, n_folds, dataset.name)
    return official_folds(data_dir, download=download)


def _check_official(variant: str | None, n_folds: int, name: str) -> None:
    if variant != OFFICIAL_VARIANT:  # a user's file is never ML-100K, whatever its name
        raise ValueError(f"protocol 'official-folds' exists for ml-100k only, not {name}; "
                         "use protocol='kfold'")
    if n_folds != 5:
        raise ValueError(f"the official ML-100K protocol has 5 folds (u1..u5), got n_folds={n_folds}")


def infer_rating_scale(ratings: np.ndarray) -> RatingScale:
    """The scale of a user's ratings: their min, max and smallest gap between distinct values."""
    values = np.unique(np.asarray(ratings, dtype=np.float64))
    if values.size < 2:
        raise ValueError("rating prediction needs a rating column with at least two distinct "
                         f"values, got {values.tolist()} (is --rating-col set?)")
    return RatingScale(float(values[0]), float(values[-1]), float(np.diff(values).min()))


def evaluate_rating_folds(
    model_factory: Callable[[], RatingModel],
    dataset_variant: str = "100k",
    data_dir=None,
    protocol: str = OFFICIAL,
    n_folds: int = 5,
    seed: int = 0,
    callback: FoldCallback | None = None,
    show_progress: bool = False,
    *,
    folds: Sequence[int] | None = None,
    download: bool = True,
) -> dict[str, Any]:
    """MovieLens by variant name: build the folds and run ``rating_folds.evaluate_folds``.

    ``folds`` are 1-based fold numbers to run (default all), e.g. ``[1]`` for u1 alone; the
    other parameters are those of :func:`build_rating_folds` and ``evaluate_folds``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    variant = get_variant(dataset_variant)
    if protocol == KFOLD:
        dataset = runner.load_dataset("movielens", variant.name, data_dir, download)
        data = kfold_folds(dataset, n_folds, seed)
    else:
        _check_official(variant.name, n_folds, variant.name)
        data = official_folds(data_dir, download=download)  # u.data itself is not needed
    return evaluate_folds(model_factory, data.select(folds), callback, show_progress)
