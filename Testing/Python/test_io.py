"""Image reading, validation and atomic mask writing."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from ProMISeLib.errors import ImageReadError, InvalidInputError, OutputError
from ProMISeLib.io.geometry import ImageGeometry
from ProMISeLib.io.volumes import read_image, write_mask


def _write(tmp_path, array, name="img.nrrd", spacing=None):
    image = sitk.GetImageFromArray(array)
    if spacing:
        image.SetSpacing(spacing)
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path


def test_reads_real_scan_with_its_geometry(cases):
    volume, geometry = read_image(cases["brain1"].image)
    reference = sitk.ReadImage(str(cases["brain1"].image))
    assert volume.shape == sitk.GetArrayFromImage(reference).shape
    assert geometry.spacing == reference.GetSpacing()
    assert geometry.direction == reference.GetDirection()


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".seg.nrrd"])
def test_mask_written_with_exact_geometry(tmp_path, suffix):
    image = sitk.Image([12, 10, 8], sitk.sitkInt16)
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((10.0, -20.0, 3.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    geometry = ImageGeometry.from_sitk(image)
    mask = np.zeros(geometry.shape_kji, np.uint8)
    mask[2:5, 3:7, 4:9] = 1
    out = write_mask(tmp_path / f"m{suffix}", mask, geometry, segment_name="tumour")
    if suffix == ".seg.nrrd":
        seg = slicerio.read_segmentation(str(out))
        assert [s["name"] for s in seg["segments"]] == ["tumour"]
        np.testing.assert_allclose(seg["ijkToLPS"], geometry.index_to_lps_matrix(), atol=1e-6)
        np.testing.assert_array_equal(seg["voxels"].transpose(2, 1, 0) > 0, mask > 0)
    else:
        back = sitk.ReadImage(str(out))
        assert back.GetPixelID() == sitk.sitkUInt8
        assert ImageGeometry.from_sitk(back) == geometry or np.allclose(
            ImageGeometry.from_sitk(back).index_to_lps_matrix(), geometry.index_to_lps_matrix(), atol=1e-5)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), mask)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


def test_failed_write_keeps_existing_file(tmp_path, monkeypatch):
    geometry = ImageGeometry((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    target = tmp_path / "m.nrrd"
    target.write_bytes(b"user data")

    def disk_full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sitk, "WriteImage", disk_full)
    with pytest.raises(OutputError, match="No space left"):
        write_mask(target, np.ones((4, 4, 4), np.uint8), geometry)
    assert target.read_bytes() == b"user data"
    assert sorted(os.listdir(tmp_path)) == ["m.nrrd"]


def test_bad_images_are_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="2D"):
        read_image(_write(tmp_path, np.zeros((20, 20), np.float32), "flat.nrrd"))
    with pytest.raises(InvalidInputError, match="2D"):
        read_image(_write(tmp_path, np.zeros((3, 1, 20), np.float32), "thin.nrrd"))
    four = sitk.JoinSeries([sitk.Image([8, 8, 8], sitk.sitkFloat32)] * 3)
    sitk.WriteImage(four, str(tmp_path / "four.nrrd"))
    with pytest.raises(InvalidInputError, match="4D"):
        read_image(tmp_path / "four.nrrd")
    nan = np.zeros((6, 6, 6), np.float32)
    nan[2, 2, 2] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        read_image(_write(tmp_path, nan, "nan.nrrd"))
    (tmp_path / "junk.nrrd").write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "junk.nrrd")
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.nii.gz")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(ImageReadError, match="no DICOM"):
        read_image(tmp_path / "emptydir")
