"""Checks on a volume array before any model work (no I/O library needed)."""

from __future__ import annotations

import numpy as np

from ProMISeLib.errors import InvalidInputError


def validate_volume(array: np.ndarray, name: str = "image") -> np.ndarray:
    """Check that ``array`` is a usable 3D scalar volume (K, J, I); return it unchanged."""
    if array.ndim != 3:
        raise InvalidInputError(f"{name}: has {array.ndim} dimensions; a 3D scalar image is needed")
    if array.size == 0:
        raise InvalidInputError(f"{name}: is empty (size {array.shape[::-1]})")
    if min(array.shape) < 2:
        raise InvalidInputError(f"{name}: is a 2D image (size {array.shape[::-1]}); a 3D image is needed")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InvalidInputError(f"{name}: voxel type {array.dtype} is not a real scalar")
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InvalidInputError(f"{name}: has {bad} NaN or infinite voxels; fix or mask them first")
    return array
