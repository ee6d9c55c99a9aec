"""Vision Transformers for small images (`vit_tiny`, `vit_small`, patch 4 for 32-pixel inputs), as MoCo v3
trains them: pre-norm blocks, a class token, learned position embeddings, the class token's final
LayerNorm output as the features. Written here, not taken from timm, because timm imports torchvision,
which does not install beside this torch build (the same reason as train/lars.py).

Other image sizes (divisible by the patch) use the position embeddings resized bicubically.
On a CPU attention is written out (`explicit_attention`): the flash kernel's bf16 backward dominated a ViT-Tiny
step there, and PyTorch's math kernel also copies q, k and v and checks every row for a full −inf mask, which
unmasked attention never needs (`python -m train.commands.bench step --method moco_v3 --models vit_tiny`).
`frozen_patch_projection=True` is MoCo v3's stability trick: the patch embedding keeps its random
initialisation and takes no gradient.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √d) v without a mask: [B, heads, T, d] each → [B, heads, T, d]."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    return torch.matmul(scores.softmax(dim=-1).to(v.dtype), v)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        if x.device.type == "cpu":  # see the module's docstring: q, k, v laid out once, no mask checks
            out = explicit_attention(*qkv.contiguous().unbind(0))
        else:
            out = F.scaled_dot_product_attention(*qkv.unbind(0))  # [B, heads, T, dim/heads]
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.attention = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """images [B, 3, S, S] → the class token's features [B, dim] (`feature_dim`)."""

    def __init__(self, image_size: int = 32, patch: int = 4, dim: int = 192, depth: int = 12, heads: int = 3,
                 mlp_ratio: float = 4.0, frozen_patch_projection: bool = False):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.feature_dim, self.image_size = dim, image_size
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        if frozen_patch_projection:
            self.patch_embed.requires_grad_(False)

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """The learned embeddings, bicubically resized when the patch grid is not the built one (DeiT's way)."""
        side = self.image_size // self.patch_embed.stride[0]
        if grid == (side, side):
            return self.pos_embed
        patches = self.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
        return torch.cat([self.pos_embed[:, :1], patches.flatten(2).transpose(1, 2)], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(images)  # [B, dim, H/p, W/p]
        tokens = patches.flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embedding(tuple(patches.shape[2:]))
        return self.norm(self.blocks(tokens))[:, 0]


def vit(name: str, image_size: int = 32, frozen_patch_projection: bool = False) -> VisionTransformer:
    """`vit_tiny` (192 wide, 3 heads) or `vit_small` (384 wide, 6 heads): depth 12, patch 4."""
    dim, heads = {"vit_tiny": (192, 3), "vit_small": (384, 6)}[name]
    return VisionTransformer(image_size, 4, dim, 12, heads, frozen_patch_projection=frozen_patch_projection)
