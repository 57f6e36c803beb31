"""MSD task folders: reading, splits, errors, 1 mm crops, training crops and their augmentations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from msd_fixtures import real_ct_cases, write_msd
from ProMISeLib.errors import InvalidInputError
from ProMISeLib.metrics import dice
from ProMISeLib.models.promise3d.config import PRESETS
from ProMISeTrain.evaluate3d import choose_click, paste_back
from ProMISeTrain.msd import CropGrid, MSDDataset, case_id, image_crop, label_crop, load_case, task_preprocessing
from ProMISeTrain.train3d import Augmentation, sample_points, sample_training_crop

COLON = PRESETS["promise-colon"].preprocessing


@pytest.fixture(scope="module")
def tiny_msd(tmp_path_factory):
    root = tmp_path_factory.mktemp("Task10_Colon")
    return write_msd(root, real_ct_cases(), splits={"train": [1, 2], "val": [3], "test": [3]})


def test_reads_every_case_with_its_label_and_geometry(tiny_msd):
    dataset = MSDDataset(tiny_msd, "colon")
    assert [c.id for c in dataset.cases] == ["colon_001", "colon_002", "colon_003"]
    expected = {c.id: c for c in real_ct_cases()}
    for (image, label, geometry), case in zip(dataset, real_ct_cases(), strict=True):
        original = sitk.ReadImage(str(case.image))
        assert image.dtype == np.float32 and label.dtype == bool
        assert image.shape == label.shape == geometry.shape_kji == original.GetSize()[::-1]
        assert label.sum() == (sitk.GetArrayFromImage(sitk.ReadImage(str(expected[case.id].label))) > 0).sum()
        np.testing.assert_allclose(geometry.origin, original.GetOrigin(), atol=1e-4)


def test_splits_choose_cases(tiny_msd):
    splits = tiny_msd / "splits.json"
    assert [c.id for c in MSDDataset(tiny_msd, "colon", "train", splits).cases] == ["colon_001", "colon_002"]
    assert [c.id for c in MSDDataset(tiny_msd, "colon", "test", splits).cases] == ["colon_003"]
    assert len(MSDDataset(tiny_msd, "colon", "all", splits)) == 3
    flat = tiny_msd / "flat.json"
    flat.write_text(json.dumps({"train": ["colon_002"], "val": [], "test": []}))
    assert [c.id for c in MSDDataset(tiny_msd, "colon", "train", flat).cases] == ["colon_002"]


def test_label_value_selects_the_tumour(tmp_path):
    root = write_msd(tmp_path / "Task07_Pancreas", real_ct_cases()[:1], task="pancreas", label_value=2)
    volumes = load_case(MSDDataset(root, "pancreas").cases[0], 2)
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "labelsTr" / "pancreas_001.nii.gz")))
    assert (raw == 1).sum() > 0
    np.testing.assert_array_equal(volumes.label_array(), raw == 2)


@pytest.mark.parametrize(("setup", "message"), [
    (lambda root: root / "absent", "no such dataset folder"),
    (lambda root: root, "no dataset.json"),
])
def test_missing_folder_or_manifest(tmp_path, setup, message):
    with pytest.raises(InvalidInputError, match=message):
        MSDDataset(setup(tmp_path), "colon")


def test_clear_errors_for_bad_folders(tmp_path, tiny_msd):
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match="cannot be read as JSON"):
        MSDDataset(tmp_path, "colon")
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [{"image": "./imagesTr/x.nii.gz",
                                                                    "label": "./labelsTr/x.nii.gz"}]}))
    with pytest.raises(InvalidInputError, match="listed in dataset.json but missing"):
        MSDDataset(tmp_path, "colon")
    with pytest.raises(InvalidInputError, match="unknown task"):
        MSDDataset(tiny_msd, "liver")
    with pytest.raises(InvalidInputError, match="needs a split file"):
        MSDDataset(tiny_msd, "colon", "test")
    bad = tmp_path / "bad_splits.json"
    bad.write_text(json.dumps({"colon": {"train": ["colon_001", "colon_999"]}}))
    with pytest.raises(InvalidInputError, match="colon_999"):
        MSDDataset(tiny_msd, "colon", "train", bad)
    with pytest.raises(InvalidInputError, match="no such split file"):
        MSDDataset(tiny_msd, "colon", "train", tmp_path / "none.json")


def test_label_geometry_mismatch_is_refused(tmp_path):
    root = write_msd(tmp_path / "Task10_Colon", real_ct_cases()[:1])
    path = root / "labelsTr" / "colon_001.nii.gz"
    label = sitk.ReadImage(str(path))
    label.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(label, str(path))
    with pytest.raises(InvalidInputError, match="label geometry differs"):
        load_case(MSDDataset(root, "colon").cases[0], 1)


def test_case_id_and_task_preprocessing():
    assert case_id("./imagesTr/colon_001.nii.gz") == "colon_001"
    assert task_preprocessing("pancreas") is PRESETS["promise-pancreas"].preprocessing


# --- crops -----------------------------------------------------------------------------------
def test_crop_is_centred_on_the_click_at_1mm(tiny_msd):
    volumes = load_case(MSDDataset(tiny_msd, "colon").cases[0], 1)
    truth = volumes.label_array()
    click = choose_click(truth)
    centre = volumes.geometry.index_to_lps(np.array(click[::-1], dtype=float))
    grid = CropGrid.around(centre, volumes.geometry, 64)
    raw = grid.resample(volumes.image)
    assert raw[32, 32, 32] == pytest.approx(volumes.image_array()[click], abs=1e-3)
    labels = label_crop(volumes, grid)
    assert labels[32, 32, 32] == 1
    # The whole lesion fits in the 64 mm crop: its 1 mm voxel count is its volume in mm³.
    lesion_mm3 = truth.sum() * np.prod(volumes.geometry.spacing)
    assert labels.sum() == pytest.approx(lesion_mm3, rel=0.05)
    normalised = image_crop(volumes, grid, COLON)
    expected = (np.clip(raw[32, 32, 32], *COLON.window) - COLON.mean) / COLON.std
    assert normalised[32, 32, 32] == pytest.approx(expected, abs=1e-4)


def test_training_crops_and_inference_crops_share_one_grid(tiny_msd):
    """Without rotation or zoom, the training crop grid is the grid the inference runner resamples."""
    from ProMISeLib.models.promise3d.runner import crop_geometry

    volumes = load_case(MSDDataset(tiny_msd, "colon").cases[0], 1)
    click = choose_click(volumes.label_array())
    centre = volumes.geometry.index_to_lps(np.array(click[::-1], dtype=float))
    ours = CropGrid.around(centre, volumes.geometry, 32).geometry
    theirs = crop_geometry(volumes.geometry, click, 32, 1.0)
    assert ours.size == theirs.size and ours.direction == theirs.direction
    np.testing.assert_allclose(ours.origin, theirs.origin, atol=1e-9)
    np.testing.assert_allclose(ours.spacing, theirs.spacing)


def test_crop_outside_the_scan_is_zero(tiny_msd):
    volumes = load_case(MSDDataset(tiny_msd, "colon").cases[0], 1)
    corner = volumes.geometry.index_to_lps(np.zeros(3))
    grid = CropGrid.around(corner, volumes.geometry, 32)
    assert np.isnan(grid.resample(volumes.image)[0, 0, 0])
    crop = image_crop(volumes, grid, COLON)
    assert crop[0, 0, 0] == 0.0 and np.isfinite(crop).all()


def test_paste_back_restores_the_label_on_the_scan_grid(tiny_msd):
    volumes = load_case(MSDDataset(tiny_msd, "colon").cases[0], 1)
    truth = volumes.label_array()
    centre = volumes.geometry.index_to_lps(np.array(choose_click(truth)[::-1], dtype=float))
    grid = CropGrid.around(centre, volumes.geometry, 64)
    probability = grid.resample(volumes.label)
    back = paste_back(np.nan_to_num(probability), grid.geometry, volumes.geometry)
    assert back.shape == truth.shape
    assert dice(back >= 0.5, truth) > 0.9


def test_random_click_is_seeded_and_inside():
    mask = np.zeros((10, 10, 10), bool)
    mask[2:5, 3:7, 4:6] = True
    a = choose_click(mask, "random", np.random.default_rng([0, 1]))
    assert mask[a] and a == choose_click(mask, "random", np.random.default_rng([0, 1]))
    with pytest.raises(InvalidInputError):
        choose_click(np.zeros((3, 3, 3), bool))


def test_training_crop_positive_and_seeded(tiny_msd):
    volumes = load_case(MSDDataset(tiny_msd, "colon").cases[0], 1)
    first = sample_training_crop(volumes, COLON, np.random.default_rng(3), Augmentation(), 1.0, crop_size=32)
    again = sample_training_crop(volumes, COLON, np.random.default_rng(3), Augmentation(), 1.0, crop_size=32)
    np.testing.assert_array_equal(first[0], again[0])
    image, label = first
    assert image.shape == label.shape == (32, 32, 32) and label.dtype == np.uint8
    assert label.any()  # a positive crop holds lesion
    negative = sample_training_crop(volumes, COLON, np.random.default_rng(4), None, 0.0, crop_size=32)
    assert negative[0].shape == (32, 32, 32)


def test_augmentations_keep_image_and_label_aligned(tmp_path):
    """On a synthetic scan whose intensity is the label, every augmented crop's image still matches its label."""
    from ProMISeLib.io.geometry import ImageGeometry
    from ProMISeTrain.msd import CaseVolumes

    shape = (40, 60, 60)
    label = np.zeros(shape, np.uint8)
    label[12:30, 15:45, 20:40] = 1
    image = sitk.GetImageFromArray(np.where(label > 0, 150.0, -50.0).astype(np.float32))
    image.SetSpacing((0.8, 0.8, 2.0))
    mask = sitk.GetImageFromArray(label)
    mask.CopyInformation(image)
    volumes = CaseVolumes("synthetic", image, mask, ImageGeometry.from_sitk(image))
    always = Augmentation(shift_hu=0.0, rotate_prob=1.0, zoom_prob=1.0, flip_prob=0.5, rot90_prob=1.0)
    agreements = []
    for seed in range(6):
        crop, crop_label = sample_training_crop(volumes, COLON, np.random.default_rng(seed), always, 1.0,
                                                crop_size=24)
        bright = crop > (50.0 - COLON.mean) / COLON.std
        agreements.append((bright == (crop_label > 0)).mean())
        points = sample_points(crop_label, np.random.default_rng(seed))
        assert points.shape == (30, 3) and points.min() >= 0 and points.max() < 24
        inside = points[:10].astype(int)
        assert crop_label[inside[:, 0], inside[:, 1], inside[:, 2]].all()
    assert min(agreements) > 0.97


def test_points_without_lesion_are_random_only():
    points = sample_points(np.zeros((8, 8, 8), np.uint8), np.random.default_rng(0))
    assert points.shape == (20, 3) and points.dtype == np.float32
