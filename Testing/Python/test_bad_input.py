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
from ProMISeLib.errors import CheckpointError, ImageReadError
from ProMISeLib.io.geometry import ImageGeometry
from ProMISeLib.io.volumes import read_image, write_mask


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
    assert time.perf_counter() - started < 1.0  # it reads a header, not 16 GB (~0.05 s here)


def test_a_header_larger_than_free_memory_is_refused_before_allocating(tmp_path, capsys, no_voxel_read,
                                                                       stand_in_engine, monkeypatch):
    """A detached header (its payload elsewhere) declaring 750 GB to read; and a real scan on a full machine."""
    (tmp_path / "huge.raw").write_bytes(b"0123456789")
    header = tmp_path / "huge.nhdr"
    header.write_bytes(_nrrd_header("5000 5000 5000", data_file="huge.raw"))
    started = time.perf_counter()
    _refused(tmp_path, capsys, ["segment", str(header), "--point", "0,0,0", "-o", str(tmp_path / "m.nii.gz")],
             "of memory free", stand_in_engine)
    assert time.perf_counter() - started < 1.0
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


# --- checks before the compute --------------------------------------------------------------
@pytest.mark.parametrize("name", ["OUT.NII.GZ", "Out.Nrrd", "OUT.SEG.NRRD", "out.NII"])
def test_upper_case_suffixes_are_written(tmp_path, name):
    geometry = ImageGeometry((5, 4, 3), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    mask = np.zeros(geometry.shape_kji, np.uint8)
    mask[1, 1:3, 2:4] = 1
    out = write_mask(tmp_path / name, mask, geometry)
    assert [p.name for p in tmp_path.iterdir()] == [name]
    if name.lower().endswith(".seg.nrrd"):
        import slicerio

        assert slicerio.read_segmentation(str(out))["voxels"].sum() == mask.sum()
    else:
        sitk_image = sitk.ImageFileReader()
        sitk_image.SetFileName(str(out))
        sitk_image.SetImageIO("NiftiImageIO" if ".nii" in name.lower() else "NrrdImageIO")
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk_image.Execute()), mask)


def test_an_output_that_is_the_input_image_is_refused(tmp_path, capsys, stand_in_engine, monkeypatch):
    image = _small_image(tmp_path, "scan.nrrd")
    original = image.read_bytes()
    (tmp_path / "link.nrrd").symlink_to(image)
    os.link(image, tmp_path / "hard.nrrd")
    monkeypatch.chdir(tmp_path)
    for output in (str(image), "./scan.nrrd", str(tmp_path / "link.nrrd"), "hard.nrrd"):
        _refused(tmp_path, capsys, ["segment", "scan.nrrd", "--point", "1,1,1", "--space", "ijk", "-o", output],
                 "is the input image", stand_in_engine)
    assert image.read_bytes() == original


def test_a_report_that_cannot_be_written_is_refused_before_the_model(tmp_path, capsys, stand_in_engine):
    image = _small_image(tmp_path)
    mask = tmp_path / "m.nii.gz"
    base = ["segment", str(image), "--point", "1,1,1", "--space", "ijk", "-o", str(mask)]
    _refused(tmp_path, capsys, [*base, "--report", str(tmp_path / "no" / "r.json")], "does not exist",
             stand_in_engine)
    _refused(tmp_path, capsys, [*base, "--report", str(tmp_path)], "is a folder", stand_in_engine)
    _refused(tmp_path, capsys, [*base, "--report", str(mask)], "--report names", stand_in_engine)
    _refused(tmp_path, capsys, [*base, "--report", str(image)], "--report names", stand_in_engine)
    assert main([*base, "--report", str(tmp_path / "r.json")]) == 0  # a good one is written after the mask
    assert (tmp_path / "r.json").is_file() and mask.is_file()


