"""Fitting a model on a Ray cluster, for ``recsys-ebm train --ray-address``: dpebm with the
sampled softmax (DDP) or the CRBM (CD statistics summed over the workers), on an interactions
split, for the epochs its options set.

Data-parallel training has no early stopping (a validation pass would stall every worker), so
the model trains ``epochs`` epochs: take them from a single-process ``train`` (its best
validation epoch is logged as ``best_epoch``) and pass ``--set epochs=N``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys_ebm.data.interactions import Interactions
from recsys_ebm.distributed.cluster import is_loopback
from recsys_ebm.experiments.tuning import build_model, model_input
from recsys_ebm.models.base import Recommender

logger = logging.getLogger(__name__)

#: the models that train data-parallel on Ray
CLUSTER_MODELS = ("dpebm", "crbm")


def check_cluster_model(name: str, options: dict[str, Any], address: str,
                        storage: str | Path | None, num_workers: int = 1) -> None:
    """ValueError naming what to change when ``name`` with ``options`` cannot train on Ray."""
    if num_workers < 1:
        raise ValueError(f"--num-workers must be >= 1, got {num_workers}")
    if storage is None and not (address == "local" or is_loopback(address)):
        raise ValueError("training on a cluster of other machines needs --ray-storage DIR, a "
                         "folder every node sees: the checkpoints are written by the workers")
    if name not in CLUSTER_MODELS:
        raise ValueError(f"--ray-address trains {' or '.join(CLUSTER_MODELS)} data-parallel; "
                         f"{name!r} trains in one process (drop --ray-address)")
    config = build_model(name, options).config
    if name == "dpebm" and config.loss != "sampled":
        raise ValueError("--ray-address trains dpebm with the sampled softmax: add --set loss=sampled")
    if name == "crbm" and config.persistent:
        raise ValueError("--ray-address trains the CRBM with CD from the data: drop persistent=true")


def run_fingerprint(name: str, config: Any, matrix: sp.csr_matrix) -> str:
    """A short hash of the model, its whole config and the training matrix: a run resumes only
    into the same training (another split, model or option starts a run of its own)."""
    digest = hashlib.sha256(json.dumps({"model": name, "config": config.to_dict(),
                                        "shape": list(matrix.shape)}, sort_keys=True,
                                       default=str).encode())
    for part in (matrix.indptr, matrix.indices, matrix.data):
        digest.update(np.ascontiguousarray(part).tobytes())
    return digest.hexdigest()[:16]


def fit_on_cluster(name: str, options: dict[str, Any], interactions: Interactions, *, address: str,
                   num_workers: int, storage: str | Path | None = None,
                   run_name: str = "train") -> Recommender:
    """``name`` with ``options`` trained on ``interactions`` by ``num_workers`` Ray workers.

    ``storage`` keeps the run's checkpoints (a folder every node sees; required beyond this
    machine): starting the same training again (same model, options and data: the run is
    named ``run_name`` and their fingerprint) resumes it. Without it a temporary folder is
    used and removed afterwards.
    """
    check_cluster_model(name, options, address, storage, num_workers)
    model = build_model(name, options)
    matrix = model_input(model, interactions)
    run_name = f"{run_name}-{run_fingerprint(name, model.config, matrix)}"
    keep = contextlib.nullcontext(str(storage)) if storage is not None else tempfile.TemporaryDirectory()
    with keep as root:
        logger.info("training %s on %d Ray workers at %s (%d epochs, no early stopping)", name,
                    num_workers, address, model.config.epochs)
        if name == "dpebm":
            from recsys_ebm.distributed.train import train_dot_ebm

            return train_dot_ebm(matrix, root, name=run_name, address=address,
                                 num_workers=num_workers, config=model.config)
        from recsys_ebm.distributed.crbm_train import train_crbm

        return train_crbm(matrix, root, name=run_name, address=address, num_workers=num_workers,
                          config=model.config)
