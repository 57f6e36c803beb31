"""Smoke test of ProMISeModule.py and its panel (ProMISeSlicer.widget, .models_panel, .points_panel) without Qt.

slicer-core has no Qt, so the Qt-side imports (qt, ScriptedLoadableModule, parameterNodeWrapper,
i18n) are replaced by small stand-ins and the .ui widgets by fakes that hold their state. The MRML
scene, the nodes, the logic and its worker thread are real; the engine is the stand-in from
conftest_slicer. The QTimer that polls the worker is a fake: :func:`finish` polls until the worker is
idle, as the timer does in Slicer. This runs every handler of the panel once, so a typo or a wrong
call in the widget code fails here rather than in front of a user.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")
pytest.register_assert_rewrite("conftest_slicer")
pytest_plugins = ["conftest_slicer"]

from conftest_slicer import FakeSegmenter, add_points, add_volume, fake_factory  # noqa: E402

MODULE_DIR = Path(__file__).resolve().parents[2] / "ProMISeModule"


# --- fakes for the widgets of the .ui file ----------------------------------------------------
class FakeWidget:
    def __init__(self, name):
        self.name, self.enabled, self.visible, self.text, self.toolTip = name, True, True, "", ""
        self.value, self.checked, self.styleSheet, self._node, self.slots = 0, False, "", None, {}

    def connect(self, signal, slot):
        self.slots.setdefault(signal, []).append(slot)

    def setStyleSheet(self, sheet):
        self.styleSheet = sheet

    def setMRMLScene(self, scene):
        self.scene = scene

    def setCurrentNode(self, node):
        self._node = node

    def currentNode(self):
        return self._node

    def setPlaceModeEnabled(self, enabled):
        self.placeMode = enabled


class FakeCombo(FakeWidget):
    def __init__(self, name):
        super().__init__(name)
        self.items, self.currentIndex = [], -1

    def addItem(self, text, data=None):
        self.items.append((text, data))
        if self.currentIndex < 0:
            self.currentIndex = 0

    def clear(self):
        self.items, self.currentIndex = [], -1

    def blockSignals(self, block):
        return False

    def findData(self, data):
        return next((n for n, (_, d) in enumerate(self.items) if d == data), -1)

    @property
    def currentData(self):
        return self.items[self.currentIndex][1] if self.currentIndex >= 0 else None


class FakeTable(FakeWidget):
    def __init__(self, name):
        super().__init__(name)
        self.rows = {}

    def setRowCount(self, count):
        self.rows = {k: v for k, v in self.rows.items() if k[0] < count}
        self.rowCount = count

    def setItem(self, row, column, item):
        self.rows[(row, column)] = item

    def resizeColumnsToContents(self):
        pass

    def selectedItems(self):
        return []


class FakeTimer:
    """qt.QTimer: holds its slot; the tests poll the worker themselves (see finish())."""

    def __init__(self):
        self.active, self.slots = False, []

    def setInterval(self, msec):
        self.interval = msec

    def connect(self, signal, slot):
        self.slots.append(slot)

    def isActive(self):
        return self.active

    def start(self):
        self.active = True

    def stop(self):
        self.active = False

    @staticmethod
    def singleShot(msec, fn):
        fn()


def slicer_array(segmentation, segmentId, volume):
    import slicer

    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume)


def finish(widget, timeout=20.0):
    """Let the worker finish and apply its results, as the panel's QTimer does."""
    widget.logic.runner.runUntilIdle(timeout)


class FakeItem:
    def __init__(self, text):
        self.text, self.data_ = text, {}

    def setData(self, role, value):
        self.data_[role] = value

    def data(self, role):
        return self.data_.get(role)

    def setToolTip(self, tip):
        self.tip = tip


