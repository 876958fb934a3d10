"""Building blocks in timm's shape: cross-attention, decoder blocks, fixed 2-D sin-cos embeddings.

Self-attention and the MLP come from timm; timm has no cross-attention layer, so :class:`CrossAttention`
follows timm's ``Attention``: one fused path through ``F.scaled_dot_product_attention`` and one plain
softmax(QK^T/sqrt(d))V path behind the same ``fused_attn`` flag, so :func:`set_fused_attention`
switches every attention in a model (encoder and decoder) at once.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Attention, Block


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (MAE): (grid_h * grid_w, dim), rows in raster order.

    Half the channels encode the row, half the column; each half is [sin | cos] of the position at
    ``dim / 4`` geometrically spaced frequencies.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64), indexing="ij")

    def encode(pos):  # (L,) -> (L, dim/2)
        angles = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    # MAE encodes the width coordinate first; kept so weights stay comparable with MAE-style models.
    emb = np.concatenate([encode(cols), encode(rows)], axis=1)
    return torch.from_numpy(emb).float()


def sincos_pos_embed_1d(dim: int, length: int) -> torch.Tensor:
    """Fixed 1-D sinusoid table over ``length`` positions (the Transformer's, as VideoMAE uses it over
    the flattened space-time cubes): (length, dim), channel 2i = sin(pos / 10000^(2i/dim)), channel
    2i + 1 the cos of the same angle."""
    angles = np.arange(length, dtype=np.float64)[:, None] / 10000 ** (2 * (np.arange(dim) // 2) / dim)[None]
    angles[:, 0::2], angles[:, 1::2] = np.sin(angles[:, 0::2]), np.cos(angles[:, 1::2])
    return torch.from_numpy(angles).float()


class CrossAttention(nn.Module):
    """Multi-head attention with queries from ``x`` and keys/values from ``context``.

    x: (B, Lq, D), context: (B, Lk, D) -> (B, Lq, D). Lq and Lk may differ.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = True
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, Lq, D = x.shape
        Lk = context.shape[1]
        q = self.q(x).reshape(B, Lq, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(context).reshape(B, Lk, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(B, Lq, D))


class CrossSelfBlock(nn.Module):
    """SiamMAE's cross-self decoder block: cross-attn (f2 -> f1), self-attn among f2, MLP; pre-norm.

    x: (B, Lq, D) target tokens, context: (B, Lk, D) -> (B, Lq, D).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm_cross = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads, qkv_bias=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.cross_attn(self.norm_cross(x), self.norm_context(context))
        x = x + self.self_attn(self.norm_self(x))
        return x + self.mlp(self.norm_mlp(x))

    def forward_self(self, x: torch.Tensor) -> torch.Tensor:
        """The block without its cross-attention: self-attn, MLP (ToBo's bottleneck path, same weights)."""
        x = x + self.self_attn(self.norm_self(x))
        return x + self.mlp(self.norm_mlp(x))


class CrossBlock(nn.Module):
    """The paper's "cross" decoder block: cross-attn (f2 -> f1) then MLP, no self-attention."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm_cross = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.cross_attn(self.norm_cross(x), self.norm_context(context))
        return x + self.mlp(self.norm_mlp(x))


def self_attention_block(dim: int, num_heads: int, mlp_ratio: float = 4.0) -> Block:
    """timm's pre-norm ViT block (self-attention + MLP), as used by the joint decoder."""
    return Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=nn.LayerNorm)


def set_fused_attention(module: nn.Module, fused: bool) -> None:
    """Route every attention layer (timm's and ours) through SDPA (True) or the plain math path."""
    for m in module.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused
