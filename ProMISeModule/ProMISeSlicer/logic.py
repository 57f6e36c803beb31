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
This file is the console API; the run's data and its engine step are :mod:`.run`, the reading of the prompts
and the writing of the segments :mod:`.scene`.

Which segment a point prompts: a control point whose description names a segment
(``nodes.SEGMENT_PREFIX``, set by the panel and the effect) refines that segment; the other points are
grouped by label, one segment per label (the console's rule). Every run passes all the clicks so far
for a segment, so the engine's remembered lesion (per volume array) redoes only the new click's part.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ProMISeLib.errors import InvalidInputError

from . import nodes
from .batch import segment_batch, segment_files
from .options import PROMPT_MODES, check_prompts, check_runtime, default_model
from .run import ModelNotes, PreparedRun, PromptGroup, SegmentedObject, SegmentRun, compute_results
from .scene import (
    ATTR_ROI_SEGMENT,
    ATTR_VOLUME,
    PALETTE,
    choose_alternatives,
    find_segmentation_for,
    next_color,
    output_segmentation_for,
    read_groups,
    write_results,
)
from .undo import UndoStack
from .worker import BackgroundRunner, ProgressCallback

__all__ = ["ATTR_ROI_SEGMENT", "ATTR_VOLUME", "PALETTE", "PROMPT_MODES", "ModelNotes", "PreparedRun",
           "ProMISeModuleLogic", "PromptGroup", "SegmentRun", "SegmentedObject", "check_prompts", "check_runtime",
           "default_model"]

try:  # inside Slicer; absent from slicer-core, where the logic is a plain class
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic as _LogicBase
except ImportError:  # pragma: no cover - depends on the environment
    _LogicBase = object


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
        runtime = check_runtime(runtime)
        prompts = check_prompts(prompts)
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
        runtime = check_runtime(runtime)
        prompts = check_prompts(prompts)
        array, geometry = self._volumeArray(volumeNode)
        if segmentationNode is None:
            segmentationNode = self.findSegmentationFor(volumeNode)
        groups = read_groups(volumeNode, geometry, pointsNode, negativePointsNode, roiNode, segmentationNode,
                             pointIndices, segmentIds)
        if segmentationNode is not None:
            nodes.check_segmentation_writable(segmentationNode)
            nodes.volume_to_segmentation_matrix(volumeNode, segmentationNode)  # raises if non-linear
        choose_alternatives(groups, pointsNode, segmentationNode, alternative)
        return PreparedRun(volumeNode, pointsNode, segmentationNode, array, geometry, groups,
                           model or default_model(), device, runtime, prompts, recordUndo)

    def computeRun(self, prepared: PreparedRun, progressCallback: ProgressCallback | None = None,
                   cancelCallback: Callable[[], bool] | None = None) -> PreparedRun:
        """Run the engine for every group (the worker thread, or the caller's); nothing is written.

        Fills ``prepared.results`` and returns ``prepared``. Raises SegmentationCancelled on a cancel,
        EmptySegmentationError when an object comes back empty.
        """
        segmenter = self.getSegmenter(prepared.model, prepared.device, prepared.runtime, prepared.prompts)
        prepared.results = compute_results(segmenter, prepared, progressCallback, cancelCallback)
        return prepared

    def applyRun(self, prepared: PreparedRun) -> SegmentRun:
        """Write a computed run's segments as one undo step (main thread); returns the :class:`SegmentRun`."""
        results = prepared.results
        segmentationNode = prepared.segmentationNode
        if segmentationNode is not None and segmentationNode.GetScene() is None:
            raise InvalidInputError(f'segmentation "{segmentationNode.GetName()}" was removed during the run')
        run = write_results(prepared.volumeNode, prepared.pointsNode, segmentationNode, results, prepared.model,
                            self.undoStack if prepared.recordUndo else None)
        run.elapsed_s = time.perf_counter() - prepared.started
        run.prepared = prepared
        run.model = prepared.model
        run.runtime = str(getattr(results[-1][1], "runtime", prepared.runtime)) if results else prepared.runtime
        run.prompts = prepared.prompts
        run.device = str(getattr(results[-1][1], "device", prepared.device)) if results else prepared.device
        return run

    def findSegmentationFor(self, volumeNode):
        """The segmentation node ProMISe created for this volume earlier, if it is still in the scene."""
        return find_segmentation_for(volumeNode)

    def outputSegmentationFor(self, volumeNode):
        """The segmentation ProMISe writes into for this volume, made (empty) if there is none yet."""
        return output_segmentation_for(volumeNode)

    @staticmethod
    def nextColor(segmentationNode) -> tuple[float, float, float]:
        """The colour of the node's next new segment (:data:`PALETTE` in turn)."""
        return next_color(segmentationNode)

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
