"""DINOv2-layout Vision Transformers with the release's exact module names and state-dict keys.

timm is not a dependency of this project (it imports torchvision at import time, and PyPI's
torchvision wheel does not import beside the pinned CPU torch: docs/dependencies.md), so the
ViT teachers are written here, as the ResNets are. Module names, parameter names and shapes
equal `dinov2/models/vision_transformer.py` of the DINOv2 release (block_chunks=0, the layout
of the published files): `cls_token` (1, 1, D), `pos_embed` (1, 1 + M * M, D) with the class
token's entry first (M = 37 for the released 518 px size), `register_tokens` (1, R, D) when the
model has registers, `mask_token` (1, D) (used only by DINOv2's masked training; kept so the
release's files load key for key), `patch_embed.proj` (a p x p conv of stride p), `blocks.N.
{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}` and `norm`
(LayerNorms with eps 1e-6). A DINOv2 `.pth` loads with `load_state_dict(strict=True)`; timm's
files are renamed into this layout by hvdistill/models/image/vit_weights.py.

The forward is DINOv2's (and timm's `vit_*_patch14_dinov2` models'): patch embedding, class
token and position embedding added, register tokens inserted after the class token (they have no
position embedding), pre-norm blocks x + ls1(attn(norm1(x))), x + ls2(mlp(norm2(x))) with exact
GELU and `torch.nn.functional.scaled_dot_product_attention`, final norm. `features` returns the
normed patch tokens as a map (N, D, Hg, Wg), the teacher's backbone map.

Input sizes: the position embedding is resampled to the input's patch grid as timm's
`resample_abs_pos_embed` does for its dinov2 models (bicubic, antialias=True, to the exact
grid size, align_corners=False, computed in float32). The DINOv2 release's register models
(`dinov2_vits14_reg` ...) do exactly that too; its models without registers use
`interpolate_offset=0.1` (scale factor (n + 0.1) / M) and no antialiasing instead, which gives
slightly different embeddings (docs/models.md, "ViT teachers", says why we follow timm). An
input whose sides are not multiples of the patch is padded right and bottom with zeros (after
the teacher's normalisation, i.e. with the mean colour), as timm's `dynamic_img_pad` does, so
token j still embeds pixels [p j, p j + p - 1] of the unpadded image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LAYER_NORM_EPS = 1e-6  # DINOv2's and timm's LayerNorm eps
RELEASE_IMAGE_SIZE = 518  # the DINOv2 releases' image size: a 37 x 37 position-embedding grid


@dataclass(frozen=True)
class VitLayout:
    """The widths of one ViT architecture."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 14
    register_tokens: int = 0
    mlp_ratio: float = 4.0
    img_size: int = RELEASE_IMAGE_SIZE  # sets the stored position-embedding grid (img_size / patch)


class PatchEmbed(nn.Module):
    """(N, 3, H, W) -> (N, Hg * Wg, D) tokens, H and W multiples of the patch."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, Hg * Wg, D)


class Attention(nn.Module):
    """Multi-head self-attention: one qkv projection, SDPA, an output projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"ViT width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape  # (B, T, D)
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, T, D / heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, D / heads)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel scale `gamma` (DINOv2's and timm's name)."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block with layer scale."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, init_value: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, init_value)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


