"""Shared benchmark plumbing: cached synthetic data and ALS factors, worker subprocesses that
report wall time and peak memory, result JSON and tables."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from benchmarks.synthetic import SyntheticConfig, generate
from recsys_ebm.models.base import EmbeddingMixin, Recommender

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
CACHE = ROOT / ".cache"


def rss_mb() -> float:
    """Current resident set size of this process (MB)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MB; Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def data_config(args: Any) -> SyntheticConfig:
    """The ML-20M shape scaled by ``args.scale`` (items by ``args.item_scale`` when given)."""
    config = SyntheticConfig().scaled(args.scale)
    item_scale = getattr(args, "item_scale", None)
    if item_scale is not None and item_scale != args.scale:
        config = dataclasses.replace(config, n_items=max(2, round(SyntheticConfig().n_items * item_scale)))
    return config


def data_path(config: SyntheticConfig) -> Path:
    return CACHE / f"data-{_key(dataclasses.asdict(config))}.npz"


def load_data(config: SyntheticConfig) -> sp.csr_matrix:
    """The synthetic users x items CSR for ``config``, generated once and cached."""
    path = data_path(config)
    if path.is_file():
        with np.load(path) as npz:
            return sp.csr_matrix((np.ones(npz["indices"].size, np.float32), npz["indices"], npz["indptr"]),
                                 shape=tuple(npz["shape"]))
    started = time.perf_counter()
    matrix = generate(config).user_items
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, indptr=matrix.indptr.astype(np.int64), indices=matrix.indices.astype(np.int32),
             shape=np.array(matrix.shape))
    os.replace(tmp, path)
    print(f"generated {matrix.shape[0]:,} x {matrix.shape[1]:,} with {matrix.nnz:,} interactions "
          f"in {time.perf_counter() - started:.1f} s", flush=True)
    return matrix


def factors_path(config: SyntheticConfig, dim: int, iterations: int) -> Path:
    return CACHE / f"als-{_key([dataclasses.asdict(config), dim, iterations])}.npz"


def load_factors(config: SyntheticConfig, dim: int = 64, iterations: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """ALS user and item factors (implicit, ``dim`` factors) for the synthetic data, cached."""
    path = factors_path(config, dim, iterations)
    if path.is_file():
        with np.load(path) as npz:
            return npz["user_factors"], npz["item_factors"]
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    user_items = load_data(config)
    started = time.perf_counter()
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=dim, iterations=iterations, regularization=0.05,
                                        random_state=0)
        model.fit(user_items, show_progress=False)
    user_factors = np.ascontiguousarray(model.user_factors, dtype=np.float32)
    item_factors = np.ascontiguousarray(model.item_factors, dtype=np.float32)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, user_factors=user_factors, item_factors=item_factors)
    os.replace(tmp, path)
    print(f"fitted ALS ({dim} factors, {iterations} iterations) in {time.perf_counter() - started:.1f} s",
          flush=True)
    return user_factors, item_factors


class FactorModel(EmbeddingMixin, Recommender):
    """Fixed factors behind the model interface: a ``Recommender`` with vectors (so
    ``recommend`` and export run the factored kernel) whose seen set, what ``recommend`` and
    export leave out, is ``user_items`` when given."""

    def __init__(self, user_factors: np.ndarray, item_factors: np.ndarray,
                 item_biases: np.ndarray | None = None, user_items: sp.csr_matrix | None = None):
        self.user_factors = np.asarray(user_factors, np.float32)
        self.item_factors = np.asarray(item_factors, np.float32)
        self.item_bias = (np.zeros(item_factors.shape[0], np.float32) if item_biases is None
                          else np.asarray(item_biases, np.float32))
        self.n_users, self.n_items = user_factors.shape[0], item_factors.shape[0]
        if user_items is not None:
            self._remember_seen(user_items)

    def _require_fitted(self) -> None:
        """Always fitted: the factors are given."""

    def fit(self, user_items: sp.csr_matrix, **kwargs: Any) -> FactorModel:
        raise NotImplementedError("fixed factors: nothing to fit")

    def user_vectors(self, user_ids, user_items=None) -> np.ndarray:
        return self.user_factors[np.asarray(user_ids)]


def run_worker(module: str, args: list[str]) -> dict:
    """Run ``python -m module --worker ... args`` and parse the JSON line it prints last."""
    command = [sys.executable, "-m", module, *args]
    done = subprocess.run(command, cwd=ROOT.parent, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def environment() -> dict:
    """Machine facts stored with every result."""
    import faiss
    import implicit
    import torch

    load = os.getloadavg()
    return {"python": platform.python_version(), "numpy": np.__version__, "faiss": faiss.__version__,
            "implicit": implicit.__version__, "torch": torch.__version__,
            "cpus": len(os.sched_getaffinity(0)), "machine": platform.machine(),
            "load_average_1m": round(load[0], 2), "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_result(name: str, result: dict) -> Path:
    """Write ``results/<name>.json`` atomically."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A plain-text table: ``columns`` are (key, header, format)."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append([("-" if row.get(key) is None else format(row[key], fmt)) for key, _, fmt in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def name_for(base: str, scale: float, item_scale: float | None = None) -> str:
    """Result file name: ``base`` at full scale, else tagged with the scale(s)."""
    item_scale = scale if item_scale is None else item_scale
    if scale == 1 and item_scale == 1:
        return base
    return f"{base}-scale{scale:g}" + ("" if item_scale == scale else f"-items{item_scale:g}")
