"""Point-to-segment routing: which segment a click refines, and the point lists it goes into (no Qt).

The panel keeps a *target segment*. A point placed while a target is set is routed to it (its
description names the segment, :func:`nodes.set_point_segment_id`), so the next run refines that segment
with all its clicks so far (the engine's remembered lesion redoes only the new click's part).
"New lesion" adds an empty segment and makes it the target. The positive and negative point lists
are made on demand, green and red.
"""

from __future__ import annotations

from ProMISeLib.errors import InvalidInputError

from . import nodes

#: Point colours: positive (object) green, negative (background) red.
POSITIVE_COLOR = (0.20, 0.85, 0.30)
NEGATIVE_COLOR = (0.95, 0.25, 0.25)
#: Attribute on a point list ProMISe made: "positive" or "negative".
ATTR_ROLE = "ProMISe.PromptRole"


def make_point_list(scene, name: str, role: str):
    """A new markups point list coloured for ``role`` ("positive" or "negative")."""
    if role not in ("positive", "negative"):
        raise ValueError(f"role must be 'positive' or 'negative', got {role!r}")
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetAttribute(ATTR_ROLE, role)
    color_point_list(node, role)
    return node


def color_point_list(node, role: str) -> None:
    """Colour a point list's points for ``role`` (green positive, red negative)."""
    display = node.GetDisplayNode()
    if display is None:
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
    if display is None:  # pragma: no cover - a scene without the markups display node class
        return
    color = POSITIVE_COLOR if role == "positive" else NEGATIVE_COLOR
    display.SetSelectedColor(*color)
    display.SetColor(*color)
    display.SetActiveColor(*color)


class PromptSession:
    """The panel's target segment, "New lesion", and the routing of each new control point.

    ``logic`` is a :class:`ProMISeModuleLogic` (to find or make the output segmentation).
    """

    def __init__(self, logic):
        self.logic = logic
        self.segmentationNode = None
        self.segmentId: str | None = None

    # --- the target ---------------------------------------------------------------------------
    def setTarget(self, segmentationNode, segmentId: str | None) -> None:
        """Refine ``segmentId`` of ``segmentationNode`` with the next points (None: the next point starts one)."""
        if segmentId is not None and (segmentationNode is None
                                      or segmentationNode.GetSegmentation().GetSegment(segmentId) is None):
            raise InvalidInputError(f"segment {segmentId!r} is not in the output segmentation")
        self.segmentationNode = segmentationNode
        self.segmentId = segmentId

    def target(self) -> tuple[object, str | None]:
        """(segmentation node, segment ID) of the target; the ID is None when none is set or it was removed."""
        node = self.segmentationNode
        if node is None or node.GetScene() is None or self.segmentId is None \
                or node.GetSegmentation().GetSegment(self.segmentId) is None:
            return node, None
        return node, self.segmentId

    def newLesion(self, volumeNode, segmentationNode=None, name: str | None = None) -> str:
        """Add an empty segment for a new lesion and make it the target; returns its ID."""
        if volumeNode is None:
            raise InvalidInputError("select a volume first")
        node = segmentationNode if segmentationNode is not None else self.logic.outputSegmentationFor(volumeNode)
        nodes.check_segmentation_writable(node)
        segmentation = node.GetSegmentation()
        if segmentation.GetNumberOfSegments() == 0:
            nodes.set_source_representation_name(segmentation, nodes.binary_labelmap_name())
            if node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is None:
                node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        number = 1
        names = {segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())}
        while f"Lesion {number}" in names:
            number += 1
        segmentId = segmentation.GenerateUniqueSegmentID("ProMISe")
        segmentation.AddEmptySegment(segmentId, name or f"Lesion {number}", self.logic.nextColor(node))
        self.setTarget(node, segmentId)
        return segmentId

    # --- points -------------------------------------------------------------------------------
    def routePoint(self, markupsNode, index: int, role: str, volumeNode=None) -> str | None:
        """Route a newly placed control point to the target segment; returns the segment ID.

        A positive point with no target starts a new lesion first (``volumeNode`` is then needed). A
        negative point with no target stays unrouted: it is background for every segment. A point already
        routed keeps its segment.
        """
        current = nodes.point_segment_id(markupsNode, index)
        if current is not None:
            return current
        node, segmentId = self.target()
        if segmentId is None:
            if role != "positive":
                return None
            segmentId = self.newLesion(volumeNode, node)
        nodes.set_point_segment_id(markupsNode, index, segmentId)
        return segmentId

    @staticmethod
    def pointsOfSegment(markupsNode, segmentId: str) -> list[int]:
        """Indices of the control points routed to ``segmentId``."""
        if markupsNode is None:
            return []
        return [n for n in range(markupsNode.GetNumberOfControlPoints())
                if nodes.point_segment_id(markupsNode, n) == segmentId]
