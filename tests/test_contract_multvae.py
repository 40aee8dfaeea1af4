"""The shared model contract (tests/model_contract.py) run against Mult-VAE."""

from __future__ import annotations

from model_contract import ModelContract

from recsys_ebm.models.multvae import MultVAE


class TestMultVAEContract(ModelContract):
    """A history encoder: scoring a trained user from its own row is the same computation."""

    fold_in_exact = True

    def make_model(self, seed: int) -> MultVAE:
        return MultVAE(hidden=16, latent=4, dropout=0.2, beta_max=0.2, total_anneal_steps=50,
                       epochs=80, batch_size=8, lr=0.02, seed=seed)
