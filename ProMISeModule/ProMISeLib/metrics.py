"""Overlap and distance metrics (Dice, HD95 in millimetres) for benchmarks and tests."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two binary masks (1.0 when both are empty)."""
    a, b = a.astype(bool), b.astype(bool)
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(a & b) / total


def _surface_distances(a: np.ndarray, b: np.ndarray, spacing_kji: tuple[float, float, float]) -> np.ndarray:
    """Distances (mm) from the surface voxels of ``a`` to the surface of ``b``."""
    surface_a = a & ~ndimage.binary_erosion(a)
    surface_b = b & ~ndimage.binary_erosion(b)
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing_kji)
    return to_b[surface_a]


def hd95(a: np.ndarray, b: np.ndarray, spacing_kji: tuple[float, float, float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (inf when exactly one mask is empty)."""
    a, b = a.astype(bool), b.astype(bool)
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return float("inf")
    distances = np.concatenate([_surface_distances(a, b, spacing_kji), _surface_distances(b, a, spacing_kji)])
    return float(np.percentile(distances, 95))
