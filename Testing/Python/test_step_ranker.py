"""The learned step ranker: its features, its training, and how it drives the walk."""

from __future__ import annotations

import numpy as np
import pytest
from ProMISeLib.preprocess import CropWindow
from ProMISeLib.prompting.step_ranker import FEATURES, StepRanker, WalkContext, step_features, train_ranker
from ProMISeLib.propagation import LesionPropagator, PropagationSettings
from test_prompting import _BoxPredictor, _disc


def _context(**changes) -> WalkContext:
    fields = {"reference": (100.0, 10.0), "start_k": 5, "start_area": 113, "pixel_mm": 1.0, "slice_mm": 2.0,
              "extents": None, "limit": None}
    return WalkContext(**{**fields, **changes})


def _feature(rows: np.ndarray, name: str) -> np.ndarray:
    return rows[:, FEATURES.index(name)]


def test_features_describe_a_candidate_against_the_previous_slice_and_the_lesions_intensity():
    previous = _disc(32, (16, 16), 6).astype(bool)
    bigger = _disc(32, (16, 16), 9).astype(bool)
    image = np.where(previous, 100.0, 40.0).astype(np.float32)
    rows = step_features(6, image, (0, 0), previous, [previous, bigger], [0.9, 0.8], [0.9, 0.4], _context())
    assert rows.shape == (2, len(FEATURES))
    assert _feature(rows, "dice_previous")[0] == pytest.approx(1.0)
    assert _feature(rows, "dice_previous")[1] < 0.7
    assert _feature(rows, "log_area_previous")[0] == pytest.approx(0.0)
    assert _feature(rows, "log_area_previous")[1] == pytest.approx(np.log(bigger.sum() / previous.sum()))
    assert _feature(rows, "score_to_best").tolist() == pytest.approx([1.0, 0.4 / 0.9])
    # the same candidate has the lesion's intensity; the bigger one takes in darker tissue
    assert _feature(rows, "intensity_z")[0] == pytest.approx(0.0)
    assert _feature(rows, "intensity_z")[1] < -1.0
    assert _feature(rows, "edge_contrast")[0] > _feature(rows, "edge_contrast")[1]
    # one slice (2 mm) from the click, in radii of the click slice's mask (113 px, about 6 mm)
    assert _feature(rows, "distance_from_click")[0] == pytest.approx(2.0 / np.sqrt(113 / np.pi))


@pytest.mark.parametrize("k, limit, past", [(7, 8, -1), (8, 8, 0), (10, 8, 2), (4, 3, -1), (1, 3, 2), (20, 8, 10)])
def test_features_count_the_slices_past_the_orthogonal_planes_extent_in_the_walks_direction(k, limit, past):
    """The walk starts at slice 5; ``limit`` is the farthest slice the planes saw on the walk's side (capped at 10)."""
    disc = _disc(32, (16, 16), 6).astype(bool)
    rows = step_features(k, np.zeros((32, 32), np.float32), (0, 0), disc, [disc], [0.9], [0.9], _context(limit=limit))
    assert _feature(rows, "past_planes")[0] == past


def test_features_compare_a_candidate_with_the_extent_the_orthogonal_planes_draw_on_its_slice():
    disc = _disc(32, (16, 16), 6).astype(bool)  # rows and columns 10..22 in the crop
    where = np.nonzero(disc)
    rows_range = np.array([where[0].min() + 4, where[0].max() + 1 + 4])  # the crop starts at row 4, column 8
    cols_range = np.array([where[1].min() + 8, where[1].max() + 1 + 8])
    extents = {6: (rows_range, cols_range), 7: (None, cols_range)}
    features = [step_features(k, np.zeros((32, 32), np.float32), (4, 8), disc, [disc], [0.9], [0.9],
                              _context(extents=extents)) for k in (6, 7, 9)]
    assert [float(_feature(f, "rows_overlap")[0]) for f in features] == pytest.approx([1.0, 0.0, 0.0])
    assert [float(_feature(f, "cols_overlap")[0]) for f in features] == pytest.approx([1.0, 1.0, 0.0])
    assert [float(_feature(f, "planes_on_slice")[0]) for f in features] == [1.0, 1.0, 0.0]


def test_training_fits_the_candidates_dice():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(3000, len(FEATURES))).astype(np.float32)
    target = 1 / (1 + np.exp(-(2 * features[:, 3] - features[:, 6])))  # depends on two features only
    ranker, losses = train_ranker(features, target.astype(np.float32), epochs=30)
    assert losses[-1] < 0.25 * losses[0]
    held_out = rng.normal(size=(500, len(FEATURES))).astype(np.float32)
    truth = 1 / (1 + np.exp(-(2 * held_out[:, 3] - held_out[:, 6])))
    assert np.corrcoef(ranker.predict(held_out), truth)[0, 1] > 0.95
    assert sum(p.numel() for p in ranker.parameters() if p.requires_grad) < 5000


