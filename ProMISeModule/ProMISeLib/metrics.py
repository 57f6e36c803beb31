"""Overlap and distance metrics (Dice; HD95 and normalised surface Dice in millimetres) for benchmarks and tests."""

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


def _around(a: np.ndarray, b: np.ndarray, margin) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to the box around them plus ``margin`` voxels (the array border stays where it was):
    distances between their surfaces are the same in the crop, and far cheaper to compute."""
    found = np.argwhere(a | b)
    low = np.maximum(found.min(axis=0) - margin, 0)
    high = np.minimum(found.max(axis=0) + margin + 1, a.shape)
    box = tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))
    return a[box], b[box]


def hd95(a: np.ndarray, b: np.ndarray, spacing_kji: tuple[float, float, float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (inf when exactly one mask is empty)."""
    a, b = a.astype(bool), b.astype(bool)
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return float("inf")
    a, b = _around(a, b, 2)
    distances = np.concatenate([_surface_distances(a, b, spacing_kji), _surface_distances(b, a, spacing_kji)])
    return float(np.percentile(distances, 95))


def nsd(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float], tolerance_mm: float = 5.0) -> float:
    """Normalised surface Dice at ``tolerance_mm`` (Nikolov et al. 2021); ``spacing`` in array (K, J, I) order.

    The share of both masks' surface voxels that lie within the tolerance of the other mask's
    surface. 1.0 when both masks are empty, 0.0 when exactly one is.
    """
    a, b = pred.astype(bool), truth.astype(bool)
    if not a.any() and not b.any():
        return 1.0
    if not a.any() or not b.any():
        return 0.0
    a, b = _around(a, b, np.ceil(tolerance_mm / np.asarray(spacing, dtype=float)).astype(int) + 2)
    a_to_b = _surface_distances(a, b, spacing)
    b_to_a = _surface_distances(b, a, spacing)
    close = np.count_nonzero(a_to_b <= tolerance_mm) + np.count_nonzero(b_to_a <= tolerance_mm)
    return float(close / (a_to_b.size + b_to_a.size))
