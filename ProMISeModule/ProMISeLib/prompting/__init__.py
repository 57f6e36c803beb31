"""Learned prompting for the frozen box-trained default model (issue 6).

A small network reads the frozen encoder's features of a slice plus its 3D context (the click,
or the mask found on the neighbouring slice) and predicts a coarse mask; its bounding box is the
prompt the frozen decoder gets. SAM's weights are never changed.

This file imports no torch: the engine and the Slicer side (``ProMISeSlicer.options``) check a prompt mode here.
"""

from ProMISeLib.errors import InvalidInputError

#: How clicks become per-slice boxes: ``auto`` (the mode the shipped prompter's card names), ``fused``
#: (the rule-based candidates ranked by the prompter), ``learned`` (the prompter picks each box) or
#: ``heuristic`` (the rule-based box search alone).
PROMPT_MODES = ("auto", "fused", "learned", "heuristic")
PROMPTER_MODES = ("fused", "learned")  # the modes that need a learned prompter


def check_prompts(prompts: str) -> str:
    """``prompts`` if it is a prompt mode the engine offers, else an InvalidInputError naming them."""
    if prompts not in PROMPT_MODES:
        raise InvalidInputError(f"unknown prompts {prompts!r}; use one of {', '.join(PROMPT_MODES)}")
    return prompts
