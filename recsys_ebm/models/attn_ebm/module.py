"""The torch network of ``attnebm``: a causal self-attention encoder (SASRec-like) whose
state h_t scores every item by the energy E(t, i) = -<h_t, q_i> / tau - b_i.

Item and position embeddings, ``n_blocks`` pre-norm blocks (causal single- or multi-head
attention, then a position-wise feed-forward layer, each with a residual connection and
dropout), a final layer norm. The item embeddings q_i are shared by the input and the energy.
Dropout draws from an explicit ``torch.Generator`` so a seed fixes the whole fit. Every
attention layer can return its weights: the softmax of its scores over the past events is a
Gibbs distribution over them (``attention`` of :meth:`AttnEncoder.forward`).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def dropout(x: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout drawing from ``generator``; the identity when it is None (evaluation)."""
    if generator is None or p <= 0:
        return x
    keep = torch.rand(x.shape, generator=generator) >= p
    return x * keep / (1.0 - p)


class CausalAttention(nn.Module):
    """Multi-head self-attention where position t sees positions <= t that are not padding."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, p: float,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, L, dim), allowed bool (B, L, L) -> (output (B, L, dim), weights (B, heads, L, L))."""
        b, length, dim = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        weights = torch.nan_to_num(weights)  # padding rows see nothing
        mixed = dropout(weights, p, generator) @ v
        return self.out(mixed.transpose(1, 2).reshape(b, length, dim)), weights


class Block(nn.Module):
    """Pre-norm: x + attn(LN(x)), then x + FFN(LN(x)); dropout on both branches."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = CausalAttention(dim, n_heads)
        self.ff1, self.ff2 = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x, allowed, p, generator):
        mixed, weights = self.attention(self.norm1(x), allowed, p, generator)
        x = x + dropout(mixed, p, generator)
        hidden = dropout(torch.relu(self.ff1(self.norm2(x))), p, generator)
        return x + dropout(self.ff2(hidden), p, generator), weights


class AttnEncoder(nn.Module):
    """Item sequences (B, L) of item index + 1 (0 = padding, left-padded) -> states (B, L, dim)."""

    def __init__(self, n_items: int, dim: int, n_blocks: int, n_heads: int, max_len: int,
                 temperature: float, generator: torch.Generator):
        super().__init__()
        self.max_len, self.temperature = max_len, temperature
        self.item_embedding = nn.Parameter(torch.randn(n_items + 1, dim, generator=generator) * 0.05)
        self.position_embedding = nn.Parameter(torch.randn(max_len, dim, generator=generator) * 0.05)
        self.item_bias = nn.Parameter(torch.zeros(n_items))
        self.blocks = nn.ModuleList(Block(dim, n_heads) for _ in range(n_blocks))
        self.norm = nn.LayerNorm(dim)
        with torch.no_grad():  # seeded init of the linear layers (torch's own draws are global)
            for name, parameter in self.named_parameters():
                if not name.startswith("blocks") or ".norm" in name:
                    continue
                if parameter.dim() == 2:
                    bound = 1.0 / math.sqrt(parameter.shape[1])
                    parameter.copy_(torch.rand(parameter.shape, generator=generator) * 2 * bound - bound)
                else:
                    parameter.zero_()

    def forward(self, tokens: torch.Tensor, p: float = 0.0, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """States (B, L, dim) and each block's attention weights (B, heads, L, L)."""
        b, length = tokens.shape
        present = tokens > 0
        positions = torch.arange(self.max_len - length, self.max_len)
        x = self.item_embedding[tokens] * math.sqrt(self.item_embedding.shape[1])
        x = dropout(x + self.position_embedding[positions], p, generator) * present[..., None]
        causal = torch.tril(torch.ones(length, length, dtype=torch.bool))
        allowed = causal[None] & present[:, None, :]
        attention = []
        for block in self.blocks:
            x, weights = block(x, allowed, p, generator)
            x = x * present[..., None]
            attention.append(weights)
        return self.norm(x), attention

    def item_vectors(self) -> torch.Tensor:
        """q_i (n_items, dim): the item embeddings without the padding row."""
        return self.item_embedding[1:]

    def neg_energy(self, states: torch.Tensor) -> torch.Tensor:
        """-E(t, i) = <h_t, q_i> / tau + b_i for every item: (..., n_items)."""
        return states @ self.item_vectors().T / self.temperature + self.item_bias