class _SizeRanker:
    """Prefers the candidate of the previous slice's size; sees the lesion only within 2 radii of the click."""

    def predict(self, features: np.ndarray) -> np.ndarray:
        quality = 0.9 - np.abs(_feature(features, "log_area_previous"))
        return np.where(_feature(features, "distance_from_click") < 2.0, quality, 0.1)


def _walk(ranker, **settings) -> tuple[dict[int, int], list[str], LesionPropagator]:
    """A 12 x 12 px square at slice 10 of 21 (2 mm slices); the decoder returns each box as drawn, so the
    candidates around it are boxes of 100, 256 and 484 px (scales 0.5, 1 and 1.5, plus the 2 px margin)."""
    square = np.zeros((32, 32), bool)
    square[10:22, 10:22] = True
    volume = np.full((21, 32, 32), 100.0, np.float32)
    settings = PropagationSettings(encode_ahead=0, propagation_scales=(0.5, 1.0, 1.5), **settings)
    propagator = LesionPropagator(_BoxPredictor(), volume, (1.0, 1.0), 2.0, settings)
    propagator.step_ranker = ranker
    lesion = propagator.propagate(10, CropWindow.around((16, 16), 32), square, [], [])
    return {k: int(m.sum()) for k, m in lesion.masks.items()}, lesion.stops, propagator


def test_a_step_ranker_picks_each_slices_candidate_and_ends_the_walk():
    areas, stops, propagator = _walk(_SizeRanker())
    assert areas[11] == areas[9] == 100  # of 100, 256 and 484 px, the nearest to the square's 144
    # 144 px is a radius of about 6.8 mm, so the ranker sees the lesion up to 13.5 mm: 6 slices each side
    assert sorted(areas) == list(range(4, 17))
    assert len(stops) == 2 and all("the step ranker sees no lesion" in m for m in stops)
    assert propagator.walk is None  # the walk's context is dropped when it ends
    # the last step weighed is the one that ended the walk downwards: three boxes, the previous 81 px size kept
    step = propagator.last_step
    assert step.k == 3 and len(step.candidates) == 3 and int(step.candidates[step.chosen].sum()) == 81


def test_a_step_ranker_can_end_the_walk_and_leave_the_choice_to_the_rules():
    """``ranker_choice=False``: the rules keep the 484 px box, which the ranker rates low (0.9 - log 484/144),
    so the walk ends on the first slice, on the ranker's word and not on the rules' growth stop."""
    areas, _, _ = _walk(_SizeRanker(), ranker_choice=False, ranker_stop=-1.0)
    assert areas[11] == areas[9] == 484  # the rules' choice, not the ranker's 100 px
    areas, stops, _ = _walk(_SizeRanker(), ranker_choice=False)
    assert areas == {10: 144}
    assert all("the step ranker sees no lesion" in m for m in stops)


def test_without_a_step_ranker_the_rules_choose_and_stop():
    areas, stops, _ = _walk(None)
    assert areas == {10: 144}  # the rules keep the most self-consistent box, 484 px, and stop on its growth
    assert all("mask grew abruptly" in m for m in stops)


def test_the_ranker_is_a_small_network_with_frozen_input_scaling():
    ranker = StepRanker()
    ranker.set_normalisation(np.arange(2 * len(FEATURES), dtype=np.float32).reshape(2, -1))
    assert not ranker.mean.requires_grad and not ranker.scale.requires_grad
    values = ranker.predict(np.zeros((4, len(FEATURES)), np.float32))
    assert values.shape == (4,) and ((values > 0) & (values < 1)).all()


def test_a_cancelled_walk_leaves_no_context_behind():
    """A later call (a correction's steps) must not read the 3D context of a walk that was cancelled."""
    from ProMISeLib.errors import SegmentationCancelled

    square = np.zeros((32, 32), bool)
    square[10:22, 10:22] = True
    calls = iter(range(100))
    propagator = LesionPropagator(_BoxPredictor(), np.full((21, 32, 32), 100.0, np.float32), (1.0, 1.0), 2.0,
                                  PropagationSettings(encode_ahead=0), cancel=lambda: next(calls) >= 3)
    propagator.step_ranker = _SizeRanker()
    with pytest.raises(SegmentationCancelled):
        propagator.propagate(10, CropWindow.around((16, 16), 32), square, [], [])
    assert propagator.walk is None