def fake_ui():
    import xml.etree.ElementTree as ET

    ui = types.SimpleNamespace()
    root = ET.parse(MODULE_DIR / "Resources" / "UI" / "ProMISeModule.ui").getroot()
    for widget in root.iter("widget"):
        cls = {"QComboBox": FakeCombo, "QTableWidget": FakeTable}.get(widget.get("class"), FakeWidget)
        setattr(ui, widget.get("name"), cls(widget.get("name")))
    return ui


# --- stand-ins for Slicer's Qt-side Python modules --------------------------------------------
class FakeParameterNode:
    """What @parameterNodeWrapper gives: typed fields plus connectGui (here: no GUI binding)."""

    def __init__(self, fields):
        self.__dict__.update(fields)
        self._observers = {}

    def connectGui(self, ui):
        return "tag"

    def disconnectGui(self, tag):
        pass

    def AddObserver(self, event, method, priority=0.0):
        self._observers[len(self._observers)] = method
        return len(self._observers)

    def RemoveObserver(self, tag):
        self._observers.pop(tag - 1, None)


def parameter_node_wrapper(cls):
    defaults = {name: getattr(cls, name, None) for name in cls.__annotations__}
    return lambda node: FakeParameterNode(dict(defaults))


class FakeModuleBase:
    def __init__(self, parent=None):
        self.parent = parent


class FakeWidgetBase:
    def __init__(self, parent=None):
        self.parent = types.SimpleNamespace(isEntered=True)
        self.layout = types.SimpleNamespace(addWidget=lambda widget: None)

    def setup(self):
        pass

    def resourcePath(self, relative):
        return str(MODULE_DIR / "Resources" / relative)


@pytest.fixture
def module(slicer_env, monkeypatch):
    """ProMISeModule.py imported with the Qt-side modules stubbed."""
    slicer = slicer_env.slicer
    qt = types.ModuleType("qt")
    qt.Qt = types.SimpleNamespace(UserRole=32)
    qt.QTableWidgetItem = FakeItem
    qt.QTimer = FakeTimer
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    slm.ScriptedLoadableModule, slm.ScriptedLoadableModuleWidget = FakeModuleBase, FakeWidgetBase
    slm.ScriptedLoadableModuleTest = type("ScriptedLoadableModuleTest", (), {})
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = parameter_node_wrapper
    for name, stub in (("qt", qt), ("slicer.ScriptedLoadableModule", slm), ("slicer.i18n", i18n),
                       ("slicer.parameterNodeWrapper", wrapper)):
        monkeypatch.setitem(sys.modules, name, stub)
    for name in ("ProMISeSlicer.widget", "ProMISeSlicer.models_panel", "ProMISeSlicer.points_panel",
                 "ProMISeSlicer.poller", "ProMISeSlicer.selftest"):
        monkeypatch.delitem(sys.modules, name, raising=False)  # imported afresh with the stand-ins
    from ProMISeSlicer.logic import ProMISeModuleLogic

    monkeypatch.setattr(ProMISeModuleLogic, "_shared", None)  # each test gets its own shared logic
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(processEvents=lambda: None), raising=False)
    monkeypatch.setattr(slicer.util, "mainWindow", lambda: None)
    monkeypatch.setattr(slicer, "qSlicerMarkupsPlaceWidget", types.SimpleNamespace(ForcePlaceMultipleMarkups=2),
                        raising=False)
    ui = fake_ui()
    monkeypatch.setattr(slicer.util, "loadUI", lambda path: types.SimpleNamespace(setMRMLScene=lambda scene: None))
    monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda widget: ui)
    messages = {"status": [], "errors": [], "confirm": []}
    monkeypatch.setattr(slicer.util, "showStatusMessage", lambda text, duration=0: messages["status"].append(text))
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: messages["errors"].append(text))
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay",
                        lambda text, **kw: messages["confirm"].append(text) or True)
    spec = importlib.util.spec_from_file_location("ProMISeModuleUnderTest", MODULE_DIR / "ProMISeModule.py")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    monkeypatch.setattr(loaded.ProMISeModuleLogic, "getParameterNode", lambda self: None, raising=False)
    return types.SimpleNamespace(module=loaded, ui=ui, messages=messages, scene=slicer_env.scene)


