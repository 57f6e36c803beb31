"""MRML nodes <-> the engine's arrays and points, and reading/writing one segment.

Coordinate rules (the engine's side is in ``ProMISeLib.io.geometry``):

* A volume's voxels are read with ``slicer.util.arrayFromVolume``: a (K, J, I) view, never a copy.
* A control point is read in WORLD coordinates (its own parent transforms applied) and mapped into
  the volume's own RAS through the inverse of the volume's parent transforms; that is the frame the
  volume's IJK-to-RAS matrix (oblique or not) refers to.
* A segment is written as an oriented image that covers only the mask's bounding box; its
  image-to-world matrix maps the volume's voxel (i, j, k) into the segmentation node's own frame.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import slicer
import vtk
from ProMISeLib.errors import InvalidInputError, PointOutsideImageError
from ProMISeLib.io.geometry import ImageGeometry
from ProMISeLib.result import bounding_box
from vtk.util import numpy_support

#: Tags ProMISe sets on the segments it writes (read back to find "the segment of this fiducial").
TAG_MARKUPS = "ProMISe.MarkupsNodeID"
TAG_POINTS = "ProMISe.ControlPointIDs"
TAG_MODEL = "ProMISe.Model"
TAG_ALTERNATIVE = "ProMISe.Alternative"  # which hypothesis of its first click the segment follows (0: the best)
OWN_TAGS = (TAG_MARKUPS, TAG_POINTS, TAG_MODEL, TAG_ALTERNATIVE)

#: A control point's description starts with this when the point prompts one segment: the segment's ID follows.
SEGMENT_PREFIX = "ProMISe segment: "

_NOT_SCALAR_CLASSES = (
    "vtkMRMLVectorVolumeNode",
    "vtkMRMLDiffusionWeightedVolumeNode",
    "vtkMRMLTensorVolumeNode",
    "vtkMRMLMultiVolumeNode",
)


# --- matrices ---------------------------------------------------------------------------------
def vtk_matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def numpy_to_vtk_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijk_to_ras(volumeNode) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return vtk_matrix_to_numpy(matrix)


# --- volumes ----------------------------------------------------------------------------------
def validate_volume(volumeNode) -> None:
    """Raise InvalidInputError unless ``volumeNode`` is a 3D single-component scalar volume."""
    if volumeNode is None:
        raise InvalidInputError("no input volume: load a scan and select it as the input volume")
    name = volumeNode.GetName() if hasattr(volumeNode, "GetName") else str(volumeNode)
    if not (hasattr(volumeNode, "IsA") and volumeNode.IsA("vtkMRMLScalarVolumeNode")):
        raise InvalidInputError(f'"{name}" is not a scalar volume; select an image volume')
    for cls in _NOT_SCALAR_CLASSES:
        if volumeNode.IsA(cls):
            raise InvalidInputError(
                f'"{name}" is a vector, multi-frame (4D) or diffusion volume; ProMISe needs one 3D scalar '
                "image (extract a frame or a component first, e.g. with the Sequences or "
                "Vector to Scalar Volume module)"
            )
    if volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InvalidInputError(f'"{name}" is a label map; select the image volume instead')
    image = volumeNode.GetImageData()
    if image is None:
        raise InvalidInputError(f'"{name}" has no voxels (no image data)')
    components = image.GetNumberOfScalarComponents()
    if components != 1:
        raise InvalidInputError(
            f'"{name}" has {components} values per voxel (a vector, colour or 4D volume); ProMISe needs '
            "one 3D scalar image (extract a single frame or component first)"
        )
    dims = image.GetDimensions()
    if min(dims) < 1 or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InvalidInputError(f'"{name}" is empty (dimensions {dims})')


def volume_array_and_geometry(volumeNode) -> tuple[np.ndarray, ImageGeometry]:
    """The voxels as a (K, J, I) view and the grid, after :func:`validate_volume`."""
    validate_volume(volumeNode)
    array = slicer.util.arrayFromVolume(volumeNode)
    if array.ndim != 3:
        raise InvalidInputError(f'"{volumeNode.GetName()}" is not a 3D volume (array shape {array.shape})')
    return array, ImageGeometry.from_ijk_to_ras(ijk_to_ras(volumeNode), array.shape)


# --- points -----------------------------------------------------------------------------------
@dataclass
class ControlPoint:
    """One placed control point: world RAS, and RAS in the volume's own frame (what the engine takes)."""

    index: int
    id: str
    label: str
    world: np.ndarray
    ras: np.ndarray
    voxel_kji: tuple[int, int, int] | None = None
    segmentId: str | None = None  # the segment this point prompts (routed), or None: grouped by label


