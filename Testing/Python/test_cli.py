"""The `promise` command line: a real run with a Dice check, and every bad input named in the issue."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import centre_click
from ProMISeLib.cli import main
from ProMISeLib.metrics import dice


def _lesion_subvolume(case, tmp_path, pad: int = 2):
    """The scan and label cut to the lesion's slices +-pad (real voxels and geometry, fewer slices)."""
    image = sitk.ReadImage(str(case.image))
    label = sitk.ReadImage(str(case.label))
    ks = np.flatnonzero(sitk.GetArrayFromImage(label).any(axis=(1, 2)))
    lo, hi = max(int(ks[0]) - pad, 0), min(int(ks[-1]) + pad + 1, image.GetSize()[2])
    image_path, label_path = tmp_path / "sub.nrrd", tmp_path / "sub_label.nrrd"
    sitk.WriteImage(image[:, :, lo:hi], str(image_path))
    sitk.WriteImage(label[:, :, lo:hi], str(label_path))
    return image_path, sitk.GetArrayFromImage(label[:, :, lo:hi]) > 0, image[:, :, lo:hi]


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".seg.nrrd", ".NII.GZ"])  # an upper-case suffix too, end to end
def test_cli_segments_real_tumour_from_one_click(cases, tmp_path, capsys, suffix):
    image_path, truth, image = _lesion_subvolume(cases["brain1"], tmp_path)
    k, j, i = centre_click(truth)
    lps = image.TransformIndexToPhysicalPoint((i, j, k))
    out = tmp_path / f"mask{suffix}"
    code = main(["segment", str(image_path), "--point", ",".join(map(str, lps)), "--device", "cpu",
                 "--output", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "voxels" in printed and "mL" in printed and "slices" in printed
    if suffix == ".seg.nrrd":
        import slicerio

        seg = slicerio.read_segmentation(str(out))
        mask = seg["voxels"].transpose(2, 1, 0) > 0
        np.testing.assert_allclose(seg["ijkToLPS"][:3, 3], image.GetOrigin(), atol=1e-4)
    else:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(out))
        reader.SetImageIO("NiftiImageIO")  # ITK picks a reader by the lower-case suffix
        written = reader.Execute()
        mask = sitk.GetArrayFromImage(written) > 0
        np.testing.assert_allclose(written.GetOrigin(), image.GetOrigin(), atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["sub.nrrd", "sub_label.nrrd", out.name])
    assert dice(mask, truth) > 0.5


def _image(tmp_path, array, name="img.nrrd"):
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def _assert_refused(tmp_path, capsys, argv, expect):
    out = tmp_path / "out.nii.gz"
    code = main([*argv, "--output", str(out)] if "--output" not in argv else argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and expect in err, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".promise-")]


def test_point_outside_image(tmp_path, capsys):
    path = _image(tmp_path, np.zeros((8, 16, 16), np.float32))
    _assert_refused(tmp_path, capsys, ["segment", str(path), "--point", "500,0,0"], "outside the image")
    # a negative first coordinate is a point, not an option
    _assert_refused(tmp_path, capsys, ["segment", str(path), "--point", "-500.5,0,0"], "outside the image")
    _assert_refused(tmp_path, capsys, ["segment", str(path), "--point", "1,1,1", "--negative", "-.5,-900,0"],
                    "outside the image")


def test_two_and_four_dimensional_and_empty_images(tmp_path, capsys):
    flat = _image(tmp_path, np.zeros((16, 16), np.float32), "flat.nrrd")
    _assert_refused(tmp_path, capsys, ["segment", str(flat), "--point", "1,1,0"], "2D")
    four = tmp_path / "four.nrrd"
    sitk.WriteImage(sitk.JoinSeries([sitk.Image([8, 8, 8], sitk.sitkFloat32)] * 2), str(four))
    _assert_refused(tmp_path, capsys, ["segment", str(four), "--point", "1,1,1"], "4D")
    single = _image(tmp_path, np.zeros((1, 16, 16), np.float32), "one_slice.nrrd")
    _assert_refused(tmp_path, capsys, ["segment", str(single), "--point", "1,1,0"], "2D")


def test_nan_voxels(tmp_path, capsys):
    array = np.zeros((8, 16, 16), np.float32)
    array[3, 4, 5] = np.nan
    path = _image(tmp_path, array)
    _assert_refused(tmp_path, capsys, ["segment", str(path), "--point", "1,1,1"], "NaN")


def test_unreadable_file(tmp_path, capsys):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"\x1f\x8b garbage")
    _assert_refused(tmp_path, capsys, ["segment", str(path), "--point", "1,1,1"], "cannot be read")


