"""The walk's one extension point: a plug-in that sees every step, may choose its candidate and end the walk.

A study that changes how the walk decides (an oracle, a learned ranker) or how the frozen model runs (the
decoder token shift) plugs in here instead of patching the walk::

    class Oracle(WalkPlugin):
        def choose(self, step):            # each propagated or corrected slice's candidates
            return best_index_by_label(step)
        def stop(self, k, mask, reason):   # after the stop rules, on each propagated slice
            return None if label_has_lesion(k) else "the label ends here"

    segmenter = Segmenter(plugins=[Oracle()])

Every hook of :class:`WalkPlugin` does nothing by default, so a plug-in overrides only what it needs.
Hooks run in the order the plug-ins are given. ``choose`` is called where the rule-based or fused prompts
weigh candidates (``--prompts learned`` picks one box and has no candidates to choose from).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ProMISeLib.io.preprocess import CropWindow


@dataclass(frozen=True)
class StepCandidates:
    """What one step of the walk weighed on slice ``k``."""

    k: int
    crop: CropWindow
    previous: np.ndarray  # the neighbouring slice's mask the boxes came from
    candidates: list[np.ndarray]  # crop masks, one per box that reached the previous mask
    predicted: list[float]  # the model's predicted IoU of each
    scores: list[float]  # the rule score of each (predicted IoU, times self-consistency when verified)
    coarse: np.ndarray | None  # the learned prompter's coarse mask (fused prompts), else None
    chosen: int  # the index the rules (and the prompter) chose


class WalkPlugin:
    """Base class of a walk plug-in: override the hooks you need."""

    #: Shown in the result's method name when set (a plug-in that changes the result should name itself).
    name: str | None = None

    def adapt_model(self, module) -> None:
        """Change the frozen model's torch module in place before it runs (PyTorch runtime only)."""

    def adapt_backend(self, backend):
        """The inference backend to run instead of ``backend`` (called once, when the model loads): a wrapper
        with the same ``encode``/``decode`` that keeps, times or replays what they return. The default: itself."""
        return backend

    def choose(self, step: StepCandidates) -> int | None:
        """The index of the candidate to keep on ``step.k``, or None to keep ``step.chosen``."""
        return None

    def stop(self, k: int, mask: np.ndarray | None, reason: str | None) -> str | None:
        """Whether the walk ends at slice ``k``: the stop rules' ``reason`` (None: go on), or your own."""
        return reason

    @property
    def adapts_model(self) -> bool:
        """Whether this plug-in overrides :meth:`adapt_model` (such a plug-in needs the PyTorch runtime)."""
        return type(self).adapt_model is not WalkPlugin.adapt_model
