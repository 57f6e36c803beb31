"""The walk's one extension point: a plug-in that sees every step, may choose its candidate and end the walk.

A study that changes how the walk decides (an oracle, a learned ranker) or how the frozen model runs (the
decoder token shift) plugs in here instead of patching the walk::

    class Oracle(WalkPlugin):
        def choose(self, weighed):         # every choice: the seed, the planes, each step and correction
            return best_index_by_label(weighed)
        def stop(self, k, mask, reason):   # after the stop rules, on each propagated slice
            return None if label_has_lesion(k) else "the label ends here"

    segmenter = Segmenter(plugins=[Oracle()])

Every hook of :class:`WalkPlugin` does nothing by default, so a plug-in overrides only what it needs.
Hooks run in the order the plug-ins are given. ``choose`` is called wherever the walk weighs candidates
(``--prompts learned`` decodes one box there and has no candidates to choose from, but where a click
constrains them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ProMISeLib.io.preprocess import CropWindow


@dataclass(frozen=True)
class Weighed:
    """What one choice of the walk weighed: a stage's candidates on slice ``k`` (or on a plane)."""

    stage: str  # "seed" (the click's slice), "plane" (coronal/sagittal through the click), "step" or "correction"
    k: int  # the axial slice (the click's slice for "plane")
    crop: CropWindow | None  # the crop the candidates live in (None on a plane)
    previous: np.ndarray | None  # the neighbouring slice's mask the boxes came from ("step", "correction")
    candidates: list[np.ndarray]  # crop masks, one per box that kept a component
    predicted: list[float]  # the model's predicted IoU of each
    scores: list[float]  # the rule score of each (predicted IoU, times self-consistency when verified)
    coarse: np.ndarray | None  # the learned prompter's coarse mask (fused prompts), else None
    chosen: int  # the index the prompt mode's chooser chose


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

    def choose(self, weighed: Weighed) -> int | None:
        """The index of the candidate to keep (any stage: ``weighed.stage``), or None to keep ``weighed.chosen``."""
        return None

    def stop(self, k: int, mask: np.ndarray | None, reason: str | None) -> str | None:
        """Whether the walk ends at slice ``k``: the stop rules' ``reason`` (None: go on), or your own."""
        return reason

    @property
    def adapts_model(self) -> bool:
        """Whether this plug-in overrides :meth:`adapt_model` (such a plug-in needs the PyTorch runtime)."""
        return type(self).adapt_model is not WalkPlugin.adapt_model
