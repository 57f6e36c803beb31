"""The module's logic on real MRML nodes (slicer-core), with a stand-in engine.

The stand-in (conftest_slicer.FakeSegmenter) maps the points it is given with the engine's own
geometry, so these tests check what the logic hands to the engine (which voxel), and what it writes
back (where, into which segment, what it leaves alone, what undo restores).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")
pytest.register_assert_rewrite("conftest_slicer")
pytest_plugins = ["conftest_slicer"]

from conftest_slicer import (  # noqa: E402
    FakeSegmenter,
    add_multicomponent_volume,
    add_points,
    add_transform,
    add_volume,
    dice,
    fake_factory,
    ijk_to_ras_matrix,
    load_case_arrays,
    rotation,
    scene_state,
    segment_array,
    segment_id_by_name,
)
from ProMISeLib.errors import (  # noqa: E402
    EmptySegmentationError,
    InvalidInputError,
    PointOutsideImageError,
    SegmentationCancelled,
)

LPS = np.diag([-1.0, -1.0, 1.0])


def make_logic(**fake_options):
    from ProMISeSlicer.logic import ProMISeModuleLogic

    return ProMISeModuleLogic(segmenterFactory=fake_factory(**fake_options))


def rigid(degrees, translation) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = rotation(degrees)
    matrix[:3, 3] = translation
    return matrix


def small_volume(shape=(12, 20, 16), spacing=(1.5, 1.0, 2.5), degrees=(0, 0, 0), name="small"):
    array = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    return add_volume(array, ijk_to_ras_matrix(spacing, degrees, (5.0, -7.0, 3.0)), name=name)


def ras_of_voxel(volume, kji, offset=(0.0, 0.0, 0.0)) -> np.ndarray:
    """The volume's own RAS of voxel (k, j, i) plus an offset in index units."""
    from ProMISeSlicer.nodes import ijk_to_ras

    ijk = np.array(kji[::-1], dtype=float) + np.asarray(offset)
    return (ijk_to_ras(volume) @ np.append(ijk, 1.0))[:3]


# --- (1) the picked voxel, against SimpleITK, with oblique geometry and parent transforms -----
def test_oblique_volume_and_transformed_fiducial_pick_the_simpleitk_voxel(slicer_env):
    sitk = pytest.importorskip("SimpleITK")
    image, label, source = load_case_arrays("brain1")
    spacing = source.GetSpacing()  # 0.78 x 0.78 x 6.5 mm: anisotropic
    degrees, origin = (17.0, -11.0, 29.0), (12.5, -40.0, 21.0)
    ijk_to_ras = ijk_to_ras_matrix(spacing, degrees, origin)
    volume_transform = add_transform(rigid((5, 0, -8), (3.0, -2.0, 7.5)), "volume parent")
    volume = add_volume(image, ijk_to_ras, "brain1 oblique", transform=volume_transform)
    points_outer = add_transform(rigid((0, 12, 0), (-4.0, 6.0, 1.0)), "points grandparent")
    points_transform = add_transform(rigid((-9, 3, 20), (10.0, 0.0, -5.0)), "points parent", parent=points_outer)

    # a tumour voxel, clicked off-centre in index units so that rounding and axis order matter
    kk, jj, ii = np.nonzero(label)
    target = (int(np.median(kk)), int(np.median(jj)), int(np.median(ii)))
    assert label[target]
    offset = np.array([0.37, -0.42, 0.31])  # (i, j, k) fractions
    world = rigid((5, 0, -8), (3.0, -2.0, 7.5)) @ np.append(ras_of_voxel(volume, target, offset), 1.0)
    to_points_local = np.linalg.inv(rigid((0, 12, 0), (-4.0, 6.0, 1.0)) @ rigid((-9, 3, 20), (10.0, 0.0, -5.0)))
    local = (to_points_local @ world)[:3]
    points = add_points([("tumour", local)], "clicks", transform=points_transform)

    # independent reference: the same grid as a SimpleITK image (LPS), and the world point through
    # the inverse of the volume's parent transform, flipped to LPS
    reference = sitk.Image(image.shape[2], image.shape[1], image.shape[0], sitk.sitkUInt8)
    reference.SetSpacing(spacing)
    reference.SetDirection((LPS @ rotation(degrees)).ravel().tolist())
    reference.SetOrigin((LPS @ np.array(origin)).tolist())
    point_ras = (np.linalg.inv(rigid((5, 0, -8), (3.0, -2.0, 7.5))) @ world)[:3]
    expected_ijk = reference.TransformPhysicalPointToIndex((LPS @ point_ras).tolist())
    expected_kji = tuple(int(v) for v in expected_ijk[::-1])
    assert expected_kji == target  # the reference agrees with how the point was built

    logic = make_logic(label=label)
    assert logic.pickVoxels(volume, points) == [("tumour", expected_kji)]

    run = logic.segment(volume, points)
    engine = FakeSegmenter.instances[-1]
    assert tuple(engine.calls[-1]["voxels"][0]) == expected_kji  # what the engine was prompted with
    assert run.objects[0].voxels_kji == [expected_kji]
    written = segment_array(run.segmentationNode, run.objects[0].segmentId, volume)
    assert written.shape == image.shape
    assert dice(written, label) > 0.99  # the oracle's mask comes back on the same voxels


