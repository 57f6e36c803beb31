"""The inference runtimes, named without importing torch or ONNX Runtime (the CLI and the Slicer panel list them).

``auto`` runs ONNX Runtime on a CPU where it is installed and the model has an export, else PyTorch
(``ProMISeLib.engine.choose_runtime`` decides); ``torch`` and ``onnx`` ask for one.
"""

from __future__ import annotations

from importlib.util import find_spec

RUNTIMES = ("auto", "torch", "onnx")


def onnx_installed() -> bool:
    """Whether ONNX Runtime (to run) and onnx (to export on first use) can be imported; imports neither."""
    return find_spec("onnxruntime") is not None and find_spec("onnx") is not None
