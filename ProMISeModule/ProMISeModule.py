"""ProMISe: place a fiducial, click Segment, get a 3D segment (frozen SAM-family model).

The module, its panel and its self-test. The logic (no Qt) is ``ProMISeSlicer.logic``; the engine
(no Slicer) is ``ProMISeLib``. Nothing is installed, downloaded or imported from torch when this
file is imported or the module is constructed: dependencies are offered on the first Segment.
"""

from __future__ import annotations

import logging
import time
import traceback

import qt
import slicer
import vtk
from ProMISeLib.errors import ProMISeError, SegmentationCancelled
from ProMISeSlicer import install
from ProMISeSlicer.logic import ProMISeModuleLogic
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

__all__ = ["ProMISeModule", "ProMISeModuleLogic", "ProMISeModuleTest", "ProMISeModuleWidget"]

DEVICES = (("auto", "Auto (GPU if available)"), ("cpu", "CPU"), ("cuda", "CUDA GPU"))
RUNTIMES = (("auto", "Auto (ONNX Runtime on CPU)"), ("torch", "PyTorch"), ("onnx", "ONNX Runtime"))
PROMPTS = (("auto", "Auto"), ("fused", "Fused (rules ranked by the network)"), ("learned", "Learned"),
           ("heuristic", "Rule-based"))


class ProMISeModule(ScriptedLoadableModule):
    """Module description (title, category, help). Does no work at construction."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("ProMISe")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedICL, Vanderbilt University"]
        self.parent.helpText = _(
            "One-click 3D segmentation with a frozen SAM-family model (ProMISe). Place a fiducial on a "
            "lesion or organ and click Segment: the segment is named after the fiducial's label. Add "
            "background points to exclude neighbours. Undo restores the segment. From the Python console: "
            '<code>slicer.util.getModuleLogic("ProMISeModule").segment(volumeNode, pointsNode)</code>. '
            'See <a href="https://github.com/MedICL-VU/SlicerProMISe">the project page</a>.'
        )
        self.parent.acknowledgementText = _(
            "ProMISe (prompt-driven 3D medical image segmentation using pretrained image foundation "
            "models), MedICL, Vanderbilt University. Uses Segment Anything (Meta AI) and LiteMedSAM "
            "(Wang lab) weights; see each model's licence in the Models section."
        )


@parameterNodeWrapper
class ProMISeModuleParameterNode:
    """The panel's state, saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    positivePoints: vtkMRMLMarkupsFiducialNode
    negativePoints: vtkMRMLMarkupsFiducialNode
    outputSegmentation: vtkMRMLSegmentationNode
    model: str = ""
    device: str = "auto"
    runtime: str = "auto"
    prompts: str = "auto"
    autoUpdate: bool = False


class ProMISeModuleWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: inputs, model/prompts/device/runtime, Segment/Cancel/Undo, progress, status and the model list."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._observedPoints = []
        self._lastPositions = {}
        self._dependenciesReady = False
        self._downloadCancelled = False

    # --- set-up -------------------------------------------------------------------------------
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ProMISeModule.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = ProMISeModuleLogic()

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
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.runtimeComboBox.connect("currentIndexChanged(int)", self.onRuntimeChanged)
        self.ui.promptsComboBox.connect("currentIndexChanged(int)", self.onPromptsChanged)
        self.ui.modelsTable.connect("itemSelectionChanged()", self.updateModelNotes)
        self.ui.addCheckpointButton.connect("clicked(bool)", self.onAddCheckpointButton)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.undoButton.connect("clicked(bool)", self.onUndoButton)
        self.ui.downloadModelButton.connect("clicked(bool)", self.onDownloadModelButton)
        self.ui.cancelDownloadButton.connect("clicked(bool)", self.onCancelDownloadButton)
        self.ui.removeModelsButton.connect("clicked(bool)", self.onRemoveModelsButton)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependenciesButton)

        self.populateModels()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        for observed, tag in self._observedPoints:
            observed.RemoveObserver(tag)
        self._observedPoints = []

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        for placeWidget in (self.ui.positivePlaceWidget, self.ui.negativePlaceWidget):
            placeWidget.setPlaceModeEnabled(False)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self.logic.undoStack.clear()
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
        if not self._parameterNode.positivePoints:
            points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "ProMISe object")
            points.CreateDefaultDisplayNodes()
            self._parameterNode.positivePoints = points

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
        self.onPointsNodeChanged()
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

    def currentModel(self) -> str | None:
        return self.ui.modelComboBox.currentData or None

    def currentDevice(self) -> str:
        return self.ui.deviceComboBox.currentData or "auto"

    def currentRuntime(self) -> str:
        return self.ui.runtimeComboBox.currentData or "auto"

    def currentPrompts(self) -> str:
        return self.ui.promptsComboBox.currentData or "auto"

    def updateButtons(self, caller=None, event=None) -> None:
        running = self.logic is not None and self.logic.busy
        node = self._parameterNode
        points = node.positivePoints if node else None
        ready = bool(node and node.inputVolume and points and points.GetNumberOfControlPoints())
        self.ui.segmentButton.enabled = ready and not running
        self.ui.segmentButton.toolTip = (
            _("Segment the object under each fiducial.") if ready else _("Select a volume and place a fiducial first.")
        )
        self.ui.cancelButton.enabled = running
        self.ui.undoButton.enabled = not running and self.logic is not None and self.logic.canUndo()
        self.ui.positivePlaceWidget.setCurrentNode(node.positivePoints if node else None)
        self.ui.negativePlaceWidget.setCurrentNode(node.negativePoints if node else None)

    # --- models and devices ---------------------------------------------------------------------
    def populateModels(self) -> None:
        """Fill the model chooser and the table from the engine's registry (the default first)."""
        selected = self.currentModel()
        self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        table = self.ui.modelsTable
        try:
            models = self.logic.models()
            from ProMISeSlicer.logic import default_model

            default = default_model()
        except Exception as error:  # engine packages not installed yet
            logging.info(f"ProMISe: model list unavailable until dependencies are installed ({error})")
            self.ui.modelComboBox.addItem(_("default model"), "")
            table.setRowCount(0)
            self.ui.modelComboBox.blockSignals(False)
            return
        models.sort(key=lambda m: (m.name != default, not m.installed, m.size_mb))
        table.setRowCount(len(models))
        for row, model in enumerate(models):
            title = getattr(model, "title", model.name) or model.name
            notes = self._modelNotes(model.name)
            byHand = notes is not None and notes.addedByHand
            if model.installed:
                text = title + (_(" (default)") if model.name == default else "")
            elif model.downloadable:
                text = _("{title} (download, {size:.0f} MB)").format(title=title, size=model.size_mb)
            elif byHand:
                text = _("{title} (add by hand: see Models)").format(title=title)
            else:
                text = _("{title} (not installed)").format(title=title)
            self.ui.modelComboBox.addItem(text, model.name)
            state = _("yes") if model.installed else (_("no (add by hand)") if byHand else _("no"))
            cells = (title, state, f"{model.size_mb:.0f} MB", model.location or "")
            for column, value in enumerate(cells):
                item = qt.QTableWidgetItem(str(value))
                item.setData(qt.Qt.UserRole, model.name)
                item.setToolTip(str(value))
                table.setItem(row, column, item)
        table.resizeColumnsToContents()
        saved = self._parameterNode.model if self._parameterNode else ""
        self._selectComboData(self.ui.modelComboBox, selected or saved)
        self.ui.modelComboBox.blockSignals(False)
        self.updateModelNotes()

    def _modelNotes(self, name: str | None):
        """The logic's ModelNotes for ``name``, or None when the engine cannot tell (not installed yet)."""
        try:
            return self.logic.modelNotes(name)
        except Exception as error:
            logging.debug(f"ProMISe: no notes for model {name!r} ({error})")
            return None

    def updateModelNotes(self) -> None:
        """Warnings for the chosen model, and the add-by-hand help for the model selected in the table."""
        notes = self._modelNotes(self.currentModel())
        volume3d = notes is not None and notes.volume3d
        self.ui.modelWarningLabel.text = _(
            "ProMISe 3D segments the region around each click in one pass: on a CPU one click takes a minute or more "
            "(a CUDA GPU takes seconds). Background (negative) points are not used."
        ) if volume3d else ""
        self.ui.promptsComboBox.enabled = not volume3d  # a 3D model takes no box prompts
        selected = self.selectedTableModel()
        notes = self._modelNotes(selected) if selected else None
        if notes is not None and notes.addedByHand:
            self.ui.manualModelLabel.text = _(
                '{name} is added by hand: download <b>{file}</b> from <a href="{page}">{page}</a>, then click '
                "<i>Add checkpoint…</i> and choose the file."
            ).format(name=notes.name, file=notes.sourceHint or _("the released checkpoint"), page=notes.page)
        else:
            self.ui.manualModelLabel.text = ""
        self.ui.addCheckpointButton.enabled = notes is not None and notes.addedByHand

    def onModelChanged(self, index=None) -> None:
        if self._parameterNode:
            self._parameterNode.model = self.currentModel() or ""
        self.updateModelNotes()

    def onDeviceChanged(self, index=None) -> None:
        device = self.currentDevice()
        if self._parameterNode:
            self._parameterNode.device = device
        warning = ""
        if device == "cpu":
            warning = _("CPU: expect tens of seconds or more per object (a CUDA GPU is much faster).")
        elif device in ("cuda", "auto") and install.torch_installed():
            import torch

            if not torch.cuda.is_available():
                warning = (_("No CUDA GPU found: ProMISe will run on the CPU, which is slow.") if device == "auto"
                           else _("No CUDA GPU found: choose Auto or CPU."))
        self.ui.deviceWarningLabel.text = warning

    def onRuntimeChanged(self, index=None) -> None:
        if self._parameterNode:
            self._parameterNode.runtime = self.currentRuntime()

    def onPromptsChanged(self, index=None) -> None:
        if self._parameterNode:
            self._parameterNode.prompts = self.currentPrompts()

    # --- dependencies ---------------------------------------------------------------------------
    def ensureDependencies(self) -> bool:
        """Offer to install torch and the packages on first use; True when everything is there."""
        if self._dependenciesReady:
            return True
        try:
            requirements = self.resourcePath("requirements.txt")
            install.ensure_dependencies(
                requirements,
                confirm=lambda question: slicer.util.confirmOkCancelDisplay(question, windowTitle="ProMISe"),
                status=self.setStatus,
            )
            self._dependenciesReady = not install.plan(requirements).needed
        except Exception as error:
            self.setStatus(_("Dependencies missing: {error}").format(error=error), error=True)
            return False
        if self._dependenciesReady:
            self.ui.dependenciesLabel.text = _("All dependencies are installed.")
            self.populateModels()
            self.onDeviceChanged()
        return self._dependenciesReady

    def onInstallDependenciesButton(self) -> None:
        if self.ensureDependencies():
            self.setStatus(_("All dependencies are installed."))

    def ensureModel(self, name: str | None) -> bool:
        """Ask to download the chosen model when it is not on this machine yet."""
        for model in self.logic.models():
            if model.name == (name or ""):
                if model.installed:
                    return True
                if not model.downloadable:
                    notes = self._modelNotes(model.name)
                    if notes is not None and notes.addedByHand:
                        self.ui.modelsCollapsibleButton.collapsed = False
                        self.setStatus(_("Model {name} is not installed: download {file} from {page}, then add it "
                                         "with Add checkpoint… in the Models section.").format(
                            name=name, file=notes.sourceHint or _("the released checkpoint"), page=notes.page), True)
                    else:
                        self.setStatus(_("Model {name} is not installed and cannot be downloaded.").format(name=name),
                                       True)
                    return False
                question = _("Download the {title} weights ({size:.0f} MB) now?").format(
                    title=getattr(model, "title", name), size=model.size_mb)
                if not slicer.util.confirmOkCancelDisplay(question, windowTitle="ProMISe"):
                    return False
                return self.downloadModel(model.name)
        return True  # the default model, or one the engine resolves itself

    # --- segmentation ---------------------------------------------------------------------------
    def onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message
        slicer.app.processEvents()  # keeps Cancel clickable during a run

    def setRunning(self, running: bool) -> None:
        self.ui.progressBar.visible = running
        self.ui.progressBar.value = 0
        sections = (self.ui.inputsCollapsibleButton, self.ui.settingsCollapsibleButton, self.ui.modelsCollapsibleButton)
        for widget in sections:
            widget.enabled = not running
        self.updateButtons()
        self.ui.cancelButton.enabled = running

    def onSegmentButton(self) -> None:
        self.runSegmentation()

    def runSegmentation(self, pointIndices=None) -> None:
        node = self._parameterNode
        if node is None or self.logic.busy:
            return
        if not self.ensureDependencies() or not self.ensureModel(self.currentModel()):
            return
        self.setRunning(True)
        started = time.perf_counter()
        try:
            run = self.logic.segment(
                node.inputVolume, node.positivePoints, node.outputSegmentation, node.negativePoints,
                model=self.currentModel(), device=self.currentDevice(), runtime=self.currentRuntime(),
                prompts=self.currentPrompts(), progressCallback=self.onProgress, pointIndices=pointIndices,
            )
        except SegmentationCancelled:
            self.setStatus(_("Cancelled after {s:.1f} s; nothing was changed.").format(s=time.perf_counter() - started))
        except ProMISeError as error:
            self.setStatus(str(error), error=True)
        except Exception as error:
            self.setStatus(_("Segmentation failed: {error}").format(error=error), error=True)
            slicer.util.errorDisplay(_("Segmentation failed: {error}").format(error=error),
                                     detailedText=traceback.format_exc())
        else:
            node.outputSegmentation = run.segmentationNode
            self.setStatus(run.summary(), error=False)
            self._rememberPositions()
        finally:
            self.setRunning(False)

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
        self.updateButtons()

    # --- automatic re-run -------------------------------------------------------------------------
    def onPointsNodeChanged(self, node=None) -> None:
        for observed, tag in self._observedPoints:
            observed.RemoveObserver(tag)
        self._observedPoints = []
        for points in (self.ui.positivePointsSelector.currentNode(), self.ui.negativePointsSelector.currentNode()):
            if points is None:
                continue
            for event in (points.PointEndInteractionEvent, points.PointPositionDefinedEvent):
                self._observedPoints.append((points, points.AddObserver(event, self.onPointsEdited)))
            self._observedPoints.append((points, points.AddObserver(points.PointRemovedEvent, self.updateButtons)))
        self.updateButtons()

    def _positions(self, points) -> dict:
        result = {}
        if points is None:
            return result
        for index in range(points.GetNumberOfControlPoints()):
            position = [0.0, 0.0, 0.0]
            points.GetNthControlPointPositionWorld(index, position)
            result[(points.GetID(), points.GetNthControlPointID(index))] = (index, tuple(round(v, 4) for v in position))
        return result

    def _rememberPositions(self) -> None:
        node = self._parameterNode
        self._lastPositions = {**self._positions(node.positivePoints), **self._positions(node.negativePoints)}

    def onPointsEdited(self, caller=None, event=None) -> None:
        self.updateButtons()
        node = self._parameterNode
        if node is None or not node.autoUpdate or self.logic.busy or not self._dependenciesReady:
            return
        positives = self._positions(node.positivePoints)
        negatives = self._positions(node.negativePoints)
        def moved(key, position) -> bool:
            return self._lastPositions.get(key, (None, None))[1] != position

        changedPositive = [index for key, (index, pos) in positives.items() if moved(key, pos)]
        changedNegative = any(moved(key, pos) for key, (_index, pos) in negatives.items())
        if not changedPositive and not changedNegative:
            return
        indices = None if changedNegative else changedPositive
        qt.QTimer.singleShot(0, lambda: self.runSegmentation(pointIndices=indices))

    # --- model downloads ----------------------------------------------------------------------
    def selectedTableModel(self) -> str | None:
        items = self.ui.modelsTable.selectedItems()
        return items[0].data(qt.Qt.UserRole) if items else self.currentModel()

    def downloadModel(self, name: str) -> bool:
        self._downloadCancelled = False
        self.ui.downloadProgressBar.visible = True
        self.ui.cancelDownloadButton.enabled = True
        self.ui.downloadModelButton.enabled = False

        def progress(fraction, message):
            self.ui.downloadProgressBar.value = int(round(100 * fraction))
            self.ui.statusLabel.text = message
            slicer.app.processEvents()

        try:
            path = self.logic.downloadModel(name, progress, lambda: self._downloadCancelled)
        except Exception as error:
            self.setStatus(_("Download of {name} stopped: {error}").format(name=name, error=error), error=True)
            return False
        finally:
            self.ui.downloadProgressBar.visible = False
            self.ui.cancelDownloadButton.enabled = False
            self.ui.downloadModelButton.enabled = True
        self.setStatus(_("Downloaded {name} to {path}").format(name=name, path=path))
        self.populateModels()
        return True

    def onDownloadModelButton(self) -> None:
        if not self.ensureDependencies():
            return
        name = self.selectedTableModel()
        if name:
            self.downloadModel(name)

    def onCancelDownloadButton(self) -> None:
        self._downloadCancelled = True

    def onAddCheckpointButton(self) -> None:
        """Choose a checkpoint downloaded by hand and add it for the selected ProMISe 3D model."""
        name = self.selectedTableModel()
        notes = self._modelNotes(name) if name else None
        if notes is None or not notes.addedByHand:
            self.setStatus(_("{name} is not added by hand: use Download.").format(name=name), error=True)
            return
        if not self.ensureDependencies():
            return
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), _("Add the {name} checkpoint").format(name=name), "",
            _("PyTorch checkpoints (*.pth *.pt);;All files (*)"),
        )
        if path:
            self.addCheckpoint(name, path)

    def addCheckpoint(self, name: str, path: str) -> bool:
        """Convert ``path`` into the weights cache for model ``name`` (``promise weights add``); True when done."""
        self.setStatus(_("Adding {name} from {path} (reading and converting the checkpoint)...").format(
            name=name, path=path))
        slicer.app.processEvents()
        try:
            installed = self.logic.addModelCheckpoint(name, path)
        except Exception as error:
            self.setStatus(_("Could not add {name}: {error}").format(name=name, error=error), error=True)
            return False
        self.setStatus(_("Added {name}: {path}").format(name=name, path=installed))
        self.populateModels()
        return True

    def onRemoveModelsButton(self) -> None:
        if not slicer.util.confirmOkCancelDisplay(
            _("Delete every downloaded ProMISe weights file? Files shipped in Python packages are kept."),
            windowTitle="ProMISe",
        ):
            return
        try:
            removed = self.logic.removeDownloadedModels()
        except Exception as error:
            self.setStatus(_("Could not remove models: {error}").format(error=error), error=True)
            return
        files = ", ".join(str(p) for p in removed)
        self.setStatus(_("Removed {n} file(s): {files}").format(n=len(removed), files=files))
        self.populateModels()


