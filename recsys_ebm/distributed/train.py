"""Data-parallel training of the dot-product EBM with Ray Train: ``TorchTrainer``, DDP over
gloo on CPU, ``num_workers`` processes.

Every worker holds a replica of the parameters (DDP broadcasts rank 0's at the start) and its
own shard of the users: worker r trains the active users ``r, r + N, r + 2N, ...`` of a seeded
permutation. Each step, every worker takes ``batch_size / N`` of its users, computes the
logQ-corrected sampled softmax (:meth:`DotEBMModule.sampled_loss`) on them, and DDP
all-reduces (averages) the gradients, so a step sees the gradient of a global batch of
``batch_size`` users, as the single-process trainer does; then each replica takes the same Adam
step. The ``n_negatives`` popularity negatives are one sample per global batch, as in the
single-process trainer: every worker draws the same ones from a generator seeded alike. Shuffles
and negatives come from generators seeded by (seed, epoch, rank), so a run resumed from a
checkpoint continues exactly as the uninterrupted one.

Only rank 0 logs to MLflow (through :mod:`recsys_ebm.tracking`, one run per attempt, tagged
with the training's name) and writes checkpoints: the module and optimizer states and the
epoch, one file written atomically with its SHA-256, handed to Ray Train, which keeps the last
ones in ``storage_path/<name>/``. Starting a training with the name of an interrupted one
resumes it from its last checkpoint. Training runs for ``epochs`` epochs (no early stopping:
validate the returned model).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from recsys_ebm.data.sparse import binarize
from recsys_ebm.distributed.cluster import ray_cluster, require_ray
from recsys_ebm.errors import ModelFileError
from recsys_ebm.io import atomic_path, sha256_of
from recsys_ebm.models.base import check_user_items
from recsys_ebm.models.dot_ebm import DotEBM, DotEBMConfig, DotEBMModule, batch_pairs
from recsys_ebm.models.training import TrainingHistory

logger = logging.getLogger(__name__)

STATE_FILE = "state.pt"


class _Objective(nn.Module):
    """The per-worker loss as a module's forward, so that DDP synchronises its backward."""

    def __init__(self, model: DotEBMModule):
        super().__init__()
        self.model = model

    def forward(self, rows: torch.Tensor, user_items: sp.csr_matrix, log_proposal: torch.Tensor,
                generators: tuple[torch.Generator, torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """``generators``: this worker's (dropout), and the one every worker shares (negatives)."""
        cfg, model = self.model.config, self.model
        batch = rows.numpy()
        if cfg.user_model == "free":
            vectors = model.user_vectors[rows]
        else:
            vectors = model.encode(torch.from_numpy(user_items[batch].toarray().astype(np.float32)),
                                   generators[0])
        nll = model.sampled_loss(vectors, batch_pairs(user_items, batch), log_proposal,
                                 cfg.n_negatives, generators[1])
        return nll + cfg.l2 * model.l2_penalty(vectors), nll.detach()


def seeded(seed: int, epoch: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0]))


def log_proposal(user_items: sp.csr_matrix, alpha: float) -> torch.Tensor:
    """log Q(i) of the popularity proposal, as :meth:`DotEBM.fit` builds it."""
    popularity = np.asarray(user_items.sum(axis=0)).ravel() + 1.0
    proposal = popularity**alpha
    return torch.from_numpy(np.log(proposal / proposal.sum()).astype(np.float32))


def worker_shard(active: np.ndarray, seed: int, rank: int, world: int) -> np.ndarray:
    """The users worker ``rank`` of ``world`` trains: every world-th of a seeded permutation."""
    order = np.random.default_rng(seed).permutation(active)
    return order[rank::world]


def save_state(directory: Path, state: dict[str, Any]) -> Path:
    """Write a training state atomically, with its SHA-256 beside it."""
    path = Path(directory) / STATE_FILE
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    with atomic_path(path.with_suffix(".json")) as tmp:
        Path(tmp).write_text(json.dumps({"sha256": sha256_of(path), "epoch": state["epoch"]}))
    return path


