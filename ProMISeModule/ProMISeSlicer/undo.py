"""The panel's undo: put back the segments one run changed, never over edits made after it.

Each step keeps the segments a run wrote as they were before it (cropped to their voxels, like
nnInteractive does) and a digest of each as the run left it. Undo restores a step only while every
one of its segments is still as the run left it: a segment painted, erased or removed after the run
makes undo refuse (nothing is changed), so a manual edit is never overwritten. Inside the Segment
Editor the ProMISe effect uses the editor's own undo (``saveStateForUndo``, Ctrl+Z) instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ProMISeLib.errors import InvalidInputError

from .nodes import SegmentSnapshot, restore_segment, segment_fingerprint


class EditedSinceRunError(InvalidInputError):
    """A segment the run wrote was changed afterwards: undo would overwrite that change."""


@dataclass
class UndoStep:
    """What one run changed: snapshots of the segments before it, digests after it, and whether it made the node."""

    description: str
    segmentationNode: object
    snapshots: list[SegmentSnapshot] = field(default_factory=list)
    createdNode: bool = False
    after: dict[str, str | None] = field(default_factory=dict)  # segment ID -> digest when the run finished

    def recordAfter(self) -> None:
        """Remember how the run left each segment it wrote (call once the writes are done)."""
        self.after = {s.segmentId: segment_fingerprint(self.segmentationNode, s.segmentId) for s in self.snapshots}

    def editedSegments(self) -> list[str]:
        """Names (or IDs) of the segments that changed since :meth:`recordAfter`."""
        node = self.segmentationNode
        segmentation = node.GetSegmentation()
        edited = []
        for segmentId, digest in self.after.items():
            if segment_fingerprint(node, segmentId) != digest:
                segment = segmentation.GetSegment(segmentId)
                edited.append(segment.GetName() if segment is not None else segmentId)
        return edited


class UndoStack:
    """Last-in first-out steps, at most ``maxDepth`` of them (the oldest are dropped)."""

    def __init__(self, maxDepth: int = 20):
        self.maxDepth = maxDepth
        self._steps: list[UndoStep] = []

    def __len__(self) -> int:
        return len(self._steps)

    def canUndo(self) -> bool:
        return bool(self._steps)

    def push(self, step: UndoStep) -> None:
        self._steps.append(step)
        del self._steps[: max(0, len(self._steps) - self.maxDepth)]

    def clear(self) -> None:
        self._steps.clear()

    def peek(self) -> UndoStep | None:
        return self._steps[-1] if self._steps else None

    def discard(self, segmentationNode) -> None:
        """Forget the steps of a segmentation node (e.g. one a batch run removes from the scene)."""
        self._steps = [s for s in self._steps if s.segmentationNode is not segmentationNode]

    @staticmethod
    def apply(step: UndoStep) -> None:
        """Restore the step's segments (newest first); remove the node if the step made it and it is empty."""
        node = step.segmentationNode
        scene = node.GetScene()
        if scene is None:
            raise InvalidInputError(f"segmentation \"{node.GetName()}\" was removed from the scene; nothing to undo")
        for snapshot in reversed(step.snapshots):
            restore_segment(node, snapshot)
        if step.createdNode and node.GetSegmentation().GetNumberOfSegments() == 0:
            scene.RemoveNode(node)

    def undo(self) -> str:
        """Undo the last step; returns its description.

        Raises EditedSinceRunError (and changes nothing) when a segment of the step was edited after it.
        """
        if not self._steps:
            raise InvalidInputError("nothing to undo")
        step = self._steps[-1]
        if step.segmentationNode.GetScene() is None:
            self._steps.pop()
            raise InvalidInputError(
                f"segmentation \"{step.segmentationNode.GetName()}\" was removed from the scene; nothing to undo")
        edited = step.editedSegments()
        if edited:
            raise EditedSinceRunError(
                f"not undone: {', '.join(edited)} changed after the ProMISe run; undo those edits first "
                "(Segment Editor: Ctrl+Z), so that they are not overwritten"
            )
        self._steps.pop()
        self.apply(step)
        return step.description
