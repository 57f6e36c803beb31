"""The inference runtimes and precisions, named and checked without importing torch or ONNX Runtime (the CLI and
the Slicer panel list them; the loader and the Slicer layer check a runtime with :func:`check_runtime`).

``auto`` runs ONNX Runtime on a CPU where it is installed and the model has an export, else PyTorch
(``ProMISeLib.runtime.loader.choose_runtime`` decides); ``torch`` and ``onnx`` ask for one.
"""

from __future__ import annotations

from importlib.util import find_spec

from ProMISeLib.errors import InvalidInputError

RUNTIMES = ("auto", "torch", "onnx")
#: The precisions a model can run at (fp16: CUDA with PyTorch; int8: a CPU with ONNX Runtime).
PRECISIONS = ("fp32", "fp16", "int8")
#: The precisions of an ONNX export (its encoder in fp32, or int8 dynamically quantised).
ONNX_PRECISIONS = ("fp32", "int8")


def check_runtime(runtime: str) -> str:
    """``runtime`` if the engine offers it (one of RUNTIMES), else InvalidInputError."""
    if runtime not in RUNTIMES:
        raise InvalidInputError(f"unknown runtime {runtime!r}; use {', '.join(RUNTIMES)}")
    return runtime


def onnx_installed() -> bool:
    """Whether ONNX Runtime (to run) and onnx (to export on first use) can be imported; imports neither."""
    return find_spec("onnxruntime") is not None and find_spec("onnx") is not None


#: The oldest torch whose ``torch.onnx.export`` takes ``dynamo=False`` (the TorchScript exporter the export uses).
MIN_TORCH_FOR_EXPORT = (2, 5)


def torch_exports_onnx(torch_version: str | None = None) -> bool:
    """Whether a torch version (default: the installed one, read from its metadata; no torch import) can run the
    ONNX export; False when torch is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        parts = (torch_version or version("torch")).split("+")[0].split(".")
    except PackageNotFoundError:
        return False
    return tuple(int("".join(ch for ch in part if ch.isdigit()) or 0) for part in parts[:2]) >= MIN_TORCH_FOR_EXPORT