def resample_pos_embed(patch_pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, M * M, D) position embeddings of an M x M grid -> (1, Hg * Wg, D) for `grid` (Hg, Wg).

    timm's `resample_abs_pos_embed` for its dinov2 models: bicubic, antialias, exact output size,
    in float32 with autocast off, returned in the input's dtype.
    """
    m = math.isqrt(patch_pos.shape[1])
    if (m, m) == tuple(grid):
        return patch_pos
    dim = patch_pos.shape[-1]
    with torch.autocast(patch_pos.device.type, enabled=False):
        square = patch_pos.float().reshape(1, m, m, dim).permute(0, 3, 1, 2)  # (1, D, M, M)
        out = F.interpolate(square, size=grid, mode="bicubic", antialias=True)  # (1, D, Hg, Wg)
    return out.permute(0, 2, 3, 1).reshape(1, -1, dim).to(patch_pos.dtype)


class VisionTransformer(nn.Module):
    """DINOv2-layout ViT; `features` gives the normed patch tokens as a map (module docstring)."""

    def __init__(self, layout: VitLayout, layer_scale_init: float = 1.0) -> None:
        super().__init__()
        d, p = layout.embed_dim, layout.patch_size
        if layout.img_size % p:
            raise ValueError(f"ViT image size {layout.img_size} is not a multiple of its patch {p}")
        self.layout = layout
        self.patch_size = p
        self.out_channels = d
        self.num_register_tokens = layout.register_tokens
        grid = layout.img_size // p
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, d))
        if layout.register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, layout.register_tokens, d))
        else:
            self.register_parameter("register_tokens", None)
        self.mask_token = nn.Parameter(torch.zeros(1, d))  # DINOv2's masked training only; unused here
        self.patch_embed = PatchEmbed(p, d)
        self.blocks = nn.ModuleList(
            Block(d, layout.num_heads, layout.mlp_ratio, layer_scale_init) for _ in range(layout.depth)
        )
        self.norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self._init_weights()

    def _init_weights(self) -> None:
        """DINOv2's init (timm's ViT init): truncated normal 0.02 for the position embedding and the
        linear weights, zero biases, N(0, 1e-6) class and register tokens."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """The patch grid (Hg, Wg) of an input, padded right/bottom to whole patches."""
        return -(-height // self.patch_size), -(-width // self.patch_size)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, 1 + R + Hg * Wg, D) normed class, register, patch tokens."""
        hg, wg = self.grid_size(*x.shape[-2:])
        pad_h, pad_w = hg * self.patch_size - x.shape[-2], wg * self.patch_size - x.shape[-1]
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))  # zeros right and bottom: (N, 3, p Hg, p Wg)
        patches = self.patch_embed(x)  # (N, Hg * Wg, D)
        pos = self.pos_embed
        pos = torch.cat([pos[:, :1], resample_pos_embed(pos[:, 1:], (hg, wg))], dim=1)  # (1, 1 + Hg Wg, D)
        t = torch.cat([self.cls_token.expand(len(patches), -1, -1), patches], dim=1) + pos
        if self.register_tokens is not None:
            t = torch.cat([t[:, :1], self.register_tokens.expand(len(t), -1, -1), t[:, 1:]], dim=1)
        for block in self.blocks:
            t = block(t)
        return self.norm(t)  # (N, 1 + R + Hg * Wg, D)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, D, ceil(H / p), ceil(W / p)): the normed patch tokens as a map."""
        hg, wg = self.grid_size(*x.shape[-2:])
        patches = self.tokens(x)[:, 1 + self.num_register_tokens :]  # (N, Hg * Wg, D)
        return patches.transpose(1, 2).reshape(len(x), self.out_channels, hg, wg)


VIT_ARCHITECTURES: dict[str, VitLayout] = {
    "vit_tiny_patch14": VitLayout(embed_dim=192, depth=2, num_heads=3),  # CPU tests only: no release
    "vit_small_patch14": VitLayout(embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch14": VitLayout(embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch14": VitLayout(embed_dim=1024, depth=24, num_heads=16),
    "vit_tiny_patch14_reg4": VitLayout(embed_dim=192, depth=2, num_heads=3, register_tokens=4),
    "vit_small_patch14_reg4": VitLayout(embed_dim=384, depth=12, num_heads=6, register_tokens=4),
    "vit_base_patch14_reg4": VitLayout(embed_dim=768, depth=12, num_heads=12, register_tokens=4),
    "vit_large_patch14_reg4": VitLayout(embed_dim=1024, depth=24, num_heads=16, register_tokens=4),
}


def build_vit(arch: str) -> VisionTransformer:
    """The randomly initialised ViT of `arch` (one of VIT_ARCHITECTURES)."""
    if arch not in VIT_ARCHITECTURES:
        raise ValueError(f"ViT arch {arch!r} is not one of {sorted(VIT_ARCHITECTURES)}")
    return VisionTransformer(VIT_ARCHITECTURES[arch])


__all__ = ["VIT_ARCHITECTURES", "VisionTransformer", "VitLayout", "build_vit", "resample_pos_embed"]