@pytest.fixture
def widget(module, monkeypatch):
    panel = module.module.ProMISeModuleWidget()
    panel.setup()
    panel.logic.segmenterFactory = fake_factory(radius_mm=4.0)
    panel._dependenciesReady = True
    panel._parameterNode.autoUpdate = False  # tests that place points and then click Segment; some turn it on
    monkeypatch.setattr(panel, "ensureModel", lambda name: True)
    yield panel
    panel.cleanup()  # as Slicer does when the module is unloaded: no observers left on the scene
    panel.logic.runner.close()


def test_module_is_listed_under_segmentation(module):
    parent = types.SimpleNamespace()
    module.module.ProMISeModule(parent)
    assert parent.categories == ["Segmentation"] and parent.title == "ProMISe"
    assert "getModuleLogic" in parent.helpText


def test_panel_lists_models_default_first_and_devices(widget, module):
    from ProMISeLib.models.registry import DEFAULT_MODEL, list_models

    combo = module.ui.modelComboBox
    assert combo.items[0][1] == DEFAULT_MODEL and combo.currentData == DEFAULT_MODEL
    not_installed = [m for m in list_models() if not m.installed and m.downloadable]
    for model in not_installed:
        text = next(t for t, d in combo.items if d == model.name)
        assert "download" in text and f"{model.size_mb:.0f} MB" in text
    assert module.ui.modelsTable.rowCount == len(list_models())
    assert [d for _, d in module.ui.deviceComboBox.items] == ["auto", "cpu", "cuda"]
    module.ui.deviceComboBox.currentIndex = 1
    widget.onDeviceChanged()
    assert "CPU" in module.ui.deviceWarningLabel.text
    # a fresh panel offers a point list to place into
    assert widget._parameterNode.positivePoints is not None


def test_segment_undo_and_auto_update_from_the_panel(widget, module):
    import vtk

    ui, parameters = module.ui, widget._parameterNode
    array = np.zeros((10, 20, 20), np.float32)
    parameters.inputVolume = add_volume(array, np.diag([1.0, 1.0, 2.0, 1.0]), "scan")
    points = parameters.positivePoints
    points.AddControlPoint(vtk.vtkVector3d(5.0, 6.0, 8.0), "lesion")
    ui.positivePointsSelector.setCurrentNode(points)
    widget.onPointsNodeChanged()
    widget.updateButtons()
    assert ui.segmentButton.enabled

    widget.onSegmentButton()
    finish(widget)
    assert "lesion" in ui.statusLabel.text and "mL" in ui.statusLabel.text, ui.statusLabel.text
    assert parameters.outputSegmentation is not None
    assert ui.undoButton.enabled and not ui.cancelButton.enabled and not ui.progressBar.visible
    assert module.messages["errors"] == []

    # moving the point with "update automatically" re-runs that point only, into the same segment
    parameters.autoUpdate = True
    engine = FakeSegmenter.instances[-1]
    points.SetNthControlPointPosition(0, vtk.vtkVector3d(7.0, 6.0, 8.0))
    widget.onPointsEdited(points, "positive", 0)
    finish(widget)
    assert len(engine.calls) == 2 and tuple(engine.calls[-1]["voxels"][0]) == (4, 6, 7)
    assert parameters.outputSegmentation.GetSegmentation().GetNumberOfSegments() == 1

    widget.onUndoButton()
    assert ui.statusLabel.text.startswith("Undone")


