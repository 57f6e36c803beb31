"""The Segment Editor effect's logic, without Qt: a click in a slice view becomes a prompt for the
selected segment, and the segment is refined on the worker thread.

The Qt layer (``segment_editor_effect.py``) only turns mouse events into :meth:`ClickPrompter.click`
calls and saves the editor's undo state before a result is written. The clicks are kept in two point
lists (green object points, red background points), each routed to its segment
(:func:`nodes.set_point_segment_id`), so every run passes all the clicks so far for that segment and the
engine's remembered lesion redoes only the new click's part.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ProMISeLib.errors import InvalidInputError

from . import nodes
from .routing import make_point_list
from .worker import Job, Outcome

#: Attribute on the effect's point lists: "positive" or "negative".
ATTR_EFFECT_ROLE = "ProMISe.EffectPrompts"
LIST_NAMES = {"positive": "ProMISe effect: object", "negative": "ProMISe effect: background"}


class ClickPrompter:
    """Clicks -> routed prompts -> a run on ``logic``'s worker (one engine for the panel and the effect)."""

    def __init__(self, logic):
        self.logic = logic

    # --- the prompt lists ----------------------------------------------------------------------
    @staticmethod
    def pointList(scene, role: str, create: bool = True):
        """The effect's point list for ``role`` ("positive" or "negative"), made on demand."""
        for n in range(scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode")):
            node = scene.GetNthNodeByClass(n, "vtkMRMLMarkupsFiducialNode")
            if node.GetAttribute(ATTR_EFFECT_ROLE) == role:
                return node
        if not create:
            return None
        node = make_point_list(scene, LIST_NAMES[role], role)
        node.SetAttribute(ATTR_EFFECT_ROLE, role)
        display = node.GetDisplayNode()
        if display is not None:
            display.SetPointLabelsVisibility(False)
        node.SetLocked(True)  # the effect places them; they are not dragged by accident
        return node

    # --- clicks -----------------------------------------------------------------------------------
    @staticmethod
    def _check(volumeNode, segmentationNode, segmentId) -> None:
        if volumeNode is None:
            raise InvalidInputError("select a source volume in the Segment Editor first")
        if segmentationNode is None:
            raise InvalidInputError("select a segmentation in the Segment Editor first")
        if not segmentId or segmentationNode.GetSegmentation().GetSegment(segmentId) is None:
            raise InvalidInputError("select a segment (or add one) first")
        nodes.check_segmentation_writable(segmentationNode)

    def addClick(self, volumeNode, segmentationNode, segmentId: str, rasWorld, negative: bool = False) -> int:
        """Add a click (world RAS) as a prompt of ``segmentId``; returns its control point index.

        A click outside the volume or with nothing selected raises a clear error and adds nothing.
        """
        self._check(volumeNode, segmentationNode, segmentId)
        world = np.asarray(rasWorld, dtype=float).reshape(3)
        _, geometry = nodes.volume_array_and_geometry(volumeNode)
        ras = np.asarray(nodes.world_to_volume_transform(volumeNode).TransformPoint(world.tolist()), float)
        geometry.to_voxel_kji(ras, "ras")  # raises PointOutsideImageError outside the volume
        scene = volumeNode.GetScene()
        points = self.pointList(scene, "negative" if negative else "positive")
        index = points.AddControlPointWorld(*[float(v) for v in world])
        nodes.set_point_segment_id(points, index, segmentId)
        return index

    def clicksOf(self, scene, segmentId: str) -> tuple[int, int]:
        """(positive, negative) numbers of clicks routed to ``segmentId``."""
        counts = []
        for role in ("positive", "negative"):
            node = self.pointList(scene, role, create=False)
            counts.append(0 if node is None else sum(
                nodes.point_segment_id(node, n) == segmentId for n in range(node.GetNumberOfControlPoints())))
        return counts[0], counts[1]

    def clearClicks(self, scene, segmentId: str) -> int:
        """Forget the clicks of ``segmentId`` (its voxels stay); returns how many were removed."""
        removed = 0
        for role in ("positive", "negative"):
            node = self.pointList(scene, role, create=False)
            if node is None:
                continue
            for n in reversed(range(node.GetNumberOfControlPoints())):
                if nodes.point_segment_id(node, n) == segmentId:
                    node.RemoveNthControlPoint(n)
                    removed += 1
        return removed

    # --- runs ---------------------------------------------------------------------------------
    def job(self, volumeNode, segmentationNode, segmentId: str, beforeApply: Callable[[], None] | None = None,
            finished: Callable[[Outcome], None] | None = None) -> Job:
        """A worker job refining ``segmentId`` with all its clicks, read when the job starts.

        ``beforeApply`` runs on the main thread just before the segment is written (the effect saves the
        Segment Editor's undo state there, so Ctrl+Z undoes exactly this write).
        """
        logic = self.logic
        scene = volumeNode.GetScene()

        def prepare():
            self._check(volumeNode, segmentationNode, segmentId)
            return logic.prepareRun(volumeNode, self.pointList(scene, "positive"), segmentationNode,
                                    self.pointList(scene, "negative", create=False), segmentIds=[segmentId],
                                    recordUndo=False, **logic.runOptions)

        def apply(prepared):
            if beforeApply is not None:
                beforeApply()
            return logic.applyRun(prepared)

        name = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
        return Job(prepare, logic.computeRun, apply, finished, description=f"ProMISe: {name}")

    def click(self, volumeNode, segmentationNode, segmentId: str, rasWorld, negative: bool = False,
              beforeApply: Callable[[], None] | None = None,
              finished: Callable[[Outcome], None] | None = None) -> str:
        """Add the click and refine the segment on the worker: "started", or "queued" behind a running job."""
        self.addClick(volumeNode, segmentationNode, segmentId, rasWorld, negative)
        return self.logic.runner.submit(self.job(volumeNode, segmentationNode, segmentId, beforeApply, finished))