def test_wrong_checkpoint_hash(tmp_path, capsys):
    path = _image(tmp_path, np.random.default_rng(0).normal(size=(8, 32, 32)).astype(np.float32))
    bogus = tmp_path / "bogus.pth"
    torch.save({"image_encoder.x": torch.zeros(2)}, bogus)
    _assert_refused(tmp_path, capsys, ["segment", str(path), "--point", "4,4,4", "--weights", str(bogus),
                                       "--device", "cpu"], "not the expected litemedsam weights")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda(tmp_path, capsys):
    path = _image(tmp_path, np.zeros((8, 16, 16), np.float32))
    _assert_refused(tmp_path, capsys, ["segment", str(path), "--point", "1,1,1", "--device", "cuda"],
                    "CUDA is not available")


def test_half_precision_needs_cuda(tmp_path, capsys):
    path = _image(tmp_path, np.zeros((8, 16, 16), np.float32))
    _assert_refused(tmp_path, capsys, ["segment", str(path), "--point", "1,1,1", "--device", "cpu",
                                       "--precision", "fp16"], "fp16 runs on CUDA")


def test_output_that_cannot_be_written(tmp_path, capsys):
    path = _image(tmp_path, np.zeros((8, 16, 16), np.float32))
    missing = tmp_path / "no" / "such" / "dir" / "out.nii.gz"
    _assert_refused(tmp_path, capsys, ["segment", str(path), "--point", "1,1,1", "--output", str(missing)],
                    "does not exist")
    _assert_refused(tmp_path, capsys, ["segment", str(path), "--point", "1,1,1", "--output",
                                       str(tmp_path / "out.png")], "must end in")
    if os.geteuid() != 0:  # root ignores directory permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        _assert_refused(tmp_path, capsys, ["segment", str(path), "--point", "1,1,1", "--output",
                                           str(locked / "m.nii.gz")], "not writable")


def test_an_output_folder_that_refuses_writes_is_refused_before_the_model_runs(tmp_path, capsys, monkeypatch):
    """/proc passes the permission check even as root, yet no file can be made there: refused in one line,
    exit 2, and the model is never built."""
    from ProMISeLib import engine

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built for an output that can't be written")

    monkeypatch.setattr(engine, "Segmenter", no_model)
    path = _image(tmp_path, np.zeros((8, 16, 16), np.float32))
    _assert_refused(tmp_path, capsys, ["segment", str(path), "--point", "1,1,1", "--output", "/proc/x.nii.gz"],
                    "not writable")


def test_a_box_or_a_point_is_needed_and_a_box_outside_the_image_is_refused(tmp_path, capsys):
    path = _image(tmp_path, np.zeros((8, 16, 16), np.float32))
    _assert_refused(tmp_path, capsys, ["segment", str(path)], "give at least one --point or a --box")
    _assert_refused(tmp_path, capsys, ["segment", str(path), "--space", "ijk", "--box", "40,40,20,50,50,30"],
                    "lies outside the image")
    with pytest.raises(SystemExit) as stopped:
        main(["segment", str(path), "--box", "1,2,3", "--output", str(tmp_path / "out.nii.gz")])
    assert stopped.value.code == 2 and "X1,Y1,Z1,X2,Y2,Z2 (6 numbers)" in capsys.readouterr().err


def test_models_listing_is_aligned_for_the_longest_name(capsys):
    from ProMISeLib.models.registry import MODELS

    assert main(["models"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert set(lines) == set(MODELS)
    assert max(len(name) for name in MODELS) > 12  # promise-pancreas: wider than the old 12-character column
    sizes = {line.index(" MB") for line in lines.values()}
    titles = {line.index(MODELS[name].title) for name, line in lines.items()}
    assert len(sizes) == 1 and len(titles) == 1, "\n".join(lines.values())


def test_an_alternative_needs_a_first_point_without_a_box(tmp_path, capsys):
    path = _image(tmp_path, np.zeros((8, 16, 16), np.float32))
    for prompt in (["--space", "ijk", "--box", "2,2,2,8,8,5"], ["--space", "ijk", "--point", "5,5,3"]):
        alternative = "1" if "--box" in prompt else "-1"
        _assert_refused(tmp_path, capsys, ["segment", str(path), *prompt, "--alternative", alternative],
                        "--alternative N (from 0) picks a hypothesis of the first --point, without --box")


def test_segment_shows_its_progress_on_a_terminal_and_is_silent_otherwise(monkeypatch):
    import io
    import sys

    from ProMISeLib.cli import _Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream in (Terminal(), io.StringIO()):
        monkeypatch.setattr(sys, "stderr", stream)
        progress = _Progress()  # what `promise segment` hands the engine as its progress callback
        progress(0.25, "embedding slices")
        progress(0.6, "walking up")
        shown = stream.getvalue()
        progress.close()
        if stream.isatty():
            assert "embedding slices" in shown and "walking up" in shown and "60%" in shown
        else:
            assert stream.getvalue() == ""
