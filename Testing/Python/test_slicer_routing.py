"""Refining the segment you are on, the ROI as a box, the effect's logic and undo, on slicer-core nodes.

The engine is conftest_slicer's stand-in (it maps every prompt with the engine's geometry and records
what it was given), so these tests check which clicks reach the engine for which segment, and what is
written back where.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")
pytest.register_assert_rewrite("conftest_slicer")
pytest_plugins = ["conftest_slicer"]

from conftest_slicer import (  # noqa: E402
    FakeSegmenter,
    add_points,
    add_transform,
    add_volume,
    fake_factory,
    ijk_to_ras_matrix,
    rotation,
    scene_state,
    segment_array,
)
from ProMISeLib.errors import InvalidInputError, PointOutsideImageError  # noqa: E402

WAIT_S = 20.0


def make_logic(**options):
    from ProMISeSlicer.logic import ProMISeModuleLogic

    return ProMISeModuleLogic(segmenterFactory=fake_factory(**options))


def volume_node(degrees=(0, 0, 0), transform=None):
    array = np.zeros((16, 24, 20), np.float32)
    return add_volume(array, ijk_to_ras_matrix((1.0, 1.2, 2.0), degrees, (4.0, -3.0, 2.0)), "scan",
                      transform=transform)


def ras_of(volume, kji) -> np.ndarray:
    from ProMISeSlicer.nodes import ijk_to_ras

    return (ijk_to_ras(volume) @ np.append(np.array(kji[::-1], float), 1.0))[:3]


class BoxSegmenter(FakeSegmenter):
    """The stand-in whose box prompt means something: a box alone fills the box (points: as the stand-in)."""

    def segment(self, volume_kji, geometry, points=None, negative_points=None, space="ras", progress=None,
                cancel=None, box=None):
        from ProMISeLib.result import SegmentationResult, bounding_box

        self.boxes = getattr(self, "boxes", []) + [box]
        if points is not None:
            return super().segment(volume_kji, geometry, points, negative_points, space, progress, cancel)
        low, high = (geometry.to_index(np.asarray(c, float), space) for c in box)
        lo = np.clip(np.ceil(np.minimum(low, high) - 1e-6), 0, None).astype(int)
        hi = np.floor(np.maximum(low, high) + 1e-6).astype(int)
        mask = np.zeros(volume_kji.shape, np.uint8)
        mask[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = 1
        return SegmentationResult(mask, geometry, bounding_box(mask), 0.01, "box", self.model, self.device)


# --- point-to-segment routing ------------------------------------------------------------------
def test_a_new_point_refines_the_target_segment_and_new_lesion_makes_one(slicer_env):
    from ProMISeSlicer import nodes
    from ProMISeSlicer.routing import PromptSession

    logic = make_logic(radius_mm=3.0)
    volume = volume_node()
    session = PromptSession(logic)
    points = add_points([], "object")
    negatives = add_points([], "background")

    # the first point, with no target: a new lesion is started and the point routed to it
    first = points.AddControlPoint(*ras_of(volume, (5, 8, 6)))
    lesion1 = session.routePoint(points, first, "positive", volume)
    node = logic.findSegmentationFor(volume)
    assert node.GetSegmentation().GetSegment(lesion1).GetName() == "Lesion 1"
    run = logic.segment(volume, points, negativePointsNode=negatives)
    assert [o.segmentId for o in run.objects] == [lesion1]

    # a second positive and a negative point while lesion 1 is the target refine lesion 1 with all its clicks
    second = points.AddControlPoint(*ras_of(volume, (6, 9, 7)), "another label")
    assert session.routePoint(points, second, "positive", volume) == lesion1
    negative = negatives.AddControlPoint(*ras_of(volume, (5, 8, 9)))
    assert session.routePoint(negatives, negative, "negative", volume) == lesion1
    run = logic.segment(volume, points, negativePointsNode=negatives, segmentIds=[lesion1])
    engine = FakeSegmenter.instances[-1]
    assert [o.segmentId for o in run.objects] == [lesion1] and run.objects[0].replaced
    assert len(engine.calls[-1]["points"]) == 2 and len(engine.calls[-1]["negative"]) == 1
    assert engine.calls[-1]["array"] is engine.calls[0]["array"], "the same array: the engine's lesion memory"
    assert node.GetSegmentation().GetNumberOfSegments() == 1
    assert node.GetSegmentation().GetSegment(lesion1).GetName() == "Lesion 1", "a routed segment keeps its name"

    # "New lesion": the next point makes and refines a second segment; lesion 1 is untouched
    before = segment_array(node, lesion1, volume)
    lesion2 = session.newLesion(volume)
    third = points.AddControlPoint(*ras_of(volume, (11, 16, 13)))
    assert session.routePoint(points, third, "positive", volume) == lesion2 != lesion1
    run = logic.segment(volume, points, negativePointsNode=negatives, segmentIds=[lesion2])
    assert [o.segmentId for o in run.objects] == [lesion2]
    assert len(engine.calls[-1]["points"]) == 1 and engine.calls[-1]["negative"] is None, \
        "lesion 1's background point is not lesion 2's"
    assert node.GetSegmentation().GetSegment(lesion2).GetName() == "Lesion 2"
    np.testing.assert_array_equal(segment_array(node, lesion1, volume), before)
    assert segment_array(node, lesion2, volume)[11, 16, 13] == 1
    assert nodes.point_segment_id(points, third) == lesion2
    assert session.pointsOfSegment(points, lesion1) == [first, second]


def test_the_console_call_still_makes_one_segment_per_label(slicer_env):
    logic = make_logic()
    volume = volume_node()
    points = add_points([("A", ras_of(volume, (4, 5, 6))), ("B", ras_of(volume, (10, 15, 12)))])
    run = logic.segment(volume, points)
    assert [o.label for o in run.objects] == ["A", "B"]
    assert run.segmentationNode.GetSegmentation().GetNumberOfSegments() == 2


def test_a_negative_point_without_a_target_is_background_for_every_segment(slicer_env):
    from ProMISeSlicer.routing import PromptSession

    logic = make_logic()
    volume = volume_node()
    session = PromptSession(logic)
    negatives = add_points([], "background")
    index = negatives.AddControlPoint(*ras_of(volume, (5, 5, 5)))
    assert session.routePoint(negatives, index, "negative", volume) is None
    assert logic.findSegmentationFor(volume) is None, "no segment is made for a background point"


def test_point_lists_are_made_on_demand_green_and_red(slicer_env):
    from ProMISeSlicer.routing import NEGATIVE_COLOR, POSITIVE_COLOR, make_point_list

    positive = make_point_list(slicer_env.scene, "object", "positive")
    negative = make_point_list(slicer_env.scene, "background", "negative")
    assert tuple(round(c, 2) for c in positive.GetDisplayNode().GetSelectedColor()) == POSITIVE_COLOR
    assert tuple(round(c, 2) for c in negative.GetDisplayNode().GetSelectedColor()) == NEGATIVE_COLOR
    assert POSITIVE_COLOR != NEGATIVE_COLOR


# --- the ROI as a box ---------------------------------------------------------------------------
def add_roi(center, radius, orientation_degrees=(0, 0, 0), transform=None, name="box"):
    import slicer

    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
    roi.SetCenter(*[float(v) for v in center])
    roi.SetRadiusXYZ(*[float(v) for v in radius])
    if any(orientation_degrees):
        matrix = np.eye(4)
        matrix[:3, :3] = rotation(orientation_degrees)
        matrix[:3, 3] = center
        roi.GetObjectToNodeMatrix().DeepCopy(slicer.util.vtkMatrixFromArray(matrix))
    if transform is not None:
        roi.SetAndObserveTransformNodeID(transform.GetID())
    return roi


def test_roi_box_follows_its_orientation_and_parent_transforms_into_the_volume_ras(slicer_env):
    import vtk
    from ProMISeSlicer.nodes import roi_box

    rigid = np.eye(4)
    rigid[:3, :3] = rotation((10, -20, 35))
    rigid[:3, 3] = (5.0, -2.0, 8.0)
    volume_parent = add_transform(rigid, "volume parent")
    roi_parent = add_transform(np.diag([1.0, 1.0, 1.0, 1.0]) + np.array(
        [[0, 0, 0, 3.0], [0, 0, 0, -4.0], [0, 0, 0, 1.5], [0, 0, 0, 0]]), "roi parent")
    volume = volume_node(degrees=(0, 15, 0), transform=volume_parent)
    center, radius, degrees = np.array([7.0, 2.0, 9.0]), np.array([3.0, 5.0, 2.0]), (0, 0, 30)
    roi = add_roi(center, radius, degrees, transform=roi_parent)
    box = roi_box(roi, volume)

    # the same corners through VTK, step by step: ROI frame -> its node -> world -> the volume's RAS
    object_to_node = vtk.vtkTransform()
    object_to_node.Translate(*center)
    object_to_node.RotateZ(degrees[2])
    node_to_world = vtk.vtkTransform()
    node_to_world.Translate(3.0, -4.0, 1.5)
    world_to_volume = vtk.vtkTransform()
    world_to_volume.SetMatrix(slicer_env.slicer.util.vtkMatrixFromArray(np.linalg.inv(rigid)))
    corners = []
    for sx in (-1, 1):
        for sy in (-1, 1):
            for sz in (-1, 1):
                p = object_to_node.TransformPoint(*(np.array([sx, sy, sz]) * radius))
                corners.append(world_to_volume.TransformPoint(node_to_world.TransformPoint(p)))
    corners = np.array(corners)
    np.testing.assert_allclose(box, [corners.min(axis=0), corners.max(axis=0)], atol=1e-6)


def test_an_roi_alone_is_a_box_prompt_for_the_target_segment(slicer_env):
    from ProMISeSlicer.logic import ATTR_ROI_SEGMENT, ProMISeModuleLogic

    engines = []
    logic = ProMISeModuleLogic(segmenterFactory=lambda **kw: engines.append(BoxSegmenter(**kw)) or engines[-1])
    volume = volume_node()
    low, high = ras_of(volume, (4, 6, 5)), ras_of(volume, (8, 12, 9))
    roi = add_roi((low + high) / 2, np.abs(high - low) / 2)
    node = logic.outputSegmentationFor(volume)
    target = node.GetSegmentation().AddEmptySegment("", "boxed")
    roi.SetAttribute(ATTR_ROI_SEGMENT, target)
    run = logic.segment(volume, None, roiNode=roi)
    assert [o.segmentId for o in run.objects] == [target]
    np.testing.assert_allclose(np.array(engines[-1].boxes[-1]), [np.minimum(low, high), np.maximum(low, high)])
    mask = segment_array(node, target, volume)
    assert mask[4:9, 6:13, 5:10].all() and mask.sum() == 5 * 7 * 5


def test_a_box_outside_the_volume_is_refused_and_changes_nothing(slicer_env):
    from ProMISeSlicer.logic import ProMISeModuleLogic

    engines = []
    logic = ProMISeModuleLogic(segmenterFactory=lambda **kw: engines.append(BoxSegmenter(**kw)) or engines[-1])
    volume = volume_node()
    far = add_roi((900.0, 900.0, 900.0), (3.0, 3.0, 3.0), name="far")
    before = scene_state(slicer_env.scene)
    with pytest.raises(InvalidInputError, match="outside the volume"):
        logic.segment(volume, None, roiNode=far)
    assert scene_state(slicer_env.scene) == before
    assert not engines  # refused while the scene was read, before the engine was made


# --- the effect's logic --------------------------------------------------------------------------
def test_effect_clicks_refine_the_selected_segment_with_all_its_clicks(slicer_env):
    from ProMISeSlicer.effect import ClickPrompter

    logic = make_logic(radius_mm=3.0)
    volume = volume_node()
    segmentation = slicer_env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "editor")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    mine = segmentation.GetSegmentation().AddEmptySegment("", "mine")
    other = segmentation.GetSegmentation().AddEmptySegment("", "other")
    prompter = ClickPrompter(logic)
    saved = []

    assert prompter.click(volume, segmentation, mine, ras_of(volume, (5, 8, 6)), beforeApply=lambda: saved.append(1)) \
        == "started"
    logic.runner.runUntilIdle(WAIT_S)
    assert saved == [1], "the editor's undo state is saved just before the write"
    assert segment_array(segmentation, mine, volume)[5, 8, 6] == 1
    # Ctrl+click: a negative prompt for the same segment; the engine gets both clicks
    prompter.click(volume, segmentation, mine, ras_of(volume, (5, 8, 8)), negative=True,
                   beforeApply=lambda: saved.append(2))
    logic.runner.runUntilIdle(WAIT_S)
    engine = FakeSegmenter.instances[-1]
    assert len(engine.calls[-1]["points"]) == 1 and len(engine.calls[-1]["negative"]) == 1
    assert prompter.clicksOf(slicer_env.scene, mine) == (1, 1)
    assert segment_array(segmentation, other, volume).sum() == 0, "another segment is never touched"
    assert not logic.canUndo(), "the effect's runs use the Segment Editor's undo, not the panel's"
    # the other segment gets its own clicks only
    prompter.click(volume, segmentation, other, ras_of(volume, (12, 18, 14)))
    logic.runner.runUntilIdle(WAIT_S)
    assert len(engine.calls[-1]["points"]) == 1 and engine.calls[-1]["negative"] is None
    assert prompter.clearClicks(slicer_env.scene, mine) == 2 and prompter.clicksOf(slicer_env.scene, mine) == (0, 0)
    logic.runner.close()


def test_effect_refuses_a_click_outside_the_volume_or_without_a_segment(slicer_env):
    from ProMISeSlicer.effect import ClickPrompter

    logic = make_logic()
    volume = volume_node()
    segmentation = slicer_env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "editor")
    segment = segmentation.GetSegmentation().AddEmptySegment("", "s")
    prompter = ClickPrompter(logic)
    before = scene_state(slicer_env.scene)
    with pytest.raises(PointOutsideImageError):
        prompter.click(volume, segmentation, segment, (900.0, 0.0, 0.0))
    with pytest.raises(InvalidInputError, match="select a segment"):
        prompter.click(volume, segmentation, None, ras_of(volume, (5, 5, 5)))
    assert scene_state(slicer_env.scene) == before and not logic.busy


# --- undo through the segmentation's state --------------------------------------------------------
def test_panel_undo_never_overwrites_an_edit_made_after_the_run(slicer_env):
    from ProMISeSlicer import nodes
    from ProMISeSlicer.undo import EditedSinceRunError

    logic = make_logic(radius_mm=3.0)
    volume = volume_node()
    points = add_points([("A", ras_of(volume, (5, 8, 6)))])
    first = logic.segment(volume, points)
    node, segmentId = first.segmentationNode, first.objects[0].segmentId
    import vtk

    points.SetNthControlPointPosition(0, vtk.vtkVector3d(*ras_of(volume, (9, 12, 10))))
    logic.segment(volume, points)
    # the user paints one more voxel into the segment after the run
    edited = segment_array(node, segmentId, volume).copy()
    edited[0, 0, 0] = 1
    nodes.write_segment(node, segmentId, edited, ((0, 16), (0, 24), (0, 20)), nodes.ijk_to_ras(volume))
    state = scene_state(slicer_env.scene)
    with pytest.raises(EditedSinceRunError, match="changed after the ProMISe run"):
        logic.undo()
    assert scene_state(slicer_env.scene) == state, "the refused undo changed nothing"
    # once the manual edit is undone, undo goes through
    edited[0, 0, 0] = 0
    nodes.write_segment(node, segmentId, edited, ((0, 16), (0, 24), (0, 20)), nodes.ijk_to_ras(volume))
    logic.undo()
    assert segment_array(node, segmentId, volume)[5, 8, 6] == 1
