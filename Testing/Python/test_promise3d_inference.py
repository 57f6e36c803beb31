"""ProMISe 3D inference on an oblique, anisotropic synthetic volume: crop placement, paste-back, engine and CLI."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from ProMISeLib.cli import main
from ProMISeLib.engine import Segmenter
from ProMISeLib.errors import EmptySegmentationError, PointOutsideImageError, SegmentationCancelled
from ProMISeLib.io.geometry import ImageGeometry
from ProMISeLib.io.volumes import read_image
from ProMISeLib.metrics import dice
from ProMISeLib.models.promise3d.checkpoint import save_promise3d
from ProMISeLib.models.promise3d.config import PRESETS
from ProMISeLib.models.promise3d.model import Promise3D, Promise3DConfig
from ProMISeLib.models.promise3d.runner import METHOD, Promise3DRunner

COLON = PRESETS["promise-colon"].preprocessing
BOX = (slice(10, 15), slice(14, 27), slice(16, 31))  # (k, j, i): 10 x 9 x 13.5 mm, off-centre around the click
CLICK = (12, 18, 20)  # (k, j, i), inside the box


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.radians(degrees)
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


@pytest.fixture(scope="module")
def scan() -> tuple[np.ndarray, ImageGeometry]:
    """A CT-like volume (0 HU, a 200 HU box) on an oblique grid with 0.9 x 0.7 x 2.0 mm voxels."""
    geometry = ImageGeometry(size=(44, 40, 24), spacing=(0.9, 0.7, 2.0), origin=(12.5, -30.0, 40.0),
                             direction=tuple(rotation((1, 2, 3), 25).ravel()))
    volume = np.zeros(geometry.shape_kji, np.float32)
    volume[BOX] = 200.0
    return volume, geometry


class ThresholdModel(torch.nn.Module):
    """Stands in for ProMISe: foreground where the normalised crop is above 0.5; records what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.config = Promise3DConfig.reduced()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, image, points, on_step=None):
        self.calls.append((image.clone(), points.clone()))
        for done in (1, 2):
            if on_step is not None:
                on_step(done, 2)
        foreground = 20.0 * (image - 0.5)
        return torch.cat([torch.zeros_like(foreground), foreground], dim=1)


def sitk_image(volume: np.ndarray, geometry: ImageGeometry) -> sitk.Image:
    image = sitk.GetImageFromArray(volume)
    geometry.apply_to_sitk(image)
    return image


def test_crop_is_centred_on_the_click_and_the_result_lands_back_in_place(scan):
    volume, geometry = scan
    fake = ThresholdModel()
    events = []
    result = Promise3DRunner(fake, COLON).segment(volume, geometry, [CLICK], progress=lambda f, m: events.append(f))
    assert result.mask.shape == volume.shape and result.mask.dtype == np.uint8
    truth = np.zeros(volume.shape, bool)
    truth[BOX] = True
    assert dice(result.mask, truth) > 0.9
    assert result.mask[CLICK] == 1 and events[-1] == 1.0 and events == sorted(events)
    # The crop: 32³ at 1 mm along the image's own axes, the click at voxel 16 as SimpleITK places it.
    (crop,) = result.crops
    assert crop.size == (32, 32, 32) and crop.spacing == (1.0, 1.0, 1.0) and crop.direction == geometry.direction
    click_lps = sitk_image(volume, geometry).TransformIndexToPhysicalPoint([int(v) for v in CLICK[::-1]])
    crop_image = sitk.Image([32, 32, 32], sitk.sitkFloat32)
    crop.apply_to_sitk(crop_image)
    assert crop_image.TransformPhysicalPointToIndex(click_lps) == (16, 16, 16)
    image, points = fake.calls[0]
    assert image.shape == (1, 1, 32, 32, 32) and points.tolist() == [[[16.0, 16.0, 16.0]]]
    box_value = (min(200.0, COLON.window[1]) - COLON.mean) / COLON.std
    assert image[0, 0, 16, 16, 16].item() == pytest.approx(box_value, rel=1e-5)
    # Past the image edge the crop reads 0 (the normalised mean): zero padding, as the public code pads.
    corner = Promise3DRunner(ThresholdModel(), COLON)
    corner.model.calls.clear()
    with pytest.raises(EmptySegmentationError):
        corner.segment(volume, geometry, [(0, 0, 0)])
    assert (corner.model.calls[0][0][0, 0, :4, :4, :4] == 0).all()


