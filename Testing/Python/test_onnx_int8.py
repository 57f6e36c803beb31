"""int8 dynamic quantisation of the ONNX encoder: recorded and checked like the fp32 export, close to fp32."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import centre_click, flip_byte
from ProMISeLib.engine import Segmenter
from ProMISeLib.errors import CheckpointError, InvalidInputError
from ProMISeLib.io.download import sha256_of
from ProMISeLib.io.preprocess import CropWindow, InputScaling, normalize_intensities

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from ProMISeLib.runtime.onnx_backend import export_onnx

    out = tmp_path_factory.mktemp("onnx_int8")
    export_onnx("litemedsam", out, int8=True)
    return out


def fp32_only(export_dir, target):
    """A copy of the export without its int8 encoder (as an older `promise export` wrote it)."""
    shutil.copytree(export_dir, target)
    (target / "encoder.int8.onnx").unlink()
    manifest = json.loads((target / "manifest.json").read_text())
    del manifest["files"]["encoder_int8"], manifest["int8"]
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def test_int8_encoder_is_in_the_manifest_with_its_hash(export_dir):
    manifest = json.loads((export_dir / "manifest.json").read_text())
    entry = manifest["files"]["encoder_int8"]
    path = export_dir / entry["name"]
    assert path.is_file() and entry["sha256"] == sha256_of(path)
    assert manifest["int8"]["weight_type"] == "QUInt8" and manifest["int8"]["op_types"] == ["MatMul"]
    assert path.stat().st_size < 0.6 * (export_dir / "encoder.onnx").stat().st_size  # int8 weights
    for role in ("encoder", "decoder"):  # the fp32 files are untouched
        assert manifest["files"][role]["sha256"] == sha256_of(export_dir / manifest["files"][role]["name"])


def test_int8_embeddings_and_masks_stay_close_to_fp32_on_a_real_slice(export_dir, brain):
    from ProMISeLib.runtime.onnx_backend import OnnxBackend

    volume, _, truth = brain
    fp32 = OnnxBackend(export_dir, device="cpu", expected_model="litemedsam")
    int8 = OnnxBackend(export_dir, device="cpu", expected_model="litemedsam", precision="int8")
    assert int8.runtime == "onnx-int8" and fp32.runtime == "onnx"
    normalised, _ = normalize_intensities(volume)
    k, j, i = centre_click(truth)
    crop = CropWindow.around((j, i), 96)
    images = InputScaling(256).to_input(crop.extract(normalised[k])[None])
    ref, got = fp32.encode(images), int8.encode(images)
    diff = (got - ref).abs()
    print(f"int8 vs fp32 embedding: max abs {float(diff.max()):.4f}, mean abs {float(diff.mean()):.5f}, "
          f"fp32 mean abs {float(ref.abs().mean()):.4f}")
    assert float(diff.mean()) < 0.1 * float(ref.abs().mean())
    assert float(diff.max()) < 0.5
    rows, cols = np.nonzero(crop.extract(truth[k].astype(np.float32)) > 0)
    scale = 256 / crop.side
    box = np.array([[cols.min() - 2, rows.min() - 2, cols.max() + 3, rows.max() + 3]], np.float32) * scale
    masks = [fp32.decode(embedding, box)[0][0, 0].numpy() > 0 for embedding in (ref, got)]
    iou = np.count_nonzero(masks[0] & masks[1]) / np.count_nonzero(masks[0] | masks[1])
    print(f"mask IoU int8 vs fp32 on brain1 slice {k}: {iou:.3f}")
    assert masks[0].sum() > 20 and iou > 0.9


def test_a_tampered_or_missing_int8_encoder_is_refused(export_dir, tmp_path):
    from ProMISeLib.runtime.onnx_backend import OnnxBackend

    broken = tmp_path / "broken"
    shutil.copytree(export_dir, broken)
    flip_byte(broken / "encoder.int8.onnx")
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        OnnxBackend(broken, device="cpu", precision="int8")
    assert OnnxBackend(broken, device="cpu").runtime == "onnx"  # the fp32 files are still good
    with pytest.raises(CheckpointError, match="no int8 encoder"):
        OnnxBackend(fp32_only(export_dir, tmp_path / "old"), device="cpu", precision="int8")
    with pytest.raises(CheckpointError, match="no int8 encoder"):  # a user's folder is never changed
        Segmenter(device="cpu", runtime="onnx", precision="int8", onnx_dir=str(tmp_path / "old")).load()


def test_int8_is_refused_with_the_torch_runtime_or_on_cuda(export_dir, monkeypatch):
    from ProMISeLib.runtime.onnx_backend import OnnxBackend

    with pytest.raises(InvalidInputError, match="ONNX runtime only"):
        Segmenter(device="cpu", runtime="torch", precision="int8")
    assert Segmenter(device="cpu", precision="int8").runtime == "onnx"  # auto takes the only runtime int8 has
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(InvalidInputError, match="CPU"):
        Segmenter(device="cuda", runtime="onnx", precision="int8")
    assert Segmenter(device="auto", runtime="onnx", precision="int8").device.type == "cpu"
    with pytest.raises(InvalidInputError, match="CPU only"):
        OnnxBackend(export_dir, device="cuda", precision="int8")


def test_first_int8_use_quantises_into_the_cache(export_dir, tmp_path, monkeypatch):
    from ProMISeLib.runtime.onnx_cache import adopt_export

    monkeypatch.setenv("PROMISE_CACHE_DIR", str(tmp_path))
    cached = adopt_export("litemedsam", fp32_only(export_dir, tmp_path / "fp32"))  # an earlier fp32 run's export
    segmenter = Segmenter(device="cpu", runtime="onnx", precision="int8")
    predictor = segmenter.load()
    assert predictor.backend.runtime == "onnx-int8"
    manifest = json.loads((cached / "manifest.json").read_text())
    assert manifest["files"]["encoder_int8"]["sha256"] == sha256_of(cached / "encoder.int8.onnx")


def test_an_int8_encoder_quantised_with_older_settings_is_made_anew_in_the_cache(export_dir, tmp_path, monkeypatch):
    from ProMISeLib.runtime.onnx_cache import adopt_export

    monkeypatch.setenv("PROMISE_CACHE_DIR", str(tmp_path))
    cached = adopt_export("litemedsam", export_dir)
    manifest = json.loads((cached / "manifest.json").read_text())
    manifest["int8"]["weight_type"] = "QInt8"  # as quantised before: signed weights, which saturate on AVX2
    (cached / "manifest.json").write_text(json.dumps(manifest))
    assert Segmenter(device="cpu", runtime="onnx", precision="int8").load().backend.runtime == "onnx-int8"
    manifest = json.loads((cached / "manifest.json").read_text())
    assert manifest["int8"]["weight_type"] == "QUInt8"
    assert manifest["files"]["encoder_int8"]["sha256"] == sha256_of(cached / "encoder.int8.onnx")


def test_cli_accepts_int8():
    from ProMISeLib.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["segment", "image.nrrd", "--point", "1,2,3", "-o", "m.nii.gz", "--runtime", "onnx",
                              "--precision", "int8"])
    assert args.precision == "int8" and args.runtime == "onnx"
    assert parser.parse_args(["export", "--output", "out", "--int8"]).int8


@pytest.mark.slow
def test_int8_one_click_mask_is_close_to_fp32(export_dir, brain):
    from ProMISeLib.metrics import dice

    volume, geometry, truth = brain
    click = centre_click(truth)[::-1]
    masks = {}
    for precision in ("fp32", "int8"):
        segmenter = Segmenter(device="cpu", runtime="onnx", precision=precision, onnx_dir=str(export_dir),
                              prompts="heuristic")
        result = segmenter.segment(volume, geometry, [click], space="ijk")
        assert result.runtime == ("onnx-int8" if precision == "int8" else "onnx")
        masks[precision] = result.mask
    agreement = dice(masks["int8"], masks["fp32"])
    print(f"brain1 one-click Dice int8 vs fp32: {agreement:.3f}; vs truth {dice(masks['int8'], truth):.3f} "
          f"(fp32 {dice(masks['fp32'], truth):.3f})")
    # The walk through the slices magnifies small differences (a box size chosen differently on one slice
    # moves the next ones), and int8 kernels differ between CPUs (VNNI or not): what must hold is that int8
    # costs little quality against the expert label, and that it segments the same lesion.
    assert dice(masks["int8"], truth) > dice(masks["fp32"], truth) - 0.05
    assert agreement > 0.7
