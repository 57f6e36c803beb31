"""From the clicks of one call to the lesions: new lesions, and corrections of remembered ones.

Box-prompted models remember the lesions of the current volume (:class:`~ProMISeLib.walk.memory.LesionMemory`):
a call with one more click applies just that click to the lesions of the earlier call. Point-prompted
models get every click as a point prompt on its slice, and each call starts afresh.
"""

from __future__ import annotations

from ProMISeLib.walk.context import ProgressFn, Voxel, WalkContext
from ProMISeLib.walk.correct import correct
from ProMISeLib.walk.masks import SliceMasks
from ProMISeLib.walk.memory import Click, LesionMemory
from ProMISeLib.walk.planes import box_extents, orthogonal_extents
from ProMISeLib.walk.propagate import propagate
from ProMISeLib.walk.seed import seed, seed_from_box

#: The first entry of a call's clicks when it has a box prompt: the box seeds the lesion, the clicks refine it.
BOX: Click = ("box", 0, 0, 0)


def new_lesion(ctx: WalkContext, click: Voxel | None, positives: list[Voxel], negatives: list[Voxel],
               alternative: int | None = None) -> SliceMasks:
    """Seed search at the click (or the box prompt alone, ``click=None``), the orthogonal extent, and the walk
    through the lesion. ``alternative`` (the call's first click only) picks which of the click's distinct
    hypotheses is followed, and the lesion records how many there were."""
    hypotheses = 0
    if click is None:
        click, crop, seed_mask, score = seed_from_box(ctx, negatives)
    else:
        crop, seed_mask, score, areas = seed(ctx, click, positives, negatives, alternative or 0)
        hypotheses = len(areas) if alternative is not None else 0
    # The learned prompter alone walks to its own end; the rules and the fused prompts read the planes.
    # A box prompt prompts the planes through its centre: they give each slice's box and the lesion's ends.
    use_extents = ctx.settings.stop.orthogonal and ctx.chooser.reads_planes
    if ctx.bounds is not None:
        extents = box_extents(ctx) if use_extents else None
    else:
        extents = orthogonal_extents(ctx, click) if use_extents else None
    lesion = propagate(ctx, click[0], crop, seed_mask, positives, negatives, extents=extents)
    lesion.hypotheses = hypotheses
    if score < 0.5:
        lesion.stops.insert(0, f"weak result: the model's confidence at the click is {score:.2f}")
    return lesion


def lesions_afresh(ctx: WalkContext, positives: list[Voxel], negatives: list[Voxel],
                   progress: ProgressFn | None = None, alternative: int = 0) -> list[SliceMasks]:
    """One lesion per positive click not inside an earlier one, every click prompting every step (``alternative``:
    the first click's hypothesis)."""
    lesions: list[SliceMasks] = []
    for index, click in enumerate(positives):
        if any(lesion.contains(click) for lesion in lesions):
            continue  # already inside a lesion found from an earlier click: used as a point prompt
        if progress:
            progress(0.05, f"finding the lesion at click {index + 1}")
        lesions.append(new_lesion(ctx, click, positives, negatives, alternative if index == 0 else None))
    return lesions


def lesions_refined(ctx: WalkContext, memory: LesionMemory, positives: list[Voxel], negatives: list[Voxel],
                    progress: ProgressFn | None = None, alternative: int = 0) -> list[SliceMasks]:
    """The lesions of the clicks applied one at a time, from the longest run of them already remembered.

    The clicks are applied in order: those of the remembered run first, as they were applied then, and
    the new ones after them: a box prompt first (it seeds a lesion), then the positive clicks, then the
    negative ones. A positive click inside a lesion
    changes nothing; one within a lesion's crop and ``correction.reach`` slices corrects it; any other
    seeds a new lesion. A negative click corrects each lesion it is inside. So the same clicks again cost
    nothing, and one more click costs its neighbourhood only.

    The first positive click is keyed with its ``alternative`` ("+2": the third hypothesis), so each
    alternative and the corrections made on it are remembered apart.
    """
    clicks = list(click_key(ctx.bounds is not None, positives, negatives, alternative))
    key, lesions = memory.longest(clicks)
    remaining = list(clicks)
    for click in key:
        remaining.remove(click)
    applied = [tuple(c[1:]) for c in key if c[0] == "-"]  # the negative clicks so far move box sides
    for click in remaining:
        voxel, positive = tuple(click[1:]), click[0].startswith("+")
        if click == BOX:
            lesions = lesions + [new_lesion(ctx, None, [], applied)]
        else:
            if not positive:
                applied.append(voxel)
            first = click[0] == _first(alternative) and bool(positives) and voxel == tuple(positives[0])
            lesions = apply_click(ctx, lesions, voxel, positive, applied, progress, alternative if first else None)
        key = key + (click,)
        memory.put(key, lesions)
    return list(lesions)


def click_key(boxed: bool, positives: list[Voxel], negatives: list[Voxel], alternative: int = 0) -> tuple[Click, ...]:
    """The memory's key of a call's clicks, in the order they are applied: the box prompt (``boxed``), the
    positive clicks (the first tagged with its ``alternative``), then the negative ones."""
    clicks: list[Click] = [BOX] if boxed else []
    clicks += [(_first(alternative) if n == 0 else "+", *c) for n, c in enumerate(positives)]
    return tuple(clicks + [("-", *c) for c in negatives])


def _first(alternative: int) -> str:
    """The key tag of the call's first positive click: "+" for the best hypothesis, "+n" for the n-th."""
    return f"+{alternative}" if alternative else "+"


def apply_click(ctx: WalkContext, lesions: list[SliceMasks], click: Voxel, positive: bool, negatives: list[Voxel],
                progress: ProgressFn | None = None, alternative: int | None = None) -> list[SliceMasks]:
    """``lesions`` after one more click (a new list; the lesions themselves are never changed). A positive click
    that seeds a lesion follows its ``alternative`` hypothesis (given for the call's first click only)."""
    lesions = list(lesions)
    if positive:
        if any(lesion.contains(click) for lesion in lesions):
            return lesions
        reach = ctx.settings.correction.reach
        owner = next((n for n, lesion in enumerate(lesions) if lesion.reaches(click, reach)), None)
        if owner is None:
            if progress:
                progress(0.05, "finding the lesion at the click")
            return lesions + [new_lesion(ctx, click, [click], negatives, alternative)]
        targets = [owner]
    else:
        targets = [n for n, lesion in enumerate(lesions) if lesion.contains(click)]
    for n in targets:
        if progress:
            progress(0.05, f"refining with a {'positive' if positive else 'negative'} click")
        lesions[n] = correct(ctx, lesions[n], click, positive, negatives)
    return lesions
