"""The walk's settings, by stage: the boxes every stage decodes, the seed search, the steps, the stop rules and
the corrections. Each prompt mode has its own explicit defaults (:data:`WALK_DEFAULTS`).

Physical units (mm) where that makes them scan-independent. Each field has one line of meaning; the figures
behind each value are on the benchmarks page and in ``docs/studies/``. The model's knob (whether clicks are
point prompts) is the model's (``ModelSpec.point_prompts``); the runtime's (encoding ahead) the runtime's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class BoxSettings:
    """How every stage turns a mask into a box prompt and a decoded mask back into a candidate."""

    box_margin: float = 0.06  # fraction of a mask's box added on each side when it is re-prompted
    box_margin_px: float = 2.0  # pixels added on each side of every box
    fill_holes: bool = True  # fill holes of each 2D mask (necrotic cores are part of a lesion)
    click_radius_mm: float = 3.0  # accept a candidate whose mask passes this close to the click


@dataclass(frozen=True)
class SeedSettings:
    """Stage 1-2: the lesion at the click and the crop around it."""

    context_mm: float = 160.0  # side of the first, wide crop used to find the lesion
    half_sizes_mm: tuple[float, ...] = (3, 4, 6, 9, 13, 19, 27, 38, 54, 76)  # box half-sizes tried at a click
    crop_to_lesion: float = 4.0  # ROI crop side / lesion diameter
    min_crop_px: int = 48  # smallest crop side, in pixels
    crop_snap: int = 16  # the context crop snaps to this grid so a moved click reuses its embedding
    min_score: float = 0.3  # below this the click is reported as finding nothing


@dataclass(frozen=True)
class StepSettings:
    """Stage 4: one slice's mask from the neighbouring slice's."""

    scales: tuple[float, ...] = (0.5, 0.7, 0.85, 1.0, 1.1)  # box sizes tried around the previous mask


@dataclass(frozen=True)
class StopSettings:
    """Where the walk ends: the rules on each slice and the lesion's reach seen in the orthogonal planes."""

    min_area_fraction: float = 0.04  # the mask is smaller than this fraction of the largest slice so far
    max_growth: float = 2.2  # the mask's area grew by more than this ratio from the previous slice
    intensity_z: float = 2.5  # the mask's mean intensity jumped more than this many SDs from the last slice's
    min_score: float = 0.7  # the chosen mask's score (predicted IoU x self-consistency) is lower
    orthogonal: bool = True  # stop past the lesion's end seen in the coronal/sagittal planes through the click
    orthogonal_context_mm: float = 160.0  # crop side in the coronal/sagittal planes
    orthogonal_aspects: tuple[float, ...] = (1.0,)  # box height/width ratios tried there (long along the slice axis)
    orthogonal_tolerance: int = 1  # slices allowed past the extent seen in the orthogonal planes


@dataclass(frozen=True)
class CorrectionSettings:
    """A further click on a remembered lesion."""

    reach: int = 6  # a positive click up to this many slices past a lesion's ends refines it
    agreement: float = 0.9  # a correction's walk stops where its mask and the lesion's agree (IoU)
    scales: tuple[float, ...] | None = (1.0,)  # box sizes of a correction's walk (None: the steps')
    extend_mm: float = 10.0  # a positive click past a lesion's end extends it this far past the click


#: The stages, in the order a new lesion meets them.
STAGES = {"boxes": BoxSettings, "seed": SeedSettings, "step": StepSettings, "stop": StopSettings,
          "correction": CorrectionSettings}


@dataclass(frozen=True)
class WalkSettings:
    """Every tunable constant of the walk, one group per stage (at most 25 in all, each with its meaning)."""

    boxes: BoxSettings = field(default_factory=BoxSettings)
    seed: SeedSettings = field(default_factory=SeedSettings)
    step: StepSettings = field(default_factory=StepSettings)
    stop: StopSettings = field(default_factory=StopSettings)
    correction: CorrectionSettings = field(default_factory=CorrectionSettings)

    def changed(self, **stages: dict[str, Any]) -> WalkSettings:
        """These settings with some fields of some stages changed: ``changed(stop={"min_score": 0.6})``."""
        unknown = set(stages) - set(STAGES)
        if unknown:
            raise TypeError(f"no walk stage {', '.join(sorted(unknown))}; the stages are {', '.join(STAGES)}")
        return replace(self, **{name: replace(getattr(self, name), **fields) for name, fields in stages.items()})


#: Each prompt mode's defaults. The fused prompts' stop was validated with their ranking (by patient): a wider,
#: elongated search in the orthogonal planes and more slack past it (the ranking keeps the longer walk on the
#: lesion).
WALK_DEFAULTS: dict[str, WalkSettings] = {
    "heuristic": WalkSettings(),
    "learned": WalkSettings(),
    "fused": WalkSettings(stop=StopSettings(orthogonal_context_mm=320.0, orthogonal_aspects=(1.0, 1.7, 2.8),
                                            orthogonal_tolerance=4)),
}