# --- (2) geometry of the written segment; other segments untouched ---------------------------
def test_written_segment_has_the_volume_geometry_and_only_its_bounding_box(slicer_env):
    from ProMISeSlicer.nodes import ijk_to_ras, vtk_matrix_to_numpy

    slicer = slicer_env.slicer
    volume = small_volume(degrees=(10, 20, 30))
    parent = add_transform(rigid((0, 0, 15), (1.0, 2.0, 3.0)))
    volume.SetAndObserveTransformNodeID(parent.GetID())
    target = (6, 9, 7)
    points = add_points([("lesion", ras_of_voxel(volume, target))])
    points.SetAndObserveTransformNodeID(parent.GetID())

    run = make_logic(radius_mm=4.0).segment(volume, points)
    node = run.segmentationNode
    assert node.GetParentTransformNode() is parent
    reference = node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole())
    assert reference is volume
    internal = node.GetBinaryLabelmapInternalRepresentation(run.objects[0].segmentId)
    matrix = slicer.vtkMatrix4x4() if hasattr(slicer, "vtkMatrix4x4") else __import__("vtk").vtkMatrix4x4()
    internal.GetImageToWorldMatrix(matrix)
    np.testing.assert_allclose(vtk_matrix_to_numpy(matrix), ijk_to_ras(volume), atol=1e-9)
    # only the lesion's bounding box was written (not a whole-volume labelmap)
    bbox = run.objects[0].result.bbox_kji
    (k0, k1), (j0, j1), (i0, i1) = bbox
    assert internal.GetExtent() == (i0, i1 - 1, j0, j1 - 1, k0, k1 - 1)
    written = segment_array(node, run.objects[0].segmentId, volume)
    np.testing.assert_array_equal(written, run.objects[0].result.mask)
    assert written[target] == 1


def test_segment_lands_in_place_in_a_segmentation_under_another_linear_transform(slicer_env):
    from ProMISeSlicer.nodes import vtk_matrix_to_numpy

    slicer = slicer_env.slicer
    volume = small_volume(degrees=(0, 25, 0))
    to_world = rigid((0, 0, 30), (4.0, -3.0, 2.0))
    volume.SetAndObserveTransformNodeID(add_transform(to_world, "volume parent").GetID())
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "world-aligned")
    segmentation.SetAndObserveTransformNodeID(add_transform(rigid((10, 0, 0), (0.0, 5.0, 0.0)), "seg").GetID())
    target = (6, 9, 7)
    points = add_points([("lesion", (to_world @ np.append(ras_of_voxel(volume, target), 1))[:3])])
    run = make_logic(radius_mm=4.0).segment(volume, points, segmentationNode=segmentation)
    internal = segmentation.GetBinaryLabelmapInternalRepresentation(run.objects[0].segmentId)
    matrix = __import__("vtk").vtkMatrix4x4()
    internal.GetImageToWorldMatrix(matrix)
    seg_to_world = rigid((10, 0, 0), (0.0, 5.0, 0.0))
    from ProMISeSlicer.nodes import ijk_to_ras

    # voxel (i, j, k) of the written labelmap is the volume's voxel (i, j, k), in world coordinates
    np.testing.assert_allclose(seg_to_world @ vtk_matrix_to_numpy(matrix), to_world @ ijk_to_ras(volume), atol=1e-9)
    # and its voxels are the mask's bounding box, voxel for voxel
    from ProMISeSlicer.nodes import image_array

    (k0, k1), (j0, j1), (i0, i1) = run.objects[0].result.bbox_kji
    assert internal.GetExtent() == (i0, i1 - 1, j0, j1 - 1, k0, k1 - 1)
    np.testing.assert_array_equal(image_array(internal) != 0, run.objects[0].result.mask[k0:k1, j0:j1, i0:i1] != 0)


