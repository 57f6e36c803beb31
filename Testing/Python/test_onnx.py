"""ONNX export and runtime: agreement with PyTorch on real scans, and refusal of bad exports."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import centre_click, flip_byte
from ProMISeLib.engine import Segmenter
from ProMISeLib.errors import CheckpointError
from ProMISeLib.io.preprocess import CropWindow, normalize_intensities

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def export_dir(onnx_export):
    return onnx_export[0]


def test_manifest_records_hashes_and_preprocessing(export_dir):
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert manifest["model"] == "litemedsam" and manifest["input_size"] == 256 and manifest["opset"] == 17
    assert set(manifest["files"]) == {"encoder", "decoder"}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())


def test_logits_agree_with_pytorch_on_real_slices(export_dir, brain):
    from ProMISeLib.runtime.onnx_backend import OnnxBackend

    volume, _, truth = brain
    torch_seg = Segmenter(device="cpu", runtime="torch")
    torch_pred = torch_seg.load()
    onnx_backend = OnnxBackend(export_dir, device="cpu", expected_model="litemedsam")
    from ProMISeLib.runtime.backend import Backend

    assert isinstance(onnx_backend, Backend) and isinstance(torch_pred.backend, Backend)  # the one protocol
    normalised, _ = normalize_intensities(volume)
    k, j, i = centre_click(truth)
    crop = CropWindow.around((j, i), 120)
    images = torch_pred.scaling.to_input(np.stack([crop.extract(normalised[k]), crop.extract(normalised[k - 1])]))
    ref = torch_pred.backend.encode(images)
    got = onnx_backend.encode(images)  # batch of 2: the dynamic batch axis works
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) < 1e-3
    boxes = np.array([[40, 40, 200, 210], [90, 80, 160, 170], [10, 20, 120, 100]], np.float32)
    ref_logits, ref_iou = torch_pred.backend.decode(ref[:1], boxes)
    logits, iou = onnx_backend.decode(ref[:1], boxes)  # three prompts: the dynamic prompt axis works
    assert float((logits - ref_logits).abs().max()) < 1e-3
    assert float((iou - ref_iou).abs().max()) < 1e-3


@pytest.mark.slow
def test_onnx_runtime_gives_the_same_mask_as_pytorch(export_dir, brain):
    volume, geometry, truth = brain
    click = centre_click(truth)[::-1]
    ref = Segmenter(device="cpu", runtime="torch").segment(volume, geometry, [click], space="ijk")
    got = Segmenter(device="cpu", runtime="onnx", onnx_dir=str(export_dir)).segment(volume, geometry, [click],
                                                                                  space="ijk")
    assert got.runtime == "onnx" and ref.runtime == "torch"
    np.testing.assert_array_equal(got.mask, ref.mask)


def test_corrupt_or_mismatched_exports_are_refused(export_dir, tmp_path):
    from ProMISeLib.runtime.onnx_backend import OnnxBackend

    broken = tmp_path / "broken"
    shutil.copytree(export_dir, broken)
    flip_byte(broken / "decoder.onnx")
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        OnnxBackend(broken)
    with pytest.raises(CheckpointError, match="exported for 'litemedsam'"):
        OnnxBackend(export_dir, expected_model="sam_vit_b")
    swapped = tmp_path / "swapped"
    shutil.copytree(export_dir, swapped)
    manifest = json.loads((swapped / "manifest.json").read_text())
    files = manifest["files"]
    files["encoder"], files["decoder"] = files["decoder"], files["encoder"]
    (swapped / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="unexpected ONNX inputs"):
        OnnxBackend(swapped)
    (swapped / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="manifest"):
        OnnxBackend(swapped)


def test_export_command(tmp_path, capsys):
    from ProMISeLib.cli import main

    assert main(["export", "--model", "litemedsam", "--output", str(tmp_path / "exp")]) == 0
    assert (tmp_path / "exp" / "manifest.json").is_file()
    assert main(["export", "--model", "sam_vit_b", "--output", str(tmp_path / "sam")]) == 2
    assert "box-prompted models only" in capsys.readouterr().err


def test_auto_runtime_takes_onnx_on_a_cpu_and_pytorch_where_onnx_cannot_run(monkeypatch):
    """The default runs ONNX Runtime on a CPU; models without an export, and fp16, run PyTorch."""
    import torch
    from ProMISeLib.errors import InvalidInputError
    from ProMISeLib.runtime import loader
    from ProMISeLib.runtime.loader import choose_runtime

    default = Segmenter(device="cpu")
    assert (default.requested_runtime, default.runtime, default.messages) == ("auto", "onnx", [])
    assert Segmenter(device="cpu", runtime="torch").runtime == "torch"
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_runtime("auto", "sam_vit_b", cpu) == ("torch", None)  # point prompts: no ONNX export
    assert choose_runtime("auto", "promise-colon", cpu) == ("torch", None)  # a 3D model
    assert choose_runtime("auto", "litemedsam", cuda) == ("torch", None)  # the measured GPU path
    assert choose_runtime("auto", "litemedsam", cuda, "fp16") == ("torch", None)
    assert choose_runtime("auto", "litemedsam", cpu, "int8") == ("onnx", None)
    assert choose_runtime("torch", "litemedsam", cpu) == ("torch", None)
    with pytest.raises(InvalidInputError, match="unknown runtime 'trt'; use auto, torch, onnx"):
        choose_runtime("trt", "litemedsam", cpu)
    monkeypatch.setattr(loader, "onnx_installed", lambda: False)
    runtime, note = choose_runtime("auto", "litemedsam", cpu)
    assert runtime == "torch" and "pip install onnxruntime onnx" in note
    plain = Segmenter(device="cpu")
    assert plain.runtime == "torch" and plain.messages == [note]  # said, not silent
    with pytest.raises(InvalidInputError, match="unknown runtime"):
        Segmenter(device="cpu", runtime="tensorrt")


def test_auto_runtime_falls_back_to_pytorch_when_onnx_fails_and_says_so(monkeypatch):
    """An ONNX Runtime that fails to load: auto runs PyTorch with a message; an explicit onnx raises."""

    from ProMISeLib.runtime import loader

    def broken(*args, **kwargs):
        raise CheckpointError("the cached export cannot be read")

    monkeypatch.setattr(loader, "_onnx_backend", broken)
    auto = Segmenter(device="cpu", prompts="heuristic")
    predictor = auto.load()
    assert auto.runtime == "torch" and predictor.backend.runtime == "torch"
    assert any("ONNX Runtime could not be used (the cached export cannot be read)" in m for m in auto.messages)
    with pytest.raises(CheckpointError, match="cannot be read"):
        Segmenter(device="cpu", runtime="onnx").load()
    with pytest.raises(CheckpointError, match="cannot be read"):  # int8 exists on ONNX only: no fallback
        Segmenter(device="cpu", precision="int8").load()


def test_a_wrong_checkpoint_is_refused_on_onnx_even_with_a_cached_export(tmp_path):
    """The ONNX path reads the cached export, not the weights; a wrong --weights file is still an error."""
    Segmenter(device="cpu", runtime="onnx").load()  # the cache holds an export of the shipped weights
    bogus = tmp_path / "lite_medsam.pth"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not the expected"):
        Segmenter(device="cpu", runtime="onnx", weights=str(bogus)).load()


def test_a_damaged_export_in_the_cache_is_rebuilt_and_said(tmp_path, monkeypatch):
    """A corrupt cached file is exported anew, atomically, and the run says so; it stays on ONNX Runtime."""
    from ProMISeLib.runtime.onnx_backend import read_manifest
    from ProMISeLib.runtime.onnx_cache import cache_folder, current_export

    monkeypatch.setenv("PROMISE_CACHE_DIR", str(tmp_path))
    first = Segmenter(device="cpu", runtime="auto")
    first.load()
    folder = current_export("litemedsam")
    assert first.runtime == "onnx" and not first.messages
    flip_byte(folder / "decoder.onnx")
    again = Segmenter(device="cpu", runtime="auto")
    again.load()
    assert again.runtime == "onnx", "not the silent fall-back to PyTorch"
    assert len(again.messages) == 1 and "damaged" in again.messages[0] and "exported it anew" in again.messages[0]
    read_manifest(current_export("litemedsam"))  # every file matches its manifest again
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["litemedsam"], "no staging folder left behind"
    kept = {p.name for p in cache_folder("litemedsam").iterdir()}
    assert kept == {"current", folder.name, current_export("litemedsam").name}  # the damaged one: this process's
