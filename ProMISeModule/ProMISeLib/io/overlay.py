"""A PNG of three orthogonal planes through a point, with the mask drawn over the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ProMISeLib.io.geometry import ImageGeometry
from ProMISeLib.io.preprocess import normalize_intensities
from ProMISeLib.io.volumes import atomic_write


def _plane(image: np.ndarray, mask: np.ndarray, row_mm: float, col_mm: float, height: int) -> Image.Image:
    """One plane as RGB, resized so pixels are square in millimetres, ``height`` pixels tall."""
    rgb = np.repeat(image[..., None], 3, axis=2).astype(np.float32)
    red = np.array([255.0, 60.0, 40.0])
    rgb[mask] = 0.55 * rgb[mask] + 0.45 * red
    edge = mask & ~np.pad(mask, 1)[2:, 1:-1] | mask & ~np.pad(mask, 1)[:-2, 1:-1]
    edge |= mask & ~np.pad(mask, 1)[1:-1, 2:] | mask & ~np.pad(mask, 1)[1:-1, :-2]
    rgb[edge] = red
    picture = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    aspect = (image.shape[1] * col_mm) / (image.shape[0] * row_mm)
    return picture.resize((max(1, int(round(height * aspect))), height), Image.Resampling.BILINEAR)


def write_overlay(path: str | Path, volume: np.ndarray, mask: np.ndarray, geometry: ImageGeometry,
                  point_kji: tuple[int, int, int], height: int = 320) -> Path:
    """Axial, coronal and sagittal planes through ``point_kji`` side by side (array-axis aligned)."""
    shown, _ = normalize_intensities(volume)
    k, j, i = point_kji
    sx, sy, sz = geometry.spacing
    binary = mask.astype(bool)
    planes = [
        _plane(shown[k], binary[k], sy, sx, height),
        _plane(shown[::-1, j, :], binary[::-1, j, :], sz, sx, height),
        _plane(shown[::-1, :, i], binary[::-1, :, i], sz, sy, height),
    ]
    canvas = Image.new("RGB", (sum(p.width for p in planes) + 8 * (len(planes) - 1), height), (0, 0, 0))
    x = 0
    for plane in planes:
        canvas.paste(plane, (x, 0))
        x += plane.width + 8
    return atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))
