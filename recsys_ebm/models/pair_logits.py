"""The inner products <p_r, q_c> of a training batch's (row, item) pairs, with a sparse backward.

A batch of B users with P positive pairs needs P inner products. Gathering the pairs' user and
item rows (``users[rows] * items[cols]``) moves P x dim floats forward and keeps them for the
backward, which scatters P x dim gradients back: on an ML-20M-shaped batch that is most of a
sampled-softmax epoch. Here the forward is one sampled dense-dense product (SDDMM:
P Q^T evaluated only at the batch's CSR pattern, ``torch.sparse.sampled_addmm``) and keeps
nothing, and the backward is two sparse-dense products: with G the (B x n) matrix of the pairs'
output gradients, dL/dP = G Q and dL/dQ = G^T P.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

#: pairs per chunk of the gathering forward (dtypes without SDDMM): a chunk stays in cache
CHUNK = 1 << 14
#: dtypes whose forward is PyTorch's sampled dense-dense product on the CSR pattern
SDDMM_DTYPES = (torch.float32, torch.float64)


class _PairDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, users: torch.Tensor, items: torch.Tensor, indptr: torch.Tensor, rows: torch.Tensor,
                cols: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(users, items, indptr, rows, cols)
        if users.dtype in SDDMM_DTYPES:
            # the products at the batch's sparsity pattern (SDDMM): a fraction of the gathers' time
            pattern = _csr(indptr, cols, torch.zeros(len(cols), dtype=users.dtype), (len(users), len(items)))
            return torch.sparse.sampled_addmm(pattern, users, items.T, beta=0.0).values()
        out = torch.empty(len(rows), dtype=users.dtype)
        for start in range(0, len(rows), CHUNK):
            r, c = rows[start:start + CHUNK], cols[start:start + CHUNK]
            out[start:start + CHUNK] = (users[r] * items[c]).sum(1)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        users, items, indptr, rows, cols = ctx.saved_tensors
        grad = grad.contiguous()
        grad_users = grad_items = None
        if ctx.needs_input_grad[0]:
            grad_users = _csr_product(indptr, cols, grad, (len(users), len(items)), items)
        if ctx.needs_input_grad[1]:
            crow, item_rows, order = _transposed(indptr, cols, len(items))
            grad_items = _csr_product(crow, item_rows, grad[order], (len(items), len(users)), users)
        return grad_users, grad_items, None, None, None


def _transposed(indptr: torch.Tensor, cols: torch.Tensor, n_cols: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pairs' pattern by column: (crow, rows, order) with ``order`` the pairs' stable order
    by column; scipy's linear-time CSR-to-CSC pass, three times faster than a sort."""
    n_rows = len(indptr) - 1
    csc = sp.csr_matrix((np.arange(len(cols)), cols.numpy(), indptr.numpy()), shape=(n_rows, n_cols)).tocsc()
    return (torch.from_numpy(csc.indptr.astype(np.int64)), torch.from_numpy(csc.indices.astype(np.int64)),
            torch.from_numpy(csc.data.astype(np.int64)))


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():  # PyTorch flags its CSR layout as beta on first use
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, size=shape, check_invariants=False)


def _csr_product(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int],
                 dense: torch.Tensor) -> torch.Tensor:
    """The CSR matrix (crow, col, values) of ``shape`` times ``dense``: a dense (shape[0], dim)."""
    return torch.sparse.mm(_csr(crow, col, values, shape), dense)


def pair_logits(users: torch.Tensor, items: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
                ) -> torch.Tensor:
    """<users[rows[p]], items[cols[p]]> for every pair p: (P,), differentiable in both tables.

    ``rows`` must be sorted (the row-major order of a CSR batch); ``users`` (B, dim), ``items``
    (n, dim) of the same dtype.
    """
    rows, cols = rows.to(torch.int64), cols.to(torch.int64)
    if len(rows) and bool((rows[1:] < rows[:-1]).any()):
        raise ValueError("pair_logits needs the pairs sorted by row (CSR order)")
    indptr = torch.zeros(len(users) + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(rows, minlength=len(users)), 0, out=indptr[1:])
    return _PairDot.apply(users, items, indptr, rows, cols)