def test_other_segments_are_never_changed(slicer_env):
    slicer = slicer_env.slicer
    volume = small_volume()
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    # two manual segments sharing one labelmap layer; "overlap" covers the voxel that will be clicked
    manual = {}
    for name, box in (("overlap", np.s_[4:9, 6:13, 5:11]), ("far", np.s_[0:2, 0:3, 0:3])):
        mask = np.zeros(volume.GetImageData().GetDimensions()[::-1], np.uint8)
        mask[box] = 1
        segment_id = segmentation.GetSegmentation().AddEmptySegment("", name, (0.2, 0.3, 0.4))
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segment_id, volume)
        manual[name] = (segment_id, mask)
    segmentation.GetSegmentation().CollapseBinaryLabelmaps(False)
    assert segmentation.GetSegmentation().GetNumberOfLayers() == 1
    points = add_points([("lesion", ras_of_voxel(volume, (6, 9, 7)))])
    before = scene_state(slicer_env.scene)

    run = make_logic(radius_mm=5.0).segment(volume, points, segmentationNode=segmentation)
    assert run.segmentationNode is segmentation
    for name, (segment_id, mask) in manual.items():
        segment = segmentation.GetSegmentation().GetSegment(segment_id)
        assert segment.GetName() == name
        assert tuple(round(c, 4) for c in segment.GetColor()) == (0.2, 0.3, 0.4)
        np.testing.assert_array_equal(segment_array(segmentation, segment_id, volume), mask)
    after = scene_state(slicer_env.scene)
    changed = {key for key in set(before) | set(after) if before.get(key) != after.get(key)}
    assert changed == {(segmentation.GetID(), run.objects[0].segmentId)}  # only the new segment


# --- (3) re-segmenting replaces only its own segment; undo restores it -------------------------
def test_resegmenting_replaces_only_its_own_segment_and_undo_restores_it(slicer_env):
    volume = small_volume()
    points = add_points([("A", ras_of_voxel(volume, (3, 5, 4))), ("B", ras_of_voxel(volume, (9, 15, 12)))])
    logic = make_logic(radius_mm=3.0)
    first = logic.segment(volume, points)
    node = first.segmentationNode
    ids = {o.label: o.segmentId for o in first.objects}
    assert sorted(ids) == ["A", "B"] and node.GetSegmentation().GetNumberOfSegments() == 2
    a_before = segment_array(node, ids["A"], volume)
    b_before = segment_array(node, ids["B"], volume)

    # move A and rename it; segment only A again
    import vtk

    points.SetNthControlPointPosition(0, vtk.vtkVector3d(*ras_of_voxel(volume, (5, 8, 6))))
    points.SetNthControlPointLabel(0, "A moved")
    second = logic.segment(volume, points, pointIndices=[0])
    assert second.segmentationNode is node  # reused: the segmentation ProMISe made for this volume
    assert [o.label for o in second.objects] == ["A moved"] and second.objects[0].replaced
    assert second.objects[0].segmentId == ids["A"]
    assert node.GetSegmentation().GetNumberOfSegments() == 2
    assert node.GetSegmentation().GetSegment(ids["A"]).GetName() == "A moved"
    a_after = segment_array(node, ids["A"], volume)
    assert a_after[5, 8, 6] == 1 and a_after[3, 5, 4] == 0
    np.testing.assert_array_equal(segment_array(node, ids["B"], volume), b_before)

    # undo the re-run: A is back (name and voxels), B unchanged
    assert "A moved" in logic.undo()
    assert node.GetSegmentation().GetSegment(ids["A"]).GetName() == "A"
    np.testing.assert_array_equal(segment_array(node, ids["A"], volume), a_before)
    np.testing.assert_array_equal(segment_array(node, ids["B"], volume), b_before)
    # undo the first run: the segments and the node it created are gone
    logic.undo()
    assert node.GetScene() is None
    assert not logic.canUndo()
    with pytest.raises(InvalidInputError, match="nothing to undo"):
        logic.undo()


