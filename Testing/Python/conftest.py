"""Shared fixtures: the labelled scans (through PROMISE_DATA_DIR / ../shared/data) and helpers."""

from __future__ import annotations

import pytest
from ProMISeLib.io.paths import data_dir
from ProMISeLib.io.sample_data import Case, lesion_click, load_cases


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs the model on a real scan")


@pytest.fixture(scope="session")
def cases() -> dict[str, Case]:
    found = {case.id: case for case in load_cases()}
    if not found:
        pytest.skip(f"no labelled scans: set PROMISE_DATA_DIR (looked in {data_dir()})")
    return found


@pytest.fixture(scope="session")
def brain(cases):
    """brain1 as (volume, geometry, tumour mask), read once."""
    from ProMISeLib.io.sample_data import read_case

    return read_case(cases["brain1"])


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of small models: on a shared 2-core machine two threads spin-wait."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


centre_click = lesion_click  # the benchmarks' click rule, shared by the tests


def flip_byte(path, index: int | None = None) -> None:
    """Corrupt a file in place: invert one byte (the middle one by default)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if index is None else index] ^= 0xFF
    path.write_bytes(bytes(data))
