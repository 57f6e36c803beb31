"""Clicks that converge (issue 30): corrections re-solve the lesion, and a box prompt bounds it.

The walk-level tests run on a synthetic volume with a stand-in model that segments the bright structure
inside each box, so the lesion's true extent is known; the engine-level ones run LiteMedSAM on brain1.
"""

from __future__ import annotations

import numpy as np
import pytest
from ProMISeLib.io.preprocess import CropWindow
from ProMISeLib.runtime.predictor import Decoded
from ProMISeLib.walk import SliceMasks, WalkSettings
from ProMISeLib.walk.context import WalkContext
from ProMISeLib.walk.correct import correct
from ProMISeLib.walk.lesions import new_lesion
from ProMISeLib.walk.propagate import propagate
from ProMISeLib.walk.seed import seed_from_box


class BrightInBox:
    """A stand-in model: each box decodes to the bright pixels (> 128) inside it; its predicted IoU is 0.95 times
    the share of the crop's bright structure the box holds (a box that cuts the structure scores lower)."""

    def __init__(self, volume: np.ndarray) -> None:
        self.volume = volume

    def embed(self, volume, ks, crop):
        return {k: crop.extract(volume[k]) for k in ks}

    def decode(self, embedding, side, boxes, points=None, labels=None):
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        rows, cols = np.mgrid[0:side, 0:side] + 0.5
        bright = embedding > 128
        inside = [(cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1) for x0, y0, x1, y1 in boxes]
        masks = [bright & box for box in inside]
        iou = [0.95 * m.sum() / max(bright.sum(), 1) for m in masks]
        return Decoded(np.where(np.stack(masks), 1.0, -1.0).astype(np.float32), np.array(iou, np.float32))

    def prefetch(self, *args):
        return 0

    def cancel_prefetch(self):
        return 0


def _cylinder(first: int, last: int, depth: int = 24, radius: int = 9) -> np.ndarray:
    """A bright disc of ``radius`` px on slices first..last of a dark (K, 64, 64) volume."""
    volume = np.full((depth, 64, 64), 40.0, np.float32)
    j, i = np.mgrid[0:64, 0:64]
    volume[first : last + 1][:, (j - 32) ** 2 + (i - 32) ** 2 <= radius**2] = 200.0
    return volume


def _context(volume, bounds=None) -> WalkContext:
    return WalkContext(BrightInBox(volume), volume, (1.0, 1.0), 2.0, WalkSettings(),
                       bounds=bounds)


def _lesion(volume, slices) -> SliceMasks:
    crop = CropWindow(0, 0, 64)
    masks = {k: crop.extract(volume[k]) > 128 for k in slices}
    return SliceMasks(crop=crop, masks=masks, start_k=slices[0], reference=(200.0, 4.0))


def test_the_walk_follows_a_lesion_whose_intensity_drifts_and_ends_where_it_jumps():
    """Found on slice 4 at intensity 200, the lesion darkens by 6 a slice to 140 on slice 14 (a drift no step of
    which is 2.5 SDs), then turns bright again past it (200 on slices 15-21: a jump). The walk follows the drift
    and ends at the jump."""
    volume = _cylinder(2, 21)
    disc = volume[2] > 128
    for k in range(5, 15):
        volume[k][disc] = 200.0 - 6 * (k - 4)
    crop = CropWindow(0, 0, 64)
    lesion = propagate(_context(volume), 4, crop, crop.extract(volume[4]) > 128, [], [])
    assert sorted(lesion.masks) == list(range(2, 15))
    assert any("stopped at slice 15: intensity" in note for note in lesion.stops)


