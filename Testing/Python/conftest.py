"""Shared fixtures: the labelled scans (through PROMISE_DATA_DIR / ../shared/data) and helpers."""

from __future__ import annotations

import numpy as np
import pytest
from ProMISeLib.sample_data import Case, load_cases
from ProMISeLib.settings import data_dir
from scipy import ndimage


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs the model on a real scan")


@pytest.fixture(scope="session")
def cases() -> dict[str, Case]:
    found = {case.id: case for case in load_cases()}
    if not found:
        pytest.skip(f"no labelled scans: set PROMISE_DATA_DIR (looked in {data_dir()})")
    return found


def centre_click(mask: np.ndarray) -> tuple[int, int, int]:
    """The mask voxel nearest the mask's centroid, as (k, j, i): where a user clicks."""
    voxels = np.argwhere(mask)
    centre = np.asarray(ndimage.center_of_mass(mask))
    return tuple(int(v) for v in voxels[np.argmin(((voxels - centre) ** 2).sum(axis=1))])