def test_second_click_inside_the_object_reuses_it_and_clicks_become_points(scan):
    volume, geometry = scan
    fake = ThresholdModel()
    runner = Promise3DRunner(fake, COLON)
    result = runner.segment(volume, geometry, [CLICK, (13, 22, 25)])
    assert len(fake.calls) == 1 and len(result.crops) == 1  # the second click was already inside
    near = (6, 30, 36)  # background, 12 / 8.4 / 14.4 mm from CLICK: inside its crop
    both = runner.segment(volume, geometry, [CLICK, near])
    assert len(fake.calls) == 3  # the second click is outside the object: its own crop
    points = fake.calls[1][1][0]  # the crop at CLICK: the centre, then the other click in crop (d, h, w) voxels
    torch.testing.assert_close(points, torch.tensor([[16.0, 16, 16], [16 - 6 * 2.0, 16 + 12 * 0.7, 16 + 16 * 0.9]]))
    assert both.mask[CLICK] == 1 and both.mask[near] == 0
    assert any("not inside the result" in m for m in both.messages)


def test_clicks_outside_nothing_found_and_cancel(scan):
    volume, geometry = scan
    runner = Promise3DRunner(ThresholdModel(), COLON)
    with pytest.raises(PointOutsideImageError):
        runner.segment(volume, geometry, [(24, 0, 0)])
    with pytest.raises(EmptySegmentationError, match="found nothing"):
        runner.segment(np.zeros_like(volume), geometry, [CLICK])
    with pytest.raises(SegmentationCancelled):
        runner.segment(volume, geometry, [CLICK], cancel=lambda: len(runner.model.calls) > 0)


@pytest.fixture(scope="module")
def test_weights(tmp_path_factory) -> str:
    """A random reduced model in our format, its last conv set so that every voxel is foreground."""
    torch.manual_seed(0)
    model = Promise3D(Promise3DConfig.reduced())
    with torch.no_grad():
        model.decoder.head[3].weight[0] = -0.05
        model.decoder.head[3].weight[1] = 0.05
    path = tmp_path_factory.mktemp("weights") / "promise-colon.safetensors"
    return str(save_promise3d(model, path, preprocessing=COLON, name="promise-colon"))


def test_segmenter_runs_a_promise_model_on_the_input_grid(scan, test_weights):
    volume, geometry = scan
    segmenter = Segmenter(model="promise-colon", device="cpu", weights=test_weights)
    result = segmenter.segment(volume, geometry, [CLICK[::-1]], space="ijk", negative_points=[(1, 1, 1)])
    assert result.method == METHOD == "ProMISe 3D (Li et al.)" and result.runtime == "torch"
    assert result.mask.shape == volume.shape and result.mask.dtype == np.uint8 and result.mask[CLICK] == 1
    assert any("negative clicks are not used" in m for m in result.messages)
    # Everything in the mask is inside the 32 mm crop; the crop's inside is all in the mask.
    crop = segmenter.load().crop_size
    ijk = np.argwhere(np.ones(volume.shape, bool))[:, ::-1]
    click_lps = geometry.index_to_lps(np.array(CLICK[::-1], float))
    offset = (geometry.index_to_lps(ijk) - click_lps) @ geometry.direction_matrix  # mm along the crop's axes
    inside = np.abs(offset).max(axis=1) < crop / 2 - 1.5
    outside = np.abs(offset).max(axis=1) > crop / 2 + 0.5
    mask = result.mask.reshape(-1)[np.ravel_multi_index(tuple(ijk[:, ::-1].T), volume.shape)]
    assert mask[inside].all() and not mask[outside].any()
    with pytest.raises(PointOutsideImageError):
        segmenter.segment(volume, geometry, [(44, 0, 0)], space="ijk")


def test_cli_segment_with_a_promise_model(scan, test_weights, tmp_path, capsys):
    volume, geometry = scan
    image_path = tmp_path / "scan.nii.gz"
    sitk.WriteImage(sitk_image(volume, geometry), str(image_path))
    output = tmp_path / "mask.nii.gz"
    args = ["segment", str(image_path), "--model", "promise-colon", "--weights", test_weights, "--device", "cpu",
            "--point", ",".join(str(v) for v in CLICK[::-1]), "--space", "ijk", "-o", str(output)]
    assert main(args) == 0
    assert "ProMISe 3D (Li et al.)" in capsys.readouterr().out
    mask, mask_geometry = read_image(output)
    assert mask.shape == volume.shape and mask[CLICK] == 1
    assert np.allclose(mask_geometry.direction, geometry.direction, atol=1e-5)
    assert main(args[:-2] + ["--point", "100,0,0", "-o", str(output)]) == 2
    assert main(args + ["--runtime", "onnx"]) == 2
