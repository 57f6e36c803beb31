"""pytest plugin for the Slicer-side tests: a slicer-core scene set up like Slicer's, and helpers.

PyPI's ``slicer-core`` has MRML, the module logics and ``slicer.util`` but no application: nothing
registers the segmentation converter rules, and ``slicer.modules`` / ``slicer.mrmlScene`` do not
exist. The ``slicer_env`` fixture does that set-up here, in test code (the product code needs none of
it inside Slicer). Tests skip cleanly where slicer-core is not installed.

Use it from a test module with ``pytest_plugins = ["conftest_slicer"]``.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "ProMISeModule"
if str(MODULE_DIR) not in sys.path:  # as Slicer does for a scripted module's folder
    sys.path.insert(0, str(MODULE_DIR))

SKIP_REASON = "slicer-core is not installed (pip install slicer-core; Python 3.11 wheels)"
_CONVERTER_RULES = (
    "vtkBinaryLabelmapToClosedSurfaceConversionRule",
    "vtkClosedSurfaceToBinaryLabelmapConversionRule",
    "vtkClosedSurfaceToFractionalLabelmapConversionRule",
    "vtkFractionalLabelmapToClosedSurfaceConversionRule",
)
_rules_registered = False
_MISSING = object()


def _register_converter_rules(slicer) -> None:
    """What the Segmentations module does at start-up (once per process)."""
    global _rules_registered
    if _rules_registered:
        return
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    for name in _CONVERTER_RULES:
        factory.RegisterConverterRule(getattr(slicer, name)())
    _rules_registered = True


@pytest.fixture
def slicer_env():
    """A fresh scene with application, colour, volumes and segmentations logics, as in Slicer.

    Sets ``slicer.mrmlScene`` and ``slicer.modules.<volumes|segmentations>.logic()`` for the test
    (``slicer.util``'s array helpers need them) and restores them afterwards.
    """
    slicer = pytest.importorskip("slicer", reason=SKIP_REASON)
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip(SKIP_REASON)
    with slicer_environment() as env:
        yield env


@contextlib.contextmanager
def slicer_environment():
    """The set-up behind ``slicer_env``, usable outside pytest (benchmarks)."""
    import slicer

    _register_converter_rules(slicer)
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    colors.SetMRMLApplicationLogic(app)
    app.SetModuleLogic("Colors", colors)
    volumes = slicer.vtkSlicerVolumesLogic()
    volumes.SetMRMLScene(scene)
    volumes.SetMRMLApplicationLogic(app)
    app.SetModuleLogic("Volumes", volumes)
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLScene(scene)
    segmentations.SetMRMLApplicationLogic(app)
    app.SetModuleLogic("Segmentations", segmentations)

    import vtk

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def remove_display_nodes(caller, event, node):
        # Slicer's application removes a node's display nodes with it; a bare scene does not
        if hasattr(node, "GetNumberOfDisplayNodes"):
            for n in reversed(range(node.GetNumberOfDisplayNodes())):
                display = node.GetNthDisplayNode(n)
                if display is not None and display.GetScene() is not None:
                    caller.RemoveNode(display)

    observer = scene.AddObserver(slicer.vtkMRMLScene.NodeAboutToBeRemovedEvent, remove_display_nodes)

    saved = {name: getattr(slicer, name, _MISSING) for name in ("mrmlScene", "modules")}
    slicer.mrmlScene = scene
    slicer.modules = SimpleNamespace(
        volumes=SimpleNamespace(logic=lambda: volumes),
        segmentations=SimpleNamespace(logic=lambda: segmentations),
    )
    try:
        yield SimpleNamespace(slicer=slicer, scene=scene, app=app)
    finally:
        for name, value in saved.items():
            if value is _MISSING:
                delattr(slicer, name)
            else:
                setattr(slicer, name, value)
        scene.RemoveObserver(observer)
        scene.Clear(1)


# --- scene building ---------------------------------------------------------------------------
def rotation(degrees_xyz) -> np.ndarray:
    """3x3 rotation from Euler angles (degrees) about x, then y, then z."""
    ax, ay, az = np.radians(degrees_xyz)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def ijk_to_ras_matrix(spacing, degrees_xyz=(0, 0, 0), origin_ras=(0, 0, 0)) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = rotation(degrees_xyz) @ np.diag(spacing)
    matrix[:3, 3] = origin_ras
    return matrix


def add_volume(array_kji, ijk_to_ras, name="volume", transform=None):
    import slicer

    node = slicer.util.addVolumeFromArray(np.ascontiguousarray(array_kji), ijkToRAS=ijk_to_ras, name=name)
    if transform is not None:
        node.SetAndObserveTransformNodeID(transform.GetID())
    return node


def add_multicomponent_volume(shape_kji, components, node_class="vtkMRMLScalarVolumeNode", name="multi"):
    """A volume node whose image data holds ``components`` values per voxel (vector / 4D-as-frames)."""
    import slicer
    import vtk

    image = vtk.vtkImageData()
    image.SetDimensions(shape_kji[2], shape_kji[1], shape_kji[0])
    image.AllocateScalars(vtk.VTK_FLOAT, components)
    node = slicer.mrmlScene.AddNewNodeByClass(node_class, name)
    node.SetAndObserveImageData(image)
    return node


def add_transform(matrix, name="transform", parent=None):
    import slicer

    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    if parent is not None:
        node.SetAndObserveTransformNodeID(parent.GetID())
    return node


def add_points(points, name="points", transform=None):
    """A point list from [(label, xyz in the node's own coordinates)]."""
    import slicer
    import vtk

    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    if transform is not None:
        node.SetAndObserveTransformNodeID(transform.GetID())
    for label, xyz in points:
        node.AddControlPoint(vtk.vtkVector3d(*[float(v) for v in xyz]), label)
    return node


def segment_array(segmentationNode, segmentId, volumeNode) -> np.ndarray:
    import slicer

    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode)


def segment_id_by_name(segmentationNode, name) -> str:
    return segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(name)


def dice(a, b) -> float:
    from ProMISeLib.metrics import dice as engine_dice

    return engine_dice(np.asarray(a) != 0, np.asarray(b) != 0)


def scene_state(scene) -> dict:
    """Every node (ID, class, name) and every segment's name, colour and voxels: to compare before/after."""
    import slicer

    state = {}
    for n in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(n)
        state[node.GetID()] = (node.GetClassName(), node.GetName())
        if node.IsA("vtkMRMLSegmentationNode"):
            segmentation = node.GetSegmentation()
            for s in range(segmentation.GetNumberOfSegments()):
                segmentId = segmentation.GetNthSegmentID(s)
                segment = segmentation.GetSegment(segmentId)
                image = slicer.vtkOrientedImageData()
                node.GetBinaryLabelmapRepresentation(segmentId, image)
                from ProMISeSlicer.nodes import image_array

                voxels = image_array(image)
                state[(node.GetID(), segmentId)] = (
                    segment.GetName(), tuple(round(c, 4) for c in segment.GetColor()),
                    image.GetExtent(), int(np.count_nonzero(voxels)), hash(np.ascontiguousarray(voxels != 0).tobytes()),
                )
    return state


# --- a stand-in engine ------------------------------------------------------------------------
class FakeSegmenter:
    """Stands in for ``ProMISeLib.engine.Segmenter`` with the same ``segment`` signature.

    It maps the prompt points with the engine's geometry (so a wrong point handed over by the logic
    lands on a wrong voxel) and returns either a ball of ``radius_mm`` around the first point or,
    with ``label=``, the labelled structure under the point (an oracle, to check the write-back).
    It records the ``runtime`` and ``prompts`` it was made for, as the engine does, and names in its
    results' ``method`` the prompts that "ran" (the engine's wording). With ``alternatives=n`` its first click
    has n hypotheses: ``alternative=a`` gives a ball of ``radius_mm / (1 + a)``. ``encode_for_corrections``
    records its calls in ``encoded_ahead``.
    """

    instances: list = []
    METHODS = {"heuristic": "heuristic box prompts", "learned": "learned prompts (fake-prompter)",
               "fused": "fused prompts (box search ranked by fake-prompter)",
               "auto": "learned prompts (fake-prompter)"}

    def __init__(self, model="fake", device="cpu", runtime="auto", radius_mm=8.0, label=None, empty=False,
                 fail_on_call=None, prompts="auto", alternatives=1):
        self.model, self.device, self.runtime, self.prompts = model, device, runtime, prompts
        self.radius_mm, self.label, self.empty, self.fail_on_call = radius_mm, label, empty, fail_on_call
        self.calls, self.encoded_ahead = [], []
        self.alternatives = alternatives
        self.memory, self.cache = _Clearable(), _Clearable()  # as the engine's lesion memory and embedding cache
        FakeSegmenter.instances.append(self)

    def segment(self, volume_kji, geometry, points, negative_points=None, space="ras", progress=None, cancel=None,
                modality="auto", box=None, alternative=0):
        from ProMISeLib.errors import InvalidInputError, SegmentationCancelled
        from ProMISeLib.result import SegmentationResult, bounding_box

        voxels = geometry.to_voxel_kji(np.asarray(points, dtype=float), space)
        self.calls.append({"points": np.array(points, dtype=float), "voxels": voxels,
                           "negative": None if negative_points is None else np.array(negative_points),
                           "shape": volume_kji.shape, "array": volume_kji, "alternative": alternative})
        if alternative >= self.alternatives:
            raise InvalidInputError(f"the click has {self.alternatives} distinct hypotheses; there is no alternative "
                                    f"{alternative}")
        if progress is not None:
            progress(0.5, "fake engine half-way")
        if cancel is not None and cancel():
            raise SegmentationCancelled("cancelled")
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise RuntimeError("fake engine failure")
        mask = np.zeros(volume_kji.shape, np.uint8)
        if self.empty:
            pass
        elif self.label is not None:
            label = self.label
            if not isinstance(label, np.ndarray):
                label = resample_like(label, geometry)
            k, j, i = voxels[0]
            if label[k, j, i]:
                mask[label == label[k, j, i]] = 1
        else:
            k, j, i = np.indices(volume_kji.shape)
            lps = geometry.index_to_lps(np.stack([i, j, k], axis=-1))
            centre = geometry.index_to_lps(voxels[0][::-1].astype(float))
            mask[np.linalg.norm(lps - centre, axis=-1) <= self.radius_mm / (1 + alternative)] = 1
        if progress is not None:
            progress(1.0, "fake engine done")
        ran = "onnx" if self.runtime == "auto" else self.runtime  # as the engine resolves auto on a CPU
        return SegmentationResult(mask, geometry, bounding_box(mask), 0.01, self.METHODS[self.prompts], self.model,
                                  self.device, messages=["fake weak result"] if self.empty else [], runtime=ran,
                                  alternative=alternative, alternatives=self.alternatives)

    def encode_for_corrections(self, volume_kji, geometry, points, negative_points=None, space="ras",
                               modality="auto", cancel=None, box=None, alternative=0):
        """Records the call as the engine's would be made (the same prompts as the result's); encodes nothing."""
        self.encoded_ahead.append({"points": np.array(points, dtype=float), "alternative": alternative,
                                   "array": volume_kji, "cancelled": bool(cancel is not None and cancel())})
        return 0


class _Clearable:
    """Counts its ``clear()`` calls."""

    def __init__(self) -> None:
        self.cleared = 0

    def clear(self) -> None:
        self.cleared += 1


def resample_like(image, geometry) -> np.ndarray:
    """A SimpleITK label image resampled (nearest neighbour) onto an engine grid, as a (K, J, I) array."""
    import SimpleITK as sitk

    reference = sitk.Image([int(v) for v in geometry.size], sitk.sitkUInt8)
    geometry.apply_to_sitk(reference)
    return sitk.GetArrayFromImage(sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0))


def fake_factory(**options):
    """A ``segmenterFactory`` for the logic that makes :class:`FakeSegmenter` objects.

    Like ``ProMISeLib.engine.Segmenter`` it takes ``runtime`` and ``prompts`` (required here, so a logic
    that forgets to pass them fails).
    """
    return lambda model, device, runtime, prompts: FakeSegmenter(model=model, device=device, runtime=runtime,
                                                                 prompts=prompts, **options)


# --- data -------------------------------------------------------------------------------------
def load_case_arrays(case_id: str, with_label_image: bool = False):
    """(image array, label array, SimpleITK image[, SimpleITK label]) of a labelled case, or skip."""
    sitk = pytest.importorskip("SimpleITK")
    from ProMISeLib.io.paths import data_dir
    from ProMISeLib.io.sample_data import load_cases

    folder = data_dir()
    cases = {c.id: c for c in load_cases(folder)} if folder is not None else {}
    if case_id not in cases:
        pytest.skip(f"case {case_id} not found in the data folder {folder} (set PROMISE_DATA_DIR to the scans)")
    case = cases[case_id]
    image = sitk.ReadImage(str(case.image))
    label = sitk.ReadImage(str(case.label))
    arrays = (sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(label), image)
    return (*arrays, label) if with_label_image else arrays
