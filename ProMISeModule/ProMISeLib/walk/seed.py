"""Stage 1-2 of the walk: find the lesion at the click, then re-crop around it.

The box search runs on the click's slice in a wide context crop (``seed.context_mm``). The crop is then
re-centred on the chosen lesion and sized to a few lesion diameters (``seed.crop_to_lesion``), so the lesion
is large in the model's 256 px input, and the lesion's box is decoded again there.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ProMISeLib.errors import EmptySegmentationError, InvalidInputError
from ProMISeLib.io.preprocess import CropWindow
from ProMISeLib.walk.context import Voxel, WalkContext
from ProMISeLib.walk.masks import box_of, component_at, largest_component, widened
from ProMISeLib.walk.search import ranked_at_click
from ProMISeLib.walk.stop import found_at_click

#: How many distinct hypotheses of a first click the seed keeps (``segment(alternative=n)`` walks the n-th).
ALTERNATIVES = 3


def search(ctx: WalkContext, k: int, click_ji: tuple[int, int], crop: CropWindow, positives, negatives,
           verify: bool = True, stage: str = "seed", alternatives: int = 1) -> tuple[list[np.ndarray], float]:
    """The box search at a voxel of slice k, in ``crop``: the chosen candidates (crop masks, best first, up to
    ``alternatives`` distinct ones) and the best rule score."""
    embedding = ctx.embedding(k, crop)
    points, labels = ctx.prompt_points(k, crop, positives, negatives)
    return ranked_at_click(ctx, stage, k, crop, embedding, crop.side, (click_ji[0] - crop.j0, click_ji[1] - crop.i0),
                           ctx.pixel_mm, lambda b: ctx.exclude(b, k, crop, negatives), points, labels, verify=verify,
                           inside=ctx.box_mask(crop), alternatives=alternatives)


def seed(ctx: WalkContext, click_kji: Voxel, positives, negatives, alternative: int = 0
         ) -> tuple[CropWindow, np.ndarray, float, list[float]]:
    """Find the lesion at the click; return the ROI crop, its crop mask, a score (0-1) and the area (mm²) of each
    distinct hypothesis at the click (``alternative`` picks which one is followed: 0, the best)."""
    k, j, i = click_kji
    s = ctx.settings
    rows, cols = ctx.volume.shape[1:]
    side = int(min(max(rows, cols), max(s.seed.min_crop_px, round(s.seed.context_mm / ctx.pixel_mm))))
    crop = CropWindow.around((j, i), side, snap=s.seed.crop_snap)
    if np.ptp(crop.extract(ctx.volume[k])) < 1e-3:
        raise EmptySegmentationError("the image is uniform around the click: there is nothing to segment")
    hypotheses, score = search(ctx, k, (j, i), crop, positives, negatives, alternatives=ALTERNATIVES)
    if not hypotheses or not found_at_click(ctx, hypotheses[0], score):
        raise EmptySegmentationError(
            "no structure found at the click; click nearer the centre of the lesion or add a positive point"
        )
    if alternative >= len(hypotheses):
        raise InvalidInputError(f"the click has {len(hypotheses)} distinct hypotheses; there is no alternative "
                                f"{alternative} (use 0 to {len(hypotheses) - 1})")
    areas = [float(m.sum()) * ctx.pixel_mm**2 for m in hypotheses]
    mask = hypotheses[alternative]
    box = box_of(mask)
    diameter = max(box[2] - box[0], box[3] - box[1])
    new_side = int(max(s.seed.min_crop_px, round(diameter * s.seed.crop_to_lesion)))
    if new_side < 0.8 * side:
        centre = ((box[1] + box[3]) / 2 + crop.j0, (box[0] + box[2]) / 2 + crop.i0)
        roi = CropWindow.around(centre, new_side)
        offset_box = box + np.array([crop.i0 - roi.i0, crop.j0 - roi.j0] * 2, dtype=np.float32)
        refined, refined_score = _refine(ctx, k, (j, i), roi, offset_box, positives, negatives)
        if refined.any():
            return roi, refined, refined_score, areas
        ctx.messages.append("the tighter ROI lost the lesion; kept the wide crop")
    return crop, mask, score, areas


def seed_from_box(ctx: WalkContext, negatives) -> tuple[Voxel, CropWindow, np.ndarray, float]:
    """The lesion in the user's box: the box itself prompts its middle slice (LiteMedSAM was trained on
    boxes). Returns the seed voxel (the box's centre), the ROI crop, its crop mask and the model's score."""
    s = ctx.settings
    (k0, k1), (j0, j1), (i0, i1) = ctx.bounds
    k = (k0 + k1) // 2
    centre = ((j0 + j1) / 2, (i0 + i1) / 2)
    rows, cols = ctx.volume.shape[1:]
    side = int(min(max(rows, cols),
                   max(s.seed.min_crop_px, round((max(j1 - j0, i1 - i0) + 1) * s.seed.crop_to_lesion))))
    crop = CropWindow.around(centre, side)
    embedding = ctx.embedding(k, crop)
    box = np.array([[i0 - crop.i0, j0 - crop.j0, i1 + 1 - crop.i0, j1 + 1 - crop.j0]], np.float32)
    out = ctx.predictor.decode(embedding, crop.side, ctx.exclude(box, k, crop, negatives), None, None)
    mask = out.masks[0] & ctx.box_mask(crop)
    if s.boxes.fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    mask = largest_component(mask)
    if not mask.any():
        raise EmptySegmentationError("no structure found inside the box; draw it around the lesion")
    seed_ji = (int(round(centre[0])), int(round(centre[1])))
    return (k, *seed_ji), crop, mask, float(out.iou[0])


def _refine(ctx: WalkContext, k: int, click_ji, crop: CropWindow, box: np.ndarray, positives, negatives):
    """Decode a known box on a new crop, iterating to the box's fixed point (twice at most)."""
    s = ctx.settings
    embedding = ctx.embedding(k, crop)
    cj, ci = click_ji[0] - crop.j0, click_ji[1] - crop.i0
    points, labels = ctx.prompt_points(k, crop, positives, negatives)
    margin_box = widened(box, np.array([box[2] - box[0], box[3] - box[1]] * 2, np.float32) * s.boxes.box_margin
                         + s.boxes.box_margin_px)
    mask, score = np.zeros((crop.side, crop.side), bool), 0.0
    for _ in range(2):
        margin_box = ctx.exclude(margin_box, k, crop, negatives)[0]
        out = ctx.predictor.decode(embedding, crop.side, margin_box[None], points, labels)
        component = component_at(out.masks[0], (cj, ci), ctx.radius_px(), s.boxes.fill_holes)
        if not component.any():
            break
        mask, score = component, float(out.iou[0])
        margin_box = box_of(mask, s.boxes.box_margin, s.boxes.box_margin_px)
    return mask, score
