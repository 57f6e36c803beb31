"""Coordinate conversions checked against SimpleITK's own index/point transforms."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from ProMISeLib.errors import PointOutsideImageError
from ProMISeLib.io.geometry import ImageGeometry, lps_to_ras
from scipy.spatial.transform import Rotation


def _oblique_image(size=(40, 30, 20), spacing=(0.7, 1.3, 3.5), origin=(-12.5, 40.0, 7.25), seed=0):
    rng = np.random.default_rng(seed)
    direction = Rotation.from_rotvec(rng.normal(size=3) * 0.6).as_matrix()
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(direction.ravel()))
    return image


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_index_to_physical_matches_simpleitk_on_oblique_anisotropic_grid(seed):
    image = _oblique_image(seed=seed)
    geometry = ImageGeometry.from_sitk(image)
    rng = np.random.default_rng(seed + 10)
    for ijk in rng.uniform(-0.4, np.array(image.GetSize()) - 0.6, size=(20, 3)):
        expected = image.TransformContinuousIndexToPhysicalPoint(tuple(ijk))
        np.testing.assert_allclose(geometry.index_to_lps(ijk), expected, atol=1e-9)
        np.testing.assert_allclose(geometry.lps_to_index(expected), ijk, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 3])
def test_voxel_pick_matches_simpleitk_in_lps_ras_and_ijk(seed):
    image = _oblique_image(seed=seed)
    geometry = ImageGeometry.from_sitk(image)
    rng = np.random.default_rng(seed)
    for _ in range(30):
        ijk = rng.integers(0, image.GetSize())
        jittered = tuple(float(v) for v in ijk + rng.uniform(-0.45, 0.45, 3))
        lps = np.array(image.TransformContinuousIndexToPhysicalPoint(jittered))
        expected_ijk = image.TransformPhysicalPointToIndex(tuple(lps))
        expected_kji = tuple(expected_ijk[::-1])
        assert tuple(geometry.to_voxel_kji(lps, "lps")[0]) == expected_kji
        assert tuple(geometry.to_voxel_kji(lps_to_ras(lps), "ras")[0]) == expected_kji
    assert tuple(geometry.to_voxel_kji([3, 4, 5], "ijk")[0]) == (5, 4, 3)


def test_ijk_to_ras_round_trip_matches_slicer_convention():
    image = _oblique_image(seed=5)
    geometry = ImageGeometry.from_sitk(image)
    m = geometry.ijk_to_ras_matrix()
    ijk = np.array([3.0, 7.0, 11.0])
    lps = np.array(image.TransformContinuousIndexToPhysicalPoint(tuple(ijk)))
    np.testing.assert_allclose((m @ np.append(ijk, 1))[:3], lps * [-1, -1, 1], atol=1e-9)
    again = ImageGeometry.from_ijk_to_ras(m, geometry.shape_kji)
    np.testing.assert_allclose(again.spacing, geometry.spacing, atol=1e-12)
    np.testing.assert_allclose(again.origin, geometry.origin, atol=1e-12)
    np.testing.assert_allclose(again.direction, geometry.direction, atol=1e-12)
    assert again.size == geometry.size


def test_array_order_is_kji():
    image = _oblique_image(size=(5, 6, 7))
    array = sitk.GetArrayFromImage(image)
    assert ImageGeometry.from_sitk(image).shape_kji == array.shape == (7, 6, 5)


def test_point_outside_is_refused_with_its_coordinates():
    geometry = ImageGeometry.from_sitk(_oblique_image())
    far = geometry.index_to_lps(np.array([-3.0, 2.0, 2.0]))
    with pytest.raises(PointOutsideImageError, match="outside the image"):
        geometry.to_voxel_kji(far, "lps")
    edge = geometry.index_to_lps(np.array([39.4, 29.4, 19.4]))
    assert tuple(geometry.to_voxel_kji(edge, "lps")[0]) == (19, 29, 39)


@pytest.mark.parametrize("mode", ["mirror", "constant"])
def test_field_of_view_padding_matches_simpleitk_pad(mode):
    """The benchmarks' padded scans keep every voxel where SimpleITK's own pad filter puts it."""
    from ProMISeLib.io.sample_data import pad_field_of_view

    image = _oblique_image(size=(12, 9, 5), seed=4)
    rng = np.random.default_rng(4)
    values = rng.normal(size=image.GetSize()[::-1]).astype(np.float32)
    truth = values > 1.0
    geometry = ImageGeometry.from_sitk(image)
    field = (20.0, 30.0, 40.0)
    padded, padded_geometry, padded_truth = pad_field_of_view(values, geometry, truth, field, mode)
    assert all(n * s >= f for n, s, f in zip(padded_geometry.size, padded_geometry.spacing, field, strict=True))
    assert padded.shape == padded_geometry.shape_kji == padded_truth.shape

    source = sitk.GetImageFromArray(values)
    source.CopyInformation(image)
    before = [int(round(v)) for v in padded_geometry.lps_to_index(geometry.origin)]
    after = [p - n - b for p, n, b in zip(padded_geometry.size, geometry.size, before, strict=True)]
    pad = sitk.MirrorPad if mode == "mirror" else sitk.ConstantPad
    extra = () if mode == "mirror" else (float(values.min()),)
    expected = pad(source, before, after, *extra)
    assert expected.GetSize() == padded_geometry.size
    np.testing.assert_allclose(expected.GetOrigin(), padded_geometry.origin, atol=1e-9)
    np.testing.assert_allclose(expected.GetDirection(), padded_geometry.direction, atol=1e-12)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(expected), padded)
    # every original voxel sits at its own physical point, with its own value and label
    for kji in rng.integers(0, values.shape, size=(20, 3)):
        point = image.TransformIndexToPhysicalPoint([int(v) for v in kji[::-1]])
        new_kji = tuple(padded_geometry.to_voxel_kji(np.array(point), "lps")[0])
        assert padded[new_kji] == values[tuple(kji)] and padded_truth[new_kji] == truth[tuple(kji)]
    assert padded_truth.sum() == truth.sum()