def load_state(directory: Path) -> dict[str, Any]:
    """A state written by :func:`save_state`; ``ModelFileError`` when it fails its hash."""
    path = Path(directory) / STATE_FILE
    record = json.loads(path.with_suffix(".json").read_text())
    if sha256_of(path) != record["sha256"]:
        raise ModelFileError(f"checkpoint {path} does not match its SHA-256; it is damaged")
    return torch.load(path, weights_only=True)  # tensors and plain values: no code runs


def _train_loop(loop_config: dict[str, Any]) -> None:
    """One worker of the data-parallel training (runs inside Ray Train)."""
    import ray
    import ray.train
    import ray.train.torch

    torch.set_num_threads(1)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    cfg = DotEBMConfig.from_dict(loop_config["config"])
    user_items: sp.csr_matrix = ray.get(loop_config["data"][0])
    n_users, n_items = user_items.shape
    module = DotEBMModule(n_users, n_items, cfg, torch.Generator().manual_seed(cfg.seed))
    optimizer = torch.optim.Adam(module.parameters(), lr=cfg.lr, fused=True)
    start, history = 1, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_state(Path(directory))
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = state["epoch"] + 1, json.loads(state["history"])
    objective = ray.train.torch.prepare_model(_Objective(module), move_to_device=False)
    queue = log_proposal(user_items, cfg.proposal_alpha)
    shard = worker_shard(np.flatnonzero(np.diff(user_items.indptr) > 0), cfg.seed, rank, world)
    local_batch = max(1, cfg.batch_size // world)
    with rank_zero_tracker(loop_config, rank, start) as tracker:
        tracker.log_params({"model": "dpebm", "config": loop_config["config"],
                            "ray.num_workers": world, "ray.resumed_at_epoch": start})
        for epoch in range(start, cfg.epochs + 1):
            # the shuffle and dropout are the worker's own; the negatives are drawn alike on
            # every worker, one sample per global batch as in the single-process trainer
            generators = seeded(cfg.seed, epoch, rank + 1), seeded(cfg.seed, epoch, 0)
            metrics = _epoch(objective, optimizer, user_items, shard, local_batch, queue,
                             generators, loop_config["steps"])
            history.append(metrics)
            tracker.log_epoch(epoch, metrics)
            _report(module, optimizer, epoch, history, metrics, rank, start)


def _epoch(objective: nn.Module, optimizer: torch.optim.Optimizer, user_items: sp.csr_matrix,
           shard: np.ndarray, local_batch: int, queue: torch.Tensor,
           generators: tuple[torch.Generator, torch.Generator], steps: int) -> dict[str, float]:
    """One epoch: ``steps`` synchronised steps on this worker's shuffled shard; the train NLL
    is the mean per-step loss, averaged over the workers."""
    import torch.distributed as dist

    objective.train()
    order = shard[torch.randperm(len(shard), generator=generators[0]).numpy()]
    total = torch.zeros(1)
    for step in range(steps):
        # every worker takes part in every step (an all-reduce each); a shard one user short
        # reuses its first users for its last step
        rows = np.take(order, np.arange(step * local_batch, (step + 1) * local_batch), mode="wrap")
        loss, nll = objective(torch.from_numpy(rows), user_items, queue, generators)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += nll
    if dist.is_initialized():
        dist.all_reduce(total)
        total /= dist.get_world_size()
    return {"train_nll": float(total) / max(steps, 1)}


def _report(module: DotEBMModule, optimizer: torch.optim.Optimizer, epoch: int,
            history: list[dict[str, float]], metrics: dict[str, float], rank: int,
            start: int) -> None:
    """Report the epoch to Ray Train; rank 0 with a checkpoint of the training state."""
    report_epoch(lambda: {"module": module.state_dict(), "optimizer": optimizer.state_dict(),
                          "epoch": epoch, "history": json.dumps(history),
                          "attempt_started_at": start}, metrics, epoch, rank)


def report_epoch(state: Callable[[], dict[str, Any]], metrics: dict[str, float], epoch: int,
                 rank: int) -> None:
    """Report an epoch's metrics to Ray Train; rank 0 with a checkpoint of ``state()``."""
    import ray.train

    if rank != 0:
        ray.train.report({**metrics, "epoch": epoch})
        return
    with tempfile.TemporaryDirectory() as directory:
        save_state(Path(directory), state())
        ray.train.report({**metrics, "epoch": epoch},
                         checkpoint=ray.train.Checkpoint.from_directory(directory))


def rank_zero_tracker(loop_config: dict[str, Any], rank: int, start: int):
    """Rank 0's MLflow run (one per attempt); a disabled tracker on the other ranks."""
    from recsys_ebm.tracking import Tracker

    tracking = loop_config.get("tracking")
    if rank != 0 or tracking is None:
        return Tracker(enabled=False)
    return Tracker(tracking["experiment"], tracking_uri=tracking["uri"], run_name=loop_config["name"],
                   tags={"ray_train_run": loop_config["name"], "resumed_at_epoch": start})


def train_dot_ebm(user_items: sp.csr_matrix, storage_path: str | Path, *, name: str = "dpebm-ddp",
                  address: str = "local", num_workers: int = 2, config: DotEBMConfig | None = None,
                  tracking: dict[str, str] | None = None, **options: Any) -> DotEBM:
    """Train a :class:`DotEBM` with the sampled softmax on ``num_workers`` Ray Train workers.

    Parameters
    ----------
    user_items : sp.csr_matrix
        The users x items interactions (binarised), put in the object store once.
    storage_path : str or Path
        Where Ray Train keeps the run ``name`` and its checkpoints (a folder every node sees);
        a run of the same name found there is resumed from its last checkpoint.
    address : str
        ``local``, ``auto`` or ``HOST:PORT`` (:func:`recsys_ebm.distributed.cluster.ray_cluster`).
    config, **options
        :class:`DotEBMConfig` (``loss`` must be ``"sampled"``), or its fields.
    tracking : dict, optional
        ``{"experiment": ..., "uri": ...}``: rank 0 logs params and per-epoch metrics there.

    Returns the fitted model, its ``history.epochs`` the per-epoch metrics of every attempt.
    """
    if config is not None and options:
        raise ValueError("pass either a config or keyword options, not both")
    config = config if config is not None else DotEBMConfig(**{"loss": "sampled", **options})
    if config.loss != "sampled":
        raise ValueError(f"data-parallel training uses the sampled softmax: loss='sampled', got {config.loss!r}")
    user_items = binarize(check_user_items(user_items))
    active = int(np.count_nonzero(np.diff(user_items.indptr)))
    local_batch = max(1, config.batch_size // num_workers)
    steps = math.ceil(math.ceil(active / num_workers) / local_batch)
    with ray_cluster(address, num_workers) as ray:
        result = _fit(ray, user_items, Path(storage_path), name, num_workers, config, tracking, steps)
    with result.checkpoint.as_directory() as directory:
        state = load_state(Path(directory))
    history = TrainingHistory(epochs=json.loads(state["history"]), best_epoch=state["epoch"])
    model = DotEBM.from_trained(config, user_items, state["module"], history)
    # the first epoch of the last attempt: above 1 when the run was resumed from a checkpoint
    model.meta = {"ray_train": {"name": name, "num_workers": num_workers,
                                "resumed_at_epoch": int(state["attempt_started_at"])}}
    return model


def _fit(ray: Any, user_items: sp.csr_matrix, storage: Path, name: str, num_workers: int,
         config: DotEBMConfig, tracking: dict[str, str] | None, steps: int) -> Any:
    """Run (or resume) the TorchTrainer; returns its result."""
    loop_config = {"config": config.to_dict(), "data": [ray.put(user_items)], "steps": steps,
                   "name": name, "tracking": tracking}
    logger.info("training dpebm on %d Ray workers (%d steps per epoch), run %s in %s",
                num_workers, steps, name, storage)
    return run_trainer(_train_loop, loop_config, storage, name, num_workers)


def run_trainer(loop: Callable[[dict[str, Any]], None], loop_config: dict[str, Any], storage: Path,
                name: str, num_workers: int) -> Any:
    """Run (or resume) ``loop`` on ``num_workers`` Ray Train workers (DDP over gloo, one CPU
    each), keeping the last two checkpoints in ``storage/name``; returns the result."""
    require_ray()
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    storage.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        loop, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=False,
                                     resources_per_worker={"CPU": 1}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name=name, storage_path=str(storage.absolute()),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))
    return trainer.fit()
