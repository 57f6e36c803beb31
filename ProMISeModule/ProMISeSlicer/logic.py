"""ProMISeModuleLogic: fiducials + volume -> segments, usable from the GUI, the console and scripts.

Imports only ``slicer``, ``vtk``, numpy and ``ProMISeLib`` (no ``qt``/``ctk``), so the same class runs
inside Slicer (where it derives from ``ScriptedLoadableModuleLogic``) and under PyPI's
``slicer-core`` in tests.

Console use::

    logic = slicer.util.getModuleLogic("ProMISeModule")
    run = logic.segment(volumeNode, pointsNode)          # one segment per fiducial label
    print(run.summary())
    run = logic.segment(volumeNode, pointsNode, runtime="torch")  # the same with PyTorch (default: auto)
    run = logic.segment(volumeNode, pointsNode, prompts="heuristic")  # rule-based box prompts
    print(run.method)                                    # which prompts ran, e.g. "heuristic box prompts"

A run has three steps, so that the panel and the Segment Editor effect can run the engine off the GUI
thread (:mod:`.worker`): :meth:`ProMISeModuleLogic.prepareRun` reads and checks the scene (main thread),
:meth:`ProMISeModuleLogic.computeRun` runs the engine (any one thread) and
:meth:`ProMISeModuleLogic.applyRun` writes the segments (main thread). :meth:`segment` does all three.

Which segment a point prompts: a control point whose description names a segment
(``nodes.SEGMENT_PREFIX``, set by the panel and the effect) refines that segment; the other points are
grouped by label, one segment per label (the console's rule). Every run passes all the clicks so far
for a segment, so the engine's remembered lesion (per volume array) redoes only the new click's part.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
from ProMISeLib.errors import EmptySegmentationError, InvalidInputError, ProMISeError, SegmentationCancelled

from . import nodes
from .batch import segment_batch, segment_files
from .options import PROMPT_MODES, checkPrompts, checkRuntime, default_model
from .undo import UndoStack, UndoStep
from .worker import BackgroundRunner

__all__ = ["ATTR_ROI_SEGMENT", "ATTR_VOLUME", "PALETTE", "PROMPT_MODES", "ModelNotes", "PreparedRun",
           "ProMISeModuleLogic", "PromptGroup", "SegmentRun", "SegmentedObject", "checkPrompts", "checkRuntime",
           "default_model"]

try:  # inside Slicer; absent from slicer-core, where the logic is a plain class
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic as _LogicBase
except ImportError:  # pragma: no cover - depends on the environment
    _LogicBase = object

ProgressCallback = Callable[[float, str], None]

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


@dataclass
class SegmentedObject:
    """One fiducial label's segment: where it went and what the engine said."""

    label: str
    segmentId: str
    result: object  # ProMISeLib.result.SegmentationResult
    voxels_kji: list[tuple[int, int, int]]
    replaced: bool

    @property
    def volume_ml(self) -> float:
        return float(self.result.volume_ml)

    @property
    def messages(self) -> list[str]:
        return list(getattr(self.result, "messages", []) or [])

    @property
    def alternative(self) -> int:
        """Which hypothesis of its first click the segment shows (0: the best)."""
        return int(getattr(self.result, "alternative", 0))

    @property
    def alternatives(self) -> int:
        """How many distinct hypotheses its first click has."""
        return int(getattr(self.result, "alternatives", 1))


@dataclass
class SegmentRun:
    """What one :meth:`ProMISeModuleLogic.segment` call did."""

    segmentationNode: object
    objects: list[SegmentedObject] = field(default_factory=list)
    elapsed_s: float = 0.0
    model: str = ""
    device: str = ""
    runtime: str = ""
    prompts: str = ""  # what was asked for ("auto", "fused", "learned", "heuristic"); :attr:`method` says what ran

    @property
    def messages(self) -> list[str]:
        return [f"{o.label}: {m}" for o in self.objects for m in o.messages]

    @property
    def method(self) -> str:
        """How the engine prompted the model, e.g. "learned prompts (NAME)" or "heuristic box prompts"."""
        methods = [str(getattr(o.result, "method", "") or "") for o in self.objects]
        return "; ".join(dict.fromkeys(m for m in methods if m))

    def summary(self) -> str:
        """One line for the status bar: segments, mL each (and the candidate shown, where a click has several),
        time, model, device, method and the engine's warnings."""
        parts = [f"{o.label} {o.volume_ml:.2f} mL" + (f" (candidate {o.alternative + 1} of {o.alternatives})"
                                                      if o.alternatives > 1 else "") for o in self.objects]
        text = f"{', '.join(parts)} in {self.elapsed_s:.1f} s"
        facts = [fact for fact in (self.model if self.device else "", self.device, self.method) if fact]
        if facts:
            text += f" [{', '.join(facts)}]"
        if self.messages:
            text += " - " + "; ".join(self.messages)
        return text


