"""The decoder token shift (Incremental Pattern Shifting): training, weights, and its plug-in into the walk."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from conftest import flip_byte
from ProMISeLib.errors import CheckpointError
from ProMISeTrain.prompter_data import ExtractionSettings, extract_structure
from ProMISeTrain.token_shift import (
    KEYS,
    SHIPPED,
    ShiftedDecoder,
    ShiftSettings,
    TokenShift,
    apply_token_shift,
    label_box,
    load_token_shift,
    neighbour_box_dice,
    propagation_pairs,
    save_token_shift,
    shift_loss,
    train_token_shift,
)


@pytest.fixture(scope="module")
def model():
    from ProMISeLib.io.weights import resolve_weights
    from ProMISeLib.models.litemedsam import build_litemedsam
    from ProMISeLib.models.registry import MODELS

    return build_litemedsam(resolve_weights(MODELS["litemedsam"].weights))


@pytest.fixture(scope="module")
def brain_structure(model, brain):
    """brain1's tumour encoded by the frozen encoder in a simulated ROI crop (as train-prompting caches it)."""
    from ProMISeLib.io.preprocess import InputScaling, normalize_intensities
    from ProMISeLib.runtime.predictor import SlicePredictor
    from ProMISeLib.runtime.torch_backend import TorchBackend

    volume, geometry, truth = brain
    normalised, _ = normalize_intensities(volume, "auto")
    predictor = SlicePredictor(TorchBackend(model, cpu := torch.device("cpu")), "litemedsam", InputScaling(256), cpu)
    pixel_mm = float(np.sqrt(geometry.spacing[0] * geometry.spacing[1]))
    return extract_structure("brain1", "lesion", truth, normalised, pixel_mm, predictor.embed,
                             ExtractionSettings(past_end=0), organ=False)


def _random_shift(model, scale: float = 0.5) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {key: scale * torch.randn(model.mask_decoder.get_parameter(key).shape, generator=generator) for key in KEYS}


def _fixed_boxes(structure) -> list[tuple[int, int, np.ndarray]]:
    """(position, slice, boxes): every slice's neighbour box at three sizes plus its own box."""
    return [(position, k, np.stack([label_box(structure.targets[n], f) for f in (0.7, 1.0, 1.1)]
                                   + [label_box(structure.targets[k])]))
            for position, k, n in propagation_pairs(structure)]


def test_the_training_path_and_the_applied_shift_decode_the_same(model):
    """The trainer's functional decoder and a model with the shift added to its tokens give one answer."""
    shift = _random_shift(model)
    embedding = torch.randn(1, 256, 64, 64)
    boxes = torch.tensor([[40.0, 50.0, 150.0, 170.0], [90.0, 80.0, 130.0, 140.0]])
    with torch.no_grad():
        frozen_logits, _ = model.decode_boxes(embedding, boxes)
        zero_logits, _ = ShiftedDecoder(model)(embedding, boxes)
        trained_logits, trained_iou = ShiftedDecoder(model, shift)(embedding, boxes)
        shifted_model = apply_token_shift(copy.deepcopy(model), shift)
        applied_logits, applied_iou = shifted_model.decode_boxes(embedding, boxes)
    assert torch.allclose(zero_logits, frozen_logits[:, 0], atol=1e-5)
    assert torch.allclose(trained_logits, applied_logits[:, 0], atol=1e-4)
    assert torch.allclose(trained_iou, applied_iou[:, 0], atol=1e-5)
    assert (trained_logits - frozen_logits[:, 0]).abs().max() > 0.1, "a shift must change the masks"
    changed = [k for k, v in shifted_model.state_dict().items() if not torch.equal(v, model.state_dict()[k])]
    assert sorted(changed) == sorted(f"mask_decoder.{key}" for key in KEYS)
    assert not any(p.requires_grad for p in shifted_model.parameters())


def test_training_lowers_the_loss_and_leaves_sam_unchanged(model, brain_structure, one_torch_thread):
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    examples = _fixed_boxes(brain_structure)
    assert len(examples) >= 8

    def fixed_loss(shift) -> float:
        decoder = ShiftedDecoder(model, shift)
        with torch.no_grad():
            return float(np.mean([shift_loss(decoder, brain_structure, p, k, b) for p, k, b in examples]))

    shift, losses = train_token_shift(model, [brain_structure], ShiftSettings(iterations=12, slices_per_step=2,
                                                                              lr=2e-2, threads=1))
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert fixed_loss(shift) < fixed_loss(None) - 0.01
    assert all(torch.equal(before_state[k], v) for k, v in model.state_dict().items()), "SAM's weights changed"
    assert sorted(shift) == sorted(KEYS) and not any(v.requires_grad for v in shift.values())


def test_neighbour_box_dice_scores_the_frozen_decoder_and_the_shift(model, brain_structure):
    frozen = neighbour_box_dice(model, brain_structure, None)
    assert set(frozen) == {"s0.85", "s1", "s1.1", "own", "picked"}
    assert all(0.0 <= v <= 1.0 for v in frozen.values())
    assert frozen["own"] > 0.5, "LiteMedSAM segments a brain tumour from its own box"
    garbage = {key: 5 * v for key, v in _random_shift(model).items()}
    assert neighbour_box_dice(model, brain_structure, garbage)["picked"] != frozen["picked"]


