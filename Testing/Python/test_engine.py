"""The engine API on real scans: one click, refinement from the cache, negatives, cancel, progress."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import centre_click
from ProMISeLib.engine import Segmenter, segment
from ProMISeLib.errors import EmptySegmentationError, InvalidInputError, SegmentationCancelled
from ProMISeLib.io.geometry import ImageGeometry
from ProMISeLib.io.sample_data import read_case
from ProMISeLib.metrics import dice, hd95
from ProMISeLib.walk import WalkPlugin


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter(device="cpu")


@pytest.fixture(scope="module")
def small_tumour(cases):
    return read_case(cases["STS_008_MR_T1"])


@pytest.mark.slow
def test_one_click_then_refinement_reuses_embeddings(segmenter, small_tumour):
    volume, geometry, truth = small_tumour
    click = centre_click(truth)
    events = []
    first = segmenter.segment(volume, geometry, [click[::-1]], space="ijk", progress=lambda f, m: events.append(f))
    assert dice(first.mask, truth) > 0.4
    assert hd95(first.mask > 0, truth, geometry.spacing[::-1]) < 40
    assert first.mask.shape == volume.shape and first.mask.dtype == np.uint8
    assert first.encoded_slices >= (first.slice_range[1] - first.slice_range[0] + 1)
    assert events[-1] == 1.0
    # Same lesion again, clicked in LPS: the segmenter remembers it and decodes nothing.
    lps = geometry.index_to_lps(np.array(click[::-1], float))
    again = segmenter.segment(volume, geometry, [lps], space="lps")
    assert again.encoded_slices == 0 and again.decoded_slices == 0
    np.testing.assert_array_equal(again.mask, first.mask)
    # Forgotten (a new session), every slice is decoded again but every embedding comes from the cache.
    segmenter.memory.clear()
    steps = []

    class Recorder(WalkPlugin):  # a plug-in that only watches: each stage's candidates
        def choose(self, step):
            steps.append(step)

    segmenter.plugins = (Recorder(),)
    try:
        anew = segmenter.segment(volume, geometry, [lps], space="lps")
    finally:
        segmenter.plugins = ()
    assert anew.encoded_slices == 0 and anew.cached_slices > 0 and anew.decoded_slices == first.decoded_slices
    np.testing.assert_array_equal(anew.mask, first.mask)
    kept = [step for step in steps if step.stage == "step" and anew.mask[step.k].any()]
    assert kept
    for step in kept:  # the candidate reported as chosen is the slice's mask
        np.testing.assert_array_equal(step.crop.extract(anew.mask[step.k]).astype(bool), step.candidates[step.chosen])
    # A negative click on a segmented voxel removes that voxel's region on its slice.
    k, j, i = np.argwhere(first.mask)[len(np.argwhere(first.mask)) // 2]
    refined = segmenter.segment(volume, geometry, [click[::-1]], negative_points=[(i, j, k)], space="ijk")
    assert refined.mask[k, j, i] == 0
    assert refined.encoded_slices <= 2


def test_cancel_stops_without_result(segmenter, small_tumour):
    volume, geometry, truth = small_tumour
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 1

    segmenter.memory.clear()  # an earlier test segmented this lesion: a remembered result has nothing to cancel
    with pytest.raises(SegmentationCancelled):
        segmenter.segment(volume, geometry, [centre_click(truth)[::-1]], space="ijk", cancel=cancel)
    assert len(segmenter.memory) == 0  # a cancelled run leaves nothing behind to reuse


def test_nothing_to_find_is_said_not_returned_empty(segmenter):
    volume = np.zeros((6, 64, 64), np.float32)
    geometry = ImageGeometry((64, 64, 6), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(EmptySegmentationError, match="nothing to segment"):
        segmenter.segment(volume, geometry, [(32, 32, 3)], space="ijk")


def test_bad_arrays_are_refused_before_model_work():
    geometry = ImageGeometry((8, 8, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(InvalidInputError, match="does not match"):
        segment(np.zeros((5, 8, 8), np.float32), geometry, [(1, 1, 1)], space="ijk", device="cpu")
    with pytest.raises(InvalidInputError, match="at least one"):
        segment(np.zeros((4, 8, 8), np.float32), geometry, [], space="ijk", device="cpu")
    with pytest.raises(InvalidInputError, match="4 dimensions"):
        segment(np.zeros((2, 4, 8, 8), np.float32), geometry, [(1, 1, 1)], space="ijk", device="cpu")


def test_result_geometry_follows_an_oblique_input(cases, segmenter):
    """The same voxels clicked through two different direction matrices give the same mask."""
    case = cases["brain1"]
    image = sitk.ReadImage(str(case.image))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label))) > 0
    middle = int(np.round(np.flatnonzero(label.any(axis=(1, 2))).mean()))
    sub = image[:, :, middle - 1 : middle + 2]
    truth = label[middle - 1 : middle + 2]
    volume = sitk.GetArrayFromImage(sub).astype(np.float32)
    k, j, i = centre_click(truth)
    masks = []
    for direction in (sub.GetDirection(), (0.0, -0.6, 0.8, 1.0, 0.0, 0.0, 0.0, 0.8, 0.6)):
        sub.SetDirection(direction)
        geometry = ImageGeometry.from_sitk(sub)
        lps = sub.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))
        result = segmenter.segment(volume, geometry, [lps], space="lps")
        assert result.mask.shape == volume.shape and result.mask[k, j, i] == 1
        masks.append(result.mask)
    np.testing.assert_array_equal(masks[0], masks[1])
    assert dice(masks[0][k], truth[k]) > 0.5


@pytest.mark.slow
def test_alternatives_of_a_first_click_are_listed_and_selected(segmenter, small_tumour):
    """The result says how many distinct hypotheses the click has; selecting one changes the segment, selecting
    the best again gives the first mask back from memory, and one the click lacks is refused."""
    volume, geometry, truth = small_tumour
    click = centre_click(truth)[::-1]
    first = segmenter.segment(volume, geometry, [click], space="ijk")
    assert first.alternative == 0 and first.alternatives >= 2
    other = segmenter.segment(volume, geometry, [click], space="ijk", alternative=1)
    assert other.alternative == 1 and other.alternatives == first.alternatives
    assert dice(other.mask, first.mask) < 0.95
    again = segmenter.segment(volume, geometry, [click], space="ijk")
    assert again.decoded_prompts == 0
    np.testing.assert_array_equal(again.mask, first.mask)
    with pytest.raises(InvalidInputError, match="no alternative"):
        segmenter.segment(volume, geometry, [click], space="ijk", alternative=first.alternatives)
    with pytest.raises(InvalidInputError, match="alternative"):
        segmenter.segment(volume, geometry, [click], space="ijk", alternative=-1)
