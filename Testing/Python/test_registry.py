"""Model registry, the SAM ViT builder (official checkpoint layout) and `promise models` / `promise demo`."""

from __future__ import annotations

import pytest
import torch
from ProMISeLib.cli import main
from ProMISeLib.errors import CheckpointError, InvalidInputError
from ProMISeLib.models.registry import DEFAULT_MODEL, get_model_spec, list_models
from ProMISeLib.models.sam import build_sam


def test_registry_lists_default_first_and_refuses_unknown_names():
    infos = list_models()
    assert infos[0].name == DEFAULT_MODEL and infos[0].bundled
    assert {"sam_vit_b", "sam_vit_l", "sam_vit_h"} <= {i.name for i in infos}
    assert all(i.downloadable for i in infos if not i.name.startswith("promise-"))
    assert not any(i.downloadable for i in infos if i.name.startswith("promise-"))  # added by hand (Google Drive)
    with pytest.raises(InvalidInputError, match="unknown model"):
        get_model_spec("sam_vit_x")


def test_box_trained_default_gets_no_point_prompts():
    assert not get_model_spec("litemedsam").point_prompts
    assert get_model_spec("sam_vit_b").point_prompts


def test_sam_vit_b_loads_a_checkpoint_in_the_official_layout(tmp_path):
    model = build_sam("vit_b")
    path = tmp_path / "sam_vit_b.pth"
    torch.save(model.state_dict(), path)
    again = build_sam("vit_b", path)
    key = "image_encoder.blocks.0.attn.qkv.weight"
    assert torch.equal(again.state_dict()[key], model.state_dict()[key])
    assert not any(p.requires_grad for p in again.parameters())
    state = model.state_dict()
    state.pop(key)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="qkv"):
        build_sam("vit_b", path)


def test_models_command_reports_install_state(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("litemedsam") and "installed" in lines[0]
    assert any(line.startswith("sam_vit_h") for line in lines)


@pytest.mark.slow
def test_demo_writes_mask_and_overlay(cases, tmp_path, capsys):
    assert main(["demo", "--device", "cpu", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "brain1_promise.seg.nrrd").is_file()
    png = tmp_path / "brain1_overlay.png"
    from PIL import Image

    with Image.open(png) as image:
        assert image.width > 2 * image.height and image.mode == "RGB"
    dice = float(out.rsplit("Dice against the expert label:", 1)[1].split()[0])
    assert dice > 0.5