def test_shift_weights_round_trip_and_bad_files_are_refused(model, tmp_path):
    shift = _random_shift(model)
    path = save_token_shift(shift, tmp_path / "shift.safetensors", {"name": "test"})
    loaded, card = load_token_shift(path)
    assert card["name"] == "test" and card["size_bytes"] == path.stat().st_size
    assert all(torch.equal(loaded[k], shift[k]) for k in KEYS)

    flip_byte(path, -3)
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_token_shift(path)

    other = save_token_shift({"mask_tokens.weight": shift["mask_tokens.weight"]}, tmp_path / "other.safetensors", {})
    with pytest.raises(CheckpointError, match="not a token shift"):
        load_token_shift(other)
    with pytest.raises(CheckpointError, match="the decoder needs"):
        apply_token_shift(copy.deepcopy(model), {key: torch.zeros(2, 3) for key in KEYS})
    (tmp_path / "missing.json").write_text("{}")
    with pytest.raises(CheckpointError, match="missing"):
        load_token_shift(tmp_path / "missing.safetensors")


def test_the_engine_applies_the_shift_plugin_and_says_so(model, brain, tmp_path):
    from conftest import centre_click
    from ProMISeLib.engine import Segmenter

    volume, geometry, truth = brain
    path = save_token_shift(_random_shift(model, 0.05), tmp_path / "mild.safetensors", {})
    click = [centre_click(truth)[::-1]]
    shifted = Segmenter(device="cpu", prompts="heuristic", plugins=[TokenShift.from_file(path)])
    frozen = Segmenter(device="cpu", prompts="heuristic", runtime="torch")
    assert shifted.runtime == "torch", "auto takes PyTorch for a plug-in that changes the model"
    embedding = torch.randn(1, 256, 64, 64)
    boxes = np.array([[40.0, 50.0, 150.0, 170.0]], np.float32)
    a = shifted.load().backend.decode(embedding, boxes, None, None)
    b = frozen.load().backend.decode(embedding, boxes, None, None)
    assert not np.allclose(a[0].numpy(), b[0].numpy()), "the shifted segmenter's decoder differs from the frozen one"
    with torch.no_grad():
        expected, _ = ShiftedDecoder(model, load_token_shift(path)[0])(embedding, torch.from_numpy(boxes))
    assert np.abs(a[0][:, 0].numpy() - expected.numpy()).max() < 1e-4
    result = shifted.segment(volume, geometry, click, space="ijk")
    assert result.method == "heuristic box prompts; plug-ins: decoder tokens shifted by mild"
    assert "shifted" not in frozen.segment(volume, geometry, click, space="ijk").method


def test_a_model_changing_plugin_is_refused_on_onnx_runtime(model, tmp_path):
    from ProMISeLib.engine import Segmenter
    from ProMISeLib.errors import InvalidInputError

    path = save_token_shift(_random_shift(model), tmp_path / "shift.safetensors", {})
    with pytest.raises(InvalidInputError, match="torch runtime only"):
        Segmenter(device="cpu", runtime="onnx", plugins=[TokenShift.from_file(path)])


def _shipped_shift_card() -> dict:
    assert SHIPPED.is_file(), "the trained token shift ships with the training wing"
    return json.loads(SHIPPED.with_suffix(".json").read_text())


def test_the_shipped_shift_card_records_held_out_validation():
    card = _shipped_shift_card()
    _, loaded_card = load_token_shift(SHIPPED)  # the hash in the card matches the shipped file
    assert loaded_card["name"] == "litemedsam-token-shift" and loaded_card["backbone"] == "litemedsam"
    validation = card["validation"]
    assert "by patient" in validation["scheme"]
    held = card["data"]["held_out_patients"]
    assert "STS_019" in held
    for case_id, row in validation["per_scan"].items():  # 2D figures: each scan scored by a fold without its patient
        assert any(case_id.startswith(g) for g in validation["folds"][f"fold{row['fold']}"]), case_id
    end_to_end = validation["end_to_end"]
    rows = end_to_end["per_scan"]
    assert len(rows) >= 19  # the held-out scans of the folds trained (0 and 1 of 4)
    assert end_to_end["mean_dice"] == pytest.approx(np.mean([r["dice"] for r in rows.values()]), abs=1e-3)
    for case_id, row in rows.items():
        assert any(case_id.startswith(g) for g in validation["folds"][row["fold"]]), case_id
    assert card["default"] == (end_to_end["mean_change"] > 0)


@pytest.mark.slow
def test_the_shipped_shift_reproduces_its_held_out_dice(cases):
    """The shipped shift and prompter never saw STS_019; the default engine must give the Dice the card records."""
    from conftest import centre_click
    from ProMISeLib.engine import Segmenter
    from ProMISeLib.io.sample_data import read_case
    from ProMISeLib.metrics import dice

    recorded = _shipped_shift_card()["validation"]["end_to_end"]["shipped_file_validation"]
    case_id = "STS_019_MR_T1" if "STS_019_MR_T1" in recorded else min(recorded)
    volume, geometry, truth = read_case(cases[case_id])
    result = Segmenter(device="cpu", prompts="fused", plugins=[TokenShift.from_file()]).segment(
        volume, geometry, [centre_click(truth)[::-1]], space="ijk")
    assert "decoder tokens shifted by litemedsam-token-shift" in result.method
    assert dice(result.mask, truth) == pytest.approx(recorded[case_id], abs=0.01)
