"""Stage 4, the walk: follow the lesion slice by slice from the seed, both ways, until it ends."""

from __future__ import annotations

import numpy as np

from ProMISeLib.io.preprocess import CropWindow
from ProMISeLib.walk.context import WalkContext
from ProMISeLib.walk.masks import SliceMasks
from ProMISeLib.walk.planes import Extents
from ProMISeLib.walk.step import step
from ProMISeLib.walk.stop import beyond_extent, intensity_reference, walk_ends


def propagate(ctx: WalkContext, start_k: int, crop: CropWindow, start_mask: np.ndarray, positives, negatives,
              progress_span: tuple[float, float] = (0.1, 1.0), extents: Extents | None = None) -> SliceMasks:
    """Follow the lesion from ``start_k`` up and down; return its crop masks per slice.

    Each direction ends at the first slice a stop rule (or a plug-in's ``stop``) ends, past the
    farthest slice the orthogonal planes reach (``extents``) plus ``stop.orthogonal_tolerance``, or at the
    box prompt's end.
    """
    reference = intensity_reference(ctx, start_k, crop, start_mask)
    result = SliceMasks(crop=crop, masks={start_k: start_mask}, start_k=start_k, reference=reference)
    depth = ctx.volume.shape[0]
    done = 0
    estimate = max(8, 2 * int(round(np.sqrt(start_mask.sum()) * ctx.pixel_mm / 3)))
    for direction in (1, -1):
        reference = result.reference
        previous = start_mask
        largest = start_mask.sum()
        k = start_k + direction
        limit = _farthest(extents, start_k, direction)
        while 0 <= k < depth and ctx.allows(k):
            if beyond_extent(ctx, k, limit, direction):
                result.stops.append(f"stopped at slice {k}: the lesion ends in the coronal/sagittal planes")
                break
            done += 1
            lo, hi = progress_span
            ctx.report(lo + (hi - lo) * min(done / estimate, 0.95), f"slice {k}")
            if ctx.encode_ahead > 0:  # the next slices encode in the background while this one decodes
                ahead = [k + direction * n for n in range(ctx.encode_ahead + 1)]
                ahead = [kk for kk in ahead
                         if 0 <= kk < depth and ctx.allows(kk) and not beyond_extent(ctx, kk, limit, direction)]
                ctx.predictor.prefetch(ctx.volume, ahead, crop)
            mask, score = step(ctx, k, crop, previous, positives, negatives, guide=_guide(ctx, extents, k))
            reason = walk_ends(ctx, k, crop, mask, score, previous, largest, reference)
            if reason:
                result.stops.append(f"stopped at slice {k}: {reason}")
                break
            result.masks[k] = mask
            largest = max(largest, int(mask.sum()))
            previous = mask
            reference = intensity_reference(ctx, k, crop, mask)  # a slow drift goes on; a jump ends the lesion
            k += direction
        if ctx.encode_ahead > 0:
            ctx.predictor.cancel_prefetch()  # slices queued past where this direction stopped
    return result


def _guide(ctx: WalkContext, extents: Extents | None, k: int) -> np.ndarray | None:
    """With a box prompt, slice k's box (x0, y0, x1, y1) from the planes' ranges there (None elsewhere)."""
    if ctx.bounds is None or not extents or k not in extents or any(r is None for r in extents[k]):
        return None
    rows, cols = extents[k]
    return np.array([cols[0], rows[0], cols[1], rows[1]], np.float32)


def _farthest(extents: Extents | None, start_k: int, direction: int) -> int | None:
    """The farthest slice the orthogonal planes reach on this side of ``start_k`` (``start_k`` if none there);
    None without extents."""
    if not extents:
        return None
    reach = [kk for kk in extents if (kk - start_k) * direction >= 0]
    return max(reach, key=lambda kk: abs(kk - start_k)) if reach else start_k
