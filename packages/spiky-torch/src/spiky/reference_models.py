"""Small reference models the tests, benchmarks and examples share.

Each is plain torch, in the shapes users write: a pre-norm transformer block on
``nn.MultiheadAttention``, and a GPT-style block with RMSNorm, rotary position embeddings and
causal SDPA. They are not part of the backend; they live here so that every test and benchmark
measures the same model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - torch's own convention


class TransformerBlock(nn.Module):
    """A pre-norm transformer block: multi-head attention and a GELU MLP."""

    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        out: torch.Tensor = x + self.mlp(self.ln2(x))
        return out


class RMSNorm(nn.Module):
    """``x / rms(x) * weight``; ``init_noise`` perturbs the weight so tests can see it."""

    def __init__(self, dim: int, eps: float = 1e-6, init_noise: float = 0.0) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim) + init_noise * torch.randn(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotary(x: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding on ``(B, H, T, D)``, written in plain torch."""
    t, d = x.shape[-2], x.shape[-1]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    angles = torch.outer(torch.arange(t).float(), inv_freq)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class GPTBlock(nn.Module):
    """Pre-norm block: RMSNorm, causal SDPA with RoPE, SiLU MLP."""

    def __init__(self, dim: int = 32, heads: int = 4, norm_init_noise: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = RMSNorm(dim, init_noise=norm_init_noise)
        self.norm2 = RMSNorm(dim, init_noise=norm_init_noise)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(c, dim=-1)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(rotary(q), rotary(k), v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        out: torch.Tensor = x + self.down(F.silu(self.up(self.norm2(x))))
        return out
