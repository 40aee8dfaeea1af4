"""Mult-VAE: the variational autoencoder with a multinomial likelihood for collaborative
filtering of Liang, Krishnan, Hoffman & Jebara (WWW 2018), the likelihood-based peer the
energy-based models are compared with.

A user's binary history x_u (n_items,) is L2-normalised, dropped out (training only) and
encoded by an MLP, I -> 600 -> (mu, log sigma^2) in R^200 with tanh; the decoder 200 -> 600 ->
I (tanh) gives logits f(z) and the multinomial probabilities pi(z) = softmax(f(z)). Training
maximises the annealed ELBO per user,

    sum_i x_ui log pi_i(z)  -  beta * KL(q(z | x_u) || N(0, I)),   z ~ q by reparameterisation,

with beta = min(beta_max, updates / total_anneal_steps) growing with the number of Adam
updates (the paper's annealing; its best beta was about 0.2 on ML-20M) and early stopping on
validation NDCG@10 (the toolkit's selection metric; the refit replays the same schedule for
the best epoch count). The log-likelihood drops the multinomial coefficient n_u!, a function of
the profile length alone, as the paper does.

Scores are log pi_i(mu(x_u)) (the encoder's mean, no sampling): the ranking of the decoder's
multinomial, and softmax(scores) is that multinomial exactly. Trained users are scored from
the history they were fitted on (their seen set); any other history is folded in by the same
encoder pass, so fold-in of a trained user's own row is exact. :meth:`MultVAE.negative_elbo`
scores whole profiles (the anomaly detector of ``recsys_ebm.anomaly.detectors``).

Torch threads are the caller's (the CLI's ``--threads``), as for the dot-product EBM.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from recsys_ebm.config import Config, check
from recsys_ebm.data.sparse import binarize
from recsys_ebm.errors import ModelFitError
from recsys_ebm.io import save_model_dir
from recsys_ebm.models.base import EpochCallback, Recommender, check_user_ids, check_user_items
from recsys_ebm.models.training import TrainingHistory, ranking_validator, run_training

logger = logging.getLogger(__name__)

MODEL_NAME = "multvae"
#: users per block of dense (users x items) work when scoring
SCORE_BATCH = 1024


@dataclasses.dataclass(frozen=True)
class MultVAEConfig(Config):
    """Hyperparameters of Mult-VAE (the paper's architecture; training options tuned on the
    ML-100K validation split, see ``pipelines/multvae.toml``).

    Attributes
    ----------
    hidden, latent : widths of the encoder/decoder hidden layer (600) and of z (200).
    dropout : dropout rate on the normalised input during training (the paper's 0.5).
    beta_max, total_anneal_steps : KL weight beta = min(beta_max, updates / total_anneal_steps).
    l2 : weight decay lam * sum of squared weights (not biases) added to the batch loss.
    epochs, patience : at most ``epochs`` passes; early stop after ``patience`` epochs without a
        better validation NDCG@10 (when a validation split is given).
    """

    hidden: int = 600
    latent: int = 200
    dropout: float = 0.5
    beta_max: float = 0.2
    total_anneal_steps: int = 200_000
    epochs: int = 200
    batch_size: int = 500
    lr: float = 1e-3
    l2: float = 0.0
    patience: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden", "latent", "total_anneal_steps", "epochs", "batch_size", "patience", "seed"):
            value = getattr(self, name)
            check(isinstance(value, (int, np.integer)) and not isinstance(value, bool),
                  f"{name} must be an integer, got {value!r}")
        for name in ("dropout", "beta_max", "lr", "l2"):
            value = getattr(self, name)
            check(isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
                  and math.isfinite(value), f"{name} must be a finite number, got {value!r}")
        check(self.hidden >= 1 and self.latent >= 1,
              f"hidden and latent must be >= 1, got {self.hidden} and {self.latent}")
        check(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        check(self.beta_max >= 0, f"beta_max must be >= 0, got {self.beta_max}")
        check(self.total_anneal_steps >= 1, f"total_anneal_steps must be >= 1, got {self.total_anneal_steps}")
        check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.l2 >= 0, f"l2 must be >= 0, got {self.l2}")
        check(self.patience >= 1, f"patience must be >= 1, got {self.patience}")
        check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")


# ----------------------------------------------------------------------------- the objective
def multinomial_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_i x_i log softmax(logits)_i per row: (B,) from logits and counts (B, n_items)."""
    return (torch.log_softmax(logits, dim=-1) * x).sum(dim=-1)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per row: (B,) from (B, latent)."""
    return 0.5 * (torch.exp(logvar) + mu**2 - 1.0 - logvar).sum(dim=-1)


def _linear(n_in: int, n_out: int, generator: torch.Generator) -> nn.Linear:
    """A linear layer with Xavier-uniform weights and N(0, 0.001^2) biases (the paper's
    initialisation), drawn from ``generator``."""
    layer = nn.Linear(n_in, n_out)
    bound = math.sqrt(6.0 / (n_in + n_out))
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.normal_(0.0, 0.001, generator=generator)
    return layer


class MultVAEModule(nn.Module):
    """Encoder q(z | x) and decoder logits f(z) of Mult-VAE."""

    def __init__(self, n_items: int, config: MultVAEConfig, generator: torch.Generator):
        super().__init__()
        self.config = config
        self.enc_hidden = _linear(n_items, config.hidden, generator)
        self.enc_out = _linear(config.hidden, 2 * config.latent, generator)
        self.dec_hidden = _linear(config.latent, config.hidden, generator)
        self.dec_out = _linear(config.hidden, n_items, generator)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) (B, latent) of histories x (B, n_items): L2-normalised, then input
        dropout (scaled by 1 / (1 - p)) when a generator is given (training)."""
        h = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        p = self.config.dropout
        if generator is not None and p > 0:
            keep = torch.rand(h.shape, generator=generator) >= p
            h = h * keep / (1.0 - p)
        out = self.enc_out(torch.tanh(self.enc_hidden(h)))
        return out[:, :self.config.latent], out[:, self.config.latent:]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Logits f(z) (..., n_items) of the multinomial."""
        return self.dec_out(torch.tanh(self.dec_hidden(z)))

    def weight_penalty(self) -> torch.Tensor:
        """sum of squared weights of the four layers (biases excluded)."""
        return sum((layer.weight**2).sum() for layer in
                   (self.enc_hidden, self.enc_out, self.dec_hidden, self.dec_out))


@dataclasses.dataclass(eq=False)
class _EpochState:
    """What every training epoch of one ``fit`` shares; ``updates`` counts Adam steps."""

    user_items: sp.csr_matrix
    active: np.ndarray
    generator: torch.Generator
    optimizer: torch.optim.Optimizer
    updates: int = 0


def _dense(user_items: sp.csr_matrix, rows=None) -> torch.Tensor:
    block = user_items if rows is None else user_items[rows]
    return torch.from_numpy(block.toarray().astype(np.float32, copy=False))


class MultVAE(Recommender):
    """Mult-VAE recommender: ``fit`` a users x items CSR (binarised), ``score``/``recommend``
    any history by one encoder pass, ``negative_elbo`` of whole profiles."""

    trains_in_epochs = True
    config_class = MultVAEConfig

    def __init__(self, config: MultVAEConfig | None = None, **options):
        if config is not None and options:
            raise ValueError("pass either a config or keyword options, not both")
        self.config = config if config is not None else MultVAEConfig(**options)
        self.n_users = 0
        self.n_items = 0
        self.module: MultVAEModule | None = None
        self.history = TrainingHistory()

    # ------------------------------------------------------------------ training
    def fit(self, user_items: sp.csr_matrix, *, validation: sp.csr_matrix | None = None,
            callback: EpochCallback | None = None, show_progress: bool = True) -> MultVAE:
        """Train on a users x items CSR (binarised); early-stop on ``validation`` NDCG@10."""
        cfg = self.config
        user_items = binarize(check_user_items(user_items))
        if user_items.nnz == 0:
            raise ValueError("user_items has no interactions to train on")
        self.n_users, self.n_items = user_items.shape
        self._remember_seen(user_items)
        generator = torch.Generator().manual_seed(cfg.seed)
        module = MultVAEModule(self.n_items, cfg, generator)
        self.module = module
        optimizer = torch.optim.Adam(module.parameters(), lr=cfg.lr)
        state = _EpochState(user_items, np.flatnonzero(np.diff(user_items.indptr) > 0), generator,
                            optimizer)
        validate = None
        if validation is not None:
            validation = check_user_items(validation, n_rows=self.n_users, n_items=self.n_items)
            validate = ranking_validator(lambda users: self.recommend(users, user_items, k=10)[0],
                                         validation, k=10)
        self.history = run_training(
            lambda epoch: self._train_epoch(epoch, state), epochs=cfg.epochs, validate=validate,
            monitor="val_ndcg@10" if validation is not None else None, patience=cfg.patience,
            snapshot=lambda: {k: v.detach().clone() for k, v in module.state_dict().items()},
            restore=module.load_state_dict, callback=callback, show_progress=show_progress,
            desc="multvae")
        module.eval()
        return self

    def beta(self, updates: int) -> float:
        """The KL weight after ``updates`` Adam steps: min(beta_max, updates / total_anneal_steps)."""
        return min(self.config.beta_max, updates / self.config.total_anneal_steps)

    def _train_epoch(self, epoch: int, state: _EpochState) -> dict[str, float]:
        """One pass over the active users in shuffled mini-batches of the annealed negative ELBO."""
        cfg, module = self.config, self.module
        module.train()
        order = state.active[torch.randperm(len(state.active), generator=state.generator).numpy()]
        totals = {"train_neg_ll": 0.0, "train_kl": 0.0}
        for start in range(0, len(order), cfg.batch_size):
            x = _dense(state.user_items, order[start:start + cfg.batch_size])
            mu, logvar = module.encode(x, state.generator)
            eps = torch.randn(mu.shape, generator=state.generator)
            z = mu + eps * torch.exp(0.5 * logvar)
            neg_ll = -multinomial_log_likelihood(module.decode(z), x).mean()
            kl = gaussian_kl(mu, logvar).mean()
            beta = self.beta(state.updates)
            loss = neg_ll + beta * kl
            if cfg.l2 > 0:
                loss = loss + cfg.l2 * module.weight_penalty()
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            state.optimizer.step()
            state.updates += 1
            totals["train_neg_ll"] += float(neg_ll.detach()) * len(x)
            totals["train_kl"] += float(kl.detach()) * len(x)
        metrics = {k: v / max(len(order), 1) for k, v in totals.items()}
        metrics["beta"] = self.beta(state.updates)
        if not all(math.isfinite(p.detach().abs().max().item()) for p in module.parameters()):
            raise ModelFitError(f"epoch {epoch}: non-finite weights; lower the learning rate (lr={cfg.lr:g})")
        return metrics

    # ------------------------------------------------------------------ inference
    def _require_fitted(self) -> None:
        if self.module is None:
            raise RuntimeError("the model is not fitted: call fit() or load() first")

    def _histories(self, user_ids, user_items: sp.csr_matrix | None) -> sp.csr_matrix:
        """Binary histories aligned with ``user_ids``: the seen set's rows of trained users, or
        ``user_items`` (fold-in, any ids)."""
        self._require_fitted()
        if user_items is None:
            return self.seen_items[check_user_ids(user_ids, self.n_users)]
        user_items = check_user_items(user_items, n_items=self.n_items)
        ids = check_user_ids(user_ids, None)
        if user_items.shape[0] != len(ids):
            raise ValueError(f"user_items has {user_items.shape[0]} rows for {len(ids)} user ids "
                             "(fold-in rows must align with user_ids)")
        return binarize(user_items)

    @torch.no_grad()
    def score(self, user_ids, user_items: sp.csr_matrix | None = None) -> np.ndarray:
        """log pi_i(mu(x_u)) for every item: float32 (n, n_items); x_u is the trained user's
        fitted history, or the ``user_items`` row (fold-in)."""
        histories = self._histories(user_ids, user_items)
        self.module.eval()
        out = np.empty(histories.shape, dtype=np.float32)
        for start in range(0, histories.shape[0], SCORE_BATCH):
            x = _dense(histories[start:start + SCORE_BATCH])
            mu, _ = self.module.encode(x)
            out[start:start + len(x)] = torch.log_softmax(self.module.decode(mu), dim=-1).numpy()
        return out

    @torch.no_grad()
    def elbo_terms(self, user_items: sp.csr_matrix, samples: int = 1, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Per profile: (E_q[-sum_i x_i log pi_i(z)], KL(q(z | x) || p(z))), float64 (n,) each.

        ``x`` is the binarised row. The expectation is a Monte Carlo mean over ``samples`` draws
        of z (seeded by ``seed``; the draws depend only on the rows and the seed), or the value
        at z = mu when ``samples`` is 0.
        """
        histories = self._histories(np.arange(sp.csr_matrix(user_items).shape[0]), user_items)
        if samples < 0:
            raise ValueError(f"samples must be >= 0, got {samples}")
        self.module.eval()
        generator = torch.Generator().manual_seed(int(seed))
        neg_ll = np.empty(histories.shape[0])
        kl = np.empty(histories.shape[0])
        for start in range(0, histories.shape[0], SCORE_BATCH):
            x = _dense(histories[start:start + SCORE_BATCH])
            mu, logvar = self.module.encode(x)
            if samples == 0:
                z = mu[None]
            else:
                eps = torch.randn((samples, *mu.shape), generator=generator)
                z = mu[None] + eps * torch.exp(0.5 * logvar)[None]
            ll = multinomial_log_likelihood(self.module.decode(z), x[None]).mean(dim=0)
            neg_ll[start:start + len(x)] = -ll.double().numpy()
            kl[start:start + len(x)] = gaussian_kl(mu, logvar).double().numpy()
        return neg_ll, kl

    def negative_elbo(self, user_items: sp.csr_matrix, samples: int = 1, seed: int = 0,
                      beta: float = 1.0) -> np.ndarray:
        """-ELBO = E_q[-log p(x | z)] + beta KL per profile, float64 (n,); beta = 1 is the bound
        on -log p(x) (up to the multinomial coefficient). See :meth:`elbo_terms`."""
        neg_ll, kl = self.elbo_terms(user_items, samples, seed)
        return neg_ll + beta * kl

    # ------------------------------------------------------------------ persistence
    def save(self, path, meta: dict | None = None):
        """Write the weights (plain tensors), the seen set and the JSON config to ``path``."""
        self._require_fitted()
        tensors = {f"module.{k}": v.detach() for k, v in self.module.state_dict().items()}
        tensors.update(self._seen_tensors())
        info = {"n_users": self.n_users, "n_items": self.n_items,
                "best_epoch": self.history.best_epoch, **(meta or {})}
        return save_model_dir(path, MODEL_NAME, self.config.to_dict(), tensors, info)

    @classmethod
    def load(cls, path) -> MultVAE:
        model, tensors, meta = cls._load_dir(path, MODEL_NAME)
        module = MultVAEModule(model.n_items, model.config, torch.Generator().manual_seed(0))
        state = {k: tensors.expect(f"module.{k}", tuple(v.shape))
                 for k, v in module.state_dict().items()}
        module.load_state_dict(state)
        module.eval()
        model.module = module
        model.meta = meta
        return model
