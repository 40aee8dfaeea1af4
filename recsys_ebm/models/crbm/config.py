"""The CRBM's hyperparameters: `CRBMConfig`, validated on construction."""

from __future__ import annotations

import dataclasses

from recsys_ebm.config import Config, check


@dataclasses.dataclass(frozen=True)
class CRBMConfig(Config):
    """Hyperparameters of the (conditional) RBM; defaults tuned on ML-100K validation splits
    (the same values as ``pipelines/crbm.toml``).

    Attributes
    ----------
    visible : "ratings" (the rating-only conditional RBM: only rated items have visible units,
        which items were rated enters through D) or "joint" (a binary "rated" unit r_i for
        every item beside the rating softmax of the rated ones: the model also learns *which*
        items a user rates; one RBM per user, so ``orientation`` is set to "user").
    orientation : "item" (one RBM per item over its raters) or "user" (one per user).
    n_hidden : F, binary hidden units.
    conditional : add the D[i, f] term from the binary "which units rated" vector r.
    include_queries : with ``conditional``, also put the queried pairs in r (the paper's use of
        the Netflix qualifying set): ``predict`` adds the asked pairs, ``fit(implicit=...)``
        adds known future queries, and the carved validation pairs stay in r while training.
    epochs, batch_size : at most ``epochs`` passes over minibatches of ``batch_size`` cases.
    lr, lr_decay : learning rate lr * lr_decay ** (epoch - 1).
    momentum, momentum_start, momentum_epochs : momentum_start for the first
        ``momentum_epochs`` epochs, then momentum (Hinton's guide).
    weight_decay : L2 on W and D, applied to the rows a minibatch touches.
    cd_schedule : ((first_epoch, k), ...): CD-k with k switching at those epochs.
    persistent : persistent CD (chains carried over between epochs) instead of CD from the data.
    mean_field : negative statistics from the last reconstruction's probabilities, not a sample
        (CD from the data only; persistent chains always sample).
    ema : > 0 predicts with an exponential moving average of the weights (decay per minibatch).
    init_std : W ~ N(0, init_std^2); b starts at the log frequencies of each unit's levels.
    val_fraction : share of the training ratings carved out for early stopping (0: none).
    patience : epochs without a better validation RMSE before stopping.
    score_type, score_threshold : what ``score`` ranks by: the expected rating ("expected"),
        P(rating >= score_threshold) ("p_at_least"); for the joint layer log p(r_i = 1 | v)
        ("active") or log p(r_i = 1, rating >= score_threshold | v) ("active_liked"). "auto" is
        "active" for the joint layer and "expected" for the rating-only one.
    gibbs_chains, gibbs_burn_in, gibbs_steps : the joint layer's exploratory lists (``recommend``
        with temperature T > 0): ``gibbs_chains`` block Gibbs chains per user at temperature T,
        the user's items clamped, ``gibbs_burn_in`` steps discarded, then up to
        ``gibbs_steps`` steps whose newly activated items form the list.
    optimizer : the joint layer's update rule: "sgd" (momentum, as the rating-only model) or
        "adam" (``lr`` is Adam's step size).
    item_chunk : items per chunk of the joint layer's negative phase (memory: batch x chunk x K).
    levels : the K rating values; None infers them from the training ratings.
    fold_in_steps, fold_in_lr : item orientation only: Adam steps / lr fitting a new user's
        visible weights (model frozen) when scoring users unseen in training.
    num_threads : torch intra-op threads while fitting and predicting (the caller's setting is
        restored afterwards; 0 leaves it alone). The model runs many small gather/scatter ops,
        where threads only add overhead: on 2 shared cores, 2 threads took 6x the wall time and
        5x the CPU time of 1 thread for the same (bit-identical) ML-100K fit.
    seed : seeds the one ``torch.Generator`` and the validation split.
    """

    visible: str = "ratings"
    orientation: str = "item"
    n_hidden: int = 200
    conditional: bool = True
    include_queries: bool = False
    epochs: int = 120
    batch_size: int = 32
    lr: float = 0.002
    lr_decay: float = 0.98
    momentum: float = 0.9
    momentum_start: float = 0.5
    momentum_epochs: int = 5
    weight_decay: float = 0.05
    cd_schedule: tuple[tuple[int, int], ...] = ((1, 1), (20, 3), (40, 5))
    persistent: bool = False
    mean_field: bool = True
    ema: float = 0.0
    init_std: float = 0.01
    val_fraction: float = 0.05
    patience: int = 10
    score_type: str = "auto"
    score_threshold: float = 4.0
    levels: tuple[float, ...] | None = None
    gibbs_chains: int = 4
    gibbs_burn_in: int = 10
    gibbs_steps: int = 50
    item_chunk: int = 2048
    optimizer: str = "sgd"
    fold_in_steps: int = 200
    fold_in_lr: float = 0.05
    num_threads: int = 1
    seed: int = 0

    @classmethod
    def from_saved(cls, values: dict) -> CRBMConfig:
        """Models saved with the retired ``refit`` option (early stop, then retrain inside
        ``fit``; the experiments' tuning does that now) load with it dropped: it only ever
        changed how a model was trained, never how a trained one scores."""
        return super().from_saved({k: v for k, v in values.items() if k != "refit"})

    def __post_init__(self) -> None:
        # TOML / JSON give lists; keep tuples so the config stays hashable and frozen
        schedule = tuple(tuple(int(v) for v in step) for step in self.cd_schedule)
        object.__setattr__(self, "cd_schedule", schedule)
        if self.levels is not None:
            object.__setattr__(self, "levels", tuple(float(v) for v in self.levels))
        check(self.orientation in ("item", "user"),
              f"orientation must be 'item' or 'user', got {self.orientation!r}")
        check(self.n_hidden >= 1, f"n_hidden must be >= 1, got {self.n_hidden}")
        check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(0 < self.lr_decay <= 1, f"lr_decay must be in (0, 1], got {self.lr_decay}")
        check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        check(0 <= self.momentum_start < 1, f"momentum_start must be in [0, 1), got {self.momentum_start}")
        check(self.momentum_epochs >= 0, f"momentum_epochs must be >= 0, got {self.momentum_epochs}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(len(schedule) >= 1 and all(len(s) == 2 for s in schedule),
              f"cd_schedule must be ((first_epoch, k), ...), got {self.cd_schedule!r}")
        check(schedule[0][0] == 1, f"cd_schedule must start at epoch 1, got {schedule!r}")
        check(all(a[0] < b[0] for a, b in zip(schedule, schedule[1:], strict=False)),
              f"cd_schedule epochs must increase, got {schedule!r}")
        check(all(k >= 1 for _, k in schedule), f"cd_schedule k must be >= 1, got {schedule!r}")
        check(0 <= self.ema < 1, f"ema must be in [0, 1), got {self.ema}")
        check(self.init_std > 0, f"init_std must be > 0, got {self.init_std}")
        check(0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1), got {self.val_fraction}")
        check(self.patience >= 1, f"patience must be >= 1, got {self.patience}")
        check(self.visible in ("ratings", "joint"),
              f"visible must be 'ratings' or 'joint', got {self.visible!r}")
        if self.visible == "joint":
            object.__setattr__(self, "orientation", "user")
            check(self.conditional, "visible='joint' needs conditional=True (the D weights of r)")
        kinds = ("auto", "expected", "p_at_least") + (("active", "active_liked") if self.visible == "joint" else ())
        check(self.score_type in kinds,
              f"score_type must be one of {kinds} for visible={self.visible!r}, got {self.score_type!r}")
        check(self.gibbs_chains >= 1, f"gibbs_chains must be >= 1, got {self.gibbs_chains}")
        check(self.gibbs_burn_in >= 0, f"gibbs_burn_in must be >= 0, got {self.gibbs_burn_in}")
        check(self.gibbs_steps >= 1, f"gibbs_steps must be >= 1, got {self.gibbs_steps}")
        check(self.optimizer in ("sgd", "adam"), f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        check(self.item_chunk >= 1, f"item_chunk must be >= 1, got {self.item_chunk}")
        check(self.levels is None or (len(self.levels) >= 2 and all(
            a < b for a, b in zip(self.levels, self.levels[1:], strict=False))),
              f"levels must be >= 2 increasing rating values, got {self.levels!r}")
        check(self.fold_in_steps >= 1, f"fold_in_steps must be >= 1, got {self.fold_in_steps}")
        check(self.fold_in_lr > 0, f"fold_in_lr must be > 0, got {self.fold_in_lr}")
        check(self.num_threads >= 0, f"num_threads must be >= 0, got {self.num_threads}")

    @property
    def ranking_score(self) -> str:
        """The resolved ``score_type`` ("auto" -> "active" / "expected")."""
        if self.score_type == "auto":
            return "active" if self.visible == "joint" else "expected"
        return self.score_type

    def cd_k(self, epoch: int) -> int:
        """Number of Gibbs steps used at ``epoch`` (1-based)."""
        k = self.cd_schedule[0][1]
        for first, steps in self.cd_schedule:
            if epoch >= first:
                k = steps
        return k