@dataclass(frozen=True)
class ModelNotes:
    """What the panel tells about a model beyond the registry's list."""

    name: str
    volume3d: bool  # a whole-volume ProMISe 3D model: slow on a CPU, no negative clicks, no box prompts
    addedByHand: bool  # its checkpoint is downloaded by hand from ``page`` and added (not downloadable)
    page: str = ""
    sourceHint: str = ""  # the file to download from ``page``


@dataclass
class PromptGroup:
    """The prompts of one segment: its positive and negative points and an optional box."""

    label: str  # the name a new segment gets
    segmentId: str | None  # the routed target segment, or None: the segment of these points by label
    positives: list[nodes.ControlPoint] = field(default_factory=list)
    negatives: list[nodes.ControlPoint] = field(default_factory=list)
    box: np.ndarray | None = None  # 2 x 3 opposite corners in the volume's RAS
    alternative: int = 0  # the first click's hypothesis to follow (0: the best)
    inherited: bool = False  # the alternative is the segment's from before (the best if this click lacks it)


@dataclass
class PreparedRun:
    """A checked run: what :meth:`ProMISeModuleLogic.computeRun` needs, read from the scene."""

    volumeNode: object
    pointsNode: object
    segmentationNode: object  # None: made when the results are written
    array: np.ndarray
    geometry: object
    groups: list[PromptGroup]
    model: str
    device: str
    runtime: str
    prompts: str
    recordUndo: bool = True
    started: float = field(default_factory=time.perf_counter)
    results: list = field(default_factory=list)  # (group, engine result), filled by computeRun


def engineTakesBox(segmenter) -> bool:
    """Does the engine's ``segment`` accept a ``box`` keyword (an axis-aligned box prompt)?"""
    try:
        return "box" in inspect.signature(segmenter.segment).parameters
    except (TypeError, ValueError):
        return False


