"""Row normalisation x / |x| with a one-pass backward, for the cosine energies' training step.

``torch.nn.functional.normalize`` differentiates through its division, the clamp, the expand
and the norm, several passes over the table. The backward of y = x / |x| is
dx = (dy - y <y, dy>) / |x|: one product-sum per row and one fused multiply-add, so the whole
item table, normalised at every step of the sampled softmax, costs about half as much.
"""

from __future__ import annotations

import torch

#: the smallest norm divided by, as in ``torch.nn.functional.normalize``
EPS = 1e-12


class _UnitRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min_(EPS)
        y = x / norm
        ctx.save_for_backward(y, norm)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        y, norm = ctx.saved_tensors
        dot = torch.linalg.vecdot(y, grad, dim=1).unsqueeze(1)
        return torch.addcmul(grad, y, dot, value=-1.0).div_(norm)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` (n, d) with every row scaled to unit length (rows of norm below 1e-12 are divided
    by 1e-12, as ``torch.nn.functional.normalize`` does); differentiable, with the gradient of
    x / |x| (for rows shorter than 1e-12 that is not the gradient of x / 1e-12 that
    ``normalize`` gives; such rows have no direction to train)."""
    return _UnitRows.apply(x)
