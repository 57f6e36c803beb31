"""The box search at a click, on one embedded crop: the seed, the orthogonal planes and positive corrections use it.

Square boxes of several physical sizes centred on the click are decoded in one batch. Each candidate (its
component at the click, holes filled) is re-prompted with its own bounding box; a mask the model reproduces
from its own box is a fixed point, so a candidate scores its predicted IoU times that agreement. The prompt
mode's chooser (``choose.py``) adds the learned prompter's box and picks the candidate; with learned prompts
the prompter's box alone is decoded.
"""

from __future__ import annotations

import numpy as np

from ProMISeLib.walk.choose import Chooser
from ProMISeLib.walk.context import WalkContext
from ProMISeLib.walk.masks import box_of, component_at, distinct, iou, widened


def candidates_at_click(ctx: WalkContext, embedding, side: int, click_rc: tuple[int, int], pixel_mm: float,
                        exclude=None, points=None, labels=None, extra: np.ndarray | None = None,
                        aspects: tuple[float, ...] = (1.0,), verify: bool = True, inside: np.ndarray | None = None
                        ) -> tuple[list[np.ndarray], list[float], list[float]]:
    """Rule-based candidates at a click with their predicted IoU and their scores (predicted IoU x
    self-consistency, or the predicted IoU alone without ``verify``). ``extra`` is one more box; ``aspects`` are
    box height/width ratios; ``inside`` (a crop mask: the user's box) clips every candidate."""
    s = ctx.settings
    cj, ci = click_rc
    radii = np.array(s.seed.half_sizes_mm) / pixel_mm
    radii = radii[radii < side]
    boxes = np.stack([[ci - r, cj - r * a, ci + r + 1, cj + r * a + 1]
                      for a in aspects for r in radii if r * a < side]).astype(np.float32)
    if extra is not None:
        boxes = np.concatenate([boxes, extra[None].astype(np.float32)])
    if exclude is not None:
        boxes = exclude(boxes)
    first = ctx.predictor.decode(embedding, side, boxes, points, labels)
    radius = ctx.radius_px(pixel_mm)
    masks = first.masks if inside is None else [m & inside for m in first.masks]
    kept = [(c, float(p)) for c, p in zip((component_at(m, (cj, ci), radius, s.boxes.fill_holes) for m in masks),
                                           first.iou, strict=True) if c.any()]
    predicted = [p for _, p in kept]
    if not kept or not verify:
        return [c for c, _ in kept], predicted, predicted
    candidates = [c for c, _ in kept]
    own_boxes = np.stack([box_of(c, s.boxes.box_margin, s.boxes.box_margin_px) for c in candidates])
    if exclude is not None:
        own_boxes = exclude(own_boxes)
    second = ctx.predictor.decode(embedding, side, own_boxes, points, labels)
    scores = [float(p) * iou(c, component_at(a, (cj, ci), radius, s.boxes.fill_holes))
              for c, a, p in zip(candidates, second.masks, second.iou, strict=True)]
    return candidates, predicted, scores


def _prompter_box(ctx: WalkContext, embedding, side: int, click_rc: tuple[int, int], pixel_mm: float, box: np.ndarray,
                  exclude=None, points=None, labels=None, inside: np.ndarray | None = None
                  ) -> tuple[np.ndarray, float] | None:
    """The learned prompter's box at a click, decoded: its component at the click and the predicted IoU, or None."""
    if exclude is not None:
        box = exclude(box[None])[0]
    out = ctx.predictor.decode(embedding, side, box[None], points, labels)
    decoded = out.masks[0] if inside is None else out.masks[0] & inside
    mask = component_at(decoded, click_rc, ctx.radius_px(pixel_mm), ctx.settings.boxes.fill_holes)
    return (mask, float(out.iou[0])) if mask.any() else None


def ranked_at_click(ctx: WalkContext, stage: str, k: int, crop, embedding, side: int, click_rc: tuple[int, int],
                    pixel_mm: float, exclude=None, points=None, labels=None, aspects: tuple[float, ...] = (1.0,),
                    verify: bool = True, inside: np.ndarray | None = None, alternatives: int = 1
                    ) -> tuple[list[np.ndarray], float]:
    """The candidates at a click the prompt mode's chooser ranks first, and the best rule score ([] and 0 if none).

    The first is the chooser's and the plug-ins' choice; up to ``alternatives - 1`` more follow in the chooser's
    order, each differing from those before it (:func:`distinct`). Without ``verify`` the candidates are scored
    by the model's predicted IoU alone (half the decoding). ``stage``, ``k`` and ``crop`` say where this is, for
    the plug-ins."""
    chooser = ctx.chooser
    coarse = chooser.at_click(embedding, side, click_rc)
    extra = None if coarse is None or coarse.box is None else widened(coarse.box, ctx.settings.boxes.box_margin_px)
    if not chooser.decodes_rules:
        found = None if extra is None else _prompter_box(ctx, embedding, side, click_rc, pixel_mm, extra, exclude,
                                                         points, labels, inside)
        if found is not None:
            return [found[0]], found[1]
        ctx.messages.append("the learned prompter found nothing at the click; used the box search")
        chooser, coarse, extra = Chooser(), None, None
    candidates, predicted, scores = candidates_at_click(ctx, embedding, side, click_rc, pixel_mm, exclude, points,
                                                        labels, extra, aspects, verify, inside)
    if not candidates:
        return [], 0.0
    reference = None if coarse is None else coarse.in_crop(side)
    order = chooser.order(candidates, scores, reference)
    best = ctx.choose(stage, k, crop, None, candidates, predicted, scores, reference, chooser, first=order[0])
    ranked = [candidates[best]] + [candidates[n] for n in order if n != best]
    return distinct(ranked, alternatives), max(scores)


def best_at_click(ctx: WalkContext, stage: str, k: int, crop, embedding, side: int, click_rc: tuple[int, int],
                  pixel_mm: float, exclude=None, points=None, labels=None, aspects: tuple[float, ...] = (1.0,),
                  verify: bool = True, inside: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """The one candidate at a click the chooser keeps and the best rule score (an empty mask and 0 if none)."""
    masks, score = ranked_at_click(ctx, stage, k, crop, embedding, side, click_rc, pixel_mm, exclude, points, labels,
                                   aspects, verify, inside)
    return (masks[0], score) if masks else (np.zeros((side, side), bool), 0.0)
