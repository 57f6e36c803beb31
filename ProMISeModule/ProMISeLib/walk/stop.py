"""Every stop decision of the walk: whether a click found anything, where the lesion ends along the walk
(the rules, then the plug-ins), and where a correction's walk is back on the lesion's own masks."""

from __future__ import annotations

import numpy as np

from ProMISeLib.io.preprocess import CropWindow
from ProMISeLib.walk.context import WalkContext
from ProMISeLib.walk.masks import iou


def found_at_click(ctx: WalkContext, mask: np.ndarray, score: float) -> bool:
    """Whether a search at a click found a structure: a mask, scored at least ``seed.min_score``."""
    return bool(mask.any()) and score >= ctx.settings.seed.min_score


def intensity_reference(ctx: WalkContext, k: int, crop: CropWindow, mask: np.ndarray) -> tuple[float, float]:
    """The lesion's intensity mean and SD (at least 4) under ``mask`` on slice k: what the intensity stop reads."""
    pixels = crop.extract(ctx.volume[k])[mask]
    return float(pixels.mean()), float(max(pixels.std(), 4.0))


def stop_reason(ctx: WalkContext, k: int, crop: CropWindow, mask: np.ndarray | None, score: float,
                previous: np.ndarray, largest: int, reference: tuple[float, float]) -> str | None:
    """Why the lesion ends at slice k (the mask vanished, grew, lost confidence or intensity), or None.

    Inside a box prompt the user has said where the lesion is: only a vanished or abruptly grown mask ends it.
    """
    s = ctx.settings
    if mask is None or mask.sum() < s.stop.min_area_fraction * largest:
        return "mask vanished"
    if mask.sum() > s.stop.max_growth * previous.sum():
        return "mask grew abruptly"
    if ctx.bounds is not None:
        return None
    if score < s.stop.min_score:
        return "low model confidence"
    if abs(float(crop.extract(ctx.volume[k])[mask].mean()) - reference[0]) > s.stop.intensity_z * reference[1]:
        return "intensity no longer matches the lesion"
    return None


def beyond_extent(ctx: WalkContext, k: int, limit: int | None, direction: int) -> bool:
    """Whether slice k is past the farthest slice the orthogonal planes reach on this side (and its slack;
    none for the planes a box prompted)."""
    slack = 0 if ctx.bounds is not None else ctx.settings.stop.orthogonal_tolerance
    return limit is not None and (k - limit) * direction > slack


def walk_ends(ctx: WalkContext, k: int, crop: CropWindow, mask: np.ndarray | None, score: float,
              previous: np.ndarray, largest: int, reference: tuple[float, float]) -> str | None:
    """Why the walk ends at slice k: the stop rules' reason, as the plug-ins finally say (None: go on)."""
    reason = stop_reason(ctx, k, crop, mask, score, previous, largest, reference)
    for plugin in ctx.plugins:
        reason = plugin.stop(k, mask, reason)
    return reason or ("mask vanished" if mask is None else None)


def back_on_lesion(ctx: WalkContext, merged: np.ndarray, old: np.ndarray | None) -> bool:
    """Whether a correction's walk is back on the lesion's own mask of this slice (the rest stays as it was)."""
    return old is not None and iou(merged, old) >= ctx.settings.correction.agreement
