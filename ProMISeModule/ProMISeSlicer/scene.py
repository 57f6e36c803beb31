"""The logic's scene I/O: prompts read from markups into groups, results written into a segmentation node.

Reading: :func:`read_groups` gives one :class:`~.run.PromptGroup` per segment from the point lists and the
ROI (checked against the volume), :func:`choose_alternatives` each group's hypothesis from its segment's
tag. Writing: :func:`write_results` writes a computed run's masks as one undo step (rolled back on a
failure), into the segmentation ProMISe made for the volume (:func:`find_segmentation_for`), or a new one
(:func:`new_segmentation_node`), giving new segments the colours of :data:`PALETTE` in turn.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from ProMISeLib.errors import InvalidInputError

from . import nodes
from .run import PromptGroup, SegmentedObject, SegmentRun, group_prompts
from .undo import UndoStack, UndoStep

__all__ = ["ATTR_ROI_SEGMENT", "ATTR_VOLUME", "PALETTE", "check_box_overlaps_volume", "choose_alternatives",
           "find_segmentation_for", "new_segmentation_node", "next_color", "output_segmentation_for", "own_segment",
           "read_groups", "write_results"]

#: Colours given to new segments in turn (distinct on grey images).
PALETTE = (
    (0.95, 0.35, 0.25),
    (0.30, 0.70, 0.95),
    (0.40, 0.85, 0.35),
    (0.95, 0.80, 0.25),
    (0.75, 0.45, 0.95),
    (0.25, 0.85, 0.80),
    (0.95, 0.55, 0.75),
    (0.60, 0.60, 0.30),
)

#: Attribute on a segmentation node that ProMISe created: the ID of its volume.
ATTR_VOLUME = "ProMISe.VolumeNodeID"
#: Attribute on a Markups ROI: the ID of the segment it is the box prompt of.
ATTR_ROI_SEGMENT = "ProMISe.SegmentID"


# --- segmentation nodes ---------------------------------------------------------------------------
def find_segmentation_for(volumeNode):
    """The segmentation node ProMISe created for this volume earlier, if it is still in the scene."""
    scene = volumeNode.GetScene()
    if scene is None:
        return None
    for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        node = scene.GetNthNodeByClass(n, "vtkMRMLSegmentationNode")
        if node.GetAttribute(ATTR_VOLUME) == volumeNode.GetID():
            return node
    return None


def new_segmentation_node(volumeNode):
    """A new, empty segmentation node for the volume (its geometry, transform and :data:`ATTR_VOLUME`)."""
    scene = volumeNode.GetScene()
    if scene is None:
        raise InvalidInputError(f'volume "{volumeNode.GetName()}" is not in a scene')
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volumeNode.GetName()} ProMISe")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    node.SetAttribute(ATTR_VOLUME, volumeNode.GetID())
    if volumeNode.GetParentTransformNode() is not None:
        node.SetAndObserveTransformNodeID(volumeNode.GetParentTransformNode().GetID())
    return node


def output_segmentation_for(volumeNode):
    """The segmentation ProMISe writes into for this volume, made (empty) if there is none yet."""
    node = find_segmentation_for(volumeNode)
    return node if node is not None else new_segmentation_node(volumeNode)


def next_color(segmentationNode) -> tuple[float, float, float]:
    """The colour of the node's next new segment."""
    return PALETTE[segmentationNode.GetSegmentation().GetNumberOfSegments() % len(PALETTE)]


