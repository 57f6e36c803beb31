"""ProMISe: place a fiducial, click Segment, get a 3D segment (frozen SAM-family model).

The module description only. The panel is ``ProMISeSlicer.widget``, its parts ``ProMISeSlicer.models_panel``
and ``ProMISeSlicer.points_panel``, the worker thread ``ProMISeSlicer.worker``, the Segment Editor effect
``ProMISeSlicer.segment_editor_effect``, the logic (no Qt) ``ProMISeSlicer.logic`` and the self-test
``ProMISeSlicer.selftest``; the engine (no Slicer) is ``ProMISeLib``. Nothing is installed, downloaded
or imported from torch when this file is imported or the module is constructed.
"""

from __future__ import annotations

import logging

import slicer
from ProMISeSlicer.logic import ProMISeModuleLogic
from ProMISeSlicer.selftest import ProMISeModuleTest
from ProMISeSlicer.widget import ProMISeModuleWidget
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule

__all__ = ["ProMISeModule", "ProMISeModuleLogic", "ProMISeModuleTest", "ProMISeModuleWidget"]


class ProMISeModule(ScriptedLoadableModule):
    """Module description (title, category, help). Registers the Segment Editor effect once Slicer has started."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("ProMISe")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["Hao Li (Vanderbilt University)", "Han Liu (Vanderbilt University)",
                                    "Dewei Hu (Vanderbilt University)", "Jiacheng Wang (Vanderbilt University)",
                                    "Ipek Oguz (Vanderbilt University)"]
        self.parent.helpText = _(
            "One-click 3D segmentation with a frozen SAM-family model (ProMISe). Place a point on a lesion "
            "or organ: it is segmented into the target segment, and each further point (green: object, red: "
            "background) refines it. <i>New lesion</i> starts another segment; a Markups ROI can be a box "
            "prompt. Shortcuts while the module is shown: Alt+P object point, Alt+N background point, "
            "Alt+S segment, Alt+L new lesion. In the Segment Editor, the <i>ProMISe</i> effect segments the "
            "selected segment from clicks (Ctrl+click: background; Ctrl+Z undoes). From the Python console: "
            '<code>slicer.util.getModuleLogic("ProMISeModule").segment(volumeNode, pointsNode)</code>. '
            'See <a href="https://github.com/MedICL-VU/SlicerProMISe">the project page</a>.'
        )
        self.parent.acknowledgementText = _(
            "ProMISe (prompt-driven 3D medical image segmentation using pretrained image foundation "
            "models), MedICL, Vanderbilt University. Uses Segment Anything (Meta AI) and LiteMedSAM "
            "(Wang lab) weights; see each model's licence in the Models section."
        )
        app = getattr(slicer, "app", None)
        if app is not None and hasattr(app, "connect"):
            app.connect("startupCompleted()", registerSegmentEditorEffect)


def registerSegmentEditorEffect() -> None:
    """Add the "ProMISe" effect to the Segment Editor (Qt is imported only here, at start-up)."""
    try:
        from ProMISeSlicer.segment_editor_effect import register_effect

        register_effect()
    except Exception as error:  # the module still works without the effect
        logging.warning(f"ProMISe: the Segment Editor effect could not be registered ({error})")