def test_busy_state_disables_segment_and_undo_and_a_mid_run_edit_runs_next(widget, module):
    """The panel's buttons while the worker holds a run, and a point placed mid-run."""
    import threading

    import vtk

    ui, parameters = module.ui, widget._parameterNode
    parameters.inputVolume = add_volume(np.zeros((10, 20, 20), np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), "scan")
    parameters.positivePoints.AddControlPoint(vtk.vtkVector3d(5.0, 6.0, 8.0), "lesion")
    widget.onSegmentButton()
    finish(widget)
    assert ui.undoButton.enabled
    gate, inside = threading.Event(), threading.Event()
    engine = FakeSegmenter.instances[-1]
    original = engine.segment

    def held(*args, **kwargs):
        inside.set()
        assert gate.wait(20.0)
        return original(*args, **kwargs)

    engine.segment = held
    assert widget.runSegmentation() == "started"
    assert inside.wait(20.0)
    # mid-run: Segment and Undo are disabled, Cancel enabled, progress shown
    assert not ui.segmentButton.enabled and not ui.undoButton.enabled and ui.cancelButton.enabled
    assert ui.progressBar.visible
    # a point placed mid-run (the markups node's own event) is routed and its run queued
    parameters.autoUpdate = True
    index = parameters.positivePoints.AddControlPoint(vtk.vtkVector3d(12.0, 14.0, 8.0), "second")
    assert widget.logic.runner.queued is not None and "Queued" in ui.statusLabel.text
    gate.set()
    finish(widget)
    from ProMISeSlicer.nodes import point_segment_id

    segmentId = point_segment_id(parameters.positivePoints, index)
    assert segmentId is not None, "the point was routed to a (new) target segment"
    voxels = [tuple(int(v) for v in voxel) for voxel in engine.calls[-1]["voxels"]]
    assert voxels == [(4, 6, 5), (4, 14, 12)], "the queued edit ran last, refining the target with both clicks"
    assert ui.segmentButton.enabled and ui.undoButton.enabled and not ui.cancelButton.enabled
    assert parameters.outputSegmentation.GetSegmentation().GetSegment(segmentId) is not None
    assert any(d == segmentId for _, d in ui.targetSegmentComboBox.items), "the target list shows it"


def test_new_lesion_button_and_negative_list_made_on_demand(widget, module):
    import vtk

    ui, parameters = module.ui, widget._parameterNode
    parameters.inputVolume = add_volume(np.zeros((10, 20, 20), np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), "scan")
    assert parameters.negativePoints is None
    widget.placeNegative()
    assert parameters.negativePoints is not None, "the background list is made when it is first used"
    widget.onNewLesionButton()
    segmentation = parameters.outputSegmentation
    node, target = widget.session.target()
    assert node is segmentation and segmentation.GetSegmentation().GetSegment(target).GetName() == "Lesion 1"
    assert ui.targetSegmentComboBox.currentData == target
    parameters.positivePoints.AddControlPoint(vtk.vtkVector3d(5.0, 6.0, 8.0))
    widget.onPointPlaced(parameters.positivePoints, "positive")
    finish(widget)
    assert "Lesion 1" in ui.statusLabel.text, ui.statusLabel.text
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1


def test_runtime_chooser_reaches_the_engine_and_is_saved(widget, module):
    import vtk

    ui, parameters = module.ui, widget._parameterNode
    assert ui.runtimeComboBox.items == [("Auto (ONNX Runtime on CPU)", "auto"), ("PyTorch", "torch"),
                                        ("ONNX Runtime", "onnx")]
    assert ui.runtimeComboBox.currentData == "auto" and parameters.runtime == "auto"
    assert ui.runtimeComboBox.slots["currentIndexChanged(int)"] == [widget.onRuntimeChanged]

    parameters.inputVolume = add_volume(np.zeros((10, 20, 20), np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), "scan")
    parameters.positivePoints.AddControlPoint(vtk.vtkVector3d(5.0, 6.0, 8.0), "lesion")
    widget.onSegmentButton()
    finish(widget)
    auto_engine = FakeSegmenter.instances[-1]
    assert auto_engine.runtime == "auto" and len(auto_engine.calls) == 1

    ui.runtimeComboBox.currentIndex = 2  # the user picks ONNX Runtime
    widget.onRuntimeChanged()
    assert parameters.runtime == "onnx"  # saved with the scene
    widget.onSegmentButton()
    finish(widget)
    onnx_engine = FakeSegmenter.instances[-1]
    assert onnx_engine is not auto_engine and onnx_engine.runtime == "onnx" and len(onnx_engine.calls) == 1
    assert module.messages["errors"] == [] and "lesion" in ui.statusLabel.text

    # a saved choice is shown again when the parameter node is set
    ui.runtimeComboBox.currentIndex = 0
    widget.setParameterNode(parameters)
    assert ui.runtimeComboBox.currentData == "onnx"


