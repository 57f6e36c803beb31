"""Shared fixtures: the labelled scans (through PROMISE_DATA_DIR / ../shared/data) and helpers."""

from __future__ import annotations

import pytest
from ProMISeLib.sample_data import Case, lesion_click, load_cases
from ProMISeLib.settings import data_dir


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs the model on a real scan")


@pytest.fixture(scope="session")
def cases() -> dict[str, Case]:
    found = {case.id: case for case in load_cases()}
    if not found:
        pytest.skip(f"no labelled scans: set PROMISE_DATA_DIR (looked in {data_dir()})")
    return found


centre_click = lesion_click  # the benchmarks' click rule, shared by the tests