class ProMISeModuleLogic(_LogicBase):
    """Segments from fiducials, with an undo stack, one cached engine and one worker thread for it.

    The engine (and its embedding cache and remembered lesions) is kept between calls, so re-running
    after adding or moving a point on the same volume reuses the image embeddings. Nothing is
    imported from torch or downloaded until the first run.
    """

    _shared: ProMISeModuleLogic | None = None

    def __init__(self, segmenterFactory: Callable | None = None):
        if _LogicBase is not object:
            _LogicBase.__init__(self)
        #: ``factory(model=..., device=..., runtime=..., prompts=...)`` returning an object with the
        #: engine's ``segment`` method; ``None`` means ``ProMISeLib.engine.Segmenter``.
        self.segmenterFactory = segmenterFactory
        self.undoStack = UndoStack()
        #: The model, device, runtime and prompts the panel chose; the Segment Editor effect uses them too.
        self.runOptions: dict[str, str | None] = {"model": None, "device": "auto", "runtime": "auto",
                                                  "prompts": "auto"}
        self._segmenter = None
        self._segmenterKey: tuple[str, str, str, str] | None = None
        self._cancelRequested = False
        self._busy = False
        self._lastArray: tuple | None = None
        self._runner: BackgroundRunner | None = None

    @classmethod
    def shared(cls) -> ProMISeModuleLogic:
        """The logic the panel and the Segment Editor effect share (one engine, one worker thread)."""
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    # --- engine -------------------------------------------------------------------------------
    def getSegmenter(self, model: str | None = None, device: str = "auto", runtime: str = "auto",
                     prompts: str = "auto"):
        """The cached engine for (model, device, runtime, prompts), made on first use.

        One engine is kept: asking for another model, device, runtime or prompts replaces it (and its caches).
        """
        model = model or default_model()
        runtime = checkRuntime(runtime)
        prompts = checkPrompts(prompts)
        key = (model, device, runtime, prompts)
        if self._segmenter is None or self._segmenterKey != key:
            factory = self.segmenterFactory
            if factory is None:
                from ProMISeLib.engine import Segmenter as factory
            self._segmenter = None  # drop the previous engine and its caches before making the next
            self._segmenter = factory(model=model, device=device, runtime=runtime, prompts=prompts)
            self._segmenterKey = key
        return self._segmenter

    def releaseSegmenter(self) -> None:
        """Drop the engine and its caches (frees memory; the next run loads the model again)."""
        if self.busy:
            raise InvalidInputError("a segmentation is running; cancel it first")
        self._segmenter = None
        self._segmenterKey = None
        self._lastArray = None

    @property
    def runner(self) -> BackgroundRunner:
        """The worker thread that holds the engine for the panel and the effect (made on first use)."""
        if self._runner is None:
            self._runner = BackgroundRunner()
        return self._runner

    @property
    def busy(self) -> bool:
        """True while a run is in progress here or on the worker (then Segment and Undo are refused)."""
        return self._busy or (self._runner is not None and self._runner.busy)

    def requestCancel(self) -> None:
        """Ask the running segmentation to stop; it raises SegmentationCancelled and writes nothing."""
        self._cancelRequested = True
        if self._runner is not None:
            self._runner.cancel()

    def _volumeArray(self, volumeNode):
        """The volume's (K, J, I) view and grid; the same view object while the voxels are unchanged.

        The engine remembers lesions and intensity normalisation per array object, so the view is kept
        (which also stops Python from reusing its id for another volume's array).
        """
        array, geometry = nodes.volume_array_and_geometry(volumeNode)
        image = volumeNode.GetImageData()
        key = (volumeNode.GetID(), image.GetMTime(), image.GetPointData().GetScalars().GetMTime(),
               array.shape, array.dtype.str, array.__array_interface__["data"][0])
        if self._lastArray is not None and self._lastArray[0] == key:
            return self._lastArray[1], geometry
        self._lastArray = (key, array)
        return array, geometry

    # --- points -------------------------------------------------------------------------------
    def pickVoxels(self, volumeNode, pointsNode) -> list[tuple[str, tuple[int, int, int]]]:
        """(label, (k, j, i)) of each defined control point: the voxel the engine is prompted with."""
        _, geometry = nodes.volume_array_and_geometry(volumeNode)
        points = nodes.control_points(pointsNode, volumeNode)
        nodes.locate_points(geometry, points, "positive")
        return [(p.label, p.voxel_kji) for p in points]

    @staticmethod
    def groupPrompts(positives: list[nodes.ControlPoint], negatives: list[nodes.ControlPoint],
                     box: np.ndarray | None = None, boxSegmentId: str | None = None,
                     boxLabel: str = "box") -> list[PromptGroup]:
        """One group per segment, in order of first appearance.

        A point routed to a segment (its description) prompts that segment; the others are grouped by
        label. A routed negative point belongs to its segment only; an unrouted one to every group. The box
        goes to ``boxSegmentId``'s group (made if no point prompts it), else to the only group, else it
        makes a group of its own.
        """
        groups: dict[tuple[str, str], PromptGroup] = {}
        for point in positives:
            key = ("segment", point.segmentId) if point.segmentId else ("label", point.label)
            group = groups.setdefault(key, PromptGroup(point.label, point.segmentId))
            group.positives.append(point)
        if box is not None:
            if boxSegmentId is not None:
                group = groups.setdefault(("segment", boxSegmentId), PromptGroup(boxLabel, boxSegmentId))
            elif len(groups) == 1:
                group = next(iter(groups.values()))
            elif not groups:
                group = groups.setdefault(("label", boxLabel), PromptGroup(boxLabel, None))
            else:
                raise InvalidInputError("the box prompt fits several segments: choose the target segment for it")
            group.box = np.asarray(box, float)
        for point in negatives:
            if point.segmentId:
                group = groups.get(("segment", point.segmentId))
                if group is not None:
                    group.negatives.append(point)
            else:
                for group in groups.values():
                    group.negatives.append(point)
        return list(groups.values())

    # --- segmentation -------------------------------------------------------------------------
    def segment(
        self,
        volumeNode,
        pointsNode,
        segmentationNode=None,
        negativePointsNode=None,
        model: str | None = None,
        device: str = "auto",
        progressCallback: ProgressCallback | None = None,
        pointIndices: Sequence[int] | None = None,
        cancelCallback: Callable[[], bool] | None = None,
        runtime: str = "auto",
        prompts: str = "auto",
        roiNode=None,
        segmentIds: Sequence[str] | None = None,
        alternative: int | None = None,
    ) -> SegmentRun:
        """Segment the object under each positive fiducial of ``pointsNode`` in ``volumeNode``.

        - Control points that share a label prompt one object together; each label gives one
          segment named after it (Slicer labels points F-1, F-2, ... so by default every point is
          its own segment). A point whose description routes it to a segment
          (``nodes.set_point_segment_id``; the panel and the effect do this) refines that segment instead.
          ``negativePointsNode``'s points are background prompts for their routed segment, or for every
          object when not routed.
        - ``roiNode`` (a Markups ROI) is a box prompt: for the segment named by its
          ``ProMISe.SegmentID`` attribute, else for the only object, else for a new segment named after it.
          ``pointsNode`` may then be None.
        - Points are read in world coordinates (parent transforms of the markups and the volume are
          followed) and must lie inside the volume.
        - Results go to ``segmentationNode``; when it is None, to the segmentation ProMISe made
          earlier for this volume, or to a new one that references the volume. A segment that
          ProMISe made earlier from the same fiducial (or the routed segment) is replaced; no other
          segment is touched.
        - ``pointIndices`` limits the run to the objects of those control points (auto re-run);
          ``segmentIds`` to those routed segments.
        - A first click can mean several structures: each object's ``alternatives`` says how many distinct
          hypotheses its click has, and ``alternative=n`` follows the n-th (0: the best). A segment keeps
          the hypothesis it was given (its ``ProMISe.Alternative`` tag) for later clicks, unless told another.
        - Every object is computed before anything is written: an error or a cancel
          (:meth:`requestCancel`, or ``cancelCallback()`` returning True) leaves the scene unchanged.
        - ``progressCallback(fraction, message)`` is called while the model runs.
        - ``model`` is a name from :meth:`models` (None: the default model); ``device`` is "auto"
          (CUDA when available), "cpu" or "cuda".
        - ``runtime`` is "auto" (the default: ONNX Runtime on a CPU where it is installed, the same masks
          faster, else PyTorch), "torch" (PyTorch) or "onnx" (ONNX Runtime: the model is exported
          to ONNX into the cache on first use, box-prompted models such as LiteMedSAM only; it runs on
          CUDA when ONNX Runtime can, else on the CPU, and then says so in the result's messages).
          ``run.runtime`` says which one ran.
        - ``prompts`` says how a click becomes per-slice box prompts for a box-trained model such as
          LiteMedSAM: "learned" (the prompter network shipped with the engine), "heuristic" (the
          rule-based box search), "fused" (the rule-based candidates ranked by the prompter network) or
          "auto" (the default: the mode the shipped prompter's card marks as validated best, else
          heuristic). The run's :attr:`SegmentRun.method` (and its summary) says which ran.
          ProMISe 3D models take no box prompts and ignore it.
          The logic keeps one engine per (model, device, runtime, prompts) and reuses it while they stay
          the same.

        Returns a :class:`SegmentRun`; raises a ``ProMISeLib.errors.ProMISeError`` subclass with a
        message fit for the user on bad input, an empty result or a cancel. One call is one undo step.
        """
        if self.busy:
            raise InvalidInputError("a segmentation is already running; wait for it or cancel it")
        if self._runner is not None:
            self._runner.settle()  # work ahead on the worker (the next candidate) must not share the engine
        prepared = self.prepareRun(volumeNode, pointsNode, segmentationNode, negativePointsNode, model, device,
                                   pointIndices, runtime, prompts, roiNode, segmentIds, alternative=alternative)
        self._busy = True
        self._cancelRequested = False
        try:
            def cancelled() -> bool:
                return self._cancelRequested or bool(cancelCallback and cancelCallback())

            self.computeRun(prepared, progressCallback, cancelled)
            run = self.applyRun(prepared)
        finally:
            self._busy = False
        if progressCallback is not None:
            progressCallback(1.0, run.summary())
        return run

    def prepareRun(self, volumeNode, pointsNode, segmentationNode=None, negativePointsNode=None,
                   model: str | None = None, device: str = "auto", pointIndices: Sequence[int] | None = None,
                   runtime: str = "auto", prompts: str = "auto", roiNode=None,
                   segmentIds: Sequence[str] | None = None, recordUndo: bool = True,
                   alternative: int | None = None) -> PreparedRun:
        """Read and check everything a run needs (main thread); raises before any work or change."""
        runtime = checkRuntime(runtime)
        prompts = checkPrompts(prompts)
        array, geometry = self._volumeArray(volumeNode)
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
            self._checkBoxOverlapsVolume(box, geometry, roiNode.GetName())
        if not positives and box is None:
            raise InvalidInputError(
                f'"{pointsNode.GetName()}" has no placed points: place a fiducial on the object to segment'
            )
        groups = self.groupPrompts(positives, negatives, box, boxSegmentId,
                                   roiNode.GetName() if roiNode is not None else "box")
        if pointIndices is not None:
            wanted = set(int(i) for i in pointIndices)
            groups = [g for g in groups if any(p.index in wanted for p in g.positives + g.negatives)]
            if not groups:
                raise InvalidInputError("none of the given control points is placed")
        if segmentationNode is None:
            segmentationNode = self.findSegmentationFor(volumeNode)
        if segmentIds is not None:
            wanted_ids = set(segmentIds)
            groups = [g for g in groups if (g.segmentId or self._ownSegment(g, pointsNode, segmentationNode))
                      in wanted_ids]
            if not groups:
                raise InvalidInputError("no positive point or box prompts the chosen segment yet")
        groups = [g for g in groups if g.positives or g.box is not None]
        if not groups:
            raise InvalidInputError("only background points: place a point on the object to segment")
        if segmentationNode is not None:
            nodes.check_segmentation_writable(segmentationNode)
            nodes.volume_to_segmentation_matrix(volumeNode, segmentationNode)  # raises if non-linear
        self._chooseAlternatives(groups, pointsNode, segmentationNode, alternative)
        return PreparedRun(volumeNode, pointsNode, segmentationNode, array, geometry, groups,
                           model or default_model(), device, runtime, prompts, recordUndo)

    @staticmethod
    def _ownSegment(group: PromptGroup, pointsNode, segmentationNode) -> str | None:
        """The segment an unrouted group's points made earlier, if any."""
        if segmentationNode is None or pointsNode is None or not group.positives:
            return None
        return nodes.find_own_segment(segmentationNode, pointsNode.GetID(), [p.id for p in group.positives])

    @staticmethod
    def _chooseAlternatives(groups: list[PromptGroup], pointsNode, segmentationNode, alternative: int | None) -> None:
        """Each group's hypothesis: ``alternative`` when given, else the one its segment was given before."""
        for group in groups:
            if alternative is not None:
                if alternative < 0 or (alternative and group.box is not None):
                    raise InvalidInputError("a candidate (from 0) is a hypothesis of a first point, not of a box")
                group.alternative = int(alternative)
            elif group.box is None and segmentationNode is not None:
                segmentId = group.segmentId or ProMISeModuleLogic._ownSegment(group, pointsNode, segmentationNode)
                segment = segmentationNode.GetSegmentation().GetSegment(segmentId) if segmentId else None
                tag = nodes.segment_tag(segment, nodes.TAG_ALTERNATIVE) if segment is not None else None
                group.alternative = int(tag) if tag and tag.isdigit() else 0
                group.inherited = True

    @staticmethod
    def _checkBoxOverlapsVolume(box: np.ndarray, geometry, name: str) -> None:
        corners = np.array([[box[a][0], box[b][1], box[c][2]] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
        ijk = geometry.to_index(corners, "ras")
        size = np.asarray(geometry.size, float)
        low, high = ijk.min(axis=0), ijk.max(axis=0)
        if np.any(high < -0.5) or np.any(low > size - 0.5):
            raise InvalidInputError(f'ROI "{name}" lies outside the volume')

    def computeRun(self, prepared: PreparedRun, progressCallback: ProgressCallback | None = None,
                   cancelCallback: Callable[[], bool] | None = None) -> PreparedRun:
        """Run the engine for every group (the worker thread, or the caller's); nothing is written.

        Fills ``prepared.results`` and returns ``prepared``. Raises SegmentationCancelled on a cancel,
        EmptySegmentationError when an object comes back empty.
        """
        segmenter = self.getSegmenter(prepared.model, prepared.device, prepared.runtime, prepared.prompts)
        groups = prepared.groups
        takesBox = engineTakesBox(segmenter)

        def cancelled() -> bool:
            return bool(cancelCallback and cancelCallback())

        results = []
        for n, group in enumerate(groups):
            if cancelled():
                raise SegmentationCancelled("segmentation cancelled; nothing was changed")

            def progress(fraction: float, message: str, n=n, label=group.label) -> None:
                if progressCallback is not None:
                    total = (n + min(max(float(fraction), 0.0), 1.0)) / len(groups)
                    progressCallback(total, f'"{label}" ({n + 1}/{len(groups)}): {message}')

            keywords = {"alternative": group.alternative} if group.alternative else {}
            if group.box is not None:
                if not takesBox:
                    raise InvalidInputError("this ProMISe engine takes no box prompts yet; place a point instead")
                keywords["box"] = tuple(tuple(float(v) for v in corner) for corner in group.box)
            points = np.array([p.ras for p in group.positives]) if group.positives else None
            negative = np.array([p.ras for p in group.negatives]) if group.negatives else None
            try:
                result = segmenter.segment(prepared.array, prepared.geometry, points, negative_points=negative,
                                           space="ras", progress=progress, cancel=cancelled, **keywords)
            except InvalidInputError:
                if not (group.alternative and group.inherited):
                    raise
                keywords.pop("alternative")  # the segment's hypothesis from before is not one of this click's
                result = segmenter.segment(prepared.array, prepared.geometry, points, negative_points=negative,
                                           space="ras", progress=progress, cancel=cancelled, **keywords)
            if tuple(result.mask.shape) != tuple(prepared.array.shape):
                raise ProMISeError(
                    f"the engine returned a mask of shape {result.mask.shape}, expected {prepared.array.shape}")
            if result.bbox_kji is None or result.voxel_count == 0:
                detail = "; ".join(getattr(result, "messages", []) or []) or "the model found nothing at the point"
                raise EmptySegmentationError(f'"{group.label}": {detail}')
            results.append((group, result))
        if cancelled():
            raise SegmentationCancelled("segmentation cancelled; nothing was changed")
        prepared.results = results
        return prepared

    def applyRun(self, prepared: PreparedRun) -> SegmentRun:
        """Write a computed run's segments as one undo step (main thread); returns the :class:`SegmentRun`."""
        results = prepared.results
        segmentationNode = prepared.segmentationNode
        if segmentationNode is not None and segmentationNode.GetScene() is None:
            raise InvalidInputError(f'segmentation "{segmentationNode.GetName()}" was removed during the run')
        run = self._write(prepared.volumeNode, prepared.pointsNode, segmentationNode, results, prepared.model,
                          prepared.recordUndo)
        run.elapsed_s = time.perf_counter() - prepared.started
        run.model = prepared.model
        run.runtime = str(getattr(results[-1][1], "runtime", prepared.runtime)) if results else prepared.runtime
        run.prompts = prepared.prompts
        run.device = str(getattr(results[-1][1], "device", prepared.device)) if results else prepared.device
        return run

    def findSegmentationFor(self, volumeNode):
        """The segmentation node ProMISe created for this volume earlier, if it is still in the scene."""
        scene = volumeNode.GetScene()
        if scene is None:
            return None
        for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
            node = scene.GetNthNodeByClass(n, "vtkMRMLSegmentationNode")
            if node.GetAttribute(ATTR_VOLUME) == volumeNode.GetID():
                return node
        return None

    def outputSegmentationFor(self, volumeNode):
        """The segmentation ProMISe writes into for this volume, made (empty) if there is none yet."""
        node = self.findSegmentationFor(volumeNode)
        return node if node is not None else self._newSegmentationNode(volumeNode)

    def _newSegmentationNode(self, volumeNode):
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

    @staticmethod
    def nextColor(segmentationNode) -> tuple[float, float, float]:
        return PALETTE[segmentationNode.GetSegmentation().GetNumberOfSegments() % len(PALETTE)]

    def _write(self, volumeNode, pointsNode, segmentationNode, results, model, recordUndo=True) -> SegmentRun:
        created = segmentationNode is None
        if created:
            segmentationNode = self._newSegmentationNode(volumeNode)
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
                    color = self.nextColor(segmentationNode)
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
        if recordUndo:
            step.recordAfter()
            self.undoStack.push(step)
        return run

    # --- undo ---------------------------------------------------------------------------------
    def canUndo(self) -> bool:
        return not self.busy and self.undoStack.canUndo()

    def undo(self) -> str:
        """Restore the segments the last run changed (removing those it added); returns what was undone.

        Refused while a run is in progress, and when a segment of the last run was edited since
        (``undo.EditedSinceRunError``): a manual edit is never overwritten.
        """
        if self.busy:
            raise InvalidInputError("a segmentation is running; undo when it has finished")
        return self.undoStack.undo()

    # --- batch --------------------------------------------------------------------------------
    def segmentFiles(
        self,
        cases: Iterable,
        outputFolder: str | Path | None = None,
        model: str | None = None,
        device: str = "auto",
        progressCallback: ProgressCallback | None = None,
        stopOnError: bool = False,
        scene=None,
        runtime: str = "auto",
        prompts: str = "auto",
    ) -> list[dict]:
        """Segment image files with their point lists and save one ``.seg.nrrd`` per image.

        See :func:`ProMISeSlicer.batch.segment_files` for the case format; ``model``, ``device``,
        ``runtime`` ("auto", "torch" or "onnx") and ``prompts`` ("auto", "fused", "learned" or "heuristic") are as for
        :meth:`segment`.
        """
        return segment_files(self, cases, outputFolder, model, device, progressCallback, stopOnError, scene,
                             runtime=runtime, prompts=prompts)

    def segmentBatch(self, manifest: str | Path, outputFolder: str | Path, **options) -> dict:
        """``promise batch`` in-process: see :func:`ProMISeSlicer.batch.segment_batch` (same manifest and results)."""
        return segment_batch(self, manifest, outputFolder, **options)

    # --- models -------------------------------------------------------------------------------
    @staticmethod
    def models() -> list:
        """The engine's model registry (name, title, size_mb, installed, location, downloadable)."""
        from ProMISeLib.models.registry import list_models

        return list(list_models())

    @staticmethod
    def downloadModel(name: str, progressCallback: ProgressCallback | None = None,
                      cancelCallback: Callable[[], bool] | None = None) -> Path:
        """Download a model's weights (pinned URL, SHA-256 checked) into the cache."""
        from ProMISeLib.io.weights import download_weights
        from ProMISeLib.models.registry import get_model_spec

        return download_weights(get_model_spec(name).weights, progress=progressCallback, cancel=cancelCallback)

    @staticmethod
    def modelNotes(name: str | None) -> ModelNotes:
        """Is ``name`` (None: the default) a ProMISe 3D model; is it added by hand, and from where."""
        from ProMISeLib.models.registry import VOLUME3D, get_model_spec

        spec = get_model_spec(name or default_model())
        entry = spec.weights
        return ModelNotes(spec.name, spec.kind == VOLUME3D, bool(entry.added and entry.remote is None),
                          entry.page, entry.source_hint)

    def addModelCheckpoint(self, name: str, path: str | Path) -> Path:
        """Install a checkpoint downloaded by hand (ProMISe 3D), as ``promise weights add NAME PATH`` does.

        The released file is read safely (tensors only), checked against the architecture and converted
        into the weights cache with its description; returns the installed file. An engine holding
        that model is dropped, so the next run loads the new weights.
        """
        from ProMISeLib.models.registry import add_model_weights

        installed = add_model_weights(name, Path(path).expanduser())
        if self._segmenterKey is not None and self._segmenterKey[0] == name:
            self.releaseSegmenter()
        return installed

    def removeDownloadedModels(self) -> list[Path]:
        """Delete downloaded weights (never files shipped in packages or pointed to by the user)."""
        from ProMISeLib.io.weights import remove_downloaded_weights

        self.releaseSegmenter()
        return list(remove_downloaded_weights())


def getSlicerScene():
    """``slicer.mrmlScene`` (inside Slicer, or as a test fixture sets it)."""
    scene = getattr(slicer, "mrmlScene", None)
    if scene is None:
        raise InvalidInputError("no MRML scene: run inside Slicer or pass scene=")
    return scene
