"""Augmented vectors of factored models: -E(u, i) = <p_u, q_i> + b_i = <[p_u, 1], [q_i, b_i]>.

A model with user vectors p_u, item vectors q_i and item biases b_i (the dot-product EBM, ALS,
BPR) scores every item with one inner product of augmented vectors; this module builds them,
checks that a model exposes them, and fingerprints a model's items.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np


def _as_2d_float32(array: Any, name: str) -> np.ndarray:
    out = np.asarray(array, dtype=np.float32)
    if out.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {out.shape}")
    return out


def check_vector_model(model: Any) -> None:
    """Raise ``TypeError`` unless ``model`` has ``user_vectors``, ``item_vectors``, ``item_biases``."""
    missing = [name for name in ("user_vectors", "item_vectors", "item_biases")
               if not callable(getattr(model, name, None))]
    if missing:
        raise TypeError(f"{type(model).__name__} does not expose {', '.join(missing)}; retrieval "
                        "needs user_vectors(user_ids, user_items=None), item_vectors(), item_biases()")


def has_vectors(model: Any) -> bool:
    """Whether ``model`` exposes the three methods retrieval needs."""
    try:
        check_vector_model(model)
    except TypeError:
        return False
    return True


def augment_items(item_vectors: np.ndarray, item_biases: np.ndarray) -> np.ndarray:
    """``[q_i, b_i]``: float32 (n_items, dim + 1)."""
    items = _as_2d_float32(item_vectors, "item_vectors")
    biases = np.asarray(item_biases, dtype=np.float32).ravel()
    if biases.shape[0] != items.shape[0]:
        raise ValueError(f"item_biases has {biases.shape[0]} entries for {items.shape[0]} item vectors")
    return np.hstack([items, biases[:, None]])


def augment_users(user_vectors: np.ndarray) -> np.ndarray:
    """``[p_u, 1]``: float32 (n, dim + 1)."""
    users = _as_2d_float32(user_vectors, "user_vectors")
    return np.hstack([users, np.ones((users.shape[0], 1), dtype=np.float32)])


def fingerprint(item_vectors: np.ndarray, item_biases: np.ndarray) -> str:
    """SHA-256 of the augmented float32 item matrix (shape included): identifies a model's items."""
    items = np.ascontiguousarray(augment_items(item_vectors, item_biases))
    digest = hashlib.sha256(f"{items.shape[0]}x{items.shape[1]}:".encode())
    digest.update(items.tobytes())
    return digest.hexdigest()


def model_fingerprint(model: Any) -> str:
    """:func:`fingerprint` of a model's ``item_vectors()`` and ``item_biases()``."""
    check_vector_model(model)
    return fingerprint(model.item_vectors(), model.item_biases())

