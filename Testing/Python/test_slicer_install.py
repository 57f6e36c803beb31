"""First-use installation (ProMISeSlicer.install) with Slicer's installers replaced by recorders.

Checks: torch only through the PyTorch extension; the rest through pip_ensure (or pip_install on
Slicer 5.10, after asking); Slicer's numpy/SimpleITK pinned by a constraints file; nothing asked or
installed when everything is present.
"""

from __future__ import annotations

import importlib.metadata
import sys
import types
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "ProMISeModule"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

from ProMISeSlicer import install  # noqa: E402

REQUIREMENTS = MODULE_DIR / "Resources" / "requirements.txt"
ABSENT = "promise-surely-absent-package>=1.0"


@pytest.fixture
def fake_slicer(monkeypatch):
    """A ``slicer`` with a recording ``util.pip_install`` and no ``packaging`` (Slicer 5.10)."""
    calls = SimpleRecorder()
    slicer = types.ModuleType("slicer")
    slicer.util = types.SimpleNamespace(pip_install=calls.record("pip_install"))
    monkeypatch.setitem(sys.modules, "slicer", slicer)
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)  # import fails, as on 5.10
    monkeypatch.setitem(sys.modules, "slicer.pydeps", None)
    return slicer, calls


class SimpleRecorder:
    def __init__(self):
        self.calls = []

    def record(self, name, result=None):
        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return result

        return call

    def names(self):
        return [c[0] for c in self.calls]


def test_requirements_file_is_parsed_and_protected_packages_are_never_planned(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"# comment\nnumpy>=1\nSimpleITK\ntorch>=2\n\n-c other.txt\npytest>=1  # here\n{ABSENT}\n")
    assert install.read_requirements(requirements) == ["numpy>=1", "SimpleITK", "torch>=2", "pytest>=1", ABSENT]
    assert install.missing_requirements(requirements) == [ABSENT]
    assert all(install.requirement_name(r) for r in install.read_requirements(REQUIREMENTS))
    assert not {install.requirement_name(r).lower() for r in install.read_requirements(REQUIREMENTS)} & {
        "torch", "numpy", "simpleitk"}


def test_version_ranges_are_checked():
    version = importlib.metadata.version("pytest")
    assert install.is_satisfied(f"pytest=={version}")
    assert not install.is_satisfied("pytest<1")
    assert not install.is_satisfied(ABSENT)


def test_constraints_pin_slicers_own_packages():
    text = install.constraints_text()
    assert f"numpy=={importlib.metadata.version('numpy')}" in text.splitlines()
    assert f"SimpleITK=={importlib.metadata.version('SimpleITK')}" in text.splitlines()


def test_pip_ensure_is_used_when_slicer_has_it(fake_slicer, monkeypatch):
    slicer, calls = fake_slicer
    packaging = types.ModuleType("slicer.packaging")
    seen = {}

    def pip_ensure(requirements, constraints=None, requester=None, **kwargs):
        seen.update(requirements=list(requirements), constraints=Path(constraints).read_text(), requester=requester)
        monkeypatch.setattr(install, "is_satisfied", lambda r: True)  # "installed"

    packaging.pip_ensure = pip_ensure
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    asked = []
    install.install_packages([ABSENT], confirm=lambda q: asked.append(q) or True)
    assert seen["requirements"] == [ABSENT] and seen["requester"] == "ProMISe"
    assert "numpy==" in seen["constraints"] and "SimpleITK==" in seen["constraints"]
    assert asked == [] and calls.calls == []  # pip_ensure asks itself; the 5.10 path is not used


def test_slicer_5_10_asks_first_then_pip_installs_with_constraints(fake_slicer, monkeypatch):
    slicer, calls = fake_slicer
    with pytest.raises(RuntimeError, match="declined"):
        install.install_packages([ABSENT], confirm=lambda question: False)
    assert calls.calls == []  # nothing installed when the user says no

    questions = []
    monkeypatch.setattr(install, "is_satisfied", lambda r: True)
    install.install_packages([ABSENT], confirm=lambda question: questions.append(question) or True)
    assert len(questions) == 1 and ABSENT in questions[0]
    (name, args, _), = calls.calls
    assert name == "pip_install"
    arguments = args[0]
    assert arguments[0] == "-c" and Path(arguments[1]).read_text().count("numpy==") == 1
    assert arguments[2:] == [ABSENT]


def test_a_failed_install_is_reported(fake_slicer):
    with pytest.raises(RuntimeError, match="still missing"):
        install.install_packages([ABSENT], confirm=lambda question: True)


def test_torch_comes_from_the_pytorch_extension_only(fake_slicer, monkeypatch, tmp_path):
    slicer, calls = fake_slicer
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("pytest>=1\n")
    monkeypatch.setattr(install, "torch_installed", lambda: False)
    torch_calls = []

    class PyTorchUtilsLogic:
        @staticmethod
        def torchInstalled():
            return False

        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
            torch_calls.append((askConfirmation, torchVersionRequirement))
            return types.SimpleNamespace(__version__="2.5")

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    statuses = []
    assert install.ensure_dependencies(requirements, confirm=lambda q: True, status=statuses.append)
    assert torch_calls == [(True, install.TORCH_REQUIREMENT)]  # asks the user, with a version range
    assert calls.calls == []  # pip never sees torch
    assert any("PyTorch" in s for s in statuses)


def test_missing_pytorch_extension_gives_a_clear_error(fake_slicer, monkeypatch, tmp_path):
    monkeypatch.setattr(install, "torch_installed", lambda: False)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("")
    with pytest.raises(RuntimeError, match="Extensions Manager"):
        install.ensure_dependencies(requirements)


def test_nothing_is_asked_when_everything_is_installed(fake_slicer, monkeypatch, tmp_path):
    slicer, calls = fake_slicer
    monkeypatch.setattr(install, "torch_installed", lambda: True)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("pytest>=1\nnumpy\n")
    assert install.ensure_dependencies(requirements, confirm=lambda q: pytest.fail("asked")) is False
    assert calls.calls == []
