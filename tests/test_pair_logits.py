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


@pytest.mark.parametrize("forward", ["sddmm", "chunked gathers"])
def test_values_and_gradients_equal_the_gather_formula(monkeypatch, forward):
    monkeypatch.setattr(pl, "CHUNK", 3)  # several forward chunks
    if forward == "chunked gathers":
        monkeypatch.setattr(pl, "SDDMM_DTYPES", ())
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


@pytest.mark.parametrize("seed, n_pairs", [(0, 2_000), (1, 2_000), (2, 20_000)])
def test_float32_batches_of_training_size_match_the_gathers(seed, n_pairs):
    """A batch shaped like a training step's, in float32: columns in any order within a row,
    repeated pairs; every value finite and equal to the gathered products (the SDDMM's pattern
    values are zeros, not uninitialised memory that beta=0 would still multiply)."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.sort(torch.randint(300, (n_pairs,), generator=gen)).values
    cols = torch.randint(2_000, (n_pairs,), generator=gen)
    users = torch.randn(300, 16, generator=gen, requires_grad=True)
    items = torch.randn(2_000, 16, generator=gen, requires_grad=True)
    for _ in range(3):  # freed NaNs of the pattern's size, for the allocator to hand out again
        del_me = torch.full((n_pairs,), float("nan"))
        del del_me
    got = pair_logits(users, items, rows, cols)
    want = (users[rows] * items[cols]).sum(1)
    assert bool(torch.isfinite(got).all())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    weights = torch.rand(n_pairs, generator=gen)
    g_got = torch.autograd.grad((got * weights).sum(), (users, items))
    g_want = torch.autograd.grad((want * weights).sum(), (users, items))
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
