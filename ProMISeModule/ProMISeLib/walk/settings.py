"""The walk's settings: every tunable constant of the seed search, the propagation and the corrections.

Physical units (mm) where that makes them scan-independent. Each field has one line of meaning; the
figures behind each value are on the benchmarks page and in ``docs/studies/``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class PropagationSettings:
    """Tunable constants of the walk (at most 25, each with its meaning)."""

    context_mm: float = 160.0  # side of the first, wide crop used to find the lesion
    seed_half_sizes_mm: tuple[float, ...] = (3, 4, 6, 9, 13, 19, 27, 38, 54, 76)  # box half-sizes tried at a click
    crop_to_lesion: float = 4.0  # ROI crop side / lesion diameter
    min_crop_px: int = 48  # smallest crop side, in pixels
    crop_snap: int = 16  # the context crop snaps to this grid so a moved click reuses its embedding
    box_margin: float = 0.06  # fraction of a mask's box added on each side when it is re-prompted
    box_margin_px: float = 2.0  # pixels added on each side of every box
    fill_holes: bool = True  # fill holes of each 2D mask (necrotic cores are part of a lesion)
    click_radius_mm: float = 3.0  # accept a candidate whose mask passes this close to the click
    min_seed_score: float = 0.3  # below this the click is reported as finding nothing
    propagation_scales: tuple[float, ...] = (0.5, 0.7, 0.85, 1.0, 1.1)  # box sizes tried around the previous mask
    min_area_fraction: float = 0.04  # stop: the mask is smaller than this fraction of the largest slice so far
    max_growth: float = 2.2  # stop: the mask's area grew by more than this ratio from the previous slice
    intensity_z: float = 2.5  # stop: the mask's mean intensity jumped more than this many SDs from the last slice's
    min_score: float = 0.7  # stop: the chosen mask's score (predicted IoU x self-consistency) is lower
    orthogonal_stop: bool = True  # stop past the lesion's end seen in the coronal/sagittal planes through the click
    orthogonal_context_mm: float = 160.0  # crop side in the coronal/sagittal planes
    orthogonal_aspects: tuple[float, ...] = (1.0,)  # box height/width ratios tried there (long along the slice axis)
    orthogonal_tolerance: int = 1  # slices allowed past the extent seen in the orthogonal planes
    point_prompts: bool = False  # pass clicks to the decoder as points (point-trained SAM; hurts LiteMedSAM)
    encode_ahead: int = 2  # slices encoded in the background ahead of the walk (0: off)
    correction_reach: int = 6  # a positive click up to this many slices past a lesion's ends refines it
    correction_agreement: float = 0.9  # a correction's walk stops where its mask and the lesion's agree (IoU)
    correction_scales: tuple[float, ...] | None = (1.0,)  # box sizes of a correction's walk (None: propagation's)
    correction_extend_mm: float = 10.0  # a positive click past a lesion's end extends it this far past the click

    def for_fused(self) -> PropagationSettings:
        """These settings with the fused prompts' validated stop: a wider, elongated search in the orthogonal
        planes and more slack past it (the learned ranking keeps the longer walk on the lesion)."""
        return replace(self, **FUSED_DEFAULTS)


#: What ``--prompts fused`` changes in the default settings (validated together, by patient).
FUSED_DEFAULTS = {"orthogonal_context_mm": 320.0, "orthogonal_aspects": (1.0, 1.7, 2.8), "orthogonal_tolerance": 4}
