"""ProMISe's point prompt encoder: global tokens that read the click and write back into the image features.

Names follow the released ``feature_dict[i]``. As in the public code, point labels are not used,
the positional encodings are not added (so they are not computed here; the Gaussian matrix is kept
as a buffer for strict loading), and ``cross_attn_token_to_image`` exists but is never called.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ProMISeLib.models.promise3d.config import Promise3DConfig


def click_grid(points: torch.Tensor, crop_size: int) -> torch.Tensor:
    """(B, N, 3) crop voxel indices in (D, H, W) order -> ``grid_sample`` coordinates in [-1, 1].

    Features are laid out (B, C, Gh, Gw, Gd), so ``grid_sample`` wants (x, y, z) = (d, w, h): the
    order the released model was trained with. (The official tester passes (d, h, w): the click with H and W
    swapped.)
    """
    normalised = (points.float() + 0.5) * 2.0 / crop_size - 1.0
    return normalised[..., [0, 2, 1]]


class PromptAttention(nn.Module):
    """SAM's prompt attention: projections to an internal width (downsampled), multi-head, output back."""

    def __init__(self, dim: int, num_heads: int, downsample: int = 1) -> None:
        super().__init__()
        inner = dim // downsample
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        out = F.scaled_dot_product_attention(q, k, v)
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


class PromptMLP(nn.Module):
    """``lin1``, ReLU, ``lin2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.relu(self.lin1(x)))


class PromptLayer(nn.Module):
    """Global tokens + point tokens self-attend; the global tokens pass an MLP; image tokens attend to them."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, global_tokens: int) -> None:
        super().__init__()
        self.global_tokens = global_tokens
        self.global_query = nn.Parameter(0.1 * torch.randn(1, global_tokens, dim))
        self.self_attn = PromptAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = PromptAttention(dim, num_heads, downsample=2)  # unused, as released
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = PromptMLP(dim, mlp_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = PromptAttention(dim, num_heads, downsample=2)

    def forward(self, image: torch.Tensor, point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B, M, C) tokens, point (B, N, C) tokens -> both updated."""
        tokens = torch.cat([self.global_query.expand(point.shape[0], -1, -1), point], dim=1)
        tokens = self.norm2(tokens + self.norm1(self.self_attn(tokens, tokens, tokens)))
        point, queries = tokens[:, self.global_tokens:], tokens[:, : self.global_tokens]
        queries = self.norm3(queries + self.mlp(queries))
        image = self.norm4(image + self.cross_attn_image_to_token(image, queries, queries))
        return image, point


class PromptTransformer(nn.Module):
    def __init__(self, config: Promise3DConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            PromptLayer(config.neck_dim, config.prompt_heads, config.prompt_mlp_dim, config.global_tokens)
            for _ in range(config.prompt_depth)
        )


class Promise3DPromptEncoder(nn.Module):
    """Update a (B, C, Gh, Gw, Gd) feature map from the clicks (``grid_sample`` coordinates)."""

    def __init__(self, config: Promise3DConfig) -> None:
        super().__init__()
        self.transformer = PromptTransformer(config)
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn((3, config.neck_dim // 2)))

    def forward(self, features: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        b, c = features.shape[:2]
        sampled = F.grid_sample(features, grid.to(features.dtype).reshape(b, 1, 1, -1, 3), align_corners=False)
        point = sampled.reshape(b, c, -1).transpose(1, 2)
        image = features.flatten(2).transpose(1, 2)
        for layer in self.transformer.layers:
            image, point = layer(image, point)
        return image.transpose(1, 2).reshape(features.shape)