def test_errors_and_cancel_are_shown_in_the_status_line(widget, module, monkeypatch):
    import vtk

    ui, parameters = module.ui, widget._parameterNode
    parameters.inputVolume = add_volume(np.zeros((10, 20, 20), np.float32), np.eye(4), "scan")
    parameters.positivePoints.AddControlPoint(vtk.vtkVector3d(500.0, 6.0, 8.0), "far")
    widget.onSegmentButton()
    finish(widget)
    assert "outside the image" in ui.statusLabel.text and ui.statusLabel.styleSheet
    assert module.messages["errors"] == []  # an expected error is not a pop-up

    parameters.positivePoints.SetNthControlPointPosition(0, vtk.vtkVector3d(5.0, 6.0, 8.0))
    # the user clicks Cancel while the worker runs: the result is not written
    engine_calls = []

    def cancelled_mid_run(*args, **kwargs):
        engine_calls.append(1)
        widget.onCancelButton()  # as if clicked while the engine ran
        return FakeSegmenter.segment(FakeSegmenter.instances[-1], *args, **kwargs)

    widget.logic.getSegmenter(None, "auto", "auto", "auto").segment = cancelled_mid_run
    widget.onSegmentButton()
    finish(widget)
    assert engine_calls and ui.statusLabel.text.startswith("Cancelled") and "nothing was changed" in ui.statusLabel.text
    # the placed point started an (empty) lesion; the cancelled run wrote nothing into it
    segmentation = parameters.outputSegmentation
    segmentId = segmentation.GetSegmentation().GetNthSegmentID(0)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    assert slicer_array(segmentation, segmentId, parameters.inputVolume).sum() == 0


def test_declined_dependencies_stop_before_segmenting(widget, module, monkeypatch):
    from ProMISeSlicer import install

    widget._dependenciesReady = False

    def declined(*args, **kwargs):
        raise RuntimeError("installation of the Python packages was declined")

    monkeypatch.setattr(install, "ensure_dependencies", declined)
    parameters = widget._parameterNode
    parameters.inputVolume = add_volume(np.zeros((4, 4, 4), np.float32), np.eye(4), "scan")
    add_points([("a", (1, 1, 1))])
    widget.onSegmentButton()
    finish(widget)
    assert "declined" in module.ui.statusLabel.text
    assert widget.logic._segmenter is None


def test_model_buttons(widget, module, monkeypatch):
    removed = []
    monkeypatch.setattr(widget.logic, "removeDownloadedModels", lambda: removed.append(True) or [Path("/x/a.pth")])
    widget.onRemoveModelsButton()
    assert removed and "/x/a.pth" in module.ui.statusLabel.text
    calls = []

    def download(name, progress, cancel):
        progress(0.5, f"downloading {name}")
        calls.append((name, cancel()))
        return Path("/cache") / name

    monkeypatch.setattr(widget.logic, "downloadModel", download)
    assert widget.downloadModel("sam_vit_b")
    assert calls == [("sam_vit_b", False)] and not module.ui.downloadProgressBar.visible
    assert "Downloaded sam_vit_b" in module.ui.statusLabel.text


