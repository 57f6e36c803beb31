"""Issue 36: a damaged scan is refused before it is read, and every check comes before the compute.

Each refusal is one line on stderr and exit 2, nothing is written, and the engine is never built.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
from ProMISeLib.cli import main
from ProMISeLib.errors import ImageReadError
from ProMISeLib.io.volumes import read_image


def _refused(tmp_path, capsys, argv, expect, engine) -> str:
    """Run ``promise`` and check the refusal: exit 2, one line naming ``expect``, no engine, nothing left."""
    before = set(tmp_path.rglob("*"))
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and expect in err, err
    assert ".cxx" not in err and "Traceback" not in err, err
    assert not engine.built, "the engine was built for input that was refused"
    assert set(tmp_path.rglob("*")) == before, "a file was left behind"
    return err


def _cut(source, target, keep: float | int) -> None:
    data = source.read_bytes()
    target.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])


def _small_image(tmp_path, name="img.nrrd", shape=(6, 20, 24), dtype=np.int16):
    array = np.random.default_rng(0).integers(0, 1000, shape).astype(dtype)  # noise: compresses little
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


# --- truncated files ------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0.5, 0.97, 400])
def test_a_truncated_gzip_nifti_is_refused_not_read_as_zeros(cases, tmp_path, capsys, stand_in_engine, keep):
    """SimpleITK reads the slices a cut .nii.gz lacks as zeros; the gzip stream says it ended early."""
    scan = tmp_path / "scan.nii.gz"
    _cut(cases["STS_002_MR_T1"].image, scan, keep)
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(scan)
    _refused(tmp_path, capsys, ["segment", str(scan), "--point", "0,0,0", "-o", str(tmp_path / "m.nii.gz")],
             "truncated", stand_in_engine)


def test_an_uncompressed_nifti_and_a_metaimage_that_are_cut_are_refused(tmp_path):
    for name in ("whole.nii", "whole.mha", "whole_raw.nrrd"):
        whole = _small_image(tmp_path, name)
        if name.endswith(".mha"):  # compressed: its header records the compressed size
            sitk.WriteImage(sitk.ReadImage(str(whole)), str(whole), useCompression=True)
        cut = tmp_path / f"cut_{name}"
        _cut(whole, cut, 0.6)
        read_image(whole)
        with pytest.raises(ImageReadError, match="truncated"):
            read_image(cut)


def test_a_truncated_nrrd_is_refused_with_the_reason_not_itks_source_file(cases, tmp_path, capsys, stand_in_engine):
    scan = tmp_path / "brain.nrrd"
    _cut(cases["brain1"].image, scan, 0.5)  # gzip-encoded: teem reads it and finds the stream short
    err = _refused(tmp_path, capsys, ["segment", str(scan), "--point", "0,0,0", "-o", str(tmp_path / "m.nii.gz")],
                   "bytes but received", stand_in_engine)
    assert "Exception thrown in SimpleITK" not in err and "[nrrd]" not in err


# --- sizes that can't be --------------------------------------------------------------------
def _nrrd_header(sizes: str, encoding: str = "raw", data_file: str | None = None) -> bytes:
    lines = ["NRRD0004", "type: short", "dimension: 3", f"sizes: {sizes}", f"encoding: {encoding}",
             "endian: little"]
    if data_file:
        lines.append(f"data file: {data_file}")
    return ("\n".join(lines) + "\n\n").encode()


@pytest.fixture
def no_voxel_read(monkeypatch):
    """Fail the test if SimpleITK is asked to read (and so to allocate) the voxels of an image."""

    def allocates(*args, **kwargs):
        raise AssertionError("the voxels were read: the header was not checked first")

    monkeypatch.setattr(sitk.ImageFileReader, "Execute", allocates)
    monkeypatch.setattr(sitk, "ReadImage", allocates)


@pytest.mark.parametrize("encoding", ["raw", "gzip"])
def test_a_header_larger_than_its_payload_is_refused_before_allocating(tmp_path, no_voxel_read, encoding):
    """2000^3 voxels (16 GB) declared over a 10-byte payload: refused from the header, at once."""
    path = tmp_path / "huge.nrrd"
    path.write_bytes(_nrrd_header("2000 2000 2000", encoding) + b"0123456789")
    started = time.perf_counter()
    with pytest.raises(ImageReadError, match="2000 x 2000 x 2000 voxels"):
        read_image(path)
    assert time.perf_counter() - started < 5.0  # generous: it reads a header, not 16 GB


def test_a_header_larger_than_free_memory_is_refused_before_allocating(tmp_path, capsys, no_voxel_read,
                                                                       stand_in_engine, monkeypatch):
    """A detached header (its payload elsewhere) declaring 750 GB to read; and a real scan on a full machine."""
    (tmp_path / "huge.raw").write_bytes(b"0123456789")
    header = tmp_path / "huge.nhdr"
    header.write_bytes(_nrrd_header("5000 5000 5000", data_file="huge.raw"))
    started = time.perf_counter()
    _refused(tmp_path, capsys, ["segment", str(header), "--point", "0,0,0", "-o", str(tmp_path / "m.nii.gz")],
             "of memory free", stand_in_engine)
    assert time.perf_counter() - started < 5.0
    import psutil

    small = _small_image(tmp_path, "small.nrrd")  # 6 x 20 x 24 voxels: 17 kB to read
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("Memory", (), {"available": 10_000})())
    with pytest.raises(ImageReadError, match="of memory free"):
        read_image(small)


def test_a_failed_allocation_shows_itks_reason(tmp_path):
    """Memory the header check found free but the process may not take: ITK's own reason, in one line."""
    (tmp_path / "big.raw").write_bytes(b"")
    (tmp_path / "big.nhdr").write_bytes(_nrrd_header("600 600 600", data_file="big.raw"))  # 432 MB of int16
    script = (
        "import resource, sys\n"
        "from ProMISeLib.io.volumes import read_image\n"
        "from ProMISeLib.errors import ImageReadError\n"
        "size = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + 200 * 2**20, size + 200 * 2**20))\n"
        "try:\n    read_image(sys.argv[1])\nexcept ImageReadError as exc:\n    print(exc)\n"
    )
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs Linux's /proc to size the address space limit")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "big.nhdr")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Failed to allocate" in done.stdout and ".hxx" not in done.stdout and ".cxx" not in done.stdout, done.stdout