def test_a_user_segment_with_the_same_name_is_not_replaced(slicer_env):
    slicer = slicer_env.slicer
    volume = small_volume()
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    mine = segmentation.GetSegmentation().AddEmptySegment("", "F-1")
    points = add_points([("F-1", ras_of_voxel(volume, (6, 9, 7)))])
    run = make_logic().segment(volume, points, segmentationNode=segmentation)
    assert run.objects[0].segmentId != mine and not run.objects[0].replaced
    assert segment_array(segmentation, mine, volume).sum() == 0


def test_points_sharing_a_label_prompt_one_segment(slicer_env):
    volume = small_volume()
    points = add_points([("T", ras_of_voxel(volume, (3, 5, 4))), ("T", ras_of_voxel(volume, (4, 6, 5))),
                         ("U", ras_of_voxel(volume, (9, 15, 12)))])
    negatives = add_points([("bg", ras_of_voxel(volume, (0, 0, 0)))], "background")
    logic = make_logic()
    run = logic.segment(volume, points, negativePointsNode=negatives)
    assert [o.label for o in run.objects] == ["T", "U"]
    calls = FakeSegmenter.instances[-1].calls
    assert [len(c["points"]) for c in calls] == [2, 1]
    assert all(c["negative"].shape == (1, 3) for c in calls)
    assert segment_id_by_name(run.segmentationNode, "T") == run.objects[0].segmentId


def test_logic_reuses_one_engine_and_loops_over_volumes(slicer_env):
    logic = make_logic()
    runs = []
    for n in range(3):
        volume = small_volume(name=f"v{n}", degrees=(0, 0, 10 * n))
        points = add_points([(f"lesion{n}", ras_of_voxel(volume, (6, 9, 7)))], f"p{n}")
        runs.append(logic.segment(volume, points, model="fake-model", device="cpu"))
        assert runs[-1].segmentationNode.GetNodeReference("referenceImageGeometryRef") is volume
    assert len({id(r.segmentationNode) for r in runs}) == 3
    segmenter = logic.getSegmenter("fake-model", "cpu")
    assert len(segmenter.calls) == 3  # one engine (one embedding cache) for all runs
    assert "lesion2" in runs[-1].summary() and "mL" in runs[-1].summary()


def test_a_correction_click_reaches_the_engine_with_the_same_voxel_array(slicer_env):
    """The engine remembers a lesion per array object: an added point must come with the same array
    (so only its neighbourhood is redone), and changed voxels with a new one (so nothing stale is reused)."""
    import slicer

    logic = make_logic()
    volume = small_volume()
    points = add_points([("lesion", ras_of_voxel(volume, (6, 9, 7)))])
    background = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "background")
    logic.segment(volume, points, model="fake-model", device="cpu")
    background.AddControlPoint(*[float(v) for v in ras_of_voxel(volume, (6, 9, 9))])
    logic.segment(volume, points, negativePointsNode=background, model="fake-model", device="cpu")
    first, correction = logic.getSegmenter("fake-model", "cpu").calls
    assert correction["array"] is first["array"]
    assert correction["negative"] is not None and len(correction["negative"]) == 1
    slicer.util.updateVolumeFromArray(volume, slicer.util.arrayFromVolume(volume) + 1.0)
    logic.segment(volume, points, negativePointsNode=background, model="fake-model", device="cpu")
    changed = logic.getSegmenter("fake-model", "cpu").calls[-1]
    assert changed["array"] is not first["array"] and changed["array"][0, 0, 0] == first["array"][0, 0, 0] + 1.0