def test_prompts_chooser_reaches_the_engine_and_the_status_names_the_method(widget, module):
    import vtk

    ui, parameters = module.ui, widget._parameterNode
    assert ui.promptsComboBox.items == [("Auto", "auto"), ("Fused (rules ranked by the network)", "fused"),
                                        ("Learned", "learned"), ("Rule-based", "heuristic")]
    assert ui.promptsComboBox.currentData == "auto" and parameters.prompts == "auto"
    assert ui.promptsComboBox.slots["currentIndexChanged(int)"] == [widget.onPromptsChanged]

    parameters.inputVolume = add_volume(np.zeros((10, 20, 20), np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), "scan")
    parameters.positivePoints.AddControlPoint(vtk.vtkVector3d(5.0, 6.0, 8.0), "lesion")
    widget.onSegmentButton()
    finish(widget)
    assert FakeSegmenter.instances[-1].prompts == "auto"
    assert "learned prompts (fake-prompter)" in ui.statusLabel.text, ui.statusLabel.text

    ui.promptsComboBox.currentIndex = 3  # the user picks Rule-based
    widget.onPromptsChanged()
    assert parameters.prompts == "heuristic"  # saved with the scene
    widget.onSegmentButton()
    finish(widget)
    engine = FakeSegmenter.instances[-1]
    assert engine.prompts == "heuristic" and len(engine.calls) == 1
    assert "lesion" in ui.statusLabel.text and "heuristic box prompts" in ui.statusLabel.text, ui.statusLabel.text
    assert module.messages["status"][-1] == ui.statusLabel.text and module.messages["errors"] == []

    ui.promptsComboBox.currentIndex = 1  # Fused
    widget.onPromptsChanged()
    widget.onSegmentButton()
    finish(widget)
    assert FakeSegmenter.instances[-1].prompts == "fused" and "fused prompts" in ui.statusLabel.text
    ui.promptsComboBox.currentIndex = 3
    widget.onPromptsChanged()

    ui.promptsComboBox.currentIndex = 0  # a saved choice is shown again when the parameter node is set
    widget.setParameterNode(parameters)
    assert ui.promptsComboBox.currentData == "heuristic"


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMISE_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("PROMISE_WEIGHTS_PROMISE_COLON", "PROMISE_WEIGHTS_PROMISE_PANCREAS"):
        monkeypatch.delenv(name, raising=False)


def _select_model(widget, module, name):
    module.ui.modelComboBox.currentIndex = module.ui.modelComboBox.findData(name)
    widget.onModelChanged()


def test_a_3d_model_is_added_by_hand_and_warns_about_the_cpu(private_cache, widget, module):
    from ProMISeLib.models.promise3d.config import DOWNLOAD_PAGE, PRESETS

    ui = module.ui
    widget.populateModels()
    text = next(t for t, d in ui.modelComboBox.items if d == "promise-colon")
    assert "add by hand" in text
    states = {item.data(32): ui.modelsTable.rows[(row, 1)].text
              for (row, column), item in ui.modelsTable.rows.items() if column == 0}
    assert states["promise-colon"] == "no (add by hand)" and states["sam_vit_b"] == "no"
    assert ui.modelWarningLabel.text == "" and ui.promptsComboBox.enabled and not ui.addCheckpointButton.enabled
    assert ui.manualModelLabel.text == ""

    _select_model(widget, module, "promise-colon")
    assert widget._parameterNode.model == "promise-colon"
    warning = ui.modelWarningLabel.text
    assert "CPU" in warning and "minute" in warning and "GPU takes seconds" in warning
    assert "negative" in warning and "not used" in warning
    assert not ui.promptsComboBox.enabled  # a 3D model takes no box prompts
    assert ui.addCheckpointButton.enabled
    help_text = ui.manualModelLabel.text
    assert DOWNLOAD_PAGE in help_text and PRESETS["promise-colon"].source_hint in help_text

    # Segment with the model not added yet: the status says where to get it, the Models section opens
    ui.modelsCollapsibleButton.collapsed = True
    assert not module.module.ProMISeModuleWidget.ensureModel(widget, "promise-colon")
    assert DOWNLOAD_PAGE in ui.statusLabel.text and "Use a local file" in ui.statusLabel.text
    assert ui.statusLabel.styleSheet and not ui.modelsCollapsibleButton.collapsed

    _select_model(widget, module, "litemedsam")
    assert ui.modelWarningLabel.text == "" and ui.promptsComboBox.enabled and not ui.addCheckpointButton.enabled