def test_a_positive_click_on_a_missed_slice_extends_the_walk_there():
    """The walk had stopped at slice 6 of a lesion on slices 2-17; a click on slice 9 fills the gap up to it and
    goes on past it by ``correction_extend_mm`` (10 mm: 5 slices of 2 mm), the whole cross-section each time."""
    volume = _cylinder(2, 17)
    lesion = _lesion(volume, list(range(2, 7)))
    ctx = _context(volume)
    refined = correct(ctx, lesion, (9, 32, 32), True, [])
    extend = int(np.ceil(ctx.settings.correction.extend_mm / ctx.slice_mm))
    assert sorted(refined.masks) == list(range(2, 9 + extend + 1))
    assert all(refined.masks[k].sum() == lesion.masks[2].sum() for k in refined.masks)


def test_a_positive_click_carries_its_own_intensity_into_the_walk_from_it():
    """The lesion's far part is darker (slices 10-17 at 150 against 200), and the walk had stopped at slice 10 on
    the intensity rule. A positive click on slice 13 says the darker tissue is lesion: the walk from it fills the
    gap (10-12) and goes on to the lesion's end (17), instead of stopping beside the click."""
    volume = _cylinder(2, 17)
    darker = volume[10:18]
    darker[darker > 128] = 150.0
    lesion = _lesion(volume, list(range(2, 10)))  # its intensity reference is 200
    refined = correct(_context(volume), lesion, (13, 32, 32), True, [])
    assert sorted(refined.masks) == list(range(2, 18))


def test_a_negative_click_that_leaves_its_slice_empty_ends_the_lesion_there():
    """The walk ran on past the lesion onto a one-pixel-wide streak (slices 14-17): a negative click on the
    streak leaves nothing on its slice, so that slice and everything beyond it go; the lesion's own slices
    stay as they were."""
    volume = _cylinder(2, 13)
    volume[14:18, 32, 20:45] = 200.0  # a thin bright line past the lesion's end
    lesion = _lesion(volume, list(range(2, 18)))
    refined = correct(_context(volume), lesion, (15, 32, 32), False, [(15, 32, 32)])
    assert sorted(refined.masks) == list(range(2, 15))  # slice 14, before the click, is the next click's
    for k in range(2, 15):
        np.testing.assert_array_equal(refined.masks[k], lesion.masks[k])


def test_a_box_alone_seeds_in_its_middle_and_bounds_the_walk_in_all_three_axes():
    """The structure runs on slices 2-17 and is 19 px wide; the box covers slices 5-12 and only part of its
    width: the result never leaves the box."""
    volume = _cylinder(2, 17)
    bounds = ((5, 12), (26, 40), (24, 44))
    ctx = _context(volume, bounds)
    click, crop, mask, score = seed_from_box(ctx, [])
    assert click[0] == 8 and mask.any() and 0 < score <= 1
    lesion = propagate(ctx, click[0], crop, mask, [], [])
    assert sorted(lesion.masks) == list(range(5, 13))
    full = np.zeros(volume.shape, bool)
    for k, m in lesion.masks.items():
        crop.paste(full[k], m)
    rows, cols = np.flatnonzero(full.any(axis=(0, 2))), np.flatnonzero(full.any(axis=(0, 1)))
    assert rows.min() >= 26 and rows.max() <= 40 and cols.min() >= 24 and cols.max() <= 44


def test_a_box_prompt_ends_the_lesion_where_the_planes_it_prompts_end_it():
    """The lesion is on slices 4-17; past it a small bright blob, off the box's central row and column, runs on
    to slice 21 and touches the lesion's outline. The box spans slices 2-21: the coronal and sagittal planes
    through its centre, prompted with the box, end the lesion at slice 17, so the walk leaves the blob out
    (inside the box the other stop rules would have followed it)."""
    volume = _cylinder(4, 17)
    volume[18:22, 36:41, 36:41] = 200.0
    lesion = new_lesion(_context(volume, ((2, 21), (20, 44), (20, 44))), None, [], [])
    assert sorted(lesion.masks) == list(range(4, 18))
    assert any("coronal/sagittal" in note for note in lesion.stops)


