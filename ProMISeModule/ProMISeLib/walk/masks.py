"""Per-slice crop masks of a lesion, and the small mask operations every stage of the walk shares."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ProMISeLib.io.preprocess import CropWindow


@dataclass
class SliceMasks:
    """Per-slice crop masks of one lesion."""

    crop: CropWindow
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    stops: list[str] = field(default_factory=list)
    start_k: int = 0  # the slice the lesion was found on
    reference: tuple[float, float] = (0.0, 1.0)  # the lesion's intensity mean and SD on that slice (stop rule)
    hypotheses: int = 0  # the distinct hypotheses of the first click that seeded it (0: not that click's)

    def contains(self, click_kji: tuple[int, int, int]) -> bool:
        """Whether the voxel is inside the lesion's mask."""
        k, j, i = click_kji
        mask = self.masks.get(k)
        return mask is not None and self.crop.contains((j, i)) and bool(mask[j - self.crop.j0, i - self.crop.i0])

    def reaches(self, click_kji: tuple[int, int, int], slices: int) -> bool:
        """Whether the voxel is in the lesion's crop, at most ``slices`` past its first or last slice."""
        k, j, i = click_kji
        return (self.crop.contains((j, i)) and bool(self.masks)
                and min(self.masks) - slices <= k <= max(self.masks) + slices)


def component_at(mask: np.ndarray, point_ji: tuple[int, int], radius: int = 0, fill: bool = False) -> np.ndarray:
    """The connected component of ``mask`` at ``point_ji`` (empty if none).

    With ``fill`` holes are filled first (a necrotic core belongs to the lesion); with ``radius``
    a component within that many pixels of the point counts when none covers it.
    """
    if fill:
        mask = ndimage.binary_fill_holes(mask)
    labels, _ = ndimage.label(mask)
    value = labels[point_ji]
    if not value and radius > 0:
        j, i = point_ji
        window = labels[max(j - radius, 0) : j + radius + 1, max(i - radius, 0) : i + radius + 1]
        hits = window[window > 0]
        value = int(np.bincount(hits).argmax()) if hits.size else 0
    return labels == value if value else np.zeros_like(mask, dtype=bool)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of ``mask`` (empty if it has none)."""
    labels, count = ndimage.label(mask)
    if not count:
        return np.zeros_like(mask, dtype=bool)
    return labels == 1 + int(np.argmax(ndimage.sum_labels(mask, labels, range(1, count + 1))))


def box_of(mask: np.ndarray, margin: float = 0.0, margin_px: float = 0.0) -> np.ndarray:
    """(x0, y0, x1, y1) box of a mask, widened by a relative and an absolute margin."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    dx = (x1 - x0) * margin + margin_px
    dy = (y1 - y0) * margin + margin_px
    return np.array([x0 - dx, y0 - dy, x1 + dx, y1 + dy], dtype=np.float32)


def widened(box: np.ndarray, margin_px: float | np.ndarray) -> np.ndarray:
    """A box (x0, y0, x1, y1) or boxes (N, 4) widened by ``margin_px`` pixels on each side (one value, or one
    per side in the box's order)."""
    return np.asarray(box, np.float32) + np.array([-1, -1, 1, 1], np.float32) * np.asarray(margin_px, np.float32)


def distinct(masks: list[np.ndarray], count: int, overlap: float = 0.6) -> list[np.ndarray]:
    """The first ``count`` of ``masks`` that differ: each kept one overlaps every earlier kept one by at most
    ``overlap`` (IoU), as an ambiguous click's hypotheses should."""
    kept: list[np.ndarray] = []
    for mask in masks:
        if len(kept) == count:
            break
        if all(iou(mask, other) <= overlap for other in kept):
            kept.append(mask)
    return kept


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (0 when both are empty)."""
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def assemble(shape_kji: tuple[int, int, int], lesions: list[SliceMasks],
             negatives: list[tuple[int, int, int]]) -> np.ndarray:
    """Paste per-slice crop masks into a (K, J, I) uint8 volume; cut out negative-click components."""
    volume = np.zeros(shape_kji, dtype=np.uint8)
    rows, cols = shape_kji[1:]
    for lesion in lesions:
        for k, crop_mask in lesion.masks.items():
            slice_mask = np.zeros((rows, cols), dtype=bool)
            lesion.crop.paste(slice_mask, crop_mask)
            volume[k][slice_mask] = 1
    for k, j, i in negatives:
        if volume[k, j, i]:
            volume[k][component_at(volume[k].astype(bool), (j, i))] = 0
    return volume