def test_add_checkpoint_button_adds_the_chosen_file(private_cache, widget, module, monkeypatch):
    from ProMISeLib.errors import CheckpointError

    ui = module.ui
    chosen = {"path": "/downloads/colon_pretrain_promise.pth"}
    dialogs = []

    def open_file(parent, caption, directory, filters):
        dialogs.append((caption, filters))
        return chosen["path"]

    monkeypatch.setattr(sys.modules["qt"], "QFileDialog", types.SimpleNamespace(getOpenFileName=open_file),
                        raising=False)
    monkeypatch.setattr(module.module.slicer.util, "mainWindow", lambda: None)
    added, refreshed = [], []

    def add(name, path):
        added.append((name, path))
        if name == "promise-pancreas":
            raise CheckpointError(f"{path}: not a released ProMISe checkpoint")
        return Path("/cache/weights") / f"{name}.safetensors"

    monkeypatch.setattr(widget.logic, "addModelCheckpoint", add)
    monkeypatch.setattr(widget, "populateModels", lambda: refreshed.append(True))
    assert ui.addCheckpointButton.slots["clicked(bool)"] == [widget.onAddCheckpointButton]

    _select_model(widget, module, "promise-colon")
    widget.onAddCheckpointButton()
    assert added == [("promise-colon", chosen["path"])] and refreshed
    assert "promise-colon" in dialogs[0][0] and "*.pth" in dialogs[0][1]
    assert ui.statusLabel.text == "Added promise-colon: /cache/weights/promise-colon.safetensors"

    chosen["path"] = ""  # the user cancels the file dialog: nothing happens
    widget.onAddCheckpointButton()
    assert len(added) == 1

    chosen["path"] = "/downloads/wrong.pth"
    _select_model(widget, module, "promise-pancreas")
    widget.onAddCheckpointButton()
    assert added[-1] == ("promise-pancreas", "/downloads/wrong.pth")
    assert "Could not add promise-pancreas" in ui.statusLabel.text and "not a released" in ui.statusLabel.text
    assert ui.statusLabel.styleSheet

    _select_model(widget, module, "sam_vit_b")  # offline: a downloadable model's own file, checked by the engine
    widget.onAddCheckpointButton()
    assert added[-1] == ("sam_vit_b", "/downloads/wrong.pth") and "Added sam_vit_b" in ui.statusLabel.text


def test_an_unsupported_slicer_is_said_at_load_and_segment_stays_off(module, monkeypatch):
    """Slicer 5.8 (Python 3.9) can't run the engine: the panel says so when it opens, not at the first Segment."""
    from ProMISeSlicer import install

    monkeypatch.setattr(install, "unsupported_reason", lambda *a, **k: "ProMISe needs Slicer 5.10 or newer")
    panel = module.module.ProMISeModuleWidget()
    panel.setup()
    try:
        parameters = panel._parameterNode
        parameters.inputVolume = add_volume(np.zeros((10, 20, 20), np.float32), np.diag([1.0, 1.0, 2.0, 1.0]),
                                            "scan")
        parameters.positivePoints.AddControlPoint(10.0, 10.0, 10.0)
        panel.updateButtons()
        assert not module.ui.segmentButton.enabled
        assert "5.10" in module.ui.statusLabel.text
    finally:
        panel.cleanup()  # as the widget fixture does: no observers left on the scene
        panel.logic.runner.close()