def test_runtime_reaches_the_engine_and_each_runtime_gets_its_own_engine(slicer_env):
    logic = make_logic()
    volume = small_volume()
    points = add_points([("lesion", ras_of_voxel(volume, (6, 9, 7)))])

    default = logic.segment(volume, points, model="fake-model", device="cpu")
    auto_engine = FakeSegmenter.instances[-1]
    assert auto_engine.runtime == "auto"  # the default: the engine chooses
    assert default.runtime == "onnx"  # the run reports what the engine ran, not what was asked
    assert len(auto_engine.calls) == 1

    run = logic.segment(volume, points, model="fake-model", device="cpu", runtime="onnx")
    onnx_engine = FakeSegmenter.instances[-1]
    assert onnx_engine is not auto_engine  # another runtime: another engine
    assert (onnx_engine.model, onnx_engine.device, onnx_engine.runtime) == ("fake-model", "cpu", "onnx")
    assert len(onnx_engine.calls) == 1 and len(auto_engine.calls) == 1  # the run went to the ONNX engine
    assert run.runtime == "onnx" and run.objects[0].label == "lesion"
    assert logic.getSegmenter("fake-model", "cpu", "onnx") is onnx_engine

    # the same (model, device, runtime) again reuses the engine (and its embedding cache)
    count = len(FakeSegmenter.instances)
    logic.segment(volume, points, model="fake-model", device="cpu", runtime="onnx")
    assert len(FakeSegmenter.instances) == count and len(onnx_engine.calls) == 2

    # back to PyTorch: a PyTorch engine again, not the ONNX one
    run = logic.segment(volume, points, model="fake-model", device="cpu", runtime="torch")
    assert FakeSegmenter.instances[-1].runtime == "torch" and run.runtime == "torch"
    assert FakeSegmenter.instances[-1] is not onnx_engine and len(onnx_engine.calls) == 2
    # the device is still part of the key
    assert logic.getSegmenter("fake-model", "cuda", "torch").device == "cuda"


def test_unknown_runtime_is_refused_before_any_work(slicer_env):
    logic = make_logic()
    volume = small_volume()
    points = add_points([("lesion", ras_of_voxel(volume, (6, 9, 7)))])
    count = len(FakeSegmenter.instances)
    before = scene_state(slicer_env.scene)
    with pytest.raises(InvalidInputError, match="unknown runtime 'tensorrt'; use auto, torch, onnx"):
        logic.segment(volume, points, runtime="tensorrt")
    assert scene_state(slicer_env.scene) == before
    assert len(FakeSegmenter.instances) == count and not logic.busy and not logic.canUndo()
    with pytest.raises(InvalidInputError, match="unknown runtime"):
        logic.getSegmenter("fake-model", "cpu", "ONNX")
    # one check: the engine's own (runtime/choice.py, no torch), which the loader uses too
    from ProMISeLib.runtime import choice
    from ProMISeSlicer import options

    assert options.check_runtime is choice.check_runtime


def test_default_factory_hands_the_runtime_to_the_real_segmenter(slicer_env):
    pytest.importorskip("torch")
    from ProMISeLib.engine import Segmenter
    from ProMISeLib.models.registry import DEFAULT_MODEL
    from ProMISeSlicer.logic import ProMISeModuleLogic

    logic = ProMISeModuleLogic()  # the engine itself; constructing it loads no weights
    onnx = logic.getSegmenter(None, "cpu", "onnx")
    assert isinstance(onnx, Segmenter) and onnx.runtime == "onnx" and onnx.model_name == DEFAULT_MODEL
    assert onnx.device.type == "cpu"
    assert logic.getSegmenter(None, "cpu", "onnx") is onnx
    torch_engine = logic.getSegmenter(None, "cpu", "torch")
    assert isinstance(torch_engine, Segmenter) and torch_engine.runtime == "torch" and torch_engine is not onnx
    default = logic.getSegmenter(None, "cpu")
    assert isinstance(default, Segmenter) and default.requested_runtime == "auto" and default is not torch_engine


# --- (4) bad input: clear error, scene unchanged ----------------------------------------------
def _assert_unchanged(slicer_env, action, error, match):
    before = scene_state(slicer_env.scene)
    with pytest.raises(error, match=match):
        action()
    assert scene_state(slicer_env.scene) == before


