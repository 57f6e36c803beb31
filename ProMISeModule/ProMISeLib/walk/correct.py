"""Corrections: a further click on a computed lesion redoes only its neighbourhood.

- A **positive** click beside the lesion's mask on its slice asks for one structure holding both: the box
  around the mask and the click is decoded, and its component at the click joins the mask (if it keeps at
  least half the mask). On a slice without mask, or where that fails, the click adds the structure that the
  seed's box search finds at it (on the lesion's crop). Either way the new mask is followed to the
  neighbouring slices, adding to the lesion's masks; the intensity stop there reads the clicked structure's
  own intensity (the user has said it is lesion), not the seed slice's.
  It stays within the lesion's slices, except on the side where the click lies past the lesion's end:
  there it goes on at most ``correction.extend_mm`` past the click (another click there extends it
  further). It only adds voxels. (A reseed that walked on until the lesion ends was measured and not
  adopted: docs/studies/clicks-that-converge.md.)
- A **negative** click re-decodes its slice with the boxes moved past it, keeping the best candidate that
  leaves the click out (if none does, the click's component is cut out), then re-decodes the neighbouring
  slices from that mask. It only removes voxels. A click slice left empty ends the lesion there: the
  shorter part of the lesion beyond it goes (a click near an end trims that end; it never takes the
  larger part of the lesion with it).

Each way, the walk stops where its mask agrees with the lesion's (IoU at least ``correction.agreement``)
or a stop rule ends it: the rest of the lesion stays as it was. Candidates are scored by the model's
predicted IoU alone (no re-decode from their own boxes), which halves a correction's decoding.
"""

from __future__ import annotations

import numpy as np

from ProMISeLib.walk.context import Voxel, WalkContext
from ProMISeLib.walk.masks import SliceMasks, box_of, component_at
from ProMISeLib.walk.seed import search
from ProMISeLib.walk.step import step
from ProMISeLib.walk.stop import back_on_lesion, found_at_click, intensity_reference, stop_reason


def _nearer_end(masks: dict[int, np.ndarray], k: int, start_k: int) -> int:
    """The side (+1 or -1) of slice k that a negative click emptying it cuts off: the nearer end of the lesion
    (the shorter part goes), else the side away from the slice the lesion was found on."""
    below, above = k - min(masks), max(masks) - k
    if below != above:
        return 1 if above < below else -1
    return 1 if k >= start_k else -1


def _click_disk(ctx: WalkContext, like: np.ndarray, click_ji: tuple[int, int]) -> np.ndarray:
    """A square of ``boxes.click_radius_mm`` around the click, as a crop mask shaped like ``like``."""
    radius = max(1, ctx.radius_px())
    disk = np.zeros_like(like, dtype=bool)
    disk[max(click_ji[0] - radius, 0) : click_ji[0] + radius + 1,
         max(click_ji[1] - radius, 0) : click_ji[1] + radius + 1] = True
    return disk


def _grown(ctx: WalkContext, k: int, crop, mask: np.ndarray, click_ji: tuple[int, int],
           negatives: list[Voxel]) -> np.ndarray | None:
    """A positive click beside slice k's mask asks for a structure that holds both: the box around the mask
    and the click, decoded. Its component at the click, with the mask; None where it leaves half the mask out."""
    s = ctx.settings
    box = box_of(mask | _click_disk(ctx, mask, click_ji), s.boxes.box_margin, s.boxes.box_margin_px)
    box = ctx.exclude(box[None], k, crop, negatives)
    decoded = ctx.predictor.decode(ctx.embedding(k, crop), crop.side, box, None, None).masks[0]
    inside = ctx.box_mask(crop)
    grown = component_at(decoded if inside is None else decoded & inside, click_ji, max(1, ctx.radius_px()),
                         s.boxes.fill_holes)
    if not grown.any() or np.count_nonzero(grown & mask) < 0.5 * np.count_nonzero(mask):
        return None
    return grown | mask


