"""The box search at a click, on one embedded crop: the seed, the orthogonal planes and positive corrections use it.

Square boxes of several physical sizes centred on the click are decoded in one batch. Each candidate (its
component at the click, holes filled) is re-prompted with its own bounding box; a mask the model reproduces
from its own box is a fixed point, so a candidate scores its predicted IoU times that agreement. With fused
prompts the learned prompter's box joins the candidates and its coarse mask ranks them; with learned prompts
the prompter's box alone is decoded.
"""

from __future__ import annotations

import numpy as np

from ProMISeLib.metrics import dice
from ProMISeLib.walk.context import WalkContext
from ProMISeLib.walk.masks import box_of, component_at, iou


def fused_choice(candidates: list[np.ndarray], scores: list[float], coarse: np.ndarray) -> tuple[int, float]:
    """The index of the candidate with the best rule score x Dice with the learned coarse mask, and the best
    rule score (the stop rules read it: the lesion goes on if any candidate is confident)."""
    fused = [sc * max(dice(c, coarse), 1e-3) for c, sc in zip(candidates, scores, strict=True)]
    return int(np.argmax(fused)), max(scores)


def candidates_at_click(ctx: WalkContext, embedding, side: int, click_rc: tuple[int, int], pixel_mm: float,
                        exclude=None, points=None, labels=None, extra: np.ndarray | None = None,
                        aspects: tuple[float, ...] = (1.0,), verify: bool = True, inside: np.ndarray | None = None
                        ) -> tuple[list[np.ndarray], list[float]]:
    """Rule-based candidates at a click with their scores (predicted IoU x self-consistency, or the predicted
    IoU alone without ``verify``). ``extra`` is one more box; ``aspects`` are box height/width ratios;
    ``inside`` (a crop mask: the user's box) clips every candidate."""
    s = ctx.settings
    cj, ci = click_rc
    radii = np.array(s.seed_half_sizes_mm) / pixel_mm
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
    kept = [(c, float(p)) for c, p in zip((component_at(m, (cj, ci), radius, s.fill_holes) for m in masks),
                                           first.iou, strict=True) if c.any()]
    if not kept or not verify:
        return [c for c, _ in kept], [p for _, p in kept]
    candidates = [c for c, _ in kept]
    own_boxes = np.stack([box_of(c, s.box_margin, s.box_margin_px) for c in candidates])
    if exclude is not None:
        own_boxes = exclude(own_boxes)
    second = ctx.predictor.decode(embedding, side, own_boxes, points, labels)
    scores = [float(p) * iou(c, component_at(a, (cj, ci), radius, s.fill_holes))
              for c, a, p in zip(candidates, second.masks, second.iou, strict=True)]
    return candidates, scores


def learned_at_click(ctx: WalkContext, embedding, side: int, click_rc: tuple[int, int], pixel_mm: float,
                     exclude=None, points=None, labels=None, inside: np.ndarray | None = None
                     ) -> tuple[np.ndarray, float] | None:
    """The learned prompter's box at a click, decoded; None when it sees nothing there."""
    s = ctx.settings
    coarse = ctx.prompter.seed(embedding, side, click_rc)
    if coarse.box is None:
        return None
    box = coarse.box + np.array([-1, -1, 1, 1], np.float32) * s.box_margin_px
    if exclude is not None:
        box = exclude(box[None])[0]
    out = ctx.predictor.decode(embedding, side, box[None], points, labels)
    decoded = out.masks[0] if inside is None else out.masks[0] & inside
    mask = component_at(decoded, click_rc, ctx.radius_px(pixel_mm), s.fill_holes)
    if not mask.any():
        return None
    return mask, float(out.iou[0])


def best_at_click(ctx: WalkContext, embedding, side: int, click_rc: tuple[int, int], pixel_mm: float,
                  exclude=None, points=None, labels=None, aspects: tuple[float, ...] = (1.0,),
                  verify: bool = True, inside: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """The best candidate at a click and its score, as the prompt mode ranks them (an empty mask and 0 if none).

    Without ``verify`` the candidates are scored by the model's predicted IoU alone (half the decoding).
    """
    if ctx.prompter is not None and ctx.fused:
        coarse = ctx.prompter.seed(embedding, side, click_rc)
        extra = None
        if coarse.box is not None:
            extra = coarse.box + np.array([-1, -1, 1, 1], np.float32) * ctx.settings.box_margin_px
        candidates, scores = candidates_at_click(ctx, embedding, side, click_rc, pixel_mm, exclude, points, labels,
                                                 extra, aspects, verify, inside)
        if not candidates:
            return np.zeros((side, side), bool), 0.0
        best, score = fused_choice(candidates, scores, coarse.in_crop(side))
        return candidates[best], score
    if ctx.prompter is not None:
        found = learned_at_click(ctx, embedding, side, click_rc, pixel_mm, exclude, points, labels, inside)
        if found is not None:
            return found
        ctx.messages.append("the learned prompter found nothing at the click; used the box search")
    candidates, scores = candidates_at_click(ctx, embedding, side, click_rc, pixel_mm, exclude, points, labels,
                                             aspects=aspects, verify=verify, inside=inside)
    if not candidates:
        return np.zeros((side, side), bool), 0.0
    best = int(np.argmax(scores))
    return candidates[best], scores[best]
