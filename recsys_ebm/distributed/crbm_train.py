"""Data-parallel training of the conditional RBM with Ray Train: ``num_workers`` processes, the
CD statistics summed over them with torch.distributed (gloo on CPU).

The CRBM is not trained by backpropagation (its CD-k gradient is a difference of data and model
statistics), so DDP, which hooks ``backward``, has nothing to synchronise. Each worker holds a
replica of the model (the same initial weights: they come from the seed), draws the same order
of users each epoch (a generator seeded by (seed, epoch)), takes every ``N``-th user of each
minibatch and runs CD-k on them with its own Gibbs draws (seeded by (seed, epoch, rank)). The
gradient sums, and the per-item counts the update divides by, are added over the workers
(``all_reduce``), so every replica takes the same step: the one of the whole minibatch of
``batch_size`` users. Both visible layers train this way (``ratings`` and ``joint``); persistent
CD does not (its chains are each worker's own state), nor does early stopping: training runs
``epochs`` epochs, and rank 0 reports each epoch's reconstruction error to MLflow and writes
the checkpoint (weights, EMA copy, momentum or Adam state, epoch), from which an interrupted run
resumes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import scipy.sparse as sp
import torch

from recsys_ebm.distributed.cluster import ray_cluster
from recsys_ebm.distributed.train import (
    load_state,
    rank_zero_tracker,
    report_epoch,
    run_trainer,
    seeded,
)
from recsys_ebm.models.base import check_user_items
from recsys_ebm.models.crbm import CRBM, CRBMConfig
from recsys_ebm.models.crbm.trainer import check_replicable
from recsys_ebm.models.training import TrainingHistory

logger = logging.getLogger(__name__)


class GlooReplicas:
    """The workers of a Ray Train run as the CRBM trainer's replicas: sums over the process
    group, one ``all_reduce`` per dtype for all the tensors of a call."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world
        self.order_generator = torch.Generator()

    def all_sum(self, tensors: list[torch.Tensor]) -> None:
        import torch.distributed as dist

        for dtype in sorted({t.dtype for t in tensors}, key=str):  # alike on every worker
            group = [t for t in tensors if t.dtype == dtype]
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat)
            offset = 0
            for t in group:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()


def trainer_state(trainer: Any) -> dict[str, Any]:
    """What a resumed run needs of a trainer: weights, EMA copy, momentum and Adam moments."""
    state = {"module": trainer.module.state_dict(), "average": trainer.average.state_dict(),
             "velocity": dict(trainer.velocity)}
    adam = getattr(trainer, "adam", None)
    if adam is not None:
        state["adam"] = {"m": dict(adam.m), "v": dict(adam.v), "t": adam.t}
    return state


def load_trainer_state(trainer: Any, state: dict[str, Any]) -> None:
    with torch.no_grad():
        trainer.module.load_state_dict(state["module"])
        trainer.average.load_state_dict(state["average"])
        for name, value in state["velocity"].items():
            trainer.velocity[name].copy_(value)
        if "adam" in state:
            for key in ("m", "v"):
                for name, value in state["adam"][key].items():
                    getattr(trainer.adam, key)[name].copy_(value)
            trainer.adam.t = int(state["adam"]["t"])


def _crbm_loop(loop_config: dict[str, Any]) -> None:
    """One worker of the data-parallel CRBM training (runs inside Ray Train)."""
    import ray
    import ray.train

    torch.set_num_threads(1)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    cfg = CRBMConfig.from_dict(loop_config["config"])
    replicas = GlooReplicas(rank, world)
    trainer = CRBM(cfg).replica_trainer(ray.get(loop_config["data"][0]), replicas)
    start, history = 1, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_state(Path(directory))
        load_trainer_state(trainer, state["trainer"])
        start, history = state["epoch"] + 1, json.loads(state["history"])
    with rank_zero_tracker(loop_config, rank, start) as tracker:
        tracker.log_params({"model": "crbm", "config": loop_config["config"],
                            "ray.num_workers": world, "ray.resumed_at_epoch": start})
        for epoch in range(start, cfg.epochs + 1):
            replicas.order_generator = seeded(cfg.seed, epoch, 0)
            trainer.generator = seeded(cfg.seed, epoch, rank + 1)
            metrics = {**trainer.epoch(epoch), **trainer.schedule}
            history.append(metrics)
            tracker.log_epoch(epoch, metrics)
            report_epoch(lambda e=epoch: {"trainer": trainer_state(trainer), "epoch": e,
                                          "history": json.dumps(history),
                                          "attempt_started_at": start},
                         metrics, epoch, rank)


def train_crbm(ratings: sp.csr_matrix, storage_path: str | Path, *, name: str = "crbm-ddp",
               address: str = "local", num_workers: int = 2, config: CRBMConfig | None = None,
               tracking: dict[str, str] | None = None, **options: Any) -> CRBM:
    """Train a :class:`CRBM` with CD-k on ``num_workers`` Ray Train workers.

    Parameters
    ----------
    ratings : sp.csr_matrix
        The users x items ratings (values are ratings), put in the object store once.
    storage_path : str or Path
        Where Ray Train keeps the run ``name`` and its checkpoints (a folder every node sees);
        a run of the same name found there is resumed from its last checkpoint.
    address : str
        ``local``, ``auto`` or ``HOST:PORT`` (:func:`recsys_ebm.distributed.cluster.ray_cluster`).
    config, **options
        :class:`CRBMConfig` (``persistent`` must be False), or its fields.
    tracking : dict, optional
        ``{"experiment": ..., "uri": ...}``: rank 0 logs params and per-epoch metrics there.

    Returns the fitted model, its ``history.epochs`` the per-epoch metrics of every attempt.
    """
    if config is not None and options:
        raise ValueError("pass either a config or keyword options, not both")
    config = config if config is not None else CRBMConfig(**options)
    check_replicable(config)
    ratings = check_user_items(ratings)
    with ray_cluster(address, num_workers) as ray:
        loop_config = {"config": config.to_dict(), "data": [ray.put(ratings)], "name": name,
                       "tracking": tracking}
        logger.info("training crbm[%s] on %d Ray workers, run %s in %s", config.visible,
                    num_workers, name, storage_path)
        result = run_trainer(_crbm_loop, loop_config, Path(storage_path), name, num_workers)
    with result.checkpoint.as_directory() as directory:
        state = load_state(Path(directory))
    model = CRBM(config)
    load_trainer_state(model.replica_trainer(ratings, None), state["trainer"])
    model.history = TrainingHistory(epochs=json.loads(state["history"]), best_epoch=state["epoch"])
    model.meta = {"ray_train": {"name": name, "num_workers": num_workers,
                                "resumed_at_epoch": int(state["attempt_started_at"])}}
    return model
