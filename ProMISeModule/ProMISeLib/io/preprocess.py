"""Intensity normalisation of a volume and the crop-to-model-input step (one place for both).

The official LiteMedSAM preprocessing: CT in a soft-tissue window (W400/L40); MR and other
modalities clipped to the 0.5-99.5 percentiles of the non-zero voxels; both scaled to 0-255.
Each slice crop is then resized to the model's input size and scaled as the model expects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Modality = Literal["auto", "ct", "mr", "none"]

CT_WINDOW = (40.0, 400.0)  # level, width (HU)


def detect_modality(volume: np.ndarray) -> str:
    """'ct' when the values look like Hounsfield units (air near -1000), else 'mr'."""
    low = float(np.percentile(volume[:: max(1, volume.shape[0] // 8)], 0.5))
    return "ct" if low < -500 else "mr"


def normalize_intensities(volume: np.ndarray, modality: Modality = "auto") -> tuple[np.ndarray, str]:
    """Window/clip a (K, J, I) volume and scale it to float32 0-255; returns (volume, modality used)."""
    used = detect_modality(volume) if modality == "auto" else modality
    if used == "none":  # already scaled to 0-255 by the caller
        return np.clip(volume, 0, 255).astype(np.float32, copy=False), used
    if used == "ct":
        level, width = CT_WINDOW
        low, high = level - width / 2, level + width / 2
    else:
        foreground = volume[volume > 0]  # a copy: the percentiles may reorder it in place (no second copy)
        if foreground.size > 100:
            low, high = (float(v) for v in np.percentile(foreground, (0.5, 99.5), overwrite_input=True))
        else:
            low, high = (float(v) for v in np.percentile(volume, (0.5, 99.5)))
        del foreground
    if high <= low:
        high = low + 1.0
    out = np.clip(volume, low, high, dtype=np.float32)
    out -= low
    out *= 255.0 / (high - low)
    return out, used


@dataclass(frozen=True)
class CropWindow:
    """A square in-plane window: rows j0..j0+side, columns i0..i0+side (may pass the slice edge)."""

    j0: int
    i0: int
    side: int

    @classmethod
    def around(cls, center_ji: tuple[float, float], side: int, snap: int = 1) -> CropWindow:
        """A window of ``side`` pixels centred on ``center_ji``.

        With ``snap`` > 1 the side is rounded up to a multiple of ``snap`` and the corner to a
        multiple of ``snap // 2``, so nearby clicks give the same window and reuse cached embeddings.
        """
        side = int(max(side, 16))
        if snap > 1:
            side = int(np.ceil(side / snap) * snap)
        j0, i0 = center_ji[0] - side / 2, center_ji[1] - side / 2
        step = max(1, snap // 2)
        return cls(int(round(j0 / step) * step), int(round(i0 / step) * step), side)

    def extract(self, slice_2d: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """The window's pixels, padded with ``fill`` where it passes the slice edge."""
        out = np.full((self.side, self.side), fill, dtype=np.float32)
        rows, cols = slice_2d.shape
        j_lo, j_hi = max(self.j0, 0), min(self.j0 + self.side, rows)
        i_lo, i_hi = max(self.i0, 0), min(self.i0 + self.side, cols)
        if j_lo < j_hi and i_lo < i_hi:
            out[j_lo - self.j0 : j_hi - self.j0, i_lo - self.i0 : i_hi - self.i0] = slice_2d[j_lo:j_hi, i_lo:i_hi]
        return out

    def paste(self, target: np.ndarray, crop_mask: np.ndarray) -> None:
        """Write a (side, side) mask into ``target`` (rows, cols), clipped to the slice."""
        rows, cols = target.shape
        j_lo, j_hi = max(self.j0, 0), min(self.j0 + self.side, rows)
        i_lo, i_hi = max(self.i0, 0), min(self.i0 + self.side, cols)
        if j_lo < j_hi and i_lo < i_hi:
            target[j_lo:j_hi, i_lo:i_hi] = crop_mask[j_lo - self.j0 : j_hi - self.j0, i_lo - self.i0 : i_hi - self.i0]

    def contains(self, point_ji: tuple[int, int]) -> bool:
        """Whether the window holds this (row, column) of the slice."""
        return self.j0 <= point_ji[0] < self.j0 + self.side and self.i0 <= point_ji[1] < self.i0 + self.side



@dataclass(frozen=True)
class InputScaling:
    """How a model wants its pixels: 'minmax' to [0, 1] per crop (LiteMedSAM), or SAM's mean/std on 0-255."""

    size: int
    mode: Literal["minmax", "meanstd"] = "minmax"
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    def to_input(self, crops: np.ndarray):
        """(B, S, S) 0-255 crops -> (B, 3, size, size) float tensor."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32))[:, None]
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.size)
        if self.mode == "minmax":
            low = x.amin(dim=(2, 3), keepdim=True)
            high = x.amax(dim=(2, 3), keepdim=True)
            x = (x - low) / torch.clamp(high - low, min=1e-8)
            return x.expand(-1, 3, -1, -1).contiguous()
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x.expand(-1, 3, -1, -1) - mean) / std
