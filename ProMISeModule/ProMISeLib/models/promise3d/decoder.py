"""ProMISe's 3D decoder: four feature heads, a CNN branch on the raw crop, and the ``head`` classifier.

Names follow the released ``decoder_dict`` (released files call ``head`` ``cls_hao``; the checkpoint
converter renames it). Everything runs in the encoder's (B, C, H, W, D) layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ProMISeLib.models.promise3d.config import Promise3DConfig


def _conv_in_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.InstanceNorm3d(cout), nn.ReLU()]


class MLAHead(nn.Module):
    """Per feature: 2x [3³ conv, InstanceNorm, ReLU], then a x2 transposed conv."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        for i in range(2, 6):
            setattr(self, f"head{i}", nn.Sequential(*_conv_in_relu(in_dim, dim), *_conv_in_relu(dim, dim)))
        for i in range(2, 6):
            setattr(self, f"up{i}", nn.ConvTranspose3d(dim, dim, 2, stride=2))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        outs = [getattr(self, f"up{i}")(getattr(self, f"head{i}")(f)) for i, f in zip(range(2, 6), features,
                                                                                        strict=True)]
        return torch.cat(outs, dim=1)


class Promise3DDecoder(nn.Module):
    """Four (B, C, G, G, G) features and the crop at 2G³ -> (B, classes, crop³) logits, (B, C, H, W, D) layout."""

    def __init__(self, config: Promise3DConfig) -> None:
        super().__init__()
        dim = config.decoder_dim
        self.out_scale = config.crop_size // (2 * config.grid)
        self.mlahead = MLAHead(config.neck_dim, dim)
        self.head = nn.Sequential(*_conv_in_relu(5 * dim + 1, dim),
                                  nn.Conv3d(dim, config.num_classes, 3, padding=1, bias=False))
        self.image_feature_extractor = nn.Sequential(*_conv_in_relu(1, dim), *_conv_in_relu(dim, dim))

    def forward(self, features: list[torch.Tensor], small_image: torch.Tensor) -> torch.Tensor:
        x = self.mlahead(features)
        x = self.head(torch.cat([x, self.image_feature_extractor(small_image), small_image], dim=1))
        if self.out_scale != 1:
            x = F.interpolate(x, scale_factor=float(self.out_scale), mode="trilinear", align_corners=True)
        return x
