"""unit_rows (models/unit_rows.py): the rows scaled to unit length, as
torch.nn.functional.normalize gives them, with the one-pass backward dx = (dy - y <y, dy>) / |x|."""

from __future__ import annotations

import torch

from recsys_ebm.models.unit_rows import unit_rows


def test_values_equal_normalize_and_rows_have_unit_length():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]])
    y = unit_rows(x)
    torch.testing.assert_close(y, torch.tensor([[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]]))
    z = torch.randn(50, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(unit_rows(z), torch.nn.functional.normalize(z, dim=1))


def test_gradient_is_the_projection_off_the_row_and_passes_gradcheck():
    # y = x / |x| at x = (3, 4): dy = (1, 0) gives dx = (dy - y <y, dy>) / 5 = (0.64, -0.48) / 5
    x = torch.tensor([[3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    (unit_rows(x) * torch.tensor([[1.0, 0.0]], dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([[0.128, -0.096]], dtype=torch.float64))
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    assert torch.autograd.gradcheck(unit_rows, (x,))
    w = torch.randn(6, 4, dtype=torch.float64)
    ours = torch.autograd.grad((unit_rows(x) * w).sum(), x)[0]
    torch_s = torch.autograd.grad((torch.nn.functional.normalize(x, dim=1) * w).sum(), x)[0]
    torch.testing.assert_close(ours, torch_s)
