"""Refinement clicks: a click added to an earlier call redoes only its neighbourhood."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import centre_click
from ProMISeLib.engine import Segmenter
from ProMISeLib.io.preprocess import CropWindow
from ProMISeLib.io.sample_data import corrective_click, random_lesion_click
from ProMISeLib.walk import SliceMasks
from ProMISeLib.walk.memory import LesionMemory


def test_random_lesion_clicks_fall_well_inside_the_lesion_on_its_large_slices():
    from scipy import ndimage

    k, j, i = np.mgrid[0:9, 0:40, 0:60]
    truth = ((k - 4) * 3.0) ** 2 + ((j - 20) * 1.0) ** 2 + ((i - 30) * 0.5) ** 2 <= 12.0**2  # spacing 3, 1, 0.5 mm
    areas = truth.sum(axis=(1, 2))
    clicks = {random_lesion_click(truth, (3.0, 1.0, 0.5), np.random.default_rng(s), inset_mm=4.0) for s in range(30)}
    assert len(clicks) > 20  # spread over the lesion, not one voxel
    for kk, jj, ii in clicks:
        depth = ndimage.distance_transform_edt(truth[kk], sampling=(1.0, 0.5))
        assert areas[kk] >= 0.5 * areas.max() and depth[jj, ii] >= 4.0
    again = random_lesion_click(truth, (3.0, 1.0, 0.5), np.random.default_rng(7), inset_mm=4.0)
    assert again == random_lesion_click(truth, (3.0, 1.0, 0.5), np.random.default_rng(7), inset_mm=4.0)


def test_corrective_click_goes_deep_inside_the_largest_error():
    truth = np.zeros((5, 20, 20), bool)
    truth[1:4, 2:12, 2:12] = True
    mask = truth.copy()
    mask[1:4, 2:12, 7:12] = False  # a large missed part...
    mask[2, 15:17, 15:17] = True  # ...and a small false one
    click, positive = corrective_click(mask, truth, (1.0, 1.0, 1.0))
    assert positive and truth[click] and not mask[click]
    assert click[0] == 2 and 8 <= click[2] <= 10  # the middle of the missed block, not its edge
    false = truth.copy()
    false[1:4, 12:19, 2:12] = True
    click, positive = corrective_click(false, truth, (1.0, 1.0, 1.0))
    assert not positive and false[click] and not truth[click]
    assert corrective_click(truth, truth, (1.0, 1.0, 1.0)) is None


def test_lesion_memory_finds_the_longest_run_of_the_clicks_given():
    memory = LesionMemory(max_states=3)
    volume, other = np.zeros((2, 4, 4)), np.zeros((2, 4, 4))
    lesion = SliceMasks(crop=CropWindow.around((2, 2), 4))
    seed, plus, minus = ("+", 0, 1, 1), ("+", 1, 2, 2), ("-", 1, 1, 1)
    memory.bind(volume, "settings")
    memory.put((seed,), [lesion])
    memory.put((seed, plus), [lesion, lesion])
    assert memory.longest([seed, plus, minus]) == ((seed, plus), [lesion, lesion])
    assert memory.longest([seed, minus]) == ((seed,), [lesion])  # a click taken away: back to the run without it
    assert memory.longest([plus]) == ((), [])
    memory.bind(volume, "settings")  # the same volume and context keep the states
    assert len(memory) == 2
    memory.bind(volume, "other settings")
    assert memory.longest([seed]) == ((), [])
    memory.bind(other, "settings")
    for n in range(4):
        memory.put((("+", n, 1, 1),), [lesion])
    assert len(memory) == 3 and memory.get((("+", 0, 1, 1),)) is None  # the oldest went first


@pytest.fixture(scope="module")
def brain_run(brain):
    volume, geometry, truth = brain
    segmenter = Segmenter(device="cpu")
    click = centre_click(truth)
    first = segmenter.segment(volume, geometry, [click[::-1]], space="ijk")
    return segmenter, click, first


@pytest.mark.slow
def test_negative_click_removes_only_near_it_and_decodes_few_slices(brain, brain_run):
    volume, geometry, truth = brain
    segmenter, click, first = brain_run
    mask = first.mask.astype(bool)
    # A voxel of the result on the slice next to the click's: a user marking a leak there.
    k = click[0] + 1 if mask[click[0] + 1].any() else click[0] - 1
    j, i = np.argwhere(mask[k])[0]
    refined = segmenter.segment(volume, geometry, [click[::-1]], negative_points=[(i, j, k)], space="ijk")
    assert refined.mask[k, j, i] == 0
    assert not (refined.mask.astype(bool) & ~mask).any()  # a negative click only removes
    np.testing.assert_array_equal(refined.mask[click[0]], first.mask[click[0]])  # the seed slice stays
    assert refined.encoded_slices == 0 and 0 < refined.decoded_slices < first.decoded_slices
    # Each candidate is decoded once (scored by its predicted IoU): the click's slice tries the propagation's
    # boxes plus the prompter's, every further slice one box plus the prompter's.
    settings = segmenter.run_settings()
    assert settings.correction.scales == (1.0,)
    budget = len(settings.step.scales) + 1 + 2 * (refined.decoded_slices - 1)
    assert 0 < refined.decoded_prompts <= budget
    # The same clicks again cost nothing and give the same mask.
    again = segmenter.segment(volume, geometry, [click[::-1]], negative_points=[(i, j, k)], space="ijk")
    assert again.decoded_slices == 0
    np.testing.assert_array_equal(again.mask, refined.mask)


@pytest.mark.slow
def test_positive_click_adds_the_structure_under_it(brain, brain_run):
    volume, geometry, truth = brain
    segmenter, click, first = brain_run
    mask = first.mask.astype(bool)
    missed = np.argwhere(truth & ~mask)
    assert missed.size, "the one-click result already covers the tumour"
    found = corrective_click(mask, truth | mask, geometry.spacing[::-1])  # the deepest missed voxel
    extra, positive = found
    assert positive
    refined = segmenter.segment(volume, geometry, [click[::-1], extra[::-1]], space="ijk")
    assert refined.mask[extra] == 1
    assert not (mask & ~refined.mask.astype(bool)).any()  # a positive click only adds
    k = extra[0]  # on the click's slice it adds tumour (whether it also adds other tissue is the model's call)
    assert (refined.mask[k].astype(bool) & truth[k]).sum() > (mask[k] & truth[k]).sum()
    assert refined.decoded_slices < first.decoded_slices


@pytest.mark.slow
def test_a_click_at_a_time_or_all_at_once_give_the_same_mask(brain, brain_run):
    volume, geometry, truth = brain
    segmenter, click, first = brain_run
    mask = first.mask.astype(bool)
    (extra, positive) = corrective_click(mask, truth, geometry.spacing[::-1])
    clicks = {"negative_points": None if positive else [extra[::-1]]}
    points = [click[::-1], extra[::-1]] if positive else [click[::-1]]
    step_by_step = segmenter.segment(volume, geometry, points, space="ijk", **clicks)
    segmenter.memory.clear()  # as a new session would: every slice decoded again, embeddings from the cache
    at_once = segmenter.segment(volume, geometry, points, space="ijk", **clicks)
    assert at_once.encoded_slices == 0 and at_once.decoded_slices > step_by_step.decoded_slices
    np.testing.assert_array_equal(at_once.mask, step_by_step.mask)


def test_benchmark_cases_are_chosen_by_name_and_split_into_disjoint_shards(cases):
    from ProMISeLib.io.sample_data import select_cases

    everything = [c.id for c in select_cases()]
    assert everything == [c.id for c in cases.values() if c.label_values]
    halves = [c.id for c in select_cases(shard="0/2")], [c.id for c in select_cases(shard="1/2")]
    assert sorted(halves[0] + halves[1]) == sorted(everything) and not set(halves[0]) & set(halves[1])
    assert [c.id for c in select_cases("STS_002_CT,brain1")] == [i for i in everything if i in ("STS_002_CT", "brain1")]
