"""The run options the Slicer side accepts (runtime, prompts, model), checked without importing torch.

Shared by :mod:`.logic` and :mod:`.batch` (so neither imports the other for them). The checks are the engine's
own, which import no torch (the prompt modes: ``ProMISeLib.prompting``; the runtimes:
``ProMISeLib.runtime.choice``, also the loader's check), so bad input is refused where torch is not installed yet.
"""

from __future__ import annotations

from ProMISeLib.prompting import PROMPT_MODES, check_prompts
from ProMISeLib.runtime.choice import check_runtime

__all__ = ["PROMPT_MODES", "check_prompts", "check_runtime", "default_model"]


def default_model() -> str:
    """The engine's default model name."""
    from ProMISeLib.models.registry import DEFAULT_MODEL

    return DEFAULT_MODEL
