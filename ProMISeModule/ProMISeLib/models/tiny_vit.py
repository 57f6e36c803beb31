"""TinyViT image encoder in the LiteMedSAM configuration, written without timm.

The network follows TinyViT (Wu et al., ECCV 2022) as adapted by MobileSAM and LiteMedSAM:

* a stem of two 1x1 conv+BN layers (LiteMedSAM keeps the full 256x256 resolution here),
* stage 0: inverted-residual (MBConv) blocks,
* stages 1-3: windowed self-attention blocks with a learned relative-position bias and a
  depthwise 3x3 conv+BN between attention and MLP,
* a conv "merge" between stages (stride 2, 2, then 1),
* a neck: 1x1 conv -> LayerNorm2d -> 3x3 conv -> LayerNorm2d, giving 256 channels.

A 1x3x256x256 input in [0, 1] gives a 1x256x64x64 embedding for SAM's mask decoder.

Submodule names are chosen so the state-dict keys equal those of the published LiteMedSAM
checkpoint (``image_encoder.*`` without the prefix); the attention-bias index table is derived
from the window size and kept out of the state dict.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvBN(nn.Sequential):
    """Bias-free Conv2d followed by BatchNorm2d (children ``c`` and ``bn``)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        bn_gamma: float = 1.0,
    ) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_ch))
        nn.init.constant_(self.bn.weight, bn_gamma)
        nn.init.zeros_(self.bn.bias)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of an (N, C, *spatial) tensor (SAM's ``LayerNorm2d``, and its 3D form)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        shape = (-1,) + (1,) * (x.dim() - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)


class Stem(nn.Module):
    """Two pointwise conv+BN layers with a GELU between them (``seq.0``, ``seq.1``, ``seq.2``)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(in_ch, out_ch // 2), nn.GELU(), ConvBN(out_ch // 2, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class InvertedResidual(nn.Module):
    """MBConv: expand 1x1, depthwise 3x3, project 1x1, add the input, then GELU."""

    def __init__(self, channels: int, expansion: float) -> None:
        super().__init__()
        hidden = int(channels * expansion)
        self.conv1 = ConvBN(channels, hidden)
        self.conv2 = ConvBN(hidden, hidden, kernel=3, groups=hidden)
        self.conv3 = ConvBN(hidden, channels, bn_gamma=0.0)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv1(x))
        y = self.act(self.conv2(y))
        return self.act(self.conv3(y) + x)


class Merge(nn.Module):
    """Channel change and optional 2x downsampling between stages (NCHW in, NCHW out)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(in_ch, out_ch)
        self.conv2 = ConvBN(out_ch, out_ch, kernel=3, stride=stride, groups=out_ch)
        self.conv3 = ConvBN(out_ch, out_ch)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x)