# --- reading the prompts ----------------------------------------------------------------------------
def check_box_overlaps_volume(box: np.ndarray, geometry, name: str) -> None:
    """InvalidInputError unless the box (2 x 3 corners in the volume's RAS) overlaps the volume."""
    corners = np.array([[box[a][0], box[b][1], box[c][2]] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    ijk = geometry.to_index(corners, "ras")
    size = np.asarray(geometry.size, float)
    low, high = ijk.min(axis=0), ijk.max(axis=0)
    if np.any(high < -0.5) or np.any(low > size - 0.5):
        raise InvalidInputError(f'ROI "{name}" lies outside the volume')


def own_segment(group: PromptGroup, pointsNode, segmentationNode) -> str | None:
    """The segment an unrouted group's points made earlier, if any."""
    if segmentationNode is None or pointsNode is None or not group.positives:
        return None
    return nodes.find_own_segment(segmentationNode, pointsNode.GetID(), [p.id for p in group.positives])


def read_groups(volumeNode, geometry, pointsNode, negativePointsNode, roiNode, segmentationNode,
                pointIndices: Sequence[int] | None, segmentIds: Sequence[str] | None) -> list[PromptGroup]:
    """The prompt groups of a run, read from the point lists and the ROI and checked; raises on bad input.

    ``segmentationNode`` (None: none yet) is where the run writes, to find the segments unrouted points made;
    ``pointIndices`` and ``segmentIds`` keep the groups of those control points or segments only.
    """
    if pointsNode is None and roiNode is None:
        raise InvalidInputError("no positive points: place a fiducial on the object to segment")
    positives = nodes.control_points(pointsNode, volumeNode, "positive")
    negatives = nodes.control_points(negativePointsNode, volumeNode, "negative")
    nodes.locate_points(geometry, positives, "positive")
    nodes.locate_points(geometry, negatives, "negative")
    box = None
    boxSegmentId = None
    if roiNode is not None:
        box = nodes.roi_box(roiNode, volumeNode)
        boxSegmentId = roiNode.GetAttribute(ATTR_ROI_SEGMENT) or None
        check_box_overlaps_volume(box, geometry, roiNode.GetName())
    if not positives and box is None:
        raise InvalidInputError(
            f'"{pointsNode.GetName()}" has no placed points: place a fiducial on the object to segment'
        )
    groups = group_prompts(positives, negatives, box, boxSegmentId, roiNode.GetName() if roiNode is not None else "box")
    if pointIndices is not None:
        wanted = set(int(i) for i in pointIndices)
        groups = [g for g in groups if any(p.index in wanted for p in g.positives + g.negatives)]
        if not groups:
            raise InvalidInputError("none of the given control points is placed")
    if segmentIds is not None:
        wanted_ids = set(segmentIds)
        groups = [g for g in groups if (g.segmentId or own_segment(g, pointsNode, segmentationNode)) in wanted_ids]
        if not groups:
            raise InvalidInputError("no positive point or box prompts the chosen segment yet")
    groups = [g for g in groups if g.positives or g.box is not None]
    if not groups:
        raise InvalidInputError("only background points: place a point on the object to segment")
    return groups


def choose_alternatives(groups: list[PromptGroup], pointsNode, segmentationNode, alternative: int | None) -> None:
    """Each group's hypothesis: ``alternative`` when given, else the one its segment was given before."""
    for group in groups:
        if alternative is not None:
            if alternative < 0 or (alternative and group.box is not None):
                raise InvalidInputError("a candidate (from 0) is a hypothesis of a first point, not of a box")
            group.alternative = int(alternative)
        elif group.box is None and segmentationNode is not None:
            segmentId = group.segmentId or own_segment(group, pointsNode, segmentationNode)
            segment = segmentationNode.GetSegmentation().GetSegment(segmentId) if segmentId else None
            tag = nodes.segment_tag(segment, nodes.TAG_ALTERNATIVE) if segment is not None else None
            group.alternative = int(tag) if tag and tag.isdigit() else 0
            group.inherited = True


# --- writing the results ----------------------------------------------------------------------------
def write_results(volumeNode, pointsNode, segmentationNode, results, model: str,
                  undoStack: UndoStack | None = None) -> SegmentRun:
    """Write (group, engine result) pairs into ``segmentationNode`` (None: a new node) as one undo step.

    A routed group refines its segment (made again if it was removed); an unrouted one replaces the
    segment its points made earlier, or adds one named after its label. On a failure everything written
    is rolled back and the error raised; on success the step goes on ``undoStack`` (None: no undo step).
    """
    created = segmentationNode is None
    if created:
        segmentationNode = new_segmentation_node(volumeNode)
    segmentation = segmentationNode.GetSegmentation()
    if segmentation.GetNumberOfSegments() == 0:
        nodes.set_source_representation_name(segmentation, nodes.binary_labelmap_name())
        if segmentationNode.GetNodeReference(segmentationNode.GetReferenceImageGeometryReferenceRole()) is None:
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    matrix = nodes.volume_to_segmentation_matrix(volumeNode, segmentationNode)
    labels = ", ".join(group.label for group, _ in results)
    step = UndoStep(f"ProMISe: {labels}", segmentationNode, createdNode=created)
    run = SegmentRun(segmentationNode)
    markupsID = pointsNode.GetID() if pointsNode is not None else ""
    wasModifying = segmentationNode.StartModify()
    try:
        for group, result in results:
            ids = [p.id for p in group.positives]
            if group.segmentId is not None:  # routed: refine that segment (made again if it was removed)
                segmentId = group.segmentId
                exists = segmentation.GetSegment(segmentId) is not None
            else:
                segmentId = nodes.find_own_segment(segmentationNode, markupsID, ids) if ids else None
                exists = segmentId is not None
            step.snapshots.append(nodes.snapshot_segment(segmentationNode, segmentId or ""))
            if not exists:
                color = next_color(segmentationNode)
                if segmentId is None:
                    segmentId = segmentation.GenerateUniqueSegmentID("ProMISe")
                    step.snapshots[-1] = nodes.snapshot_segment(segmentationNode, segmentId)
                segmentation.AddEmptySegment(segmentId, group.label, color)
            segment = segmentation.GetSegment(segmentId)
            if group.segmentId is None:
                segment.SetName(group.label)
            segment.SetTag(nodes.TAG_MARKUPS, markupsID)
            segment.SetTag(nodes.TAG_POINTS, ",".join(ids))
            segment.SetTag(nodes.TAG_MODEL, str(getattr(result, "model", model)))
            segment.SetTag(nodes.TAG_ALTERNATIVE, str(int(getattr(result, "alternative", 0))))
            nodes.write_segment(segmentationNode, segmentId, result.mask, result.bbox_kji, matrix)
            run.objects.append(SegmentedObject(group.label, segmentId, result,
                                               [p.voxel_kji for p in group.positives], exists))
    except Exception:
        segmentationNode.EndModify(wasModifying)
        try:
            UndoStack.apply(step)
        except Exception:  # pragma: no cover - best effort; the original error matters more
            logging.exception("ProMISe: could not roll back a failed write")
        raise
    segmentationNode.EndModify(wasModifying)
    if undoStack is not None:
        step.recordAfter()
        undoStack.push(step)
    return run
