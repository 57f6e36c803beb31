"""ONNX export of a box-prompted model, and an ONNX Runtime backend with a checked manifest.

``export_onnx`` writes ``encoder.onnx`` (dynamic batch), ``decoder.onnx`` (one embedding, a
dynamic number of boxes) and ``manifest.json`` (model, input size and scaling, opset, the
SHA-256 of each file). ``add_int8_encoder`` (``promise export --int8``) adds ``encoder.int8.onnx``,
the encoder with its MatMul weights dynamically quantised to int8 (per channel) for ONNX Runtime
on a CPU. ``OnnxBackend`` refuses a directory whose files do not match their manifest or whose
inputs are not the expected ones, so a wrong file never gives a wrong mask.
"""

from __future__ import annotations

import json
import logging
import re
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ProMISeLib.errors import CheckpointError, InvalidInputError, OutputError
from ProMISeLib.io.download import sha256_of
from ProMISeLib.io.volumes import atomic_write
from ProMISeLib.models.prompt_batch_decoder import PromptBatchDecoder
from ProMISeLib.runtime.choice import ONNX_PRECISIONS

MANIFEST = "manifest.json"
ENCODER_INPUTS = ["image"]
DECODER_INPUTS = ["image_embeddings", "boxes"]
INT8_ENCODER = "encoder_int8"  # the manifest role of the quantised encoder
# Dynamic int8 quantisation of the MatMuls only: ONNX Runtime's CPU provider has no int8 ConvInteger
# kernel, and quantising the convolutions (uint8) lost most of the embedding's accuracy.
#: Unsigned 8-bit weights (U8U8): on CPUs without VNNI (AVX2 only) the signed-weight kernels (U8S8) saturate
#: int16 sums; on such a CPU they put the embeddings 26% off fp32 (13% with reduce_range), U8U8 8.5%.
INT8_SETTINGS = {"op_types": ["MatMul"], "weight_type": "QUInt8", "per_channel": True, "reduce_range": False}


#: The decoder graph's version in the manifest: 2 and later are :class:`PromptBatchDecoder` (prompts share the
#: image side); 4 computes the upscaling as per-pixel matrix products.
#: A cached export of an older graph is exported anew (:func:`decoder_is_current`).
DECODER_GRAPH = 4


class BoxDecoder(nn.Module):
    """Prompt encoder + mask decoder for box prompts on one image embedding (the exported decoder graph)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.decoder = PromptBatchDecoder(model.prompt_encoder, model.mask_decoder)

    def forward(self, image_embeddings: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sparse, _ = self.prompt_encoder(points=None, boxes=boxes, masks=None)
        return self.decoder(image_embeddings, sparse)


def export_onnx(model_name: str, output_dir: str | Path, weights: str | None = None, opset: int = 17,
                int8: bool = False) -> Path:
    """Export the named model's encoder and box decoder to ONNX; returns the manifest path.

    With ``int8`` the dynamically quantised encoder is written too (see :func:`add_int8_encoder`).
    """
    from ProMISeLib.io.weights import resolve_weights
    from ProMISeLib.models.registry import get_model_spec

    spec = get_model_spec(model_name)
    if spec.point_prompts:
        raise InvalidInputError(f"{model_name}: ONNX export covers box-prompted models only (e.g. litemedsam)")
    model = spec.build(resolve_weights(spec.weights, weights)).eval()
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out}: could not create the export folder ({exc.strerror or exc})") from exc
    size = spec.scaling.size
    image = torch.rand(2, 3, size, size)
    with torch.inference_mode():
        embedding = model.image_encoder(image[:1])
    boxes = torch.tensor([[20.0, 30.0, 120.0, 140.0], [60.0, 50.0, 200.0, 190.0]])
    files = {"encoder": out / "encoder.onnx", "decoder": out / "decoder.onnx"}
    with warnings.catch_warnings():  # the tracer's notes on Python values it keeps as constants (input size,
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # head scale): fixed for this model, not news
        atomic_write(files["encoder"], lambda tmp: torch.onnx.export(
            model.image_encoder, (image,), tmp, input_names=ENCODER_INPUTS, output_names=["image_embeddings"],
            dynamic_axes={"image": {0: "batch"}, "image_embeddings": {0: "batch"}}, opset_version=opset,
            dynamo=False))
        atomic_write(files["decoder"], lambda tmp: torch.onnx.export(
            BoxDecoder(model), (embedding, boxes), tmp, input_names=DECODER_INPUTS,
            output_names=["low_res_logits", "iou"],
            dynamic_axes={"boxes": {0: "prompts"}, "low_res_logits": {0: "prompts"}, "iou": {0: "prompts"}},
            opset_version=opset, dynamo=False))
    manifest = {
        "model": spec.name, "input_size": size, "scaling": spec.scaling.mode, "opset": opset,
        "embedding_shape": list(embedding.shape[1:]), "decoder_graph": DECODER_GRAPH, "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "files": {role: {"name": path.name, "sha256": sha256_of(path)} for role, path in files.items()},
    }
    path = atomic_write(out / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))
    return add_int8_encoder(out) if int8 else path


class _DropMessage(logging.Filter):
    """Drops log records that contain a given text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def decoder_is_current(manifest: dict) -> bool:
    """Whether the export's decoder is today's graph (:data:`DECODER_GRAPH`); an older one decodes slower."""
    return manifest.get("decoder_graph") == DECODER_GRAPH


