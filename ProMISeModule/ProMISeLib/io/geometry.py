"""Image geometry: voxel indices, LPS and RAS physical points, and (K,J,I) array order.

This module is the one place where coordinates are converted. Conventions:

* Index ``(i, j, k)`` is ITK's and Slicer's IJK: ``i`` runs fastest in memory. numpy arrays
  from SimpleITK and from Slicer nodes are indexed ``array[k, j, i]``.
* Physical points are millimetres in LPS (ITK, DICOM, NRRD/NIfTI headers as SimpleITK reads
  them) or RAS (Slicer's world). They differ by the sign of the first two axes.
* ``direction`` holds the LPS direction cosines of the i, j, k axes as its columns, like
  ``SimpleITK.Image.GetDirection()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ProMISeLib.errors import InvalidInputError, PointOutsideImageError

Space = Literal["lps", "ras", "ijk"]
SPACES: tuple[str, ...] = ("lps", "ras", "ijk")


def parse_numbers(text: str, count: int, form: str) -> tuple[float, ...]:
    """``"x, y, z"`` -> ``(x, y, z)``: exactly ``count`` comma-separated numbers, else InvalidInputError."""
    try:
        values = tuple(float(p) for p in text.replace(" ", "").split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise InvalidInputError(f"expected {form} ({count} numbers), got {text!r}")
    return values


#: Flips LPS <-> RAS (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def lps_to_ras(points: np.ndarray) -> np.ndarray:
    """Convert (..., 3) points between LPS and RAS (the same flip both ways)."""
    return np.asarray(points, dtype=float) @ LPS_TO_RAS


ras_to_lps = lps_to_ras


@dataclass(frozen=True)
class ImageGeometry:
    """Grid of a 3D image: size (i, j, k), spacing (mm), LPS origin and direction cosines."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major, as SimpleITK gives them

    def __post_init__(self) -> None:
        if len(self.size) != 3 or len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise InvalidInputError("image geometry must be 3D (size, spacing and origin of length 3)")
        if min(self.spacing) <= 0 or not np.all(np.isfinite(self.spacing)):
            raise InvalidInputError(f"voxel spacing must be positive and finite, got {self.spacing}")
        if abs(np.linalg.det(self.direction_matrix)) < 1e-6:
            raise InvalidInputError("the image direction matrix is singular")

    # --- constructors -------------------------------------------------------------------
    @classmethod
    def from_sitk(cls, image) -> ImageGeometry:
        """Geometry of a 3D ``SimpleITK.Image``."""
        if image.GetDimension() != 3:
            raise InvalidInputError(f"expected a 3D image, got {image.GetDimension()}D")
        return cls(
            size=tuple(int(v) for v in image.GetSize()),
            spacing=tuple(float(v) for v in image.GetSpacing()),
            origin=tuple(float(v) for v in image.GetOrigin()),
            direction=tuple(float(v) for v in image.GetDirection()),
        )

    @classmethod
    def from_ijk_to_ras(cls, matrix: np.ndarray, shape_kji: Sequence[int]) -> ImageGeometry:
        """Geometry from Slicer's 4x4 IJK-to-RAS matrix and a (K, J, I) array shape."""
        m = np.asarray(matrix, dtype=float)
        if m.shape != (4, 4):
            raise InvalidInputError("IJK-to-RAS must be a 4x4 matrix")
        linear = m[:3, :3]
        spacing = np.linalg.norm(linear, axis=0)
        if np.any(spacing <= 0):
            raise InvalidInputError("IJK-to-RAS matrix has a zero-length axis")
        direction_lps = LPS_TO_RAS @ (linear / spacing)
        origin_lps = LPS_TO_RAS @ m[:3, 3]
        k, j, i = (int(v) for v in shape_kji)
        return cls(
            size=(i, j, k),
            spacing=tuple(float(v) for v in spacing),
            origin=tuple(float(v) for v in origin_lps),
            direction=tuple(float(v) for v in direction_lps.ravel()),
        )

    # --- matrices -----------------------------------------------------------------------
    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def shape_kji(self) -> tuple[int, int, int]:
        """numpy shape of an array on this grid."""
        return (self.size[2], self.size[1], self.size[0])

    def index_to_lps_matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping (i, j, k, 1) to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction_matrix @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def ijk_to_ras_matrix(self) -> np.ndarray:
        """4x4 IJK-to-RAS matrix, as Slicer's ``vtkMRMLVolumeNode.GetIJKToRASMatrix``."""
        flip = np.eye(4)
        flip[:3, :3] = LPS_TO_RAS
        return flip @ self.index_to_lps_matrix()

    # --- point conversions --------------------------------------------------------------
    def index_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """Continuous (..., 3) indices to LPS points."""
        ijk = np.asarray(ijk, dtype=float)
        m = self.index_to_lps_matrix()
        return ijk @ m[:3, :3].T + m[:3, 3]

    def lps_to_index(self, lps: np.ndarray) -> np.ndarray:
        """LPS (..., 3) points to continuous indices (i, j, k)."""
        lps = np.asarray(lps, dtype=float)
        m = self.index_to_lps_matrix()
        return (lps - m[:3, 3]) @ np.linalg.inv(m[:3, :3]).T

    def to_index(self, points: np.ndarray, space: Space) -> np.ndarray:
        """Points given in ``space`` to continuous indices (i, j, k)."""
        points = np.asarray(points, dtype=float)
        if points.shape[-1:] != (3,):
            raise InvalidInputError(f"points must have 3 coordinates, got shape {points.shape}")
        if not np.all(np.isfinite(points)):
            raise InvalidInputError("point coordinates must be finite numbers")
        if space == "ijk":
            return points.copy()
        if space == "lps":
            return self.lps_to_index(points)
        if space == "ras":
            return self.lps_to_index(ras_to_lps(points))
        raise InvalidInputError(f"unknown coordinate space {space!r}; use one of {', '.join(SPACES)}")

    def to_voxel_kji(self, points: np.ndarray, space: Space) -> np.ndarray:
        """Points in ``space`` to the (k, j, i) integer voxels that contain them.

        Raises :class:`PointOutsideImageError` naming the first point outside the grid.
        """
        points = np.atleast_2d(np.asarray(points, dtype=float))
        index = np.atleast_2d(self.to_index(points, space))
        voxel = np.floor(index + 0.5).astype(np.int64)
        size = np.asarray(self.size)
        for point, idx in zip(points, voxel, strict=True):
            if np.any(idx < 0) or np.any(idx >= size):
                shown = ", ".join(f"{v:g}" for v in point)
                raise PointOutsideImageError(
                    f"point ({shown}) in {space.upper()} lies outside the image "
                    f"(voxel {tuple(int(v) for v in idx)}, image size {self.size})"
                )
        return voxel[:, ::-1].copy()

    def box_to_voxels_kji(self, corners: np.ndarray, space: Space) -> tuple[tuple[int, int], ...]:
        """An axis-aligned box in ``space`` (two opposite corners) to the inclusive voxel ranges
        ((k0, k1), (j0, j1), (i0, i1)) whose centres it holds, clipped to the image.

        With ``space="ijk"`` the corners are inclusive voxel indices. An oblique image's voxel ranges
        are those of the box's eight corners. Raises PointOutsideImageError when the box misses the image, and
        InvalidInputError when it is one voxel across in i or j (a zero-size box): no rectangle to prompt a slice.
        """
        corners = np.asarray(corners, dtype=float)
        if corners.shape != (2, 3):
            raise InvalidInputError(f"a box is two opposite corners of 3 coordinates each, got shape {corners.shape}")
        lo, hi = corners.min(axis=0), corners.max(axis=0)
        eight = np.array([[(lo, hi)[a][0], (lo, hi)[b][1], (lo, hi)[c][2]]
                          for a in (0, 1) for b in (0, 1) for c in (0, 1)])
        index = np.atleast_2d(self.to_index(eight, space))
        first, last = np.ceil(index.min(axis=0) - 1e-6), np.floor(index.max(axis=0) + 1e-6)
        thin = first > last  # thinner than a voxel along that axis: the voxel at its middle
        middle = np.floor((index.min(axis=0) + index.max(axis=0)) / 2 + 0.5)
        first, last = np.where(thin, middle, first), np.where(thin, middle, last)
        size = np.asarray(self.size)
        if np.any(last < 0) or np.any(first >= size):
            shown = " to ".join(", ".join(f"{v:g}" for v in c) for c in corners)
            raise PointOutsideImageError(f"the box ({shown}) in {space.upper()} lies outside the image "
                                         f"(image size {self.size})")
        first, last = np.clip(first, 0, size - 1).astype(int), np.clip(last, 0, size - 1).astype(int)
        if np.any(first[:2] == last[:2]):  # a zero-size box, or a line: no rectangle on the slices to prompt
            shown = " to ".join(", ".join(f"{v:g}" for v in c) for c in corners)
            raise InvalidInputError(f"the box ({shown}) in {space.upper()} is one voxel across on the image's slices "
                                    f"(i {first[0]}-{last[0]}, j {first[1]}-{last[1]}); draw it around the lesion")
        return tuple((int(first[a]), int(last[a])) for a in (2, 1, 0))

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(np.prod(self.spacing)) / 1000.0

    def with_size(self, size: Sequence[int], origin_index: Sequence[float]) -> ImageGeometry:
        """A sub-grid of this one starting at index ``origin_index`` (i, j, k)."""
        origin = self.index_to_lps(np.asarray(origin_index, dtype=float))
        return ImageGeometry(
            size=tuple(int(v) for v in size),
            spacing=self.spacing,
            origin=tuple(float(v) for v in origin),
            direction=self.direction,
        )

    def apply_to_sitk(self, image) -> None:
        """Set ``image``'s spacing, origin and direction to this geometry's."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
