"""The run options the Slicer side accepts (runtime, prompts, model), checked without importing torch.

Shared by :mod:`.logic` and :mod:`.batch` (so neither imports the other for them).
"""

from __future__ import annotations

from ProMISeLib.errors import InvalidInputError
from ProMISeLib.runtime.choice import RUNTIMES

#: How a click becomes per-slice box prompts (``ProMISeLib.engine.PROMPT_MODES``; repeated here so
#: that importing the logic imports no torch): the engine's choice, the rule-based box search ranked
#: by the learned prompter, the learned prompter alone, or the rule-based (heuristic) search alone.
PROMPT_MODES = ("auto", "fused", "learned", "heuristic")


def checkRuntime(runtime: str) -> str:
    """``runtime`` if the engine offers it ("auto", "torch" or "onnx"), else InvalidInputError."""
    if runtime not in RUNTIMES:
        raise InvalidInputError(f"unknown runtime {runtime!r}; use {', '.join(RUNTIMES)}")
    return runtime


def checkPrompts(prompts: str) -> str:
    """``prompts`` if the engine offers it ("auto", "fused", "learned" or "heuristic"), else InvalidInputError.

    Checked against :data:`PROMPT_MODES` without importing the engine (so bad input is refused where torch
    is not installed yet); a test keeps the tuple equal to the engine's.
    """
    if prompts not in PROMPT_MODES:
        raise InvalidInputError(f"unknown prompts {prompts!r}; use one of {', '.join(PROMPT_MODES)}")
    return prompts


def default_model() -> str:
    """The engine's default model name."""
    from ProMISeLib.models.registry import DEFAULT_MODEL

    return DEFAULT_MODEL