def int8_is_current(manifest: dict) -> bool:
    """Whether the export's int8 encoder was quantised with today's :data:`INT8_SETTINGS`."""
    recorded = manifest.get("int8", {})
    return INT8_ENCODER in manifest.get("files", {}) and all(recorded.get(k) == v for k, v in INT8_SETTINGS.items())


def add_int8_encoder(directory: str | Path) -> Path:
    """Write ``encoder.int8.onnx`` (int8 weights, dynamic activations) beside a checked fp32 export.

    The fp32 encoder is checked against the manifest first; the quantised file and its SHA-256
    are then recorded in the manifest (role ``encoder_int8``). Returns the manifest path.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    directory = Path(directory)
    manifest = read_manifest(directory)
    source = directory / manifest["files"]["encoder"]["name"]
    target = directory / "encoder.int8.onnx"
    quiet = _DropMessage("pre-processing before quantization")  # its advice does not apply to this graph
    logging.getLogger().addFilter(quiet)
    try:
        atomic_write(target, lambda tmp: quantize_dynamic(
            source, tmp, op_types_to_quantize=INT8_SETTINGS["op_types"], per_channel=INT8_SETTINGS["per_channel"],
            reduce_range=INT8_SETTINGS["reduce_range"], weight_type=getattr(QuantType, INT8_SETTINGS["weight_type"])))
    finally:
        logging.getLogger().removeFilter(quiet)
    manifest["files"][INT8_ENCODER] = {"name": target.name, "sha256": sha256_of(target)}
    manifest["int8"] = {**INT8_SETTINGS, "method": "onnxruntime.quantization.quantize_dynamic",
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return atomic_write(directory / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))


def read_manifest(directory: str | Path, roles: tuple[str, ...] = ("encoder", "decoder")) -> dict:
    """The manifest of an export directory, with the SHA-256 of each file in ``roles`` checked."""
    directory = Path(directory)
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError("its files are not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: missing or unreadable ONNX manifest ({exc})") from exc
    for role in roles:
        entry = files.get(role) if isinstance(files.get(role), dict) else {}
        if role == INT8_ENCODER and not entry:
            raise CheckpointError(f"{directory}: the export has no int8 encoder; run `promise export --int8`")
        name = str(entry.get("name", ""))
        if not re.fullmatch(r"[\w.-]+", name) or name in (".", ".."):
            raise CheckpointError(f"{path}: names the {role} file {name!r}, not a file in the export folder")
        onnx_file = directory / name
        if not onnx_file.is_file():
            raise CheckpointError(f"{directory}: the {role} file named in the manifest is missing")
        if sha256_of(onnx_file) != entry.get("sha256"):
            raise CheckpointError(f"{onnx_file}: SHA-256 differs from the manifest; the file is corrupt or replaced")
    return manifest


class OnnxBackend:
    """Encoder and decoder sessions from an export directory, on CUDA when available and asked for (a
    :class:`~ProMISeLib.runtime.backend.Backend`).

    ``precision="int8"`` uses the dynamically quantised encoder (CPU only; the decoder stays fp32).
    """

    runtime = "onnx"

    def __init__(self, directory: str | Path, device: str = "auto", expected_model: str | None = None,
                 precision: str = "fp32") -> None:
        import onnxruntime as ort

        if precision not in ONNX_PRECISIONS:
            raise InvalidInputError(f"unknown ONNX precision {precision!r}; use fp32 or int8")
        if precision == "int8" and device == "cuda":
            raise InvalidInputError("the int8 encoder runs on the CPU only; use --device cpu or fp32")
        self.directory = Path(directory)
        self.precision = precision
        encoder_role = INT8_ENCODER if precision == "int8" else "encoder"
        self.manifest = read_manifest(self.directory, (encoder_role, "decoder"))
        if expected_model and self.manifest.get("model") != expected_model:
            raise CheckpointError(f"{directory}: exported for {self.manifest.get('model')!r}, not {expected_model!r}")
        if precision == "int8":
            self.runtime = "onnx-int8"  # embeddings differ from fp32 ones: a separate cache key
        available = ort.get_available_providers()
        wants_cuda = device in ("auto", "cuda") and precision != "int8"
        if wants_cuda and "CUDAExecutionProvider" in available:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.messages: list[str] = []
        if device == "cuda" and providers[0] != "CUDAExecutionProvider":
            self.messages.append("ONNX Runtime has no CUDA provider here (install onnxruntime-gpu); running on CPU")
        files = self.manifest["files"]
        try:
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()  # the same thread budget as PyTorch
            # No memory pattern: it plans one block per input shape and keeps it, which more than doubled the
            # encoder's peak memory (1.5 GB against 0.85 GB for a batch of 4); the arithmetic is the same.
            options.enable_mem_pattern = False
            self.encoder = ort.InferenceSession(str(self.directory / files[encoder_role]["name"]),
                                                sess_options=options, providers=providers)
            self.decoder = ort.InferenceSession(str(self.directory / files["decoder"]["name"]),
                                                sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise CheckpointError(f"{directory}: ONNX Runtime cannot load the model ({exc})") from exc
        if self.decoder.get_providers()[0] == "CUDAExecutionProvider" and self.encoder.get_providers():
            self.device = "cuda"
        else:
            self.device = "cpu"
        self._check_io()

    def _check_io(self) -> None:
        names = [i.name for i in self.encoder.get_inputs()], [i.name for i in self.decoder.get_inputs()]
        if names != (ENCODER_INPUTS, DECODER_INPUTS):
            raise CheckpointError(f"{self.directory}: unexpected ONNX inputs {names}; re-export with `promise export`")
        size = self.manifest.get("input_size")
        shape = self.encoder.get_inputs()[0].shape
        if len(shape) != 4 or shape[1:] != [3, size, size]:
            raise CheckpointError(f"{self.directory}: encoder input {shape} does not match the manifest size {size}")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().cpu().numpy().astype(np.float32, copy=False)
        return torch.from_numpy(self.encoder.run(None, {"image": array})[0])

    def decode(self, embedding: torch.Tensor, boxes: np.ndarray, points=None, labels=None):
        if points is not None and len(points):
            raise InvalidInputError("the ONNX decoder takes box prompts only")
        low_res, iou = self.decoder.run(None, {
            "image_embeddings": embedding.detach().cpu().numpy().astype(np.float32, copy=False),
            "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        })
        return torch.from_numpy(low_res), torch.from_numpy(iou)
