"""One place for every choice: the prompt mode's chooser ranks the decoded candidates of every stage.

The seed, the orthogonal planes, the propagation steps and the corrections each decode a few boxes and keep
their candidates (the component at the click, or touching the neighbouring slice's mask). Which boxes are
decoded and which candidate wins is the prompt mode's, and only here:

- ``heuristic`` (:class:`Chooser`): the rule-based boxes; the best rule score (the predicted IoU times
  self-consistency) wins;
- ``fused`` (:class:`FusedChooser`): the rule-based boxes plus the learned prompter's; the rule score times
  the candidate's Dice with the prompter's coarse mask wins;
- ``learned`` (:class:`LearnedChooser`): the prompter's box alone (where a click constrains the candidates,
  as in a correction, it ranks the rule-based ones as ``fused`` does).

After the chooser, the plug-ins (:class:`~ProMISeLib.walk.hooks.WalkPlugin`) see every weighed set, the seed's
included, and may choose another candidate (``WalkContext.choose`` runs both).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ProMISeLib.metrics import dice

if TYPE_CHECKING:
    from ProMISeLib.prompting.prompter import CoarseMask, LearnedPrompter


class Chooser:
    """The rule-based choice (``heuristic``): the rule-based boxes, the best rule score."""

    name = "heuristic"
    #: Whether the rule-based boxes are decoded (False: the prompter's box alone, where nothing constrains it).
    decodes_rules = True

    def __init__(self, prompter: LearnedPrompter | None = None) -> None:
        self.prompter = prompter

    @property
    def reads_planes(self) -> bool:
        """Whether the walk reads the orthogonal planes (the prompter alone walks to its own end)."""
        return self.decodes_rules

    def at_click(self, embedding, side: int, click_rc: tuple[int, int]) -> CoarseMask | None:
        """The prompter's view of the structure at a click (None without a prompter)."""
        return None if self.prompter is None else self.prompter.seed(embedding, side, click_rc)

    def beside(self, embedding, side: int, previous: np.ndarray) -> CoarseMask | None:
        """The prompter's view of the structure next to the neighbouring slice's mask (None without one)."""
        return None if self.prompter is None else self.prompter.follow(embedding, side, previous)

    def ranking(self, candidates: list[np.ndarray], scores: list[float], coarse: np.ndarray | None) -> list[float]:
        """One value per candidate; the largest wins."""
        return list(scores)

    def pick(self, candidates: list[np.ndarray], scores: list[float], coarse: np.ndarray | None) -> int:
        return int(np.argmax(self.ranking(candidates, scores, coarse)))

    def order(self, candidates: list[np.ndarray], scores: list[float], coarse: np.ndarray | None) -> list[int]:
        """The candidates' indices, best first (ties in their order, so the first is :meth:`pick`'s)."""
        return [int(n) for n in np.argsort(-np.asarray(self.ranking(candidates, scores, coarse)), kind="stable")]


class FusedChooser(Chooser):
    """The rule-based boxes plus the prompter's; the rule score times the Dice with its coarse mask wins."""

    name = "fused"

    def ranking(self, candidates: list[np.ndarray], scores: list[float], coarse: np.ndarray | None) -> list[float]:
        if coarse is None:
            return list(scores)
        return [sc * max(dice(c, coarse), 1e-3) for c, sc in zip(candidates, scores, strict=True)]


class LearnedChooser(FusedChooser):
    """The learned prompter's box alone (ranked as ``fused`` where a click constrains the candidates)."""

    name = "learned"
    decodes_rules = False


def chooser_for(mode: str, prompter: LearnedPrompter | None) -> Chooser:
    """The chooser of a resolved prompt mode ('heuristic', 'fused' or 'learned')."""
    if prompter is None or mode == "heuristic":
        return Chooser()
    return {"fused": FusedChooser, "learned": LearnedChooser}[mode](prompter)
