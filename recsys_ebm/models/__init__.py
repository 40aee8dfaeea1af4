"""Models: every one implements the small `Recommender` interface of `base.py`.

``MODELS`` is the plain name -> class dict the CLI, evaluation and export use; each class has
a ``config_class`` (a frozen dataclass) and ``save``/``load``.
"""

from __future__ import annotations

from recsys_ebm.models.attn_ebm import AttnEBM
from recsys_ebm.models.base import Recommender
from recsys_ebm.models.baselines import EASE, ItemKNN, MostPopular
from recsys_ebm.models.crbm import CRBM
from recsys_ebm.models.dot_ebm import DotEBM
from recsys_ebm.models.factor_baselines import ALS, BPR
from recsys_ebm.models.markov import MarkovChain
from recsys_ebm.models.multvae import MultVAE
from recsys_ebm.models.seq_crbm import SeqCRBM

MODELS: dict[str, type[Recommender]] = {
    "dpebm": DotEBM,
    "crbm": CRBM,
    "pop": MostPopular,
    "als": ALS,
    "bpr": BPR,
    "itemknn": ItemKNN,
    "ease": EASE,
    "multvae": MultVAE,
    # next-item models: they read the order of each history (models/sequential.py)
    "markov": MarkovChain,
    "attnebm": AttnEBM,
    "seqcrbm": SeqCRBM,
}


def model_class(name: str) -> type[Recommender]:
    """The class registered under ``name``; ``KeyError`` lists the known names."""
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None


def load_model(path) -> Recommender:
    """Load any saved model directory, dispatching on the name stored in its config.json.

    Models saved before the seen set was part of the model files get it from the
    ``seen_items.npz`` that ``train`` wrote beside them, when present.
    """
    from recsys_ebm.io import load_seen_items, read_model_name

    model = model_class(read_model_name(path)).load(path)
    if model.seen_items is None:
        seen = load_seen_items(path)
        if seen is not None and seen.shape == (model.n_users, model.n_items):
            model.seen_items = seen
    return model
