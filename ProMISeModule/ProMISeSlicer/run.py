"""A run's data and its engine step (no scene access): prompt groups, the prepared run, what a run did.

:func:`group_prompts` turns the points and the box read from the scene (:mod:`.scene`) into one
:class:`PromptGroup` per segment; :func:`compute_results` runs the engine for each group of a
:class:`PreparedRun` (the worker thread, or the caller's) and writes nothing. :class:`SegmentRun` and
:class:`SegmentedObject` are what :meth:`ProMISeModuleLogic.segment` returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from ProMISeLib.errors import EmptySegmentationError, InvalidInputError, ProMISeError, SegmentationCancelled

from . import nodes
from .worker import ProgressCallback

__all__ = ["ModelNotes", "PreparedRun", "PromptGroup", "SegmentRun", "SegmentedObject", "compute_results",
           "encode_for_corrections", "group_prompts"]


@dataclass
class SegmentedObject:
    """One fiducial label's segment: where it went and what the engine said."""

    label: str
    segmentId: str
    result: object  # ProMISeLib.result.SegmentationResult
    voxels_kji: list[tuple[int, int, int]]
    replaced: bool

    @property
    def volume_ml(self) -> float:
        return float(self.result.volume_ml)

    @property
    def messages(self) -> list[str]:
        return list(getattr(self.result, "messages", []) or [])

    @property
    def alternative(self) -> int:
        """Which hypothesis of its first click the segment shows (0: the best)."""
        return int(getattr(self.result, "alternative", 0))

    @property
    def alternatives(self) -> int:
        """How many distinct hypotheses its first click has."""
        return int(getattr(self.result, "alternatives", 1))


@dataclass
class SegmentRun:
    """What one :meth:`ProMISeModuleLogic.segment` call did."""

    segmentationNode: object
    objects: list[SegmentedObject] = field(default_factory=list)
    elapsed_s: float = 0.0
    model: str = ""
    device: str = ""
    runtime: str = ""
    prompts: str = ""  # what was asked for ("auto", "fused", "learned", "heuristic"); :attr:`method` says what ran
    prepared: object = None  # the PreparedRun it wrote (its results encode ahead for corrections)

    @property
    def messages(self) -> list[str]:
        return [f"{o.label}: {m}" for o in self.objects for m in o.messages]

    @property
    def method(self) -> str:
        """How the engine prompted the model, e.g. "learned prompts (NAME)" or "heuristic box prompts"."""
        methods = [str(getattr(o.result, "method", "") or "") for o in self.objects]
        return "; ".join(dict.fromkeys(m for m in methods if m))

    def summary(self) -> str:
        """One line for the status bar: segments, mL each (and the candidate shown, where a click has several),
        time, model, device, method and the engine's warnings."""
        parts = [f"{o.label} {o.volume_ml:.2f} mL" + (f" (candidate {o.alternative + 1} of {o.alternatives})"
                                                      if o.alternatives > 1 else "") for o in self.objects]
        text = f"{', '.join(parts)} in {self.elapsed_s:.1f} s"
        facts = [fact for fact in (self.model if self.device else "", self.device, self.method) if fact]
        if facts:
            text += f" [{', '.join(facts)}]"
        if self.messages:
            text += " - " + "; ".join(self.messages)
        return text


@dataclass(frozen=True)
class ModelNotes:
    """What the panel tells about a model beyond the registry's list."""

    name: str
    volume3d: bool  # a whole-volume ProMISe 3D model: slow on a CPU, no negative clicks, no box prompts
    addedByHand: bool  # its checkpoint is downloaded by hand from ``page`` and added (not downloadable)
    page: str = ""
    sourceHint: str = ""  # the file to download from ``page``


@dataclass
class PromptGroup:
    """The prompts of one segment: its positive and negative points and an optional box."""

    label: str  # the name a new segment gets
    segmentId: str | None  # the routed target segment, or None: the segment of these points by label
    positives: list[nodes.ControlPoint] = field(default_factory=list)
    negatives: list[nodes.ControlPoint] = field(default_factory=list)
    box: np.ndarray | None = None  # 2 x 3 opposite corners in the volume's RAS
    alternative: int = 0  # the first click's hypothesis to follow (0: the best)
    inherited: bool = False  # the alternative is the segment's from before (the best if this click lacks it)


@dataclass
class PreparedRun:
    """A checked run: what :meth:`ProMISeModuleLogic.computeRun` needs, read from the scene."""

    volumeNode: object
    pointsNode: object
    segmentationNode: object  # None: made when the results are written
    array: np.ndarray
    geometry: object
    groups: list[PromptGroup]
    model: str
    device: str
    runtime: str
    prompts: str
    recordUndo: bool = True
    started: float = field(default_factory=time.perf_counter)
    results: list = field(default_factory=list)  # (group, engine result), filled by computeRun


