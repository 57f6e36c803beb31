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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
from ProMISeLib.errors import EmptySegmentationError, InvalidInputError, ProMISeError, SegmentationCancelled
from ProMISeLib.runtimes import RUNTIMES

from . import nodes
from .undo import UndoStack, UndoStep

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


#: How a click becomes per-slice box prompts (``ProMISeLib.engine.PROMPT_MODES``; repeated here so
#: that importing the logic imports no torch): the engine's choice, the rule-based box search ranked
#: by the learned prompter, the learned prompter alone, or the rule-based (heuristic) search alone.
PROMPT_MODES = ("auto", "fused", "learned", "heuristic")


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
        """One line for the status bar: segments, mL each, time, model, device, method and the engine's warnings."""
        parts = [f"{o.label} {o.volume_ml:.2f} mL" for o in self.objects]
        text = f"{', '.join(parts)} in {self.elapsed_s:.1f} s"
        facts = [fact for fact in (self.model if self.device else "", self.device, self.method) if fact]
        if facts:
            text += f" [{', '.join(facts)}]"
        if self.messages:
            text += " - " + "; ".join(self.messages)
        return text


def checkRuntime(runtime: str) -> str:
    """``runtime`` if the engine offers it ("auto", "torch" or "onnx"), else InvalidInputError."""
    if runtime not in RUNTIMES:
        raise InvalidInputError(f"unknown runtime {runtime!r}; use {', '.join(RUNTIMES)}")
    return runtime


def checkPrompts(prompts: str) -> str:
    """``prompts`` if the engine offers it ("auto", "fused", "learned" or "heuristic"), else InvalidInputError."""
    from ProMISeLib.engine import check_prompts

    return check_prompts(prompts)


@dataclass(frozen=True)
class ModelNotes:
    """What the panel tells about a model beyond the registry's list."""

    name: str
    volume3d: bool  # a whole-volume ProMISe 3D model: slow on a CPU, no negative clicks, no box prompts
    addedByHand: bool  # its checkpoint is downloaded by hand from ``page`` and added (not downloadable)
    page: str = ""
    sourceHint: str = ""  # the file to download from ``page``


def default_model() -> str:
    from ProMISeLib.models.registry import DEFAULT_MODEL

    return DEFAULT_MODEL


