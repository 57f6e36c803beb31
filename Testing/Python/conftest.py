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


@pytest.fixture(scope="session")
def onnx_export(tmp_path_factory):
    """LiteMedSAM's ONNX export, made once a session, and the warnings the export raised."""
    import warnings

    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from ProMISeLib.runtime.onnx_backend import export_onnx

    out = tmp_path_factory.mktemp("onnx_export")
    with warnings.catch_warnings(record=True) as raised:
        warnings.simplefilter("always")
        export_onnx("litemedsam", out)
    return out, list(raised)


class StandInSegmenter:
    """Takes ``ProMISeLib.engine.Segmenter``'s place in command-line tests of reading, checking and writing.

    Built as the CLI builds the engine; its ``segment`` maps the clicks with the image's geometry (so
    a point outside the image is refused as the engine refuses it) and returns a real
    :class:`SegmentationResult`: the voxels around the first click brighter than the image's median.
    """

    built: list = []

    def __init__(self, **options) -> None:
        self.options = options
        StandInSegmenter.built.append(self)

    def segment(self, volume, geometry, points, negative_points=(), space="lps", modality="auto", progress=None,
                box=None, cancel=None, alternative=0):
        import numpy as np
        from ProMISeLib.result import SegmentationResult, bounding_box

        k, j, i = geometry.to_voxel_kji(np.asarray(points, float), space)[0]
        mask = np.zeros(volume.shape, np.uint8)
        near = (slice(max(k - 1, 0), k + 2), slice(max(j - 3, 0), j + 4), slice(max(i - 3, 0), i + 4))
        mask[near] = volume[near] > np.median(volume)
        mask[k, j, i] = 1
        return SegmentationResult(mask, geometry, bounding_box(mask), 0.01, "stand-in", "stand-in", "cpu",
                                  messages=["a note from the engine"], runtime="none")


@pytest.fixture
def stand_in_engine(monkeypatch):
    """``promise segment`` with :class:`StandInSegmenter` for the engine (no model is built)."""
    from ProMISeLib import engine

    StandInSegmenter.built.clear()
    monkeypatch.setattr(engine, "Segmenter", StandInSegmenter)
    return StandInSegmenter
