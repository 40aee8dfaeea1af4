"""What the two reports share: their configuration, the protocol texts and constants that the
JSON documents and the rendering agree on, strict-JSON cleaning, thread limits and the record of
the environment a report ran in. The protocols are described in ``docs/protocols.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from recsys_ebm.experiments import runner
from recsys_ebm.models import model_class
from recsys_ebm.models.rating_baselines import RATING_BASELINES

#: the model every other one is compared against in the verdict
REFERENCE_MODEL = "dpebm"
#: the two numbers the verdict compares
VERDICT_METRICS = ("ndcg@10", "recall@20")
#: cut-off of the temperature trade-off and of the headline beyond-accuracy columns
TRADEOFF_K = 10
DEFAULT_TEMPERATURES = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
ENERGY_BINS = 40

#: rating prediction: official ML-100K folds u1..u5, seeded 5-fold elsewhere
RATING_PROTOCOL = "ratings"
REPORT_PROTOCOLS = (*runner.RANKING_PROTOCOLS, RATING_PROTOCOL)
#: the reference rating predictor of the rating report (``rating_baselines.BiasBaseline``)
BIAS_BASELINE = "bias"
#: what the JSON records as the grids file when the shipped one is used
SHIPPED_GRIDS = "pipelines/grids.toml"

PROTOCOL_TEXT = {
    "random": "per-user random holdout: floor(20%) of each user's interactions (at least 1) "
              "go to test, seed 0",
    "temporal": "per-user temporal holdout: each user's latest floor(20%) interactions "
                "(at least 1) go to test",
    "loo": "leave-last-one-out: each user's latest interaction goes to test",
    "strong": "strong generalization: 10% of users held out entirely; 80% of each held-out "
              "user's history is folded in at evaluation time (no retraining), 20% is the target",
}

#: how ``runner.prepare`` carves the validation split from train, per protocol
VALIDATION_TEXT = {
    "random": "per-user random 20%, seed {seed}",
    "strong": "per-user random 20% of the training users' interactions, seed {seed}",
    "temporal": "each user's latest 20% of train",
    "loo": "each user's latest train interaction",
}


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """What to compare, where to write it, and how to log it.

    ``dataset`` is ``"movielens"`` (``variant`` chooses which) or a CSV/Parquet path read with
    ``reader_options`` (``user_col``, ``item_col``, ``rating_col``, ``timestamp_col`` of
    ``data.readers.read_interactions``). ``overrides`` maps a model name to options applied on
    top of every grid point (e.g. ``{"dpebm": {"epochs": 2}}`` for a quick run).
    ``use_grids=False`` tunes nothing: each model runs with its tuned defaults. ``grids_file``
    and ``pipelines_dir`` None read the shipped ``pipelines/`` files. ``threads`` caps torch and
    BLAS threads for the run (one thread was fastest for these small matrices on 2 shared
    cores); None leaves them. ``rating_folds`` (protocol "ratings" only) runs a subset of the
    folds, e.g. ``(1,)``.
    """

    dataset: str = "movielens"
    variant: str = "100k"
    data_dir: str | None = None
    download: bool = True
    reader_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    protocol: str = "random"
    models: tuple[str, ...] | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    ks: tuple[int, ...] = runner.KS
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    output_dir: str = "reports"
    grids_file: str | None = None
    pipelines_dir: str | None = None
    use_grids: bool = True
    overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    threads: int | None = 1
    rating_folds: tuple[int, ...] | None = None
    experiment: str = "recsys_ebm"
    tracking_uri: str | None = None
    mlflow: bool = True
    show_progress: bool = False
    command: str | None = None

    def __post_init__(self) -> None:
        if self.protocol not in REPORT_PROTOCOLS:
            raise ValueError(f"protocol must be one of {REPORT_PROTOCOLS}, got {self.protocol!r}")
        if not self.seeds:
            raise ValueError("seeds is empty; give at least one model seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        for name in [*(self.models or ()), *self.overrides]:
            if name in RATING_BASELINES:
                if self.protocol != RATING_PROTOCOL and name in (self.models or ()):
                    raise ValueError(f"{name!r} predicts ratings only; it runs in the report with "
                                     f"protocol {RATING_PROTOCOL!r}, not {self.protocol!r}")
            else:
                model_class(name)  # KeyError naming the known models
        if self.models is not None and not self.models:
            raise ValueError("models is empty")
        if TRADEOFF_K not in self.ks or 20 not in self.ks:
            raise ValueError(f"ks must include {TRADEOFF_K} and 20 (the verdict's cut-offs), got {self.ks}")
        if any(not (t >= 0 and math.isfinite(t)) for t in self.temperatures):
            raise ValueError(f"temperatures must be finite and >= 0, got {self.temperatures}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads}")

    def load_dataset(self) -> runner.Dataset:
        """The configured dataset (a user's file read with ``reader_options``)."""
        options = self.reader_options if self.dataset != "movielens" else {}
        return runner.load_dataset(self.dataset, self.variant, self.data_dir, self.download,
                                   **options)


@contextlib.contextmanager
def limit_threads(n: int | None) -> Iterator[None]:
    """Cap torch intra-op and BLAS/OpenMP threads at ``n`` inside the block (None: no change)."""
    if n is None:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield
    finally:
        torch.set_num_threads(before)


def clean_json(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean_json(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_average() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def environment(load_average_at_start: float | None) -> dict[str, Any]:
    """Git state, Python, cores and load: the ``environment`` section of a report."""
    from recsys_ebm.tracking import git_commit, git_dirty

    return {"git_commit": git_commit(), "git_dirty": git_dirty(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "load_average_at_start": load_average_at_start,
            "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