def _relative_offset_index(window: int) -> torch.Tensor:
    """(N, N) table, N = window**2: bias slot |dy| * window + |dx| for each pair of window cells."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy = (ys[:, None] - ys[None, :]).abs()
    dx = (xs[:, None] - xs[None, :]).abs()
    return dy * window + dx


class WindowSelfAttention(nn.Module):
    """Multi-head self-attention inside one window, with pre-LayerNorm and a learned offset bias.

    The fused ``qkv`` projection is laid out per head as ``[q, k, v]`` (head_dim each).
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.register_buffer("bias_index", _relative_offset_index(window), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (windows, tokens, dim) -> same shape."""
        n_win, n_tok, dim = x.shape
        qkv = self.qkv(self.norm(x)).view(n_win, n_tok, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.transpose(1, 2).chunk(3, dim=-1)
        bias = self.attention_biases[:, self.bias_index].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.head_dim**-0.5)
        return self.proj(out.transpose(1, 2).reshape(n_win, n_tok, dim))


class FeedForward(nn.Module):
    """Pre-LayerNorm two-layer MLP with GELU."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class AttentionBlock(nn.Module):
    """Windowed attention, a depthwise conv, then an MLP; works on channels-last (B, H, W, C) maps.

    Maps whose size is not a multiple of the window are zero-padded at the bottom/right before
    attention (the padded cells take part as keys, as in the original model) and cropped after.
    """

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float, conv_kernel: int) -> None:
        super().__init__()
        self.window = window
        self.attn = WindowSelfAttention(dim, num_heads, window)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, kernel=conv_kernel, groups=dim)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws = self.window
        pad_h, pad_w = -h % ws, -w % ws
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        windows = x.view(b, hp // ws, ws, wp // ws, ws, c).transpose(2, 3).reshape(-1, ws * ws, c)
        windows = self.attn(windows)
        x = windows.view(b, hp // ws, wp // ws, ws, ws, c).transpose(2, 3).reshape(b, hp, wp, c)
        return x[:, :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._attend(x)
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class ConvStage(nn.Module):
    """Stage 0: MBConv blocks then a merge (NCHW in and out)."""

    def __init__(self, dim: int, depth: int, expansion: float, merge: Merge | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(InvertedResidual(dim, expansion) for _ in range(depth))
        self.downsample = merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class AttentionStage(nn.Module):
    """Stages 1-3: attention blocks (channels-last inside) then an optional merge (NCHW in and out)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window: int,
        mlp_ratio: float,
        conv_kernel: int,
        merge: Merge | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            AttentionBlock(dim, num_heads, window, mlp_ratio, conv_kernel) for _ in range(depth)
        )
        self.downsample = merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        return x if self.downsample is None else self.downsample(x)


class TinyViTEncoder(nn.Module):
    """TinyViT-5M image encoder of LiteMedSAM: (B, 3, 256, 256) in [0, 1] -> (B, 256, 64, 64).

    Args:
        in_chans: input channels.
        embed_dims: channels of the four stages.
        depths: blocks per stage (stage 0 is convolutional).
        num_heads: attention heads per stage (entry 0 unused).
        window_sizes: attention window per stage (entry 0 unused).
        merge_strides: stride of the merge after stages 0, 1 and 2.
        mlp_ratio: MLP hidden width relative to the stage width.
        mbconv_expansion: MBConv hidden width relative to the stage width.
        local_conv_size: kernel of the depthwise conv inside attention blocks.
        out_chans: channels of the neck output.
        img_size: the input side length the model was trained for (informational).
    """

    def __init__(
        self,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        merge_strides: Sequence[int] = (2, 2, 1),
        mlp_ratio: float = 4.0,
        mbconv_expansion: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
        img_size: int = 256,
    ) -> None:
        super().__init__()
        n_stages = len(embed_dims)
        if not (len(depths) == len(num_heads) == len(window_sizes) == n_stages == len(merge_strides) + 1):
            raise ValueError(
                "embed_dims, depths, num_heads, window_sizes and merge_strides disagree in length"
            )
        self.img_size = img_size
        self.patch_embed = Stem(in_chans, embed_dims[0])

        def merge_after(i: int) -> Merge | None:
            if i == n_stages - 1:
                return None
            return Merge(embed_dims[i], embed_dims[i + 1], merge_strides[i])

        stages: list[nn.Module] = [ConvStage(embed_dims[0], depths[0], mbconv_expansion, merge_after(0))]
        for i in range(1, n_stages):
            stages.append(
                AttentionStage(
                    embed_dims[i],
                    depths[i],
                    num_heads[i],
                    window_sizes[i],
                    mlp_ratio,
                    local_conv_size,
                    merge_after(i),
                )
            )
        self.layers = nn.ModuleList(stages)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            ChannelLayerNorm(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            ChannelLayerNorm(out_chans),
        )
        self.apply(self._init_module)

    @staticmethod
    def _init_module(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_chans, H, W) -> (B, out_chans, H / 4, W / 4)."""
        x = self.patch_embed(x)
        for stage in self.layers:
            x = stage(x)
        return self.neck(x)