def test_next_candidate_swaps_the_target_segment_and_is_computed_ahead(widget, module):
    """A click with two hypotheses: the status says "candidate 1 of 2", the worker computes the second in the
    background right after (nothing written), Next candidate shows it in the same segment as one undo step,
    a later click keeps it, and Undo brings the first back."""
    import vtk

    ui, parameters = module.ui, widget._parameterNode
    widget.logic.segmenterFactory = fake_factory(radius_mm=6.0, alternatives=2)
    parameters.inputVolume = add_volume(np.zeros((12, 24, 24), np.float32), np.eye(4), "scan")
    points = parameters.positivePoints
    points.AddControlPoint(vtk.vtkVector3d(11.0, 11.0, 6.0), "lesion")
    ui.positivePointsSelector.setCurrentNode(points)
    widget.onPointsNodeChanged()
    widget.onSegmentButton()
    finish(widget)
    engine = FakeSegmenter.instances[-1]
    assert "candidate 1 of 2" in ui.statusLabel.text, ui.statusLabel.text
    assert [call["alternative"] for call in engine.calls] == [0, 1]  # the second, ahead, after the first
    segmentation = parameters.outputSegmentation.GetSegmentation()
    segmentId = segmentation.GetNthSegmentID(0)
    first = slicer_array(parameters.outputSegmentation, segmentId, parameters.inputVolume)
    widget.session.setTarget(parameters.outputSegmentation, segmentId)
    widget.updateButtons()
    assert ui.nextCandidateButton.enabled and not widget.logic.busy

    widget.onNextCandidateButton()
    finish(widget)
    assert "candidate 2 of 2" in ui.statusLabel.text, ui.statusLabel.text
    assert segmentation.GetNumberOfSegments() == 1
    second = slicer_array(parameters.outputSegmentation, segmentId, parameters.inputVolume)
    assert 0 < second.sum() < first.sum()
    # a later run of that segment keeps its candidate; the next one wraps round to the first
    widget.runSegmentation(segmentIds=[segmentId])
    finish(widget)
    # each shown result is followed by the other candidate computed ahead
    assert [call["alternative"] for call in engine.calls] == [0, 1, 1, 0, 1, 0]
    widget.onUndoButton()
    widget.onUndoButton()
    np.testing.assert_array_equal(slicer_array(parameters.outputSegmentation, segmentId, parameters.inputVolume), first)


def test_after_a_result_is_shown_the_worker_encodes_ahead_for_its_corrections(widget, module):
    """Once a result is written, the worker encodes ahead, in the background, for the next corrective click on it:
    with the result's own prompts and candidate, after the next candidate computed ahead, without looking busy
    (a user's run cancels background work: test_slicer_worker)."""
    import vtk

    ui, parameters = module.ui, widget._parameterNode
    widget.logic.segmenterFactory = fake_factory(radius_mm=6.0, alternatives=2)
    parameters.inputVolume = add_volume(np.zeros((12, 24, 24), np.float32), np.eye(4), "scan")
    points = parameters.positivePoints
    points.AddControlPoint(vtk.vtkVector3d(11.0, 11.0, 6.0), "lesion")
    ui.positivePointsSelector.setCurrentNode(points)
    widget.onPointsNodeChanged()
    widget.onSegmentButton()
    finish(widget)
    engine = FakeSegmenter.instances[-1]
    assert [call["alternative"] for call in engine.calls] == [0, 1]  # the run, then the next candidate ahead
    assert len(engine.encoded_ahead) == 1 and not widget.logic.busy
    ahead = engine.encoded_ahead[0]
    np.testing.assert_array_equal(ahead["points"], engine.calls[0]["points"])
    assert ahead["alternative"] == 0 and ahead["array"] is engine.calls[0]["array"] and not ahead["cancelled"]
    widget.onNextCandidateButton()  # shows candidate 2: the encoding ahead follows that one
    finish(widget)
    assert [a["alternative"] for a in engine.encoded_ahead] == [0, 1]