def test_a_zero_size_box_is_refused_before_the_model(tmp_path, capsys, stand_in_engine):
    image = _small_image(tmp_path)  # 24 x 20 x 6 voxels
    for box, space in (("10,10,3,10,10,3", "ijk"), ("4,5,2,4,15,4", "ijk"), ("3.2,4,1,3.2,4,1", "lps")):
        _refused(tmp_path, capsys, ["segment", str(image), "--box", box, "--space", space, "-o",
                                    str(tmp_path / "m.nii.gz")], "one voxel across", stand_in_engine)
    _, geometry = read_image(image)
    # a box drawn on one slice (no thickness) is a rectangle there: kept
    assert geometry.box_to_voxels_kji(np.array([[4, 5, 3], [12, 15, 3]], float), "ijk") == ((3, 3), (5, 15), (4, 12))


def test_notes_go_to_stderr_and_the_result_to_stdout(tmp_path, capsys, stand_in_engine):
    image = _small_image(tmp_path)
    assert main(["segment", str(image), "--point", "5,5,2", "--space", "ijk", "-o", str(tmp_path / "m.nrrd")]) == 0
    printed = capsys.readouterr()
    assert printed.err.strip() == "note: a note from the engine"
    assert printed.out.strip().startswith(str(tmp_path / "m.nrrd")) and "note:" not in printed.out


def test_itks_warnings_on_the_file_are_notes_and_a_refusal_stays_one_line(tmp_path, capfd, stand_in_engine):
    """A NIfTI whose sform is not the one ITK uses: ITK's warning, printed by its C++ code, becomes a note."""
    import struct

    image = _small_image(tmp_path, "scan.nii")
    header = bytearray(image.read_bytes())
    row = list(struct.unpack_from("<4f", header, 280))  # srow_x: scaled, so the sform's spacing is not pixdim's
    struct.pack_into("<4f", header, 280, row[0] * 1.5, *row[1:])
    image.write_bytes(bytes(header))
    argv = ["segment", str(image), "--space", "ijk", "-o", str(tmp_path / "m.nrrd"), "--point"]
    assert main([*argv, "5,5,2"]) == 0
    notes = capfd.readouterr().err.strip().splitlines()
    assert notes == [f"note: {image} has unexpected scales in sform", "note: a note from the engine"], notes
    assert main([*argv, "500,5,2"]) == 2
    (line,) = capfd.readouterr().err.strip().splitlines()
    assert "outside the image" in line


# --- weights and checkpoints ----------------------------------------------------------------
def test_weights_remove_needs_model_names_or_all(tmp_path, capsys, monkeypatch):
    from ProMISeLib.io.weights import cached_path
    from ProMISeLib.models.registry import get_model_spec

    monkeypatch.setenv("PROMISE_CACHE_DIR", str(tmp_path))
    files = [cached_path(get_model_spec(name).weights) for name in ("litemedsam", "sam_vit_b")]
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")
    assert main(["weights", "remove"]) == 2
    err = capsys.readouterr().err
    assert "--all" in err and len(err.strip().splitlines()) == 1
    assert main(["weights", "remove", "litemedsam", "--all"]) == 2
    assert all(path.is_file() for path in files), "a bare remove deleted weights"
    assert main(["weights", "remove", "litemedsam"]) == 0 and not files[0].exists() and files[1].exists()
    assert main(["weights", "remove", "--all"]) == 0 and not files[1].exists()


def test_a_malicious_pickle_is_called_what_it_is_and_never_run(tmp_path):
    """A pickle that calls os.system: torch 2.13 names the blocked module; nothing in the file runs."""
    import torch
    from ProMISeLib.models.promise3d.checkpoint import convert_released_checkpoint

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    evil = tmp_path / "colon_pretrain_promise.pth"
    torch.save({"encoder_dict": Payload()}, evil)
    with pytest.raises(CheckpointError, match=r"refused by PyTorch's safe loader.*needs (posix|nt)\.system"):
        convert_released_checkpoint(evil, "promise-colon", tmp_path / "out.safetensors")
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()

