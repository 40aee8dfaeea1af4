"""The conditional RBM over event sequences (Taylor, Hinton & Roweis 2007) with one discrete
visible unit: the next item v in 1..N (a softmax unit), binary hidden units h in {0, 1}^F.

Energy given the history (the previous n events x_{t-1..t-n} and, optionally, the bucketed time
gaps g_{t-1..t-n} before them):

    E(v, h | hist) = -a_v(hist) - sum_f h_f (c_f(hist) + W_vf)
    a_v(hist) = a_v + sum_l <U_l[x_{t-l}], V_v>              (visible dynamic bias, rank r)
    c_f(hist) = c_f + sum_l (B_l[x_{t-l}, f] + G_l[g_{t-l}, f])  (hidden dynamic bias)

each lag l with its own weights (U_l, B_l, G_l); "no event" (a history shorter than n) is row 0
of U_l and B_l. Summing h out gives the free energy of every v,

    F(v | hist) = -a_v(hist) - sum_f softplus(c_f(hist) + W_vf),

so p(v | hist) = exp(-F(v | hist)) / sum_v' exp(-F(v' | hist)) is exact: the catalog is finite.
Items the history already holds can be left out of the support (``allowed``).
"""

from __future__ import annotations

import torch
from torch import nn

#: upper bounds (seconds) of the time-gap buckets; bucket 0 is "no previous event"
GAP_EDGES = (0, 60, 3600, 86400, 7 * 86400)
N_GAP_BUCKETS = len(GAP_EDGES) + 2


def gap_buckets(gaps: torch.Tensor) -> torch.Tensor:
    """Bucket of each gap in seconds: 0 for none (-1), 1 for a tie (0 s), then <= 1 min,
    <= 1 h, <= 1 day, <= 1 week, longer (2..6)."""
    edges = torch.tensor(GAP_EDGES, dtype=gaps.dtype)
    return torch.where(gaps < 0, 0, torch.bucketize(gaps, edges, right=False) + 1)


class SeqCRBMNet(nn.Module):
    """Parameters and the free energy of the sequence CRBM."""

    def __init__(self, n_items: int, n_hidden: int, n_lags: int, rank: int, time_gaps: bool,
                 generator: torch.Generator):
        super().__init__()

        def small(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=generator) * 0.01)

        self.n_items, self.time_gaps = n_items, time_gaps
        self.weight = small(n_items, n_hidden)  # W
        self.visible_bias = nn.Parameter(torch.zeros(n_items))  # a
        self.hidden_bias = nn.Parameter(torch.zeros(n_hidden))  # c
        self.lag_hidden = small(n_lags, n_items + 1, n_hidden)  # B_l
        self.lag_visible = small(n_lags, n_items + 1, rank)  # U_l
        self.item_factors = small(n_items, rank)  # V
        self.gap_hidden = nn.Parameter(torch.zeros(n_lags, N_GAP_BUCKETS, n_hidden))  # G_l

    def dynamic_biases(self, lags: torch.Tensor, gaps: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """a(hist) (B, N) and c(hist) (B, F) from lag items (B, n) as index + 1 (0 = none) and
        their gap buckets (B, n)."""
        n_lags = lags.shape[1]
        index = torch.arange(n_lags)
        hidden = self.hidden_bias + self.lag_hidden[index, lags].sum(1)
        if self.time_gaps and gaps is not None:
            hidden = hidden + self.gap_hidden[index, gaps].sum(1)
        visible = self.visible_bias + self.lag_visible[index, lags].sum(1) @ self.item_factors.T
        return visible, hidden

    def free_energy_all(self, visible: torch.Tensor, hidden: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """F(v | hist) for every item: (B, N), in blocks of ``chunk`` rows (B x N x F memory)."""
        parts = []
        for start in range(0, len(hidden), chunk):
            pre = hidden[start:start + chunk, None, :] + self.weight[None]
            parts.append(-visible[start:start + chunk] - nn.functional.softplus(pre).sum(-1))
        return torch.cat(parts) if parts else visible.new_zeros((0, self.n_items))

    def free_energy_of(self, items: torch.Tensor, visible: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """F(v | hist) of one item per row: (B,)."""
        rows = torch.arange(len(items))
        pre = hidden + self.weight[items]
        return -visible[rows, items] - nn.functional.softplus(pre).sum(-1)

    def gibbs(self, items: torch.Tensor, visible: torch.Tensor, hidden: torch.Tensor, steps: int,
              allowed: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """``steps`` rounds of block Gibbs sampling h ~ p(h | v), v ~ p(v | h) from ``items``."""
        for _ in range(steps):
            p_h = torch.sigmoid(hidden + self.weight[items])
            h = (torch.rand(p_h.shape, generator=generator) < p_h).to(p_h.dtype)
            logits = visible + h @ self.weight.T
            if allowed is not None:
                logits = logits.masked_fill(~allowed, float("-inf"))
            items = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=generator)[:, 0]
        return items
