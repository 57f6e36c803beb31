"""The "ProMISe" Segment Editor effect (Qt): click in a slice view to segment or refine the selected segment.

Left-click adds a positive prompt, Ctrl+left-click a negative one, to the selected segment. The click
is handed to :class:`ProMISeSlicer.effect.ClickPrompter` (no Qt), which runs the engine on the shared
worker thread; the Segment Editor's undo state is saved just before the result is written, so Ctrl+Z
undoes it. Registered by the module at start-up (:func:`register_effect`).
"""

from __future__ import annotations

import logging
import os

import qt
import slicer
import vtk
from ProMISeLib.errors import ProMISeError
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

from ProMISeSlicer.effect import ClickPrompter
from ProMISeSlicer.logic import ProMISeModuleLogic
from ProMISeSlicer.poller import ensure_polling
from ProMISeSlicer.worker import CANCELLED, DONE


def register_effect() -> None:
    """Add the ProMISe effect to the Segment Editor (called once Slicer has started)."""
    import qSlicerSegmentationsEditorEffectsPythonQt as effects

    instance = effects.qSlicerSegmentEditorScriptedEffect(None)
    instance.setPythonSource(os.path.abspath(__file__).replace("\\", "/"))
    instance.self().register()


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Click-to-segment with ProMISe: positive (left-click) and negative (Ctrl+left-click) prompts."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "ProMISe"
        scriptedEffect.perSegment = True  # works on the selected segment
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.prompter = ClickPrompter(ProMISeModuleLogic.shared())
        self.statusLabel = None

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(os.path.abspath(__file__).replace("\\", "/"))
        return clonedEffect

    def icon(self):
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Resources", "Icons",
                            "ProMISeModule.png")
        return qt.QIcon(path) if os.path.exists(path) else qt.QIcon()

    def helpText(self):
        return ("<html>Segment the selected segment from clicks with ProMISe.<p>"
                "<b>Left-click</b> in a slice view: a point inside the object. "
                "<b>Ctrl+left-click</b>: a point outside it (background). Each click refines the selected segment; "
                "Ctrl+Z undoes a result. Model, device and runtime are chosen in the ProMISe module.</html>")

    def setupOptionsFrame(self):
        self.statusLabel = qt.QLabel("")
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)
        row = qt.QHBoxLayout()
        self.cancelButton = qt.QPushButton("Cancel")
        self.cancelButton.toolTip = "Stop the running ProMISe segmentation (nothing is written)."
        self.cancelButton.connect("clicked()", self.onCancel)
        self.clearButton = qt.QPushButton("Forget clicks")
        self.clearButton.toolTip = "Forget the selected segment's clicks (its voxels stay); the next click starts anew."
        self.clearButton.connect("clicked()", self.onClearClicks)
        row.addWidget(self.cancelButton)
        row.addWidget(self.clearButton)
        self.scriptedEffect.addOptionsWidget(row)

    def activate(self):
        self.setStatus("Left-click: object; Ctrl+left-click: background.")

    def deactivate(self):
        pass

    def setStatus(self, text: str) -> None:
        if self.statusLabel is not None:
            self.statusLabel.text = text
        slicer.util.showStatusMessage(text, 5000)

    def _selection(self):
        parameters = self.scriptedEffect.parameterSetNode()
        getVolume = getattr(parameters, "GetSourceVolumeNode", None) or parameters.GetMasterVolumeNode
        return getVolume(), parameters.GetSegmentationNode(), parameters.GetSelectedSegmentID()

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget" or eventId != vtk.vtkCommand.LeftButtonPressEvent:
            return False
        if callerInteractor.GetShiftKey() or callerInteractor.GetAltKey():
            return False  # leave other combinations to the views
        ras = self.xyToRas(callerInteractor.GetEventPosition(), viewWidget)
        negative = bool(callerInteractor.GetControlKey())
        volume, segmentation, segmentId = self._selection()
        try:
            state = self.prompter.click(volume, segmentation, segmentId, ras, negative,
                                        beforeApply=self.scriptedEffect.saveStateForUndo, finished=self.onFinished)
        except ProMISeError as error:
            self.setStatus(str(error))
            return True
        self.setStatus("Queued: runs when the current segmentation finishes." if state == "queued"
                       else "Segmenting...")
        ensure_polling(self.prompter.logic.runner)
        return True  # the click is ours: no other effect or view acts on it

    def onFinished(self, outcome) -> None:
        if outcome.status == DONE:
            self.setStatus(outcome.value.summary())
        elif outcome.status == CANCELLED:
            self.setStatus("Cancelled; nothing was changed.")
        else:
            self.setStatus(f"ProMISe: {outcome.error}")
            if not isinstance(outcome.error, ProMISeError):
                logging.error(f"ProMISe effect failed: {outcome.error}\n{outcome.details}")

    def onCancel(self) -> None:
        self.prompter.logic.requestCancel()

    def onClearClicks(self) -> None:
        volume, segmentation, segmentId = self._selection()
        if volume is not None and segmentId:
            removed = self.prompter.clearClicks(volume.GetScene(), segmentId)
            self.setStatus(f"Forgot {removed} click(s) of the selected segment.")
