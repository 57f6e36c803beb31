"""ProMISe 3D checkpoints: released layout -> our safetensors + sidecar, `promise weights add`, bad files."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import flip_byte
from ProMISeLib.cli import main
from ProMISeLib.errors import CheckpointError
from ProMISeLib.io.weights import resolve_weights, sidecar_path
from ProMISeLib.models.promise3d import checkpoint as ckpt
from ProMISeLib.models.promise3d.config import PRESETS
from ProMISeLib.models.promise3d.model import Promise3D, Promise3DConfig
from ProMISeLib.models.registry import MODELS, list_models
from safetensors import safe_open

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Nothing touches the user's cache; no PROMISE_WEIGHTS_* override leaks in."""
    monkeypatch.setenv("PROMISE_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("PROMISE_WEIGHTS_PROMISE_COLON", "PROMISE_WEIGHTS_PROMISE_PANCREAS"):
        monkeypatch.delenv(name, raising=False)


class NotATensor:
    """A custom class: PyTorch's weights_only loader must refuse a file holding one."""


def reduced_model(seed: int = 0) -> Promise3D:
    torch.manual_seed(seed)
    model = Promise3D(Promise3DConfig.reduced())
    with torch.no_grad():  # non-default values everywhere, so a mix-up shows
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    return model.eval()


def released_layout(model: Promise3D) -> dict:
    """The model as the public code saves it: encoder/feature/decoder dicts, ``cls_hao`` for ``head``."""
    decoder = {k.replace("head.", "cls_hao.", 1) if k.startswith("head.") else k: v
               for k, v in model.decoder.state_dict().items()}
    return {"encoder_dict": model.encoder.state_dict(), "feature_dict": [p.state_dict() for p in model.prompt],
            "decoder_dict": decoder, "epoch": 199, "best_val_loss": 0.25}


@pytest.fixture
def released(tmp_path):
    model = reduced_model()
    path = tmp_path / "colon_pretrain_promise.pth"
    torch.save(released_layout(model), path)
    return model, path


def outputs(model: Promise3D) -> torch.Tensor:
    torch.manual_seed(5)
    side = model.config.crop_size
    with torch.no_grad():
        return model(torch.randn(1, 1, side, side, side), torch.tensor([[[16.0, 12.0, 20.0]]]))


def test_released_checkpoint_round_trips_through_our_format(released, tmp_path):
    model, source = released
    assert "decoder_dict" in torch.load(source, weights_only=True) and any(
        k.startswith("cls_hao.") for k in torch.load(source, weights_only=True)["decoder_dict"])
    path = ckpt.convert_released_checkpoint(source, "promise-colon", tmp_path / "out" / "colon.safetensors",
                                            config=Promise3DConfig.reduced())
    with safe_open(str(path), "pt") as handle:
        keys = set(handle.keys())
    assert not any("attn_mask" in k for k in keys)
    assert {"decoder.head.0.weight", "decoder.head.3.weight", "prompt.3.positional_encoding_gaussian_matrix"} <= keys
    assert not any("cls_hao" in k for k in keys)
    assert keys == {k for k in model.state_dict() if "attn_mask" not in k}
    meta = json.loads(sidecar_path(path).read_text())
    colon = PRESETS["promise-colon"].preprocessing
    assert meta["model"] == "promise-colon" and meta["format"] == ckpt.FORMAT
    assert meta["preprocessing"] == {"window_hu": [-57.0, 175.0], "mean": 65.175, "std": 32.651,
                                     "spacing_mm": [1.0, 1.0, 1.0], "crop_size": 32, "upsample": 2}
    assert colon.window == (-57.0, 175.0)
    assert meta["source"]["file"] == source.name and len(meta["source"]["sha256"]) == 64
    assert meta["safetensors_sha256"] == ckpt.sha256_of(path)
    assert Promise3DConfig.from_dict(meta["config"]) == Promise3DConfig.reduced()

    loaded, preprocessing = ckpt.load_promise3d(path)
    assert preprocessing == colon and not loaded.training
    assert torch.equal(outputs(loaded), outputs(model))
    masks = [k for k in loaded.state_dict() if "attn_mask" in k]
    assert masks and all(torch.equal(loaded.state_dict()[k], model.state_dict()[k]) for k in masks)

    again = ckpt.save_promise3d(loaded, tmp_path / "again.safetensors", preprocessing=preprocessing,
                                name="promise-colon", metadata={"note": "copy"})
    assert json.loads(sidecar_path(again).read_text())["metadata"] == {"note": "copy"}
    fresh = ckpt.build_model(Promise3DConfig.reduced())
    ckpt.load_state_into(fresh, again)
    assert torch.equal(outputs(fresh.eval()), outputs(model))


def test_weights_add_installs_the_model(released, monkeypatch, capsys):
    model, source = released
    monkeypatch.setattr(ckpt, "default_config", lambda name: Promise3DConfig.reduced())  # full size is 0.5 GB
    info = {i.name: i for i in list_models()}
    assert not info["promise-colon"].installed and not info["promise-colon"].downloadable
    with pytest.raises(CheckpointError, match="promise weights add promise-colon"):
        resolve_weights(MODELS["promise-colon"].weights)
    assert main(["weights", "download", "promise-colon"]) == 2
    assert "cannot be downloaded automatically" in capsys.readouterr().err

    assert main(["weights", "add", "promise-colon", str(source)]) == 0
    out = capsys.readouterr().out
    path = resolve_weights(MODELS["promise-colon"].weights)
    assert str(path) in out and path.name == "promise-colon.safetensors" and sidecar_path(path).is_file()
    assert {i.name: i for i in list_models()}["promise-colon"].installed
    assert main(["models"]) == 0
    line = next(t for t in capsys.readouterr().out.splitlines() if t.startswith("promise-colon"))
    assert " installed" in line and "not installed" not in line
    loaded, _ = ckpt.load_promise3d("promise-colon")
    assert torch.equal(outputs(loaded), outputs(model))

    assert main(["weights", "add", "sam_vit_b", str(source)]) == 2  # only ProMISe 3D models are added
    assert main(["weights", "remove", "promise-colon"]) == 0
    assert not path.exists() and not sidecar_path(path).exists()


def _convert(tmp_path, layout: dict):
    source = tmp_path / "bad.pth"
    torch.save(layout, source)
    return ckpt.convert_released_checkpoint(source, "promise-colon", tmp_path / "bad.safetensors",
                                            config=Promise3DConfig.reduced())


def test_missing_and_extra_keys_are_named(tmp_path):
    layout = released_layout(reduced_model())
    del layout["encoder_dict"]["blocks.1.attn.qkv.weight"]
    layout["decoder_dict"]["bogus.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="missing.*blocks.1.attn.qkv.weight.*unexpected.*bogus.weight"):
        _convert(tmp_path, layout)
    layout = released_layout(reduced_model())
    layout["decoder_dict"] = {}
    with pytest.raises(CheckpointError, match=r"20 missing key\(s\): decoder_dict:head.0.weight.* and 16 more"):
        _convert(tmp_path, layout)
    layout = released_layout(reduced_model())
    layout["feature_dict"][3]["transformer.layers.0.global_query"] = torch.zeros(1, 9, 32)
    with pytest.raises(CheckpointError, match=r"wrong shape.*feature_dict\[3\]:transformer.layers.0.global_query"):
        _convert(tmp_path, layout)
    layout = released_layout(reduced_model())
    layout["encoder_dict"]["blocks.0.attn_mask"] = torch.zeros_like(layout["encoder_dict"]["blocks.0.attn_mask"])
    with pytest.raises(CheckpointError, match="blocks.0.attn_mask is not the shifted-window mask"):
        _convert(tmp_path, layout)
    with pytest.raises(CheckpointError, match="expected encoder_dict, feature_dict, decoder_dict"):
        _convert(tmp_path, {"state_dict": {}})
    assert not (tmp_path / "bad.safetensors").exists()


def test_unsafe_or_unreadable_files_are_refused(tmp_path):
    layout = released_layout(reduced_model())
    layout["encoder_dict"] = NotATensor()
    with pytest.raises(CheckpointError, match=r"weights_only=True.*NotATensor.*nothing in it was run"):
        _convert(tmp_path, layout)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="unreadable or not a PyTorch checkpoint"):
        ckpt.convert_released_checkpoint(junk, "promise-colon", tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="no such file"):
        ckpt.convert_released_checkpoint(tmp_path / "absent.pth", "promise-colon")
    with pytest.raises(CheckpointError, match="not a ProMISe 3D model"):
        ckpt.convert_released_checkpoint(junk, "sam_vit_b")


def test_a_modified_weights_file_fails_its_sidecar(released, tmp_path):
    _, source = released
    path = ckpt.convert_released_checkpoint(source, "promise-colon", tmp_path / "w.safetensors",
                                            config=Promise3DConfig.reduced())
    flip_byte(path, -5)
    with pytest.raises(CheckpointError, match="SHA-256"):
        ckpt.load_promise3d(path)
    with pytest.raises(CheckpointError, match="SHA-256"):
        resolve_weights(MODELS["promise-colon"].weights, path)
    sidecar_path(path).unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        resolve_weights(MODELS["promise-colon"].weights, path)
    good = ckpt.save_promise3d(reduced_model(), tmp_path / "ok.safetensors",
                               preprocessing=PRESETS["promise-colon"].preprocessing)
    with pytest.raises(CheckpointError, match="another architecture.*depth"):
        ckpt.load_state_into(Promise3D(Promise3DConfig.reduced(depth=8)), good)
    # run-time options are not architecture: the same weights load
    ckpt.load_state_into(Promise3D(Promise3DConfig.reduced(attention_chunk=2)), good)
    # a retired run-time option in a weights file written before does not stop it loading
    assert Promise3DConfig.from_dict({**Promise3DConfig.reduced().to_dict(), "parity_permuted_click": False}) == \
        Promise3DConfig.reduced()
    meta = json.loads(sidecar_path(good).read_text())
    meta["config"]["window_size"] = 5  # not a divisor of the token grid
    sidecar_path(good).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unusable architecture"):
        ckpt.load_promise3d(good)
