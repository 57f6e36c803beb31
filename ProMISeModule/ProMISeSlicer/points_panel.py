"""The panel's points and target segment (Qt): the point lists, placing, routing and the automatic re-run.

A mixin of :class:`ProMISeSlicer.widget.ProMISeModuleWidget`; it uses the widget's ``ui``, ``logic``,
``session`` (the :class:`.routing.PromptSession`), ``_parameterNode``, ``setStatus``, ``updateButtons`` and
``runSegmentation``. A placed point is routed to the target segment (:mod:`.routing`): it refines that
segment, or starts a new lesion; with "update automatically" a placed or moved point re-runs its segment.
"""

from __future__ import annotations

import slicer
from ProMISeLib.errors import ProMISeError
from slicer.i18n import tr as _

from .routing import color_point_list, make_point_list


class PointsPanel:
    """The positive/negative point lists and the target segment they refine."""

    # --- the point lists ------------------------------------------------------------------------
    def ensurePointList(self, role: str):
        """The positive or negative point list, made (green or red) when there is none yet."""
        node = self._parameterNode
        if node is None:
            return None
        name = "positivePoints" if role == "positive" else "negativePoints"
        points = getattr(node, name)
        if points is None:
            title = _("ProMISe object") if role == "positive" else _("ProMISe background")
            points = make_point_list(slicer.mrmlScene, title, role)
            setattr(node, name, points)
            selector = self.ui.positivePointsSelector if role == "positive" else self.ui.negativePointsSelector
            selector.setCurrentNode(points)
            self.onPointsNodeChanged()
        return points

    def placePositive(self) -> None:
        self.ensurePointList("positive")
        self.ui.positivePlaceWidget.setCurrentNode(self._parameterNode.positivePoints)
        self.ui.positivePlaceWidget.setPlaceModeEnabled(True)

    def placeNegative(self) -> None:
        self.ensurePointList("negative")
        self.ui.negativePlaceWidget.setCurrentNode(self._parameterNode.negativePoints)
        self.ui.negativePlaceWidget.setPlaceModeEnabled(True)

    # --- placed and moved points: routing and the automatic re-run ---------------------------
    def _unobservePoints(self) -> None:
        for observed, tag in self._observedPoints:
            observed.RemoveObserver(tag)
        self._observedPoints = []

    def onPointsNodeChanged(self, node=None) -> None:
        self._unobservePoints()
        for role, selector in (("positive", self.ui.positivePointsSelector),
                               ("negative", self.ui.negativePointsSelector)):
            points = selector.currentNode()
            if points is None:
                continue
            color_point_list(points, role)

            def placed(caller, event, role=role):
                self.onPointPlaced(caller, role)

            def moved(caller, event, role=role):
                self.onPointsEdited(caller, role)

            self._observedPoints.append((points, points.AddObserver(points.PointPositionDefinedEvent, placed)))
            self._observedPoints.append((points, points.AddObserver(points.PointEndInteractionEvent, moved)))
            self._observedPoints.append((points, points.AddObserver(points.PointRemovedEvent, self.updateButtons)))
        self.updateButtons()

    def onPointPlaced(self, points, role: str) -> None:
        """A control point was placed: route it to the target segment, then refine that segment."""
        index = points.GetNumberOfControlPoints() - 1
        if index < 0:
            return
        node = self._parameterNode
        try:
            self.session.routePoint(points, index, role, node.inputVolume if node else None)
        except ProMISeError as error:
            self.setStatus(str(error), error=True)
            return
        segmentationNode, _unused = self.session.target()
        if node is not None and node.outputSegmentation is None and segmentationNode is not None:
            node.outputSegmentation = segmentationNode
        self.populateTargets()
        self.onPointsEdited(points, role, index)

    def onPointsEdited(self, points=None, role: str = "positive", index: int | None = None) -> None:
        """A point was placed or moved: with "update automatically", re-run its segment (queued if busy)."""
        self.updateButtons()
        node = self._parameterNode
        if node is None or not node.autoUpdate or not self._dependenciesReady or points is None:
            return
        from .nodes import point_segment_id

        if index is None:
            index = self._movedIndex(points)
        segmentId = point_segment_id(points, index) if index is not None and index >= 0 else None
        if segmentId is not None:
            self.runSegmentation(segmentIds=[segmentId])
        elif role == "positive" and index is not None and index >= 0:
            self.runSegmentation(pointIndices=[index])
        else:
            self.runSegmentation()  # an unrouted background point: every segment

    @staticmethod
    def _movedIndex(points) -> int | None:
        """The control point being moved (the markups display node's active point), if known."""
        display = points.GetDisplayNode()
        if display is not None and hasattr(display, "GetActiveControlPoint"):
            active = display.GetActiveControlPoint()
            if 0 <= active < points.GetNumberOfControlPoints():
                return active
        return None

    # --- the target segment -------------------------------------------------------------------
    def outputSegmentation(self):
        node = self._parameterNode
        if node is None:
            return None
        if node.outputSegmentation is not None:
            return node.outputSegmentation
        return self.logic.findSegmentationFor(node.inputVolume) if node.inputVolume else None

    def populateTargets(self, caller=None) -> None:
        """List the output segmentation's segments as targets, keeping the session's target selected."""
        combo = self.ui.targetSegmentComboBox
        combo.blockSignals(True)
        combo.clear()
        combo.addItem(_("(new lesion on the next point)"), "")
        segmentationNode = self.outputSegmentation()
        if segmentationNode is not None:
            segmentation = segmentationNode.GetSegmentation()
            for n in range(segmentation.GetNumberOfSegments()):
                combo.addItem(segmentation.GetNthSegment(n).GetName(), segmentation.GetNthSegmentID(n))
        targetNode, targetId = self.session.target() if self.session else (None, None)
        if targetNode is not segmentationNode:
            targetId = None
            if self.session is not None:
                self.session.setTarget(segmentationNode, None)
        self._selectComboData(combo, targetId or "")
        if not targetId:
            combo.currentIndex = 0
        combo.blockSignals(False)

    def onTargetChanged(self, index=None) -> None:
        segmentId = self.ui.targetSegmentComboBox.currentData or None
        try:
            self.session.setTarget(self.outputSegmentation(), segmentId)
        except ProMISeError as error:
            self.setStatus(str(error), error=True)
            self.populateTargets()

    def onNewLesionButton(self) -> None:
        """Start a new lesion: an empty segment that the next points refine."""
        node = self._parameterNode
        if node is None or self.logic.busy:
            return
        try:
            segmentId = self.session.newLesion(node.inputVolume, node.outputSegmentation)
        except ProMISeError as error:
            self.setStatus(str(error), error=True)
            return
        segmentationNode, _unused = self.session.target()
        if node.outputSegmentation is None:
            node.outputSegmentation = segmentationNode
        self.populateTargets()
        name = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
        self.setStatus(_("New lesion {name}: place a point on it.").format(name=name))
        self.placePositive()
