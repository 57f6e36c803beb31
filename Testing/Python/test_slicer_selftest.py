"""The module's self-test (ProMISeSlicer/selftest.py) run headless on slicer-core, as far as it can run there.

slicer-core has no ``slicer.ScriptedLoadableModule`` (it needs Qt), so its test base class is replaced
by a plain ``unittest.TestCase`` whose ``delayDisplay`` records the messages. The scene, the nodes, the
logic and (in the slow test) the engine are real. Checked here:

* bad input leaves the scene unchanged, and that path imports neither torch nor the engine (subprocess);
* without dependencies the model test is *skipped* with "skipped: dependencies not installed" shown
  and logged, never passed or failed;
* with them, brain1 from the fixed fiducial matches Testing/Data's reference (Dice >= 0.9) (slow).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import types
import unittest
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")
pytest_plugins = ["conftest_slicer"]

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "ProMISeModule"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


class RecordingTestBase(unittest.TestCase):
    """Stands in for Slicer's ScriptedLoadableModuleTest: ``delayDisplay`` records instead of showing."""

    displayed: list[str] = []

    def delayDisplay(self, message, msec=None):
        type(self).displayed.append(message)


def load_selftest():
    """ProMISeSlicer.selftest imported afresh over the stand-in base class (restores sys.modules after)."""
    stub = types.ModuleType("slicer.ScriptedLoadableModule")
    stub.ScriptedLoadableModuleTest = RecordingTestBase
    saved = {name: sys.modules.get(name) for name in ("slicer.ScriptedLoadableModule", "ProMISeSlicer.selftest")}
    sys.modules["slicer.ScriptedLoadableModule"] = stub
    sys.modules.pop("ProMISeSlicer.selftest", None)
    try:
        import ProMISeSlicer.selftest as selftest
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    RecordingTestBase.displayed = []
    return selftest


def run_case(selftest, name: str) -> unittest.TestResult:
    result = unittest.TestResult()
    selftest.ProMISeModuleTest(name).run(result)
    return result


@pytest.fixture
def selftest(slicer_env):
    return load_selftest()


def test_bad_input_leaves_the_scene_unchanged(selftest):
    result = run_case(selftest, "test_bad_input_leaves_scene_unchanged")
    assert result.wasSuccessful() and result.testsRun == 1 and not result.skipped, result.failures + result.errors
    assert "Bad input test passed" in RecordingTestBase.displayed


def test_bad_input_check_would_fail_if_the_scene_changed(selftest, monkeypatch):
    """The self-test's scene comparison is real: a logic that adds a node before refusing is caught."""
    original = selftest.ProMISeModuleLogic.segment

    def leaky(self, volumeNode, pointsNode, *args, **kwargs):
        import slicer

        slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "left behind")
        return original(self, volumeNode, pointsNode, *args, **kwargs)

    monkeypatch.setattr(selftest.ProMISeModuleLogic, "segment", leaky)
    result = run_case(selftest, "test_bad_input_leaves_scene_unchanged")
    assert len(result.failures) == 1 and "left the scene as it was" in result.failures[0][1]


def test_bad_input_path_imports_neither_torch_nor_the_engine():
    code = f"""
import sys
sys.path[:0] = [{str(MODULE_DIR)!r}, {str(REPO / "Testing" / "Python")!r}]
import test_slicer_selftest as t
from conftest_slicer import slicer_environment
with slicer_environment():
    selftest = t.load_selftest()
    result = t.run_case(selftest, "test_bad_input_leaves_scene_unchanged")
assert result.wasSuccessful(), result.failures + result.errors
heavy = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.") or m == "ProMISeLib.engine"
               or m == "onnxruntime")
print(heavy)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", f"imported: {done.stdout.strip().splitlines()[-1]}"


def _missing_dependencies(selftest, monkeypatch):
    from ProMISeSlicer import install

    def plan(requirements_path=None, environment=None):
        return install.InstallPlan(torch=True, packages=["segment-anything>=1.0,<2"])

    monkeypatch.setattr(selftest.install, "plan", plan)


def test_without_dependencies_the_model_test_is_skipped_visibly(selftest, monkeypatch, caplog):
    _missing_dependencies(selftest, monkeypatch)
    with caplog.at_level(logging.WARNING):
        result = run_case(selftest, "test_brain1_matches_reference")
    assert result.testsRun == 1 and not result.failures and not result.errors
    assert [reason for _, reason in result.skipped] == ["skipped: dependencies not installed"]
    assert any(m.startswith("skipped: dependencies not installed") for m in RecordingTestBase.displayed)
    assert "skipped: dependencies not installed" in caplog.text


def test_reload_and_test_shows_the_skip_and_still_runs_the_rest(selftest, monkeypatch):
    _missing_dependencies(selftest, monkeypatch)
    selftest.ProMISeModuleTest("runTest").runTest()  # raises nothing: a skip is not a failure
    shown = RecordingTestBase.displayed
    assert "Bad input test passed" in shown
    assert "test_brain1_matches_reference: skipped: dependencies not installed" in shown
    assert not any("brain1 test passed" in m for m in shown)


def test_reference_is_small_and_on_the_brain1_grid(selftest, slicer_env):
    import SimpleITK as sitk

    folder = selftest.reference_data_folder()
    assert folder == REPO / "Testing" / "Data"
    path = folder / selftest.REFERENCE_NAME
    assert path.stat().st_size < 10_000
    assert "promise segment" in (folder / "README.md").read_text()  # how it was made
    from ProMISeLib.io.sample_data import load_cases

    case = next((c for c in load_cases() if c.id == "brain1"), None)
    if case is None:
        pytest.skip("brain1 not in the data folder")
    volume = selftest.load_scan(case.image)
    reference = selftest.reference_on_volume_grid(path, volume)
    assert reference.sum() == (sitk.GetArrayFromImage(sitk.ReadImage(str(path))) != 0).sum()
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label))) != 0
    assert selftest.dice(reference, label) > 0.7  # the reference is the tumour, placed where it belongs
    ijk = np.rint(np.linalg.inv(slicer_env.slicer.util.arrayFromVTKMatrix(
        _ijk_to_ras(volume))) @ [*selftest.BRAIN1_CLICK_RAS, 1.0]).astype(int)[:3]
    assert reference[ijk[2], ijk[1], ijk[0]] and label[ijk[2], ijk[1], ijk[0]]  # the fixed click is inside both


def _ijk_to_ras(volume):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return matrix


def test_dice_helper():
    pytest.importorskip("slicer")
    a = np.zeros((4, 4, 4), bool)
    b = a.copy()
    a[:2], b[1:3] = True, True
    selftest = load_selftest()
    assert selftest.dice(a, b) == pytest.approx(0.5)
    assert selftest.dice(a, a) == 1.0


@pytest.mark.slow
def test_brain1_matches_the_reference_with_the_real_engine(selftest):
    from ProMISeSlicer import install

    if install.plan().needed:
        pytest.skip("engine dependencies not installed here")
    result = run_case(selftest, "test_brain1_matches_reference")
    assert result.wasSuccessful() and not result.skipped, result.failures + result.errors + result.skipped
    shown = RecordingTestBase.displayed
    dice_line = next(m for m in shown if m.startswith("Dice against the reference"))
    assert float(dice_line.split(": ")[1].split()[0]) >= 0.9
    assert "brain1 test passed" in shown
    json.dumps(shown)  # plain messages
