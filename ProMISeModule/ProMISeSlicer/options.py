"""The run options the Slicer side accepts (runtime, prompts, model), checked without importing torch.

Shared by :mod:`.logic` and :mod:`.batch` (so neither imports the other for them). The prompt modes and their
check are the engine's own (``ProMISeLib.prompting``, which imports no torch), so bad input is refused where
torch is not installed yet.
"""

from __future__ import annotations

from ProMISeLib.errors import InvalidInputError
from ProMISeLib.prompting import PROMPT_MODES, check_prompts
from ProMISeLib.runtime.choice import RUNTIMES

__all__ = ["PROMPT_MODES", "check_prompts", "check_runtime", "default_model"]


def check_runtime(runtime: str) -> str:
    """``runtime`` if the engine offers it ("auto", "torch" or "onnx"), else InvalidInputError."""
    if runtime not in RUNTIMES:
        raise InvalidInputError(f"unknown runtime {runtime!r}; use {', '.join(RUNTIMES)}")
    return runtime


def default_model() -> str:
    """The engine's default model name."""
    from ProMISeLib.models.registry import DEFAULT_MODEL

    return DEFAULT_MODEL
