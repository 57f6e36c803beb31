"""The ProMISe panel (Qt): set-up, the parameter node, Segment/Cancel/Undo/Next candidate, progress, the worker.

The engine runs on the logic's worker thread (:mod:`.worker`); a ``qt.QTimer`` (:mod:`.poller`) applies
results on the main thread. Segment and Undo are disabled while a run is in progress; a point placed or
moved during a run is queued (only the latest) and runs next. The point lists and the target segment they
are routed to are :mod:`.points_panel`; the models, settings and dependencies :mod:`.models_panel`.
"""

from __future__ import annotations

import traceback

import qt
import slicer
import vtk
from ProMISeLib.errors import ProMISeError
from slicer import (
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from . import install
from .logic import ATTR_ROI_SEGMENT, ProMISeModuleLogic
from .models_panel import ModelsPanel
from .points_panel import PointsPanel
from .poller import ensure_polling
from .routing import PromptSession
from .run import encode_for_corrections
from .worker import CANCELLED, DONE, Job

DEVICES = (("auto", "Auto (GPU if available)"), ("cpu", "CPU"), ("cuda", "CUDA GPU"))
RUNTIMES = (("auto", "Auto (ONNX Runtime on CPU)"), ("torch", "PyTorch"), ("onnx", "ONNX Runtime"))
PROMPTS = (("auto", "Auto"), ("fused", "Fused (rules ranked by the network)"), ("learned", "Learned"),
           ("heuristic", "Rule-based"))
#: Keyboard shortcuts while the module is shown: place a positive point, a negative point, segment, new lesion,
#: next candidate.
SHORTCUTS = (("Alt+P", "placePositive"), ("Alt+N", "placeNegative"), ("Alt+S", "onSegmentButton"),
             ("Alt+L", "onNewLesionButton"), ("Alt+C", "onNextCandidateButton"))


@parameterNodeWrapper
class ProMISeModuleParameterNode:
    """The panel's state, saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    positivePoints: vtkMRMLMarkupsFiducialNode
    negativePoints: vtkMRMLMarkupsFiducialNode
    boxRoi: vtkMRMLMarkupsROINode
    outputSegmentation: vtkMRMLSegmentationNode
    model: str = ""
    device: str = "auto"
    runtime: str = "auto"
    prompts: str = "auto"
    autoUpdate: bool = True


class ProMISeModuleWidget(ModelsPanel, PointsPanel, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: inputs, target segment, model/prompts/device/runtime, Segment/Cancel/Undo, progress, models."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.session = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._observedPoints = []
        self._shortcuts = []
        self._dependenciesReady = False
        self._downloadCancelled = False
        self._candidates: dict[str, tuple[int, int]] = {}  # segment ID -> (candidate shown, candidates)

    # --- set-up -------------------------------------------------------------------------------
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ProMISeModule.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = ProMISeModuleLogic.shared()
        self.session = PromptSession(self.logic)
        self.logic.runner.listeners.append(self.onRunnerChanged)

        for placeWidget in (self.ui.positivePlaceWidget, self.ui.negativePlaceWidget):
            placeWidget.setMRMLScene(slicer.mrmlScene)
            placeWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
        for device, text in DEVICES:
            self.ui.deviceComboBox.addItem(text, device)
        for runtime, text in RUNTIMES:
            self.ui.runtimeComboBox.addItem(text, runtime)
        for prompts, text in PROMPTS:
            self.ui.promptsComboBox.addItem(_(text), prompts)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.positivePointsSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onPointsNodeChanged)
        self.ui.negativePointsSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onPointsNodeChanged)
        self.ui.outputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.populateTargets)
        self.ui.targetSegmentComboBox.connect("currentIndexChanged(int)", self.onTargetChanged)
        self.ui.newLesionButton.connect("clicked(bool)", self.onNewLesionButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.runtimeComboBox.connect("currentIndexChanged(int)", self.onRuntimeChanged)
        self.ui.promptsComboBox.connect("currentIndexChanged(int)", self.onPromptsChanged)
        self.ui.modelsTable.connect("itemSelectionChanged()", self.updateModelNotes)
        self.ui.addCheckpointButton.connect("clicked(bool)", self.onAddCheckpointButton)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.undoButton.connect("clicked(bool)", self.onUndoButton)
        self.ui.nextCandidateButton.connect("clicked(bool)", self.onNextCandidateButton)
        self.ui.downloadModelButton.connect("clicked(bool)", self.onDownloadModelButton)
        self.ui.cancelDownloadButton.connect("clicked(bool)", self.onCancelDownloadButton)
        self.ui.removeModelsButton.connect("clicked(bool)", self.onRemoveModelsButton)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependenciesButton)

        self.populateModels()
        self.initializeParameterNode()
        self.unsupported = install.unsupported_reason()  # Python < 3.10 or Slicer < 5.10: say so, never fail later
        if self.unsupported:
            self.setStatus(self.unsupported, error=True)
            self.updateButtons()

    def cleanup(self) -> None:
        self.removeObservers()
        self._unobservePoints()
        self._removeShortcuts()
        if self.logic is not None and self.onRunnerChanged in self.logic.runner.listeners:
            self.logic.runner.listeners.remove(self.onRunnerChanged)

    def enter(self) -> None:
        self.initializeParameterNode()
        self._installShortcuts()

    def exit(self) -> None:
        self._removeShortcuts()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        for placeWidget in (self.ui.positivePlaceWidget, self.ui.negativePlaceWidget):
            placeWidget.setPlaceModeEnabled(False)

    def _installShortcuts(self) -> None:
        if self._shortcuts:
            return
        mainWindow = slicer.util.mainWindow()
        if mainWindow is None:
            return
        for keys, method in SHORTCUTS:
            shortcut = qt.QShortcut(qt.QKeySequence(keys), mainWindow)
            shortcut.connect("activated()", getattr(self, method))
            self._shortcuts.append(shortcut)

    def _removeShortcuts(self) -> None:
        for shortcut in self._shortcuts:
            shortcut.setParent(None)
        self._shortcuts = []

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self.logic.requestCancel()
        self.logic.undoStack.clear()
        self.session.setTarget(None, None)
        if not self.logic.busy:
            self.logic.releaseSegmenter()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(ProMISeModuleParameterNode(self.logic.getParameterNode()))
        if not self._parameterNode.inputVolume:
            volume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if volume and not volume.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = volume
        self.ensurePointList("positive")

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self._selectComboData(self.ui.modelComboBox, self._parameterNode.model)
            self._selectComboData(self.ui.deviceComboBox, self._parameterNode.device)
            self._selectComboData(self.ui.runtimeComboBox, self._parameterNode.runtime)
            self._selectComboData(self.ui.promptsComboBox, self._parameterNode.prompts)
            self.updateModelNotes()
            self.syncRunOptions()
        self.onPointsNodeChanged()
        self.populateTargets()
        self.updateButtons()

    # --- small helpers --------------------------------------------------------------------------
    @staticmethod
    def _selectComboData(combo, data) -> None:
        if not data:
            return
        index = combo.findData(data)
        if index >= 0:
            combo.currentIndex = index

    def setStatus(self, text: str, error: bool = False) -> None:
        self.ui.statusLabel.text = text
        self.ui.statusLabel.setStyleSheet("color: #c0392b;" if error else "")
        slicer.util.showStatusMessage(text, 5000)

    def updateButtons(self, caller=None, event=None) -> None:
        running = self.logic is not None and self.logic.busy  # the runner sets busy before it calls this
        node = self._parameterNode
        points = node.positivePoints if node else None
        hasPoints = bool(points and points.GetNumberOfControlPoints()) or bool(node and node.boxRoi)
        ready = bool(node and node.inputVolume and hasPoints) and not getattr(self, "unsupported", None)
        self.ui.segmentButton.enabled = ready and not running
        self.ui.segmentButton.toolTip = (
            _("Segment the object under each fiducial (Alt+S).") if ready
            else _("Select a volume and place a fiducial first.")
        )
        self.ui.cancelButton.enabled = running
        self.ui.undoButton.enabled = not running and self.logic is not None and self.logic.canUndo()
        self.ui.nextCandidateButton.enabled = not running and self._nextCandidate() is not None
        self.ui.newLesionButton.enabled = bool(node and node.inputVolume)
        self.ui.positivePlaceWidget.setCurrentNode(node.positivePoints if node else None)
        self.ui.negativePlaceWidget.setCurrentNode(node.negativePoints if node else None)

    # --- segmentation on the worker -----------------------------------------------------------
    def onRunnerChanged(self) -> None:
        """The worker's state changed (busy, progress, a result applied): refresh progress and buttons."""
        running = self.logic.busy
        fraction, message = self.logic.runner.progress
        self.ui.progressBar.visible = running
        self.ui.progressBar.value = int(round(100 * fraction)) if running else 0
        if running and message:
            self.ui.statusLabel.text = message
        for widget in (self.ui.settingsCollapsibleButton, self.ui.modelsCollapsibleButton):
            widget.enabled = not running
        self.updateButtons()

    def onSegmentButton(self) -> None:
        self.runSegmentation()

    def _nextCandidate(self) -> tuple[str, int] | None:
        """The target segment and the candidate after the one it shows, or None when its click has one."""
        _target, targetId = self.session.target() if self.session else (None, None)
        shown, count = self._candidates.get(targetId or "", (0, 1))
        return (targetId, (shown + 1) % count) if count > 1 else None

    def onNextCandidateButton(self) -> None:
        """Show the target segment's next candidate (the click's next distinct hypothesis), as one undo step."""
        following = self._nextCandidate()
        if following is None:
            self.setStatus(_("The target segment's click has no other candidate."))
            return
        segmentId, alternative = following
        self.runSegmentation(segmentIds=[segmentId], alternative=alternative)

    def runSegmentation(self, pointIndices=None, segmentIds=None, alternative=None, ahead=False) -> str:
        """Run on the worker: "started", "queued" (behind the running job) or "" when nothing was submitted.

        ``alternative`` picks the first click's hypothesis; ``ahead`` computes it in the background without
        writing anything (the engine remembers it, so showing it next costs nothing)."""
        node = self._parameterNode
        if node is None:
            return ""
        if not self.ensureDependencies() or not self.ensureModel(self.currentModel()):
            return ""
        self.syncRunOptions()
        logic = self.logic

        def prepare():
            _target, targetId = self.session.target()
            if node.boxRoi is not None and targetId and not node.boxRoi.GetAttribute(ATTR_ROI_SEGMENT):
                node.boxRoi.SetAttribute(ATTR_ROI_SEGMENT, targetId)  # the box prompts the target segment
            return logic.prepareRun(
                node.inputVolume, node.positivePoints, node.outputSegmentation, node.negativePoints,
                pointIndices=pointIndices, roiNode=node.boxRoi, segmentIds=segmentIds, alternative=alternative,
                **logic.runOptions)

        if ahead:
            return logic.runner.submit(Job(prepare, logic.computeRun, lambda prepared: None, background=True,
                                           description=_("Preparing the next candidate...")))
        state = logic.runner.submit(Job(prepare, logic.computeRun, logic.applyRun, self.onRunFinished,
                                        description=_("Starting ProMISe...")))
        if state == "queued":
            self.ui.statusLabel.text = _("Queued: runs when the current segmentation finishes.")
        ensure_polling(logic.runner)
        return state

    def onRunFinished(self, outcome) -> None:
        """A run ended (main thread): show the result or the error."""
        if outcome.status == DONE:
            run = outcome.value
            self._parameterNode.outputSegmentation = run.segmentationNode
            self.setStatus(run.summary(), error=False)
            self.populateTargets()
            self._candidates.update({o.segmentId: (o.alternative, o.alternatives) for o in run.objects})
            self.updateButtons()
            following = self._nextCandidate()
            if len(run.objects) == 1 and following is not None and following[0] == run.objects[0].segmentId:
                self.runSegmentation(segmentIds=[following[0]], alternative=following[1], ahead=True)
            self.encodeAheadOfCorrections(run)
        elif outcome.status == CANCELLED:
            self.setStatus(_("Cancelled; nothing was changed."))
        elif isinstance(outcome.error, ProMISeError):
            self.setStatus(str(outcome.error), error=True)
        else:
            text = _("Segmentation failed: {error}").format(error=outcome.error)
            self.setStatus(text, error=True)
            slicer.util.errorDisplay(text, detailedText=outcome.details or traceback.format_exc())

    def encodeAheadOfCorrections(self, run) -> str:
        """Encode in the background the slices the next corrective click on ``run``'s segments may walk onto
        (after the next candidate, if that is computed ahead); the user's next run cancels it."""
        logic, prepared = self.logic, run.prepared
        if prepared is None or not prepared.results:
            return ""

        def compute(prepared, progress, cancel) -> int:
            segmenter = logic.getSegmenter(prepared.model, prepared.device, prepared.runtime, prepared.prompts)
            return encode_for_corrections(segmenter, prepared, cancel)

        return logic.runner.submit(Job(lambda: prepared, compute, lambda encoded: None, background=True,
                                       description=_("Preparing for the next click...")))

    def onCancelButton(self) -> None:
        self.logic.requestCancel()
        self.ui.statusLabel.text = _("Cancelling...")

    def onUndoButton(self) -> None:
        try:
            description = self.logic.undo()
        except ProMISeError as error:
            self.setStatus(str(error), error=True)
        else:
            self.setStatus(_("Undone: {what}").format(what=description))
            self.populateTargets()
        self.updateButtons()
