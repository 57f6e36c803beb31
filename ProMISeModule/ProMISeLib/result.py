"""What a segmentation call returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ProMISeLib.io.geometry import ImageGeometry


@dataclass
class SegmentationResult:
    """A binary 3D mask on the input grid, with the facts a user is shown.

    ``mask`` is uint8 (K, J, I), 1 inside. ``bbox_kji`` is the tight bounding box of the mask as
    ``((k0, k1), (j0, j1), (i0, i1))`` half-open ranges (``None`` when empty), so a caller can
    write back only that block.
    """

    mask: np.ndarray
    geometry: ImageGeometry
    bbox_kji: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None
    elapsed_s: float
    method: str
    model: str
    device: str
    messages: list[str] = field(default_factory=list)
    encoded_slices: int = 0
    cached_slices: int = 0
    runtime: str = "torch"
    decoded_slices: int = 0  # axial slices the decoder ran on (a refinement click decodes only a few)
    decoded_prompts: int = 0  # box prompts decoded, on every plane
    alternative: int = 0  # which hypothesis of the first click this is (0: the best)
    alternatives: int = 1  # how many distinct hypotheses the first click has (segment(alternative=n) picks one)

    @property
    def voxel_count(self) -> int:
        return int(np.count_nonzero(self.mask))

    @property
    def volume_ml(self) -> float:
        return self.voxel_count * self.geometry.voxel_volume_ml

    @property
    def slice_range(self) -> tuple[int, int] | None:
        """First and last k slice (inclusive) that hold the mask."""
        if self.bbox_kji is None:
            return None
        return self.bbox_kji[0][0], self.bbox_kji[0][1] - 1

    def summary(self) -> str:
        """One line: voxels, mL, slices, time."""
        slices = self.slice_range
        covered = f"slices {slices[0]}-{slices[1]} ({slices[1] - slices[0] + 1})" if slices else "no slices"
        return (
            f"{self.voxel_count} voxels, {self.volume_ml:.2f} mL, {covered}, "
            f"{self.elapsed_s:.1f} s [{self.model}, {self.method}, {self.device}, {self.runtime}]"
        )


def bounding_box(mask: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    """Half-open per-axis bounds of the non-zero voxels, or None if there are none."""
    if not mask.any():
        return None
    bounds = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        bounds.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(bounds)