def point_segment_id(markupsNode, index: int) -> str | None:
    """The segment ID control point ``index`` was routed to (its description), or None."""
    description = markupsNode.GetNthControlPointDescription(index) or ""
    if description.startswith(SEGMENT_PREFIX):
        return description[len(SEGMENT_PREFIX):].strip() or None
    return None


def set_point_segment_id(markupsNode, index: int, segmentId: str | None) -> None:
    """Route control point ``index`` to ``segmentId`` (None: back to grouping by label)."""
    markupsNode.SetNthControlPointDescription(index, f"{SEGMENT_PREFIX}{segmentId}" if segmentId else "")


def world_to_volume_transform(volumeNode) -> vtk.vtkGeneralTransform:
    """World -> the volume's own RAS (the inverse of its parent transforms; any kind, even warping)."""
    transform = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, volumeNode.GetParentTransformNode(), transform)
    return transform


def control_points(markupsNode, volumeNode, role: str = "positive") -> list[ControlPoint]:
    """The defined control points of ``markupsNode`` mapped into ``volumeNode``'s RAS (none if no node)."""
    if markupsNode is None:
        return []
    if not (hasattr(markupsNode, "IsA") and markupsNode.IsA("vtkMRMLMarkupsNode")):
        raise InvalidInputError(f"the {role} points must be a markups point list")
    transform = world_to_volume_transform(volumeNode)
    points = []
    for index in range(markupsNode.GetNumberOfControlPoints()):
        if markupsNode.GetNthControlPointPositionStatus(index) != markupsNode.PositionDefined:
            continue  # being placed, skipped or missing: not a prompt
        world = np.zeros(3)
        markupsNode.GetNthControlPointPositionWorld(index, world)
        ras = np.asarray(transform.TransformPoint(world.tolist()), dtype=float)
        label = markupsNode.GetNthControlPointLabel(index) or f"{markupsNode.GetName()}-{index + 1}"
        points.append(ControlPoint(index, markupsNode.GetNthControlPointID(index), label, world, ras,
                                   segmentId=point_segment_id(markupsNode, index)))
    return points


def roi_box(roiNode, volumeNode) -> np.ndarray:
    """A Markups ROI as a box prompt: two opposite corners (2 x 3) in ``volumeNode``'s own RAS.

    The ROI's eight corners (its own orientation applied) are mapped through its parent transforms to
    world and through the inverse of the volume's parent transforms into the volume's RAS; the result
    is the axis-aligned box (in the volume's RAS) around them.
    """
    if not (hasattr(roiNode, "IsA") and roiNode.IsA("vtkMRMLMarkupsROINode")):
        raise InvalidInputError("the box must be a Markups ROI")
    if roiNode.GetNumberOfControlPoints() == 0 or \
            roiNode.GetNthControlPointPositionStatus(0) != roiNode.PositionDefined:
        raise InvalidInputError(f'ROI "{roiNode.GetName()}" is not placed')
    radius = np.zeros(3)
    roiNode.GetRadiusXYZ(radius)
    if not np.all(np.isfinite(radius)) or np.any(radius <= 0):
        raise InvalidInputError(f'ROI "{roiNode.GetName()}" has no size')
    matrix = vtk_matrix_to_numpy(roiNode.GetObjectToNodeMatrix())
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    corners_node = (matrix @ np.c_[signs * radius, np.ones(8)].T).T[:, :3]
    node_to_volume = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(
        roiNode.GetParentTransformNode(), volumeNode.GetParentTransformNode(), node_to_volume
    )
    corners = np.array([node_to_volume.TransformPoint(c.tolist()) for c in corners_node], float)
    return np.stack([corners.min(axis=0), corners.max(axis=0)])


def locate_points(geometry: ImageGeometry, points: list[ControlPoint], role: str) -> None:
    """Set each point's voxel; raise PointOutsideImageError naming the first point outside the volume."""
    for point in points:
        if not np.all(np.isfinite(point.ras)):
            raise InvalidInputError(f'{role} point "{point.label}" has no valid position')
        try:
            voxel = geometry.to_voxel_kji(point.ras, "ras")[0]
        except PointOutsideImageError as error:
            raise PointOutsideImageError(f'{role} point "{point.label}": {error}') from None
        point.voxel_kji = tuple(int(v) for v in voxel)


