"""The CRBM trainers as data-parallel replicas (models/crbm/trainer.py, joint_model.py), without
Ray: two replicas in threads whose all_sum adds through a barrier take, step for step, the
update one trainer takes on the whole minibatch, also when a replica's share of the last
minibatch is empty. The CD gradients are replaced by a deterministic function of the batch, so
the comparison is exact."""

from __future__ import annotations

import threading

import numpy as np
import scipy.sparse as sp
import torch

from recsys_ebm.models.crbm import CRBM, CRBMConfig
from recsys_ebm.models.crbm import joint as joint_ops
from recsys_ebm.models.crbm.module import CRBMModule


class ThreadReplicas:
    """``world`` replicas in threads: all_sum adds every replica's tensors in rank order."""

    def __init__(self, rank: int, world: int, shared: dict):
        self.rank, self.world, self.shared = rank, world, shared
        self.order_generator = torch.Generator().manual_seed(7)

    def all_sum(self, tensors: list[torch.Tensor]) -> None:
        shared = self.shared
        shared["parts"][self.rank] = [t.clone() for t in tensors]
        shared["barrier"].wait()
        total = [sum(parts[j] for parts in shared["parts"]) for j in range(len(tensors))]
        shared["barrier"].wait()  # every replica has read the parts before they are replaced
        for t, value in zip(tensors, total, strict=True):
            t.copy_(value)


def ratings(n_users: int = 9, n_items: int = 6, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = rng.integers(1, 6, size=(n_users, n_items)) * (rng.random((n_users, n_items)) < 0.6)
    dense[:, 0] = np.maximum(dense[:, 0], 1)  # every user rated something
    return sp.csr_matrix(dense.astype(np.float64))


def fake_cd(module: CRBMModule, batch, *args, **kwargs):
    """Deterministic stand-in for the CD statistics: sums over the batch's entries (rating
    model) of features of (case, unit, level)."""
    grads = {name: torch.zeros_like(p) for name, p in module.named_parameters()}
    weight = (batch.units.to(torch.float32) + 1) * (batch.levels.to(torch.float32) + 1)
    grads["W"].index_put_((batch.units, batch.levels), weight[:, None].expand(-1, module.n_hidden).contiguous(),
                          accumulate=True)
    grads["b"].index_put_((batch.units, batch.levels), weight, accumulate=True)
    grads["c"] += float(batch.n_cases)
    if "D" in grads:
        grads["D"].index_add_(0, batch.r_units, torch.ones(len(batch.r_units), module.n_hidden))
    chain = batch.levels.clone()
    return grads, chain, float(weight.sum())


def fake_joint_cd(module, batch, *args, **kwargs):
    """Mean (per case) deterministic statistics, as the joint layer's CD returns them."""
    grads, _, err = fake_cd(module, batch)
    return {name: g / batch.n_cases for name, g in grads.items()}, None, err


def replicated_state(config: CRBMConfig, data: sp.csr_matrix, world: int, monkeypatch):
    shared = {"barrier": threading.Barrier(world), "parts": [None] * world}
    results: list = [None] * world

    def run(rank: int) -> None:
        trainer = CRBM(config).replica_trainer(data, ThreadReplicas(rank, world, shared))
        for epoch in (1, 2):
            trainer.replicas.order_generator = torch.Generator().manual_seed(epoch)
            trainer.epoch(epoch)
        results[rank] = {k: v.clone() for k, v in trainer.module.state_dict().items()}

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def single_state(config: CRBMConfig, data: sp.csr_matrix):
    """One trainer whose epochs use the replicas' order (seeded by the epoch)."""
    trainer = CRBM(config).replica_trainer(data, ThreadReplicas(0, 1, {"barrier": threading.Barrier(1),
                                                                       "parts": [None]}))
    for epoch in (1, 2):
        trainer.replicas.order_generator = torch.Generator().manual_seed(epoch)
        trainer.epoch(epoch)
    return {k: v.clone() for k, v in trainer.module.state_dict().items()}


def _check(config: CRBMConfig, monkeypatch) -> None:
    data = ratings()  # 9 users, batch_size 4: minibatches of 4, 4, 1 (one replica's share empty)
    one = single_state(config, data)
    two = replicated_state(config, data, 2, monkeypatch)
    for name, tensor in one.items():
        torch.testing.assert_close(two[0][name], tensor, rtol=1e-5, atol=1e-6)
        assert torch.equal(two[0][name], two[1][name]), name  # the replicas stay identical
    assert any(not torch.equal(tensor, CRBM(config).replica_trainer(data, None).module.state_dict()[name])
               for name, tensor in one.items())  # and the steps moved the weights


def test_rating_model_replicas_take_the_whole_minibatchs_step(monkeypatch):
    monkeypatch.setattr(CRBMModule, "cd_gradients", lambda self, batch, *a, **k: fake_cd(self, batch))
    _check(CRBMConfig(visible="ratings", orientation="user", n_hidden=3, batch_size=4, ema=0.5,
                      weight_decay=0.01, seed=0), monkeypatch)


def test_joint_model_replicas_take_the_whole_minibatchs_step(monkeypatch):
    monkeypatch.setattr(joint_ops, "cd_gradients", fake_joint_cd)
    for optimizer in ("sgd", "adam"):
        _check(CRBMConfig(visible="joint", conditional=True, n_hidden=3, batch_size=4,
                          optimizer=optimizer, seed=0), monkeypatch)