class ProMISeModuleTest(ScriptedLoadableModuleTest):
    """Inside Slicer: segment MRBrainTumor1's tumour from one fiducial, with the default and rule-based prompts."""

    #: A point inside the tumour of MRBrainTumor1 (RAS, mm), as Slicer's own segment editor tests use.
    TUMOR_RAS = (-6.0, 30.0, 28.0)

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_MRBrainTumor1()
        self.setUp()
        self.test_bad_input_leaves_scene_unchanged()

    def _ready(self) -> bool:
        import os

        moduleDir = os.path.dirname(slicer.modules.promisemodule.path)
        if install.plan(os.path.join(moduleDir, "Resources", "requirements.txt")).needed:
            self.delayDisplay("ProMISe dependencies are not installed: model test skipped")
            return False
        return True

    def test_MRBrainTumor1(self):
        import numpy as np
        import SampleData

        if not self._ready():
            return
        self.delayDisplay("Loading MRBrainTumor1")
        volume = SampleData.downloadSample("MRBrainTumor1")
        points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "points")
        points.AddControlPoint(vtk.vtkVector3d(*self.TUMOR_RAS), "tumor")

        logic = ProMISeModuleLogic()
        from ProMISeSlicer.logic import default_model

        model = default_model()
        for entry in logic.models():
            if entry.name == model and not entry.installed and entry.downloadable:
                self.delayDisplay(f"Downloading {model}")
                logic.downloadModel(model)

        self.delayDisplay("Segmenting")
        run = logic.segment(volume, points)
        self.delayDisplay(run.summary())
        self.assertEqual(len(run.objects), 1)
        segmentation = run.segmentationNode
        segmentId = run.objects[0].segmentId
        self.assertEqual(segmentation.GetSegmentation().GetSegment(segmentId).GetName(), "tumor")
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume)
        k, j, i = run.objects[0].voxels_kji[0]
        self.assertEqual(mask[k, j, i], 1, "the clicked voxel is inside the segment")
        self.assertGreater(run.objects[0].volume_ml, 1.0)
        self.assertLess(run.objects[0].volume_ml, 200.0)
        spacing = np.prod(volume.GetSpacing()) / 1000.0
        volumeMl = run.objects[0].volume_ml
        self.assertAlmostEqual(float(mask.sum()) * spacing, volumeMl, delta=0.05 * volumeMl)
        self.assertTrue(run.method and run.method in run.summary(), "the status names the prompts that ran")

        self.delayDisplay("Correcting with a background point on the next slice")
        near = k + 1 if mask[k + 1].any() else k - 1
        jj, ii = (int(v) for v in np.argwhere(mask[near])[0])
        ijkToRas = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ijkToRas)
        background = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "background")
        background.AddControlPoint(vtk.vtkVector3d(*ijkToRas.MultiplyPoint([ii, jj, near, 1.0])[:3]), "not tumor")
        corrected = logic.segment(volume, points, negativePointsNode=background)
        self.delayDisplay(corrected.summary())
        self.assertEqual(corrected.objects[0].segmentId, segmentId, "the correction replaces the same segment")
        fixed = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume)
        self.assertEqual(fixed[near, jj, ii], 0, "the background point's voxel left the segment")
        self.assertEqual(fixed[k, j, i], 1, "the clicked voxel stays inside the segment")
        self.assertLessEqual(int(fixed.sum()), int(mask.sum()), "a background point only removes")
        slicer.mrmlScene.RemoveNode(background)

        self.delayDisplay("Segmenting again with rule-based prompts")
        heuristic = logic.segment(volume, points, prompts="heuristic")
        self.delayDisplay(heuristic.summary())
        self.assertEqual(heuristic.method, "heuristic box prompts")
        self.assertEqual(heuristic.objects[0].segmentId, segmentId, "the same fiducial's segment is replaced")
        self.assertGreater(heuristic.objects[0].volume_ml, 1.0)

        logic.undo()  # back to the corrected segment
        logic.undo()  # back to the first run's segment
        logic.undo()
        self.assertIsNone(slicer.mrmlScene.GetNodeByID(segmentation.GetID()), "undo removes the new segmentation")
        self.delayDisplay("Test passed")

    def test_bad_input_leaves_scene_unchanged(self):
        import SampleData

        volume = SampleData.downloadSample("MRBrainTumor1")
        points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "outside")
        points.AddControlPoint(vtk.vtkVector3d(5000.0, 0.0, 0.0), "far")
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(ProMISeError):
            ProMISeModuleLogic(segmenterFactory=lambda **kw: None).segment(volume, points)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("Test passed")