def group_prompts(positives: list[nodes.ControlPoint], negatives: list[nodes.ControlPoint],
                  box: np.ndarray | None = None, boxSegmentId: str | None = None,
                  boxLabel: str = "box") -> list[PromptGroup]:
    """One group per segment, in order of first appearance.

    A point routed to a segment (its description) prompts that segment; the others are grouped by
    label. A routed negative point belongs to its segment only; an unrouted one to every group. The box
    goes to ``boxSegmentId``'s group (made if no point prompts it), else to the only group, else it
    makes a group of its own.
    """
    groups: dict[tuple[str, str], PromptGroup] = {}
    for point in positives:
        key = ("segment", point.segmentId) if point.segmentId else ("label", point.label)
        group = groups.setdefault(key, PromptGroup(point.label, point.segmentId))
        group.positives.append(point)
    if box is not None:
        if boxSegmentId is not None:
            group = groups.setdefault(("segment", boxSegmentId), PromptGroup(boxLabel, boxSegmentId))
        elif len(groups) == 1:
            group = next(iter(groups.values()))
        elif not groups:
            group = groups.setdefault(("label", boxLabel), PromptGroup(boxLabel, None))
        else:
            raise InvalidInputError("the box prompt fits several segments: choose the target segment for it")
        group.box = np.asarray(box, float)
    for point in negatives:
        if point.segmentId:
            group = groups.get(("segment", point.segmentId))
            if group is not None:
                group.negatives.append(point)
        else:
            for group in groups.values():
                group.negatives.append(point)
    return list(groups.values())


def compute_results(segmenter, prepared: PreparedRun, progressCallback: ProgressCallback | None = None,
                    cancelCallback: Callable[[], bool] | None = None) -> list:
    """(group, engine result) for every group of ``prepared``, from ``segmenter``; nothing is written.

    Raises SegmentationCancelled on a cancel, EmptySegmentationError when an object comes back empty.
    """
    groups = prepared.groups

    def cancelled() -> bool:
        return bool(cancelCallback and cancelCallback())

    results = []
    for n, group in enumerate(groups):
        if cancelled():
            raise SegmentationCancelled("segmentation cancelled; nothing was changed")

        def progress(fraction: float, message: str, n=n, label=group.label) -> None:
            if progressCallback is not None:
                total = (n + min(max(float(fraction), 0.0), 1.0)) / len(groups)
                progressCallback(total, f'"{label}" ({n + 1}/{len(groups)}): {message}')

        points, negative, keywords = _engine_prompts(group, group.alternative)
        try:
            result = segmenter.segment(prepared.array, prepared.geometry, points, negative_points=negative,
                                       space="ras", progress=progress, cancel=cancelled, **keywords)
        except InvalidInputError:
            if not (group.alternative and group.inherited):
                raise
            keywords.pop("alternative")  # the segment's hypothesis from before is not one of this click's
            result = segmenter.segment(prepared.array, prepared.geometry, points, negative_points=negative,
                                       space="ras", progress=progress, cancel=cancelled, **keywords)
        if tuple(result.mask.shape) != tuple(prepared.array.shape):
            raise ProMISeError(
                f"the engine returned a mask of shape {result.mask.shape}, expected {prepared.array.shape}")
        if result.bbox_kji is None or result.voxel_count == 0:
            detail = "; ".join(getattr(result, "messages", []) or []) or "the model found nothing at the point"
            raise EmptySegmentationError(f'"{group.label}": {detail}')
        results.append((group, result))
    if cancelled():
        raise SegmentationCancelled("segmentation cancelled; nothing was changed")
    return results


def encode_for_corrections(segmenter, prepared: PreparedRun, cancelCallback: Callable[[], bool] | None = None) -> int:
    """Encode ahead the slices each computed object's next corrective click may walk onto (see
    ``Segmenter.encode_for_corrections``); stops at a cancel. Returns how many slices were encoded."""
    encoded = 0
    for group, result in prepared.results:
        if cancelCallback is not None and cancelCallback():
            break
        points, negative, keywords = _engine_prompts(group, int(getattr(result, "alternative", 0)))
        encoded += segmenter.encode_for_corrections(prepared.array, prepared.geometry, points,
                                                    negative_points=negative, space="ras", cancel=cancelCallback,
                                                    **keywords)
    return encoded


def _engine_prompts(group: PromptGroup, alternative: int) -> tuple[np.ndarray | None, np.ndarray | None, dict]:
    """A group's positive and negative points (RAS) and the engine's box and alternative keywords."""
    keywords: dict = {"alternative": alternative} if alternative else {}
    if group.box is not None:
        keywords["box"] = tuple(tuple(float(v) for v in corner) for corner in group.box)
    points = np.array([p.ras for p in group.positives]) if group.positives else None
    negative = np.array([p.ras for p in group.negatives]) if group.negatives else None
    return points, negative, keywords