def test_bad_input_gives_a_clear_error_and_leaves_the_scene_unchanged(slicer_env):
    logic = make_logic()
    volume = small_volume()
    inside = add_points([("ok", ras_of_voxel(volume, (6, 9, 7)))], "inside")
    empty = add_points([], "empty")
    outside = add_points([("ok", ras_of_voxel(volume, (6, 9, 7))), ("far", ras_of_voxel(volume, (6, 9, 40)))],
                         "outside")
    # an existing result, so that "unchanged" covers a segment too
    logic.segment(volume, inside)
    vector = add_multicomponent_volume((12, 20, 16), 3, "vtkMRMLVectorVolumeNode", "rgb")
    frames = add_multicomponent_volume((12, 20, 16), 5, "vtkMRMLScalarVolumeNode", "4D as frames")
    label_map = slicer_env.slicer.util.addVolumeFromArray(np.zeros((4, 4, 4), np.uint8),
                                                          nodeClassName="vtkMRMLLabelMapVolumeNode")

    _assert_unchanged(slicer_env, lambda: logic.segment(None, inside), InvalidInputError, "no input volume")
    _assert_unchanged(slicer_env, lambda: logic.segment(volume, None), InvalidInputError, "no positive points")
    _assert_unchanged(slicer_env, lambda: logic.segment(volume, empty), InvalidInputError, "no placed points")
    _assert_unchanged(slicer_env, lambda: logic.segment(volume, outside), PointOutsideImageError,
                      '"far".*outside the image')
    _assert_unchanged(slicer_env, lambda: logic.segment(vector, inside), InvalidInputError, "vector")
    _assert_unchanged(slicer_env, lambda: logic.segment(frames, inside), InvalidInputError, "5 values per voxel")
    _assert_unchanged(slicer_env, lambda: logic.segment(label_map, inside), InvalidInputError, "label map")
    _assert_unchanged(slicer_env, lambda: logic.segment(volume, volume), InvalidInputError, "point list")
    negatives_outside = add_points([("bg", ras_of_voxel(volume, (-3, 0, 0)))], "bad background")
    _assert_unchanged(slicer_env, lambda: logic.segment(volume, inside, negativePointsNode=negatives_outside),
                      PointOutsideImageError, 'negative point "bg"')
    assert not logic.busy


def test_cancelled_run_writes_nothing(slicer_env):
    logic = make_logic()
    volume = small_volume()
    points = add_points([("A", ras_of_voxel(volume, (3, 5, 4))), ("B", ras_of_voxel(volume, (9, 15, 12)))])
    messages = []

    def progress(fraction, message):
        messages.append((fraction, message))
        if fraction >= 0.5:  # the user clicks Cancel while the second object runs
            logic.requestCancel()

    _assert_unchanged(slicer_env, lambda: logic.segment(volume, points, progressCallback=progress),
                      SegmentationCancelled, "cancel")
    assert messages and all(0.0 <= f <= 1.0 for f, _ in messages)
    assert not logic.canUndo()
    # the next run is not cancelled by the old request
    assert logic.segment(volume, points).objects


def test_engine_failure_or_empty_result_writes_nothing(slicer_env):
    volume = small_volume()
    points = add_points([("A", ras_of_voxel(volume, (3, 5, 4))), ("B", ras_of_voxel(volume, (9, 15, 12)))])
    _assert_unchanged(slicer_env, lambda: make_logic(empty=True).segment(volume, points),
                      EmptySegmentationError, "fake weak result")
    _assert_unchanged(slicer_env, lambda: make_logic(fail_on_call=2).segment(volume, points),
                      RuntimeError, "fake engine failure")


def test_segmentation_stored_as_surfaces_is_refused_before_running(slicer_env):
    slicer = slicer_env.slicer
    volume = small_volume()
    points = add_points([("A", ras_of_voxel(volume, (6, 9, 7)))])
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segmentation.GetSegmentation().AddEmptySegment("", "surface")
    segmentation.GetSegmentation().SetSourceRepresentationName(
        slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName())
    logic = make_logic()
    _assert_unchanged(slicer_env, lambda: logic.segment(volume, points, segmentationNode=segmentation),
                      InvalidInputError, "never\\s+converts")
    assert logic._segmenter is None  # refused before the engine was even made


def test_segmentation_under_a_different_warping_transform_is_refused(slicer_env):
    import vtk

    slicer = slicer_env.slicer
    volume = small_volume()
    points = add_points([("A", ras_of_voxel(volume, (6, 9, 7)))])
    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    for xyz, shift in (((0, 0, 0), 0), ((50, 0, 0), 3), ((0, 50, 0), 0), ((0, 0, 50), 0), ((50, 50, 50), -4)):
        source.InsertNextPoint(*xyz)
        target.InsertNextPoint(xyz[0] + shift, xyz[1], xyz[2])
    warp = vtk.vtkThinPlateSplineTransform()
    warp.SetSourceLandmarks(source)
    warp.SetTargetLandmarks(target)
    warp.SetBasisToR()
    warping = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    warping.SetAndObserveTransformToParent(warp)
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetAndObserveTransformNodeID(warping.GetID())
    _assert_unchanged(slicer_env, lambda: make_logic().segment(volume, points, segmentationNode=segmentation),
                      InvalidInputError, "non-linear")