def test_a_box_is_turned_into_the_voxels_whose_centres_it_holds(brain):
    """Corners in LPS and in RAS give the same voxels as the same box in ijk; the ranges are inclusive."""
    from ProMISeLib.io.geometry import ras_to_lps

    _, geometry, _ = brain
    ijk = np.array([[100, 120, 5], [140, 160, 12]], float)
    assert geometry.box_to_voxels_kji(ijk, "ijk") == ((5, 12), (120, 160), (100, 140))
    lps = geometry.index_to_lps(ijk)
    assert geometry.box_to_voxels_kji(lps, "lps") == ((5, 12), (120, 160), (100, 140))
    assert geometry.box_to_voxels_kji(ras_to_lps(lps), "ras") == ((5, 12), (120, 160), (100, 140))
    assert geometry.box_to_voxels_kji(ijk[::-1], "ijk") == ((5, 12), (120, 160), (100, 140))  # any two corners
    clipped = geometry.box_to_voxels_kji(np.array([[-20, -20, -3], [10, 10, 2]], float), "ijk")
    assert clipped == ((0, 2), (0, 10), (0, 10))
    from ProMISeLib.errors import PointOutsideImageError

    with pytest.raises(PointOutsideImageError, match="box"):
        geometry.box_to_voxels_kji(np.array([[-30, -30, -9], [-10, -10, -2]], float), "ijk")


@pytest.mark.slow
def test_a_box_prompt_bounds_a_real_result_and_the_same_prompts_give_the_same_mask(brain):
    from ProMISeLib.engine import Segmenter
    from ProMISeLib.metrics import dice

    volume, geometry, truth = brain
    found = np.argwhere(truth)
    lo, hi = found.min(axis=0) - 1, found.max(axis=0) + 1
    box = [lo[::-1].tolist(), hi[::-1].tolist()]
    first = Segmenter(device="cpu").segment(volume, geometry, None, space="ijk", box=box)
    mask = first.mask.astype(bool)
    assert dice(mask, truth) > 0.4
    outside = np.ones_like(mask)
    outside[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1] = False
    assert not (mask & outside).any()
    again = Segmenter(device="cpu").segment(volume, geometry, None, space="ijk", box=box)
    np.testing.assert_array_equal(again.mask, first.mask)


@pytest.mark.slow
def test_a_positive_click_beside_the_mask_on_its_slice_grows_one_structure_holding_both(brain):
    """brain1's first click off the tumour's centre (the protocol's random:1 click) takes part of it on its slice;
    a positive click at the deepest missed voxel there gives one connected structure that holds the click and all
    of the earlier mask, not the earlier part plus a second one."""
    from ProMISeLib.engine import Segmenter
    from scipy import ndimage

    volume, geometry, truth = brain
    segmenter = Segmenter(device="cpu")
    click = (190, 134, 12)  # (i, j, k)
    k = click[2]
    before = segmenter.segment(volume, geometry, [click], space="ijk").mask[k].astype(bool)
    missed = truth[k].astype(bool) & ~before
    assert missed.sum() > 0.3 * truth[k].sum()  # the premise: the first click took only part of the slice
    depth = ndimage.distance_transform_edt(missed)
    j, i = np.unravel_index(int(np.argmax(depth)), depth.shape)
    after = segmenter.segment(volume, geometry, [click, (i, j, k)], space="ijk").mask[k].astype(bool)
    assert after[j, i] and not (before & ~after).any()
    assert ndimage.label(after)[1] == 1


def test_a_negative_click_emptying_a_slice_cuts_off_the_shorter_part_not_the_lesion():
    """The lesion was found on slice 3 (start_k) and runs to slice 17; a streak on slice 5 is marked not lesion:
    slices 3-5 go (the nearer end), not slices 5-17 (the side away from where it was found)."""
    volume = _cylinder(2, 17)
    volume[5] = 40.0
    volume[5, 32, 20:45] = 200.0
    lesion = _lesion(volume, list(range(3, 18)))
    lesion.start_k = 3
    refined = correct(_context(volume), lesion, (5, 32, 32), False, [(5, 32, 32)])
    assert sorted(refined.masks) == list(range(6, 18))


