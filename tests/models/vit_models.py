"""A tiny vision transformer for the token-model tests (no timm needed)."""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """Pre-norm transformer block: attention and a GELU MLP, each with a residual."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Patch embedding (conv, kernel = stride = patch), class token, blocks, class-token head."""

    def __init__(self, classes: int = 5, dim: int = 8, depth: int = 2, patch: int = 4,
                 size: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (size // patch) ** 2, dim) * 0.5)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)            # (N, gh*gw, D)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = self.blocks(tokens + self.pos_embed)
        return self.head(self.norm(tokens)[:, 0])


class ConvAsTokens(nn.Module):
    """A CNN whose feature map is read as tokens: conv -> (N, 1 + hw, C) -> mean of patches.

    The token layer ``tokens`` holds exactly the conv's feature map behind one prefix token,
    so a CAM of ``tokens`` must equal the CAM of ``conv``: this pins the token -> grid layout.
    """

    def __init__(self, classes: int = 4, width: int = 6) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, stride=2, padding=1))
        self.cls_token = nn.Parameter(torch.randn(1, 1, width))
        self.tokens = nn.Identity()
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv(x)
        t = torch.cat([self.cls_token.expand(x.shape[0], -1, -1),
                       a.flatten(2).transpose(1, 2)], dim=1)
        t = self.tokens(t)
        return self.head((t[:, 1:] ** 2).mean(dim=1) + t[:, :1].mean(dim=1))
