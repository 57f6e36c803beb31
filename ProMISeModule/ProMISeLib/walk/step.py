"""Stage 4, one step: the lesion's mask on slice k from boxes around the neighbouring slice's mask.

Boxes of several sizes (``propagation_scales``) around the previous mask are decoded; each candidate
keeps the components that touch the previous mask, and is scored like the seed's (predicted IoU times
self-consistency). Fused prompts add the learned prompter's box and rank by its coarse mask; learned
prompts decode the prompter's box alone. Plug-ins see every weighed step and may choose another candidate.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ProMISeLib.io.preprocess import CropWindow
from ProMISeLib.walk.context import WalkContext
from ProMISeLib.walk.hooks import StepCandidates
from ProMISeLib.walk.masks import box_of, component_at, iou
from ProMISeLib.walk.search import fused_choice


def step(ctx: WalkContext, k: int, crop: CropWindow, previous: np.ndarray, positives, negatives,
         require: tuple[int, int] | None = None, forbid: tuple[int, int] | None = None,
         scales: tuple[float, ...] | None = None, verify: bool = True, guide: np.ndarray | None = None
         ) -> tuple[np.ndarray | None, float]:
    """Best mask on slice k from boxes around the previous mask; returns (mask, score) or (None, 0).

    With ``require`` (crop row, column) only candidates that reach that point count; with ``forbid``
    only those that leave it out, if any does. ``scales`` replaces ``propagation_scales``. Without
    ``verify`` the candidates are scored by the predicted IoU alone, not re-decoded from their own boxes.
    ``guide`` (x0, y0, x1, y1 on the slice) is one more box: the one a box prompt's planes give slice k.
    """
    s = ctx.settings
    embedding = ctx.embedding(k, crop)
    coarse, reference = None, None
    if ctx.prompter is not None and (ctx.fused or require is not None):
        coarse = ctx.prompter.follow(embedding, crop.side, previous)
        reference = coarse.in_crop(crop.side) if coarse.box is not None else np.zeros_like(previous)
    elif ctx.prompter is not None:
        return _learned_step(ctx, k, crop, embedding, previous, positives, negatives)
    tight = box_of(previous)
    centre = (tight[:2] + tight[2:]) / 2
    half = (tight[2:] - tight[:2]) / 2
    boxes = [np.concatenate([centre - half * f - s.box_margin_px, centre + half * f + s.box_margin_px])
             for f in (scales or s.propagation_scales)]
    if coarse is not None and coarse.box is not None:  # the learned box's mask is one more candidate
        boxes.append(coarse.box + np.array([-1, -1, 1, 1], np.float32) * s.box_margin_px)
    if guide is not None:
        boxes.append(guide - np.array([crop.i0, crop.j0] * 2, np.float32)
                     + np.array([-1, -1, 1, 1], np.float32) * s.box_margin_px)
    boxes = ctx.exclude(np.stack(boxes).astype(np.float32), k, crop, negatives)
    points, labels = ctx.prompt_points(k, crop, positives, negatives)
    first = ctx.predictor.decode(embedding, crop.side, boxes, points, labels)
    reach = ndimage.binary_dilation(previous, iterations=max(2, int(round(3 / ctx.pixel_mm))))
    inside = ctx.box_mask(crop)
    candidates, predicted = [], []
    for mask, score in zip(first.masks, first.iou, strict=True):
        if inside is not None:
            mask = mask & inside
        if s.fill_holes:
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
    if verify:
        own = ctx.exclude(np.stack([box_of(c, 0.0, s.box_margin_px) for c in candidates]), k, crop, negatives)
        second = ctx.predictor.decode(embedding, crop.side, own, points, labels)
        scores = [float(p) * iou(c, a) for c, a, p in zip(candidates, second.masks, second.iou, strict=True)]
    else:
        scores = predicted
    if reference is not None:
        best, score = fused_choice(candidates, scores, reference)
    else:
        best = int(np.argmax(scores))
        score = scores[best]
    if ctx.plugins:
        weighed = StepCandidates(k, crop, previous, candidates, predicted, scores, reference, best)
        for plugin in ctx.plugins:
            choice = plugin.choose(weighed)
            if choice is not None:
                best = int(choice)
    return candidates[best], score


def _learned_step(ctx: WalkContext, k: int, crop: CropWindow, embedding, previous: np.ndarray, positives,
                  negatives) -> tuple[np.ndarray | None, float]:
    """The learned prompter's box on slice k given the previous mask; (None, 0) where the lesion ends."""
    s = ctx.settings
    coarse = ctx.prompter.follow(embedding, crop.side, previous)
    if coarse.box is None:
        return None, 0.0
    box = coarse.box + np.array([-1, -1, 1, 1], np.float32) * s.box_margin_px
    box = ctx.exclude(box[None], k, crop, negatives)
    points, labels = ctx.prompt_points(k, crop, positives, negatives)
    out = ctx.predictor.decode(embedding, crop.side, box, points, labels)
    mask = out.masks[0]
    if ctx.bounds is not None:
        mask = mask & ctx.box_mask(crop)
    if s.fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    labels_2d, _ = ndimage.label(mask)
    near = ndimage.binary_dilation(coarse.in_crop(crop.side), iterations=2)
    keep = np.unique(labels_2d[near & mask])
    mask = np.isin(labels_2d, keep[keep > 0])
    if not mask.any():
        return None, 0.0
    return mask, float(out.iou[0])
