"""First-use installation of what the engine needs inside Slicer.

* torch comes only from the PyTorch extension (``PyTorchUtils``), which picks the build that
  matches the GPU driver; it is never pip-installed here.
* Everything else is listed in ``Resources/requirements.txt`` and installed with
  ``slicer.packaging.pip_ensure`` (Slicer 5.12+; ``slicer.pydeps`` on some 5.11 builds), or with
  ``slicer.util.pip_install`` on Slicer 5.10, after asking the user.
* Slicer's own numpy and SimpleITK (and an installed torch) are pinned with a constraints file, so
  pip can never replace them: it fails instead, and says so.

Nothing here runs at import time; the module calls :func:`ensure_dependencies` when the user
first clicks Segment (or a model download).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: Packages Slicer (or the PyTorch extension) owns: never installed or upgraded from here.
PROTECTED = ("numpy", "SimpleITK", "torch", "torchvision", "vtk")
TORCH_REQUIREMENT = ">=2.1"
REQUESTER = "ProMISe"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


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


def is_satisfied(requirement: str) -> bool:
    """Whether an installed distribution satisfies ``requirement`` (name and version range)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - packaging ships with pip/setuptools everywhere
        Requirement = None
    if Requirement is not None:
        req = Requirement(requirement)
        if req.marker is not None and not req.marker.evaluate():
            return True
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            return False
        return req.specifier.contains(version, prereleases=True)
    try:
        importlib.metadata.version(requirement_name(requirement))
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def missing_requirements(path: str | Path) -> list[str]:
    """The requirements of ``path`` that are not yet satisfied (never a protected package)."""
    return [r for r in read_requirements(path)
            if _canonical(requirement_name(r)) not in {_canonical(p) for p in PROTECTED} and not is_satisfied(r)]


def constraints_text() -> str:
    """pip constraints pinning every protected package that is installed to its current version."""
    pins = []
    for name in PROTECTED:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return "\n".join(pins) + "\n"


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


@dataclass
class InstallPlan:
    """What first use still needs."""

    torch: bool
    packages: list[str]

    @property
    def needed(self) -> bool:
        return self.torch or bool(self.packages)

    def describe(self) -> str:
        parts = []
        if self.torch:
            parts.append("PyTorch (through the PyTorch extension, matched to your GPU driver)")
        if self.packages:
            parts.append("Python packages: " + ", ".join(self.packages))
        return "; ".join(parts)


def plan(requirements_path: str | Path) -> InstallPlan:
    return InstallPlan(torch=not torch_installed(), packages=missing_requirements(requirements_path))


def _pip_module():
    """``slicer.packaging`` (5.12+) or ``slicer.pydeps`` (5.11), whichever has ``pip_ensure``; else None."""
    for name in ("slicer.packaging", "slicer.pydeps"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "pip_ensure"):
            return module
    return None


def install_torch() -> None:
    """Install torch through the PyTorch extension (it asks the user first)."""
    try:
        import PyTorchUtils
    except ImportError:
        raise RuntimeError(
            "ProMISe needs the PyTorch extension: install 'PyTorch' from the Extensions Manager and restart Slicer"
        ) from None
    torch_logic = PyTorchUtils.PyTorchUtilsLogic()
    if torch_logic.torchInstalled():
        return
    torch = torch_logic.installTorch(askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT)
    if torch is None:
        raise RuntimeError("PyTorch was not installed (cancelled); ProMISe cannot run without it")


def install_packages(packages: list[str], confirm: Callable[[str], bool] | None = None) -> None:
    """Install ``packages`` without touching protected ones; asks first (``confirm`` on Slicer 5.10)."""
    if not packages:
        return
    import slicer

    constraints = Path(tempfile.mkdtemp(prefix="promise-pip-")) / "constraints.txt"
    constraints.write_text(constraints_text())
    pip = _pip_module()
    if pip is not None:
        # pip_ensure asks the user, shows progress, and offers a restart if an imported package changed.
        pip.pip_ensure(packages, constraints=str(constraints), requester=REQUESTER)
    else:  # Slicer 5.10: ask ourselves, then the plain installer (it shows pip's output in the log)
        question = "ProMISe needs these Python packages, from PyPI:\n\n" + "\n".join(packages) + "\n\nInstall them now?"
        if confirm is not None and not confirm(question):
            raise RuntimeError("installation of the Python packages was declined")
        slicer.util.pip_install(["-c", str(constraints), *packages])
    importlib.invalidate_caches()
    still = [p for p in packages if not is_satisfied(p)]
    if still:
        raise RuntimeError("these packages are still missing after installation: " + ", ".join(still))


def ensure_dependencies(
    requirements_path: str | Path,
    confirm: Callable[[str], bool] | None = None,
    status: Callable[[str], None] | None = None,
) -> bool:
    """Make sure torch and the engine's packages are importable. Returns True if anything was installed.

    ``confirm(question) -> bool`` asks the user (used where Slicer's own installer does not ask);
    ``status(message)`` reports progress. Raises RuntimeError with a readable message when the user
    declines or an installation fails.
    """
    todo = plan(requirements_path)
    if not todo.needed:
        return False
    logging.info(f"ProMISe first use: installing {todo.describe()}")
    if todo.torch:
        if status:
            status("Installing PyTorch through the PyTorch extension...")
        install_torch()
    if todo.packages:
        if status:
            status("Installing Python packages: " + ", ".join(todo.packages))
        install_packages(todo.packages, confirm)
    if status:
        status("Dependencies installed.")
    return True