def test_a_first_click_keeps_its_distinct_hypotheses_and_an_alternative_walks_another():
    """Clicked at the centre of a 14 px disc, the small boxes hold a square inside it and the large ones the disc:
    the click has at least two distinct hypotheses, the best is the disc, and alternative 1 follows a smaller
    structure; an alternative the click does not have is refused."""
    from ProMISeLib.errors import InvalidInputError
    from ProMISeLib.walk.masks import iou

    volume = _cylinder(4, 15, radius=14)
    click = (9, 32, 32)
    best = new_lesion(_context(volume), click, [click], [], alternative=0)
    other = new_lesion(_context(volume), click, [click], [], alternative=1)
    disc = volume[9] > 128
    assert best.hypotheses >= 2 and other.hypotheses == best.hypotheses
    full_best, full_other = np.zeros_like(disc), np.zeros_like(disc)
    best.crop.paste(full_best, best.masks[9])
    other.crop.paste(full_other, other.masks[9])
    assert iou(full_best, disc) > 0.95
    assert full_other.sum() < 0.8 * full_best.sum() and iou(full_other, full_best) < 0.8
    assert new_lesion(_context(volume), click, [click], []).hypotheses == 0  # not the call's first click
    with pytest.raises(InvalidInputError, match="no alternative"):
        new_lesion(_context(volume), click, [click], [], alternative=best.hypotheses)


def test_the_slices_encoded_ahead_of_a_correction_are_those_past_the_ends_nearest_first():
    """A lesion on slices 6-10 of 24 (2 mm): a positive click up to ``correction.reach`` slices past an end goes
    on ``correction.extend_mm`` (5 slices) past it, so 11 slices past each end may be walked onto, taken
    nearest first, the ends in turn, never outside the volume nor a box prompt's slices."""
    from ProMISeLib.walk.correct import slices_past_ends

    volume = _cylinder(6, 10)
    ctx = _context(volume)
    past = ctx.settings.correction.reach + 5
    order = slices_past_ends(ctx, _lesion(volume, list(range(6, 11))))
    assert order[:4] == [11, 5, 12, 4]
    assert sorted(order) == [k for k in range(24) if 6 - past <= k < 6 or 10 < k <= 10 + past]
    bounded = slices_past_ends(_context(volume, bounds=np.array([[4, 13], [0, 63], [0, 63]])),
                               _lesion(volume, list(range(6, 11))))
    assert sorted(bounded) == [4, 5, 11, 12, 13]


def test_encoding_ahead_for_corrections_leaves_a_click_past_the_end_only_decoding(brain, one_torch_thread):
    """Encoded ahead while the user looks, a positive click one slice past the lesion's end encodes nothing and
    gives the very mask it gives without; a call the segmenter does not remember, or a cancel, encodes nothing."""
    from ProMISeLib.engine import Segmenter

    volume, geometry, truth = brain
    click = (190, 134, 12)  # (i, j, k)
    ahead = Segmenter(device="cpu")
    first = ahead.segment(volume, geometry, [click], space="ijk").mask
    assert ahead.encode_for_corrections(volume, geometry, [(150, 150, 3)], space="ijk") == 0  # not a result it has
    assert ahead.encode_for_corrections(volume, geometry, [click], space="ijk", cancel=lambda: True) == 0
    encoded = ahead.encode_for_corrections(volume, geometry, [click], space="ijk")
    assert encoded > 0
    assert ahead.encode_for_corrections(volume, geometry, [click], space="ijk") == 0  # all there already
    last = int(np.flatnonzero(first.any(axis=(1, 2))).max())
    past = (click[0], click[1], last + 1)
    refined = ahead.segment(volume, geometry, [click, past], space="ijk")
    assert refined.encoded_slices == 0
    plain = Segmenter(device="cpu")
    plain.segment(volume, geometry, [click], space="ijk")
    without = plain.segment(volume, geometry, [click, past], space="ijk")
    assert without.encoded_slices > 0 and np.array_equal(refined.mask, without.mask)
