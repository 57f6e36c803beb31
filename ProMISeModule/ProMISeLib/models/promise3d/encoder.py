"""ProMISe's 3D image encoder: a frozen SAM ViT-B turned into a 3D transformer with adapters.

Parameter names and shapes follow the released ``encoder_dict`` exactly. Layout inside the
encoder: a crop ``(B, 1, D, H, W)`` becomes tokens ``(B, Gh, Gw, Gd, C)`` (the public code's
``(B, H, W, D, C)``); the four returned features are ``(B, neck_dim, Gh, Gw, Gd)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ProMISeLib.models.promise3d.config import Promise3DConfig
from ProMISeLib.models.tiny_vit import ChannelLayerNorm

StepCallback = Callable[[int, int], None]


class PatchEmbed(nn.Module):
    """SAM's 16x16 patch embedding (``proj``), applied to every slice of the upsampled crop."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward_repeated(self, slices: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) grey slices -> (N, C, H/p, W/p), as if the channel were repeated to ``in_chans``.

        Summing the kernel over its input channels equals repeating the channel, at a third of the cost.
        """
        weight = self.proj.weight.sum(dim=1, keepdim=True)
        return F.conv2d(slices, weight, self.proj.bias, stride=self.proj.stride)


class MLPBlock(nn.Module):
    """SAM's transformer MLP (``lin1``, GELU, ``lin2``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class Adapter(nn.Module):
    """Linear down, ReLU, depthwise 3³ conv, ReLU, linear up, ReLU, plus its own residual."""

    def __init__(self, dim: int, mid: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, mid)
        self.conv = nn.Conv3d(mid, mid, kernel_size=3, padding=1, groups=mid)
        self.linear2 = nn.Linear(mid, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.linear1(x))
        out = self.conv(out.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
        out = F.relu(self.linear2(F.relu(out)))
        return x + out


LayerNorm3d = ChannelLayerNorm  # channel LayerNorm of a (B, C, X, Y, Z) tensor


# --- windows --------------------------------------------------------------------------------
def window_partition(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, X, Y, Z, C) -> (B * nW, size, size, size, C); windows ordered (b, x, y, z)."""
    b, gx, gy, gz, c = x.shape
    x = x.view(b, gx // size, size, gy // size, size, gz // size, size, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, size, size, size, c)


def window_unpartition(windows: torch.Tensor, size: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`."""
    gx, gy, gz = grid
    b = windows.shape[0] // ((gx // size) * (gy // size) * (gz // size))
    x = windows.view(b, gx // size, gy // size, gz // size, size, size, size, -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, gx, gy, gz, -1)


def shifted_window_mask(grid: int, size: int, shift: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Swin's additive mask (nW, size³, size³): -100 between tokens from different regions after the roll."""
    regions = torch.zeros((1, grid, grid, grid, 1), device=device)
    spans = (slice(0, -size), slice(-size, -shift), slice(-shift, None))
    label = 0
    for sx in spans:
        for sy in spans:
            for sz in spans:
                regions[:, sx, sy, sz, :] = label
                label += 1
    windows = window_partition(regions, size).reshape(-1, size**3)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def relative_positions(size: int, table: torch.Tensor) -> torch.Tensor:
    """(size, size, C) embeddings for query/key offsets, the table linearly resized to 2 * size - 1."""
    length = 2 * size - 1
    if table.shape[0] != length:
        table = F.interpolate(table.t().unsqueeze(0), size=length, mode="linear").squeeze(0).t()
    coords = torch.arange(size, device=table.device)
    return table[coords[:, None] - coords[None, :] + (size - 1)]


class Attention3D(nn.Module):
    """Window attention with SAM's decomposed relative positions extended to a third axis (``rel_pos_d``)."""

    def __init__(self, dim: int, num_heads: int, rel_pos_length: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(rel_pos_length, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(rel_pos_length, head_dim))
        self.rel_pos_d = nn.Parameter(torch.zeros(rel_pos_length, head_dim))
        self.lr = nn.Parameter(torch.tensor(1.0))

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(Bw, s, s, s, C) windows -> same shape; ``mask`` (Bw, N, N) additive, one per window."""
        bw, sx, sy, sz, c = windows.shape
        n = sx * sy * sz
        qkv = self.qkv(windows).reshape(bw, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (Bw, heads, N, hd)
        r_q = q.reshape(bw, self.num_heads, sx, sy, sz, -1)
        rel_x = torch.einsum("bnxyzc,xkc->bnxyzk", r_q, relative_positions(sx, self.rel_pos_h))
        rel_y = torch.einsum("bnxyzc,ykc->bnxyzk", r_q, relative_positions(sy, self.rel_pos_w))
        rel_z = torch.einsum("bnxyzc,zkc->bnxyzk", r_q, relative_positions(sz, self.rel_pos_d))
        bias = (rel_x[..., :, None, None] + rel_y[..., None, :, None] + rel_z[..., None, None, :]) * self.lr
        bias = bias.reshape(bw, self.num_heads, n, n)
        if mask is not None:
            bias = bias + mask.unsqueeze(1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(bw, sx, sy, sz, c))


class Block3D(nn.Module):
    """adapter -> window attention (shifted in even blocks) -> MLP -> adapter_back, as the public code does."""

    def __init__(self, config: Promise3DConfig, index: int) -> None:
        super().__init__()
        dim = config.embed_dim
        self.window_size = config.window_size
        self.shift = config.window_size // 2 if index % 2 == 0 else 0
        self.grid = config.grid
        self.attention_chunk = config.attention_chunk
        if self.shift:
            self.register_buffer("attn_mask", shifted_window_mask(self.grid, self.window_size, self.shift))
        else:
            self.attn_mask = None
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        res = config.sam_grid if index in config.global_attn_indexes else config.sam_window
        self.attn = Attention3D(dim, config.num_heads, 2 * res - 1)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * config.mlp_ratio))
        self.adapter = Adapter(dim, dim // 2)
        self.adapter_back = Adapter(dim, dim // 2)

    def rebuild_mask(self, device: torch.device | str) -> None:
        """Recompute the shifted-window mask (it is not stored in our weights files)."""
        if self.shift:
            self.attn_mask = shifted_window_mask(self.grid, self.window_size, self.shift, device=device)

    def _attend(self, windows: torch.Tensor) -> torch.Tensor:
        chunk = self.attention_chunk or windows.shape[0]
        if windows.shape[0] <= chunk:
            mask = None if self.attn_mask is None else self.attn_mask.repeat(windows.shape[0] // len(self.attn_mask),
                                                                             1, 1)
            return self.attn(windows, mask)
        outputs = []
        for start in range(0, windows.shape[0], chunk):
            part = windows[start:start + chunk]
            mask = None
            if self.attn_mask is not None:
                index = torch.arange(start, start + part.shape[0], device=windows.device) % len(self.attn_mask)
                mask = self.attn_mask[index]
            outputs.append(self.attn(part, mask))
        return torch.cat(outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.adapter(x)
        shortcut = x
        h = self.norm1(x)
        if self.shift:
            h = torch.roll(h, shifts=(-self.shift,) * 3, dims=(1, 2, 3))
        h = window_unpartition(self._attend(window_partition(h, self.window_size)), self.window_size, h.shape[1:4])
        if self.shift:
            h = torch.roll(h, shifts=(self.shift,) * 3, dims=(1, 2, 3))
        x = shortcut + h
        x = x + self.mlp(self.norm2(x))
        return x + self.adapter_back(x)  # the adapter adds its own residual: 2x + f(x), as released


class Promise3DEncoder(nn.Module):
    """SAM ViT-B patch embedding and blocks with ProMISe's slice merge, 3D positions, adapters and necks."""

    def __init__(self, config: Promise3DConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.pos_embed = nn.Parameter(torch.zeros(1, config.sam_grid, config.sam_grid, dim))
        self.depth_embed = nn.Parameter(torch.ones(1, config.grid, dim))
        self.patch_embed = PatchEmbed(config.patch_size, dim)
        self.slice_embed = nn.Conv3d(dim, dim, kernel_size=(1, 1, config.slice_merge),
                                     stride=(1, 1, config.slice_merge), groups=dim)
        self.blocks = nn.ModuleList(Block3D(config, i) for i in range(config.depth))
        self.neck_3d = nn.ModuleList(
            nn.Sequential(
                nn.Conv3d(dim, config.neck_dim, 1, bias=False),
                LayerNorm3d(config.neck_dim),
                nn.Conv3d(config.neck_dim, config.neck_dim, kernel_size=3, padding=1, bias=False),
                LayerNorm3d(config.neck_dim),
            )
            for _ in range(4)
        )

    def rebuild_buffers(self, device: torch.device | str) -> None:
        for block in self.blocks:
            block.rebuild_mask(device)

    def embed(self, image: torch.Tensor, slices_per_chunk: int = 64) -> torch.Tensor:
        """(B, 1, D, H, W) crop -> (B, Gh, Gw, Gd, C) tokens with positions, before the blocks."""
        cfg = self.config
        side = cfg.crop_size * cfg.upsample
        if cfg.upsample != 1:
            image = F.interpolate(image, scale_factor=float(cfg.upsample), mode="trilinear")
        if tuple(image.shape[2:]) != (side, side, side):
            raise ValueError(f"expected a {cfg.crop_size}³ crop, got {tuple(image.shape[2:])} after upsampling")
        chunk = max(cfg.slice_merge, slices_per_chunk // cfg.slice_merge * cfg.slice_merge)
        batches = []
        for b in range(image.shape[0]):
            parts = []
            for start in range(0, side, chunk):
                slices = image[b, :, start:start + chunk].transpose(0, 1)  # (n, 1, H, W)
                tokens = self.patch_embed.forward_repeated(slices)  # (n, C, Gh, Gw)
                parts.append(self.slice_embed(tokens.permute(1, 2, 3, 0).unsqueeze(0)))  # (1, C, Gh, Gw, n/m)
            batches.append(torch.cat(parts, dim=-1))
        x = torch.cat(batches).permute(0, 2, 3, 4, 1)  # (B, Gh, Gw, Gd, C)
        pooled = F.avg_pool2d(self.pos_embed.permute(0, 3, 1, 2), kernel_size=cfg.sam_grid // cfg.grid)
        pos = pooled.permute(0, 2, 3, 1).unsqueeze(3) + self.depth_embed.unsqueeze(1).unsqueeze(1)
        return x + pos

    def forward(self, image: torch.Tensor, on_step: StepCallback | None = None) -> list[torch.Tensor]:
        """Four (B, neck_dim, Gh, Gw, Gd) features, from blocks depth/4, depth/2, 3depth/4 and the last."""
        x = self.embed(image)
        taps = self.config.feature_taps
        features = []
        for number, block in enumerate(self.blocks, start=1):
            x = block(x)
            if number in taps:
                features.append(self.neck_3d[taps.index(number)](x.permute(0, 4, 1, 2, 3)))
            if on_step is not None:
                on_step(number, len(self.blocks))
        return features