# --- segmentations ----------------------------------------------------------------------------
def binary_labelmap_name() -> str:
    return slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()


def source_representation_name(segmentation) -> str:
    getter = getattr(segmentation, "GetSourceRepresentationName", None) or segmentation.GetMasterRepresentationName
    return getter()


def set_source_representation_name(segmentation, name: str) -> None:
    setter = getattr(segmentation, "SetSourceRepresentationName", None) or segmentation.SetMasterRepresentationName
    setter(name)


def check_segmentation_writable(segmentationNode) -> None:
    """Raise InvalidInputError when segments cannot be written without converting the others."""
    if not (hasattr(segmentationNode, "IsA") and segmentationNode.IsA("vtkMRMLSegmentationNode")):
        raise InvalidInputError("the output must be a segmentation node")
    segmentation = segmentationNode.GetSegmentation()
    if segmentation.GetNumberOfSegments() and source_representation_name(segmentation) != binary_labelmap_name():
        raise InvalidInputError(
            f'segmentation "{segmentationNode.GetName()}" stores its segments as '
            f"{source_representation_name(segmentation)}; choose another output segmentation (ProMISe never "
            "converts existing segments)"
        )


def volume_to_segmentation_matrix(volumeNode, segmentationNode) -> np.ndarray:
    """4x4 mapping the volume's voxel (i, j, k) into the segmentation node's own coordinates."""
    between = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(
        volumeNode.GetParentTransformNode(), segmentationNode.GetParentTransformNode(), between
    )
    linear = vtk.vtkTransform()
    if not slicer.vtkMRMLTransformNode.IsGeneralTransformLinear(between, linear):
        raise InvalidInputError(
            f'segmentation "{segmentationNode.GetName()}" and volume "{volumeNode.GetName()}" are under '
            "different non-linear transforms; harden the transform or choose a new output segmentation"
        )
    return vtk_matrix_to_numpy(linear.GetMatrix()) @ ijk_to_ras(volumeNode)


def oriented_image(array_kji: np.ndarray, start_ijk, image_to_world: np.ndarray):
    """A uint8 ``vtkOrientedImageData`` holding ``array_kji`` at index ``start_ijk`` of a grid."""
    block = np.ascontiguousarray(array_kji, dtype=np.uint8)
    k, j, i = block.shape
    i0, j0, k0 = (int(v) for v in start_ijk)
    image = slicer.vtkOrientedImageData()
    image.SetExtent(i0, i0 + i - 1, j0, j0 + j - 1, k0, k0 + k - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = block.ravel()
    image.SetImageToWorldMatrix(numpy_to_vtk_matrix(image_to_world))
    return image


def image_array(image) -> np.ndarray:
    """(K, J, I) view of a single-component ``vtkImageData``."""
    i0, i1, j0, j1, k0, k1 = image.GetExtent()
    shape = (k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1)
    if min(shape) <= 0:
        return np.zeros((0, 0, 0), dtype=np.uint8)
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape)


def _set_labelmap(segmentationNode, segmentId: str, image) -> None:
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(image, segmentationNode, segmentId, logic.MODE_REPLACE):
        raise RuntimeError(f'could not write segment "{segmentId}" into "{segmentationNode.GetName()}"')


def write_segment(segmentationNode, segmentId: str, mask_kji: np.ndarray, bbox_kji, ijk_to_segmentation) -> None:
    """Replace the segment's voxels by ``mask_kji``, copying only its bounding box ``bbox_kji``."""
    (k0, k1), (j0, j1), (i0, i1) = bbox_kji
    block = mask_kji[k0:k1, j0:j1, i0:i1] != 0
    _set_labelmap(segmentationNode, segmentId, oriented_image(block, (i0, j0, k0), ijk_to_segmentation))


def segment_tag(segment, key: str) -> str | None:
    value = vtk.reference("")
    return str(value) if segment.GetTag(key, value) else None