class ProMISeModuleLogic(_LogicBase):
    """Segments from fiducials, with an undo stack and one cached engine per (model, device, runtime, prompts).

    The engine (and its embedding cache) is kept between calls, so re-running after moving a
    fiducial on the same volume reuses the image embeddings. Nothing is imported from torch or
    downloaded until the first :meth:`segment` call.
    """

    def __init__(self, segmenterFactory: Callable | None = None):
        if _LogicBase is not object:
            _LogicBase.__init__(self)
        #: ``factory(model=..., device=..., runtime=..., prompts=...)`` returning an object with the
        #: engine's ``segment`` method; ``None`` means ``ProMISeLib.engine.Segmenter``.
        self.segmenterFactory = segmenterFactory
        self.undoStack = UndoStack()
        self._segmenter = None
        self._segmenterKey: tuple[str, str, str, str] | None = None
        self._cancelRequested = False
        self._busy = False
        self._lastArray: tuple | None = None

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
        self._segmenter = None
        self._segmenterKey = None
        self._lastArray = None

    @property
    def busy(self) -> bool:
        return self._busy

    def requestCancel(self) -> None:
        """Ask the running :meth:`segment` to stop; it raises SegmentationCancelled and writes nothing."""
        self._cancelRequested = True

    def _volumeArray(self, volumeNode):
        """The volume's (K, J, I) view and grid; the same view object while the voxels are unchanged.

        The engine reuses intensity normalisation for the same array object, so the view is kept
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
    def _groups(points: list[nodes.ControlPoint]) -> list[tuple[str, list[nodes.ControlPoint]]]:
        """Positive points grouped by label, in order of first appearance: one segment per group."""
        groups: dict[str, list[nodes.ControlPoint]] = {}
        for point in points:
            groups.setdefault(point.label, []).append(point)
        return list(groups.items())

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
    ) -> SegmentRun:
        """Segment the object under each positive fiducial of ``pointsNode`` in ``volumeNode``.

        - Control points that share a label prompt one object together; each label gives one
          segment named after it (Slicer labels points F-1, F-2, ... so by default every point is
          its own segment). ``negativePointsNode``'s points are background prompts for every object.
        - Points are read in world coordinates (parent transforms of the markups and the volume are
          followed) and must lie inside the volume.
        - Results go to ``segmentationNode``; when it is None, to the segmentation ProMISe made
          earlier for this volume, or to a new one that references the volume. A segment that
          ProMISe made earlier from the same fiducial is replaced; no other segment is touched.
        - ``pointIndices`` limits the run to the labels of those control points (auto re-run).
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
        if self._busy:
            raise InvalidInputError("a segmentation is already running; wait for it or cancel it")
        runtime = checkRuntime(runtime)
        prompts = checkPrompts(prompts)
        self._busy = True
        self._cancelRequested = False
        try:
            return self._segment(
                volumeNode, pointsNode, segmentationNode, negativePointsNode, model, device,
                progressCallback, pointIndices, cancelCallback, runtime, prompts,
            )
        finally:
            self._busy = False

    def _segment(self, volumeNode, pointsNode, segmentationNode, negativePointsNode, model, device,
                 progressCallback, pointIndices, cancelCallback, runtime, prompts) -> SegmentRun:
        started = time.perf_counter()
        # 1. check everything before any work or any change to the scene
        array, geometry = self._volumeArray(volumeNode)
        if pointsNode is None:
            raise InvalidInputError("no positive points: place a fiducial on the object to segment")
        positives = nodes.control_points(pointsNode, volumeNode, "positive")
        if not positives:
            raise InvalidInputError(
                f'"{pointsNode.GetName()}" has no placed points: place a fiducial on the object to segment'
            )
        negatives = nodes.control_points(negativePointsNode, volumeNode, "negative")
        nodes.locate_points(geometry, positives, "positive")
        nodes.locate_points(geometry, negatives, "negative")
        groups = self._groups(positives)
        if pointIndices is not None:
            wanted = set(int(i) for i in pointIndices)
            groups = [(label, pts) for label, pts in groups if any(p.index in wanted for p in pts)]
            if not groups:
                raise InvalidInputError("none of the given control points is placed")
        if segmentationNode is None:
            segmentationNode = self.findSegmentationFor(volumeNode)
        if segmentationNode is not None:
            nodes.check_segmentation_writable(segmentationNode)
            nodes.volume_to_segmentation_matrix(volumeNode, segmentationNode)  # raises if non-linear

        # 2. run the engine for every object; nothing is written yet
        model = model or default_model()
        segmenter = self.getSegmenter(model, device, runtime, prompts)
        negative_ras = np.array([p.ras for p in negatives]) if negatives else None

        def cancelled() -> bool:
            return self._cancelRequested or bool(cancelCallback and cancelCallback())

        results = []
        for n, (label, points) in enumerate(groups):
            if cancelled():
                raise SegmentationCancelled("segmentation cancelled; nothing was changed")

            def progress(fraction: float, message: str, n=n, label=label) -> None:
                if progressCallback is not None:
                    total = (n + min(max(float(fraction), 0.0), 1.0)) / len(groups)
                    progressCallback(total, f'"{label}" ({n + 1}/{len(groups)}): {message}')

            result = segmenter.segment(
                array, geometry, np.array([p.ras for p in points]), negative_points=negative_ras,
                space="ras", progress=progress, cancel=cancelled,
            )
            if tuple(result.mask.shape) != tuple(array.shape):
                raise ProMISeError(f"the engine returned a mask of shape {result.mask.shape}, expected {array.shape}")
            if result.bbox_kji is None or result.voxel_count == 0:
                detail = "; ".join(getattr(result, "messages", []) or []) or "the model found nothing at the point"
                raise EmptySegmentationError(f'"{label}": {detail}')
            results.append((label, points, result))
        if cancelled():
            raise SegmentationCancelled("segmentation cancelled; nothing was changed")

        # 3. write all segments as one undo step (rolled back if any write fails)
        run = self._write(volumeNode, pointsNode, segmentationNode, results, model)
        run.elapsed_s = time.perf_counter() - started
        run.model = model
        run.runtime = str(getattr(results[-1][2], "runtime", runtime)) if results else runtime  # what ran
        run.prompts = prompts
        run.device = str(getattr(results[-1][2], "device", device)) if results else device
        if progressCallback is not None:
            progressCallback(1.0, run.summary())
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

    def _write(self, volumeNode, pointsNode, segmentationNode, results, model) -> SegmentRun:
        created = segmentationNode is None
        if created:
            segmentationNode = self._newSegmentationNode(volumeNode)
        segmentation = segmentationNode.GetSegmentation()
        if segmentation.GetNumberOfSegments() == 0:
            nodes.set_source_representation_name(segmentation, nodes.binary_labelmap_name())
            if segmentationNode.GetNodeReference(segmentationNode.GetReferenceImageGeometryReferenceRole()) is None:
                segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        matrix = nodes.volume_to_segmentation_matrix(volumeNode, segmentationNode)
        labels = ", ".join(label for label, _, _ in results)
        step = UndoStep(f"ProMISe: {labels}", segmentationNode, createdNode=created)
        run = SegmentRun(segmentationNode)
        wasModifying = segmentationNode.StartModify()
        try:
            for label, points, result in results:
                ids = [p.id for p in points]
                segmentId = nodes.find_own_segment(segmentationNode, pointsNode.GetID(), ids)
                replaced = segmentId is not None
                if segmentId is None:
                    color = PALETTE[segmentation.GetNumberOfSegments() % len(PALETTE)]
                    segmentId = segmentation.GenerateUniqueSegmentID("ProMISe")
                    step.snapshots.append(nodes.snapshot_segment(segmentationNode, segmentId))
                    segmentation.AddEmptySegment(segmentId, label, color)
                else:
                    step.snapshots.append(nodes.snapshot_segment(segmentationNode, segmentId))
                segment = segmentation.GetSegment(segmentId)
                segment.SetName(label)
                segment.SetTag(nodes.TAG_MARKUPS, pointsNode.GetID())
                segment.SetTag(nodes.TAG_POINTS, ",".join(ids))
                segment.SetTag(nodes.TAG_MODEL, str(getattr(result, "model", model)))
                nodes.write_segment(segmentationNode, segmentId, result.mask, result.bbox_kji, matrix)
                run.objects.append(
                    SegmentedObject(label, segmentId, result, [p.voxel_kji for p in points], replaced)
                )
        except Exception:
            segmentationNode.EndModify(wasModifying)
            try:
                UndoStack.apply(step)
            except Exception:  # pragma: no cover - best effort; the original error matters more
                logging.exception("ProMISe: could not roll back a failed write")
            raise
        segmentationNode.EndModify(wasModifying)
        self.undoStack.push(step)
        return run

    # --- undo ---------------------------------------------------------------------------------
    def canUndo(self) -> bool:
        return self.undoStack.canUndo()

    def undo(self) -> str:
        """Restore the segments the last run changed (removing those it added); returns what was undone."""
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
        from .batch import segment_files

        return segment_files(self, cases, outputFolder, model, device, progressCallback, stopOnError, scene,
                             runtime=runtime, prompts=prompts)

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
        from ProMISeLib.models.registry import get_model_spec
        from ProMISeLib.weights import download_weights

        return download_weights(get_model_spec(name).weights, progress=progressCallback, cancel=cancelCallback)

    @staticmethod
    def modelNotes(name: str | None) -> ModelNotes:
        """Is ``name`` (None: the default) a ProMISe 3D model; is it added by hand, and from where."""
        from ProMISeLib.models.registry import VOLUME3D, get_model_spec
        from ProMISeLib.weights import weights_file

        spec = get_model_spec(name or default_model())
        entry = weights_file(spec.weights)
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
        from ProMISeLib.weights import remove_downloaded_weights

        self.releaseSegmenter()
        return list(remove_downloaded_weights())


def getSlicerScene():
    """``slicer.mrmlScene`` (inside Slicer, or as a test fixture sets it)."""
    scene = getattr(slicer, "mrmlScene", None)
    if scene is None:
        raise InvalidInputError("no MRML scene: run inside Slicer or pass scene=")
    return scene
