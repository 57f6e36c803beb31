"""Stage 4, one step: the lesion's mask on slice k from boxes around the neighbouring slice's mask.

Boxes of several sizes (``step.scales``) around the previous mask are decoded; each candidate
keeps the components that touch the previous mask, and is scored like the seed's (predicted IoU times
self-consistency). The prompt mode's chooser (``choose.py``) adds the learned prompter's box and picks the
candidate; with learned prompts the prompter's box alone is decoded (and its components near the prompter's
coarse mask kept). Plug-ins see every weighed step and may choose another candidate.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ProMISeLib.io.preprocess import CropWindow
from ProMISeLib.walk.context import WalkContext
from ProMISeLib.walk.masks import box_of, component_at, iou, widened


def step(ctx: WalkContext, k: int, crop: CropWindow, previous: np.ndarray, positives, negatives,
         require: tuple[int, int] | None = None, forbid: tuple[int, int] | None = None,
         scales: tuple[float, ...] | None = None, verify: bool = True, guide: np.ndarray | None = None,
         stage: str = "step") -> tuple[np.ndarray | None, float]:
    """Best mask on slice k from boxes around the previous mask; returns (mask, score) or (None, 0).

    With ``require`` (crop row, column) only candidates that reach that point count; with ``forbid``
    only those that leave it out, if any does. ``scales`` replaces ``step.scales``. Without
    ``verify`` the candidates are scored by the predicted IoU alone, not re-decoded from their own boxes.
    ``guide`` (x0, y0, x1, y1 on the slice) is one more box: the one a box prompt's planes give slice k.
    """
    s = ctx.settings
    embedding = ctx.embedding(k, crop)
    coarse = ctx.chooser.beside(embedding, crop.side, previous)
    constrained = require is not None or forbid is not None
    alone = not ctx.chooser.decodes_rules and not constrained  # the prompter's box alone
    if alone and (coarse is None or coarse.box is None):
        return None, 0.0  # the learned prompter sees the lesion end here
    boxes = []
    if not alone:
        tight = box_of(previous)
        centre = (tight[:2] + tight[2:]) / 2
        half = (tight[2:] - tight[:2]) / 2
        boxes = [np.concatenate([centre - half * f - s.boxes.box_margin_px, centre + half * f + s.boxes.box_margin_px])
                 for f in (scales or s.step.scales)]
    if coarse is not None and coarse.box is not None:  # the learned box's mask is one more candidate
        boxes.append(widened(coarse.box, s.boxes.box_margin_px))
    if guide is not None and not alone:
        boxes.append(widened(guide - np.array([crop.i0, crop.j0] * 2, np.float32), s.boxes.box_margin_px))
    boxes = ctx.exclude(np.stack(boxes).astype(np.float32), k, crop, negatives)
    points, labels = ctx.prompt_points(k, crop, positives, negatives)
    first = ctx.predictor.decode(embedding, crop.side, boxes, points, labels)
    if alone:  # the components near the prompter's own coarse mask
        reach = ndimage.binary_dilation(coarse.in_crop(crop.side), iterations=2)
    else:  # the components touching the previous mask
        reach = ndimage.binary_dilation(previous, iterations=max(2, int(round(3 / ctx.pixel_mm))))
    inside = ctx.box_mask(crop)
    candidates, predicted = [], []
    for mask, score in zip(first.masks, first.iou, strict=True):
        if inside is not None:
            mask = mask & inside
        if s.boxes.fill_holes:
            mask = ndimage.binary_fill_holes(mask)
        labels_2d, _ = ndimage.label(mask)
        keep = np.unique(labels_2d[reach & mask])
        component = np.isin(labels_2d, keep[keep > 0])
        if require is not None:
            at_point = component_at(mask, require, ctx.radius_px())
            if not at_point.any():
                continue
            component = component | at_point
        if component.any():
            candidates.append(component)
            predicted.append(float(score))
    if forbid is not None and any(not c[forbid] for c in candidates):
        predicted = [p for c, p in zip(candidates, predicted, strict=True) if not c[forbid]]
        candidates = [c for c in candidates if not c[forbid]]
    if not candidates:
        return None, 0.0
    if verify and not alone:
        own = ctx.exclude(np.stack([box_of(c, 0.0, s.boxes.box_margin_px) for c in candidates]), k, crop, negatives)
        second = ctx.predictor.decode(embedding, crop.side, own, points, labels)
        scores = [float(p) * iou(c, a) for c, a, p in zip(candidates, second.masks, second.iou, strict=True)]
    else:
        scores = predicted
    reference = None
    if coarse is not None:
        reference = coarse.in_crop(crop.side) if coarse.box is not None else np.zeros_like(previous)
    best = ctx.choose(stage, k, crop, previous, candidates, predicted, scores, reference)
    return candidates[best], max(scores)
