"""The prompt network: frozen slice features + 3D context -> a coarse mask whose box prompts the decoder.

Inputs, all on the frozen encoder's 64 x 64 grid of one ROI crop:

* the image embedding (256 channels, LiteMedSAM's neck output);
* ``prior``: the structure's mask on the neighbouring slice (area fraction per cell), zero on the
  click's own slice;
* ``click``: a Gaussian at the click on the click's slice, zero elsewhere.

Output: mask logits on the same grid. A small U-Net (about 0.1 M parameters, under 1 MB) is
enough: the hard part, the features, stays in the frozen encoder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

GRID = 64


@dataclass(frozen=True)
class PromptNetConfig:
    """Sizes of the prompt network (recorded in the weights card)."""

    embed_dim: int = 256
    reduced_dim: int = 32  # the embedding is first projected on its leading principal components (frozen)
    width: int = 16
    click_sigma: float = 1.5  # grid cells
    grid: int = GRID

    def to_dict(self) -> dict:
        return asdict(self)


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.GroupNorm(8, cout),
        nn.GELU(),
    )


class PromptNet(nn.Module):
    """A three-level U-Net on the frozen embedding grid."""

    def __init__(self, config: PromptNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or PromptNetConfig()
        w = config.width
        # Frozen PCA of the encoder's channels (set by set_reduction from training embeddings): training runs on
        # reduced embeddings, which are 8x smaller in memory and compute.
        self.reduce = nn.Conv2d(config.embed_dim, config.reduced_dim, 1)
        self.reduce.requires_grad_(False)
        self.project = nn.Sequential(nn.Conv2d(config.reduced_dim, w, 1, bias=False), nn.GroupNorm(8, w), nn.GELU())
        self.enc1 = nn.Sequential(_conv(w + 2, w), _conv(w, w))
        self.enc2 = nn.Sequential(_conv(w, 2 * w, stride=2), _conv(2 * w, 2 * w))
        self.enc3 = nn.Sequential(_conv(2 * w, 4 * w, stride=2), _conv(4 * w, 4 * w, dilation=2),
                                  _conv(4 * w, 4 * w, dilation=4))
        self.dec2 = _conv(6 * w, 2 * w)
        self.dec1 = _conv(3 * w, w)
        self.head = nn.Conv2d(w, 1, 1)

    def set_reduction(self, mean: np.ndarray, components: np.ndarray) -> None:
        """Set the frozen channel projection: ``components`` (reduced_dim, embed_dim) rows, channel ``mean``."""
        weight = torch.as_tensor(components, dtype=torch.float32)
        with torch.no_grad():
            self.reduce.weight.copy_(weight[:, :, None, None])
            self.reduce.bias.copy_(-weight @ torch.as_tensor(mean, dtype=torch.float32))

    def forward(self, embedding: torch.Tensor, prior: torch.Tensor, click: torch.Tensor) -> torch.Tensor:
        """(B, 256, 64, 64) embedding, (B, 1, 64, 64) prior and click maps -> (B, 1, 64, 64) logits."""
        return self.forward_reduced(self.reduce(embedding), prior, click)

    def forward_reduced(self, features: torch.Tensor, prior: torch.Tensor, click: torch.Tensor) -> torch.Tensor:
        """The same from embeddings already passed through :attr:`reduce` (training)."""
        x1 = self.enc1(torch.cat([self.project(features), prior, click], dim=1))
        x2 = self.enc2(x1)
        x3 = self.enc3(x2)
        y2 = self.dec2(torch.cat([F.interpolate(x3, size=x2.shape[-2:], mode="bilinear", align_corners=False), x2], 1))
        y1 = self.dec1(torch.cat([F.interpolate(y2, size=x1.shape[-2:], mode="bilinear", align_corners=False), x1], 1))
        return self.head(y1)


def click_map(points_rc: list[tuple[float, float]], grid: int = GRID, sigma: float = 1.5) -> np.ndarray:
    """Gaussian bumps (peak 1) at (row, col) grid positions; zeros for no points."""
    rows, cols = np.mgrid[0:grid, 0:grid].astype(np.float32) + 0.5
    out = np.zeros((grid, grid), np.float32)
    for r, c in points_rc:
        out = np.maximum(out, np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * sigma**2)))
    return out


def downsample_mask(mask: np.ndarray, grid: int = GRID) -> np.ndarray:
    """Fraction of each grid cell covered by a (side, side) mask (area average, antialiased)."""
    tensor = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=(grid, grid), mode="area").numpy()[0, 0]
