"""pair_logits (models/pair_logits.py): the pairs' inner products and their sparse backward
against the gather formula and torch.autograd.gradcheck."""

from __future__ import annotations

import pytest
import torch

from recsys_ebm.models import pair_logits as pl
from recsys_ebm.models.pair_logits import pair_logits


def batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    users = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    items = torch.randn(7, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    # row 2 has no pair, item 6 none either, (3, 1) comes twice
    rows = torch.tensor([0, 0, 1, 3, 3, 3, 4])
    cols = torch.tensor([1, 4, 0, 1, 1, 5, 2])
    return users, items, rows, cols


def test_values_and_gradients_equal_the_gather_formula(monkeypatch):
    monkeypatch.setattr(pl, "CHUNK", 3)  # several forward chunks
    users, items, rows, cols = batch()
    weights = torch.arange(1.0, 8.0, dtype=torch.float64)
    got = pair_logits(users, items, rows, cols)
    want = (users[rows] * items[cols]).sum(1)
    torch.testing.assert_close(got, want)
    g_got = torch.autograd.grad((got * weights).sum(), (users, items))
    g_want = torch.autograd.grad((want * weights).sum(), (users, items))
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b)
    assert float(g_got[0][2].abs().sum()) == 0.0 and float(g_got[1][6].abs().sum()) == 0.0


def test_gradcheck():
    users, items, rows, cols = batch(1)
    assert torch.autograd.gradcheck(lambda u, q: pair_logits(u, q, rows, cols), (users, items))


def test_pairs_out_of_row_order_are_refused():
    users, items, rows, cols = batch()
    with pytest.raises(ValueError, match="sorted by row"):
        pair_logits(users, items, rows.flip(0), cols)