def slices_past_ends(ctx: WalkContext, lesion: SliceMasks) -> list[int]:
    """The slices a positive click past the lesion's ends may walk onto (it refines the lesion up to
    ``correction.reach`` slices past an end and goes on ``correction.extend_mm`` past the click), nearest an end
    first, the two ends in turn: what to encode while the user looks at the lesion."""
    s = ctx.settings.correction
    past = s.reach + max(1, int(np.ceil(s.extend_mm / ctx.slice_mm)))
    lo, hi, depth = min(lesion.masks), max(lesion.masks), ctx.volume.shape[0]
    return [k for n in range(1, past + 1) for k in (hi + n, lo - n) if 0 <= k < depth and ctx.allows(k)]


def correct(ctx: WalkContext, lesion: SliceMasks, click_kji: Voxel, positive: bool,
            negatives: list[Voxel]) -> SliceMasks:
    """``lesion`` refined by one more click (a new SliceMasks; ``lesion`` is not changed).

    ``negatives`` are the negative clicks applied to this lesion so far (this one included); they move
    box sides on their slices.
    """
    s = ctx.settings
    k, j, i = click_kji
    crop, old = lesion.crop, lesion.masks
    click_ji = (j - crop.j0, i - crop.i0)
    result = SliceMasks(crop=crop, masks=dict(old), stops=list(lesion.stops), start_k=lesion.start_k,
                        reference=lesion.reference, hypotheses=lesion.hypotheses)
    depth = ctx.volume.shape[0]
    if positive:
        grown = _grown(ctx, k, crop, old[k], click_ji, negatives) if k in old else None
        if grown is not None:
            found, score = grown, 1.0
        else:  # the seed's search
            masks, score = search(ctx, k, (j, i), crop, [], negatives, verify=False, stage="correction")
            found = masks[0] if masks else np.zeros_like(old[min(old)])
        if not found_at_click(ctx, found, score):
            nearest = old[k] if k in old else old[min(old, key=lambda kk: abs(kk - k))]
            found, _ = step(ctx, k, crop, nearest | _click_disk(ctx, nearest, click_ji), [], negatives,
                            require=click_ji, verify=False, stage="correction")
        if found is None or not found.any():
            ctx.messages.append(f"the positive click on slice {k} found no structure there; it changed nothing")
            return lesion
        result.masks[k] = found | old[k] if k in old else found
        follow, largest = found, int(found.sum())
        reference = intensity_reference(ctx, k, crop, found)  # the user says this is lesion: its own intensity
        extend = max(1, int(np.ceil(s.correction.extend_mm / ctx.slice_mm)))  # past a click beyond an end
        lo = max(0, k - extend) if k < min(old) else min(old)
        hi = min(depth - 1, k + extend) if k > max(old) else max(old)
    else:
        new, _ = step(ctx, k, crop, old[k], [], negatives, forbid=click_ji, verify=False, stage="correction")
        if new is not None:
            new = new & old[k]
            if new[click_ji]:  # no candidate left the click out: cut its component out by hand
                new = new & ~component_at(new, click_ji)
        if new is None or not new.any():  # nothing left on the click's slice: the lesion ends there
            side = _nearer_end(old, k, lesion.start_k)
            for b in [b for b in old if (b - k) * side >= 0]:
                del result.masks[b]
            result.stops.append(f"the negative click on slice {k} removed the lesion from there on")
            return result
        result.masks[k] = new
        follow, largest = new, max(int(m.sum()) for m in old.values())
        reference = lesion.reference
        lo, hi = min(old), max(old)
    for direction in (1, -1):
        towards_start = not positive and (lesion.start_k - k) * direction > 0  # never redo the seed slice
        previous, kk = follow, k + direction
        while lo <= kk <= hi and ctx.allows(kk) and not (towards_start and kk == lesion.start_k):
            mask, score = step(ctx, kk, crop, previous, [], negatives, scales=s.correction.scales, verify=False,
                               stage="correction")
            if not positive and mask is not None:
                mask = mask & old[kk]
            reason = stop_reason(ctx, kk, crop, mask, score, previous, largest, reference)
            if reason:  # the rest stays as it was
                result.stops.append(f"refinement at slice {k} stopped at slice {kk}: {reason}")
                break
            merged = mask | old[kk] if positive and kk in old else mask
            result.masks[kk] = merged
            if back_on_lesion(ctx, merged, old.get(kk)):
                break  # back on the lesion's own masks: the rest stays
            if positive:
                largest = max(largest, int(mask.sum()))
            previous, kk = mask, kk + direction
    return result