def find_own_segment(segmentationNode, markupsNodeID: str, controlPointIDs) -> str | None:
    """The segment ProMISe wrote earlier for any of these control points of this markups node."""
    wanted = set(controlPointIDs)
    segmentation = segmentationNode.GetSegmentation()
    for n in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(n)
        if segment_tag(segment, TAG_MARKUPS) != markupsNodeID:
            continue
        ids = set((segment_tag(segment, TAG_POINTS) or "").split(","))
        if ids & wanted:
            return segmentation.GetNthSegmentID(n)
    return None


# --- snapshots (undo) -------------------------------------------------------------------------
@dataclass
class SegmentSnapshot:
    """One segment's state: absent, or its name, colour, ProMISe tags and voxels (bounding box only)."""

    segmentId: str
    existed: bool
    name: str = ""
    color: tuple[float, float, float] = (1.0, 1.0, 0.0)
    tags: dict[str, str] = field(default_factory=dict)
    labelmap: object | None = None  # vtkOrientedImageData cropped to the voxels, None when empty

    @property
    def voxel_count(self) -> int:
        return 0 if self.labelmap is None else int(np.count_nonzero(image_array(self.labelmap)))


def _cropped_labelmap(segmentationNode, segmentId: str):
    """(voxels cropped to the segment, their start index, image-to-world 4x4), or None when empty."""
    full = slicer.vtkOrientedImageData()
    if not segmentationNode.GetBinaryLabelmapRepresentation(segmentId, full):
        return None
    voxels = image_array(full)
    box = bounding_box(voxels) if voxels.size else None
    if box is None:
        return None
    (k0, k1), (j0, j1), (i0, i1) = box
    e = full.GetExtent()
    matrix = vtk.vtkMatrix4x4()
    full.GetImageToWorldMatrix(matrix)
    return voxels[k0:k1, j0:j1, i0:i1] != 0, (e[0] + i0, e[2] + j0, e[4] + k0), vtk_matrix_to_numpy(matrix)


def snapshot_segment(segmentationNode, segmentId: str) -> SegmentSnapshot:
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    if segment is None:
        return SegmentSnapshot(segmentId, existed=False)
    tags = {key: value for key in OWN_TAGS if (value := segment_tag(segment, key)) is not None}
    cropped = _cropped_labelmap(segmentationNode, segmentId)
    labelmap = oriented_image(*cropped) if cropped is not None else None
    return SegmentSnapshot(segmentId, True, segment.GetName(), tuple(segment.GetColor()), tags, labelmap)


def segment_fingerprint(segmentationNode, segmentId: str) -> str | None:
    """A digest of the segment's voxels (where they are and which are set); None when it is absent.

    Two calls give the same digest exactly when the segment's voxels are the same, so a change made
    by hand after a run (painting, erasing, another effect) is noticed.
    """
    if segmentationNode.GetSegmentation().GetSegment(segmentId) is None:
        return None
    cropped = _cropped_labelmap(segmentationNode, segmentId)
    if cropped is None:
        return "empty"
    voxels, start, matrix = cropped
    digest = hashlib.sha1(np.packbits(voxels).tobytes())
    digest.update(repr((voxels.shape, tuple(int(v) for v in start), np.round(matrix, 6).tolist())).encode())
    return digest.hexdigest()


def restore_segment(segmentationNode, snapshot: SegmentSnapshot) -> None:
    """Put the segment back as it was when ``snapshot`` was taken (removing it if it did not exist)."""
    segmentation = segmentationNode.GetSegmentation()
    segment = segmentation.GetSegment(snapshot.segmentId)
    if not snapshot.existed:
        if segment is not None:
            segmentation.RemoveSegment(snapshot.segmentId)
        return
    if segment is None:
        segment = slicer.vtkSegment()
        segment.SetName(snapshot.name)
        segmentation.AddSegment(segment, snapshot.segmentId)
        segment = segmentation.GetSegment(snapshot.segmentId)
    segment.SetName(snapshot.name)
    segment.SetColor(*snapshot.color)
    for key in OWN_TAGS:
        if key in snapshot.tags:
            segment.SetTag(key, snapshot.tags[key])
        elif segment.HasTag(key):
            segment.RemoveTag(key)
    labelmap = snapshot.labelmap
    if labelmap is None:  # an empty segment: one background voxel on the segmentation's grid
        labelmap = oriented_image(np.zeros((1, 1, 1), np.uint8), (0, 0, 0), np.eye(4))
    _set_labelmap(segmentationNode, snapshot.segmentId, labelmap)
