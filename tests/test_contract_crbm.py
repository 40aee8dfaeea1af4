"""The shared model contract (tests/model_contract.py) run against the conditional RBM.

The CRBM learns from ratings and ranks by expected rating, so the checkerboard becomes a
ratings matrix: every user rates the items of its own block 4 or 5 (all but its held-out
item, as in `checkerboard`) and half of the other block 1. The held-out item is then the one
unseen item the user's whole group rated highly, while every other unseen item was rated 1
by half of the group: the right top-1 is known from the ratings, not only from which items
were rated.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from model_contract import ModelContract, checkerboard

from recsys_ebm.models.crbm import CRBM


def own_blocks() -> np.ndarray:
    """bool (n_users, n_items): the items of each user's own block of `checkerboard`."""
    n_users, n_items = checkerboard().train.shape
    group, block = np.arange(n_users) // (n_users // 2), np.arange(n_items) // (n_items // 2)
    return group[:, None] == block[None, :]


def rating_checkerboard() -> sp.csr_matrix:
    """`checkerboard` as ratings: 4 or 5 on the own block, 1 on half of the other block.

    User j of a group rates items (j + t) % items_per_group, t = 0..3, of the other block 1,
    so each user keeps 4 unseen items there and each of them was rated 1 by 4 group members.
    """
    liked = checkerboard().train.toarray() > 0
    n_users, n_items = liked.shape
    per_group = n_items // 2
    users, items = np.arange(n_users)[:, None], np.arange(n_items)[None, :]
    ratings = np.where(liked, 4.0 + (users + items) % 2, 0.0)
    low = ~own_blocks() & ((items - users) % per_group < per_group // 2)
    ratings[low] = 1.0
    return sp.csr_matrix(ratings.astype(np.float32))


class _CRBMContract(ModelContract):
    orientation = "item"

    def make_model(self, seed: int) -> CRBM:
        return CRBM(orientation=self.orientation, n_hidden=8, epochs=60, batch_size=4, lr=0.05,
                    weight_decay=0.001, cd_schedule=((1, 1),), val_fraction=0.0,
                    fold_in_steps=100, seed=seed)

    def train_matrix(self) -> sp.csr_matrix:
        return rating_checkerboard()

    def liked_items(self) -> np.ndarray:
        # the own block, held-out item included; the items rated 1 are seen but not liked
        return own_blocks()


class TestCRBMItemContract(_CRBMContract):
    """One RBM per item (the default): fold-in fits a new user's visible weights by Adam, so
    only the ranking must agree with the trained user."""

    orientation = "item"
    fold_in_exact = False


class TestCRBMUserContract(_CRBMContract):
    """One RBM per user: a user's hidden input comes from its ratings, so scoring a trained
    user from its own training row is the same computation."""

    orientation = "user"
    fold_in_exact = True


class TestCRBMJointContract(_CRBMContract):
    """The joint visible layer (one RBM per user over which items it rated and how): ranked by
    p(r_i = 1 | v); sampled lists come from the temperature-T Gibbs chains."""

    orientation = "user"
    fold_in_exact = True

    def make_model(self, seed: int) -> CRBM:
        return CRBM(visible="joint", n_hidden=8, epochs=60, batch_size=4, lr=0.05,
                    weight_decay=0.001, cd_schedule=((1, 1),), val_fraction=0.0, seed=seed)
