"""ProMISe's own undo stack: the segments one run changed, as they were before it.

Snapshotting the whole scene (Slicer's scene undo) would copy every segment on every click; this
keeps only the segments a run wrote, cropped to their voxels, like nnInteractive does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ProMISeLib.errors import InvalidInputError

from .nodes import SegmentSnapshot, restore_segment


@dataclass
class UndoStep:
    """What one run changed: snapshots of the segments before it, and whether it made the node."""

    description: str
    segmentationNode: object
    snapshots: list[SegmentSnapshot] = field(default_factory=list)
    createdNode: bool = False


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
        """Undo the last step; returns its description."""
        if not self._steps:
            raise InvalidInputError("nothing to undo")
        step = self._steps.pop()
        self.apply(step)
        return step.description
