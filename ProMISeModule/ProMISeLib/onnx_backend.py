"""ONNX export of a box-prompted model, and an ONNX Runtime backend with a checked manifest.

``export_onnx`` writes ``encoder.onnx`` (dynamic batch), ``decoder.onnx`` (one embedding, a
dynamic number of boxes) and ``manifest.json`` (model, input size and scaling, opset, the
SHA-256 of each file). ``OnnxBackend`` refuses a directory whose files do not match their
manifest or whose inputs are not the expected ones, so a wrong file never gives a wrong mask.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .download import sha256_of
from .errors import CheckpointError, InvalidInputError
from .volume_io import atomic_write

MANIFEST = "manifest.json"
ENCODER_INPUTS = ["image"]
DECODER_INPUTS = ["image_embeddings", "boxes"]


class _BoxDecoder(nn.Module):
    """Prompt encoder + mask decoder for box prompts on one image embedding."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder

    def forward(self, image_embeddings: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes, masks=None)
        return self.mask_decoder(image_embeddings=image_embeddings, image_pe=self.prompt_encoder.get_dense_pe(),
                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                 multimask_output=False)


def export_onnx(model_name: str, output_dir: str | Path, weights: str | None = None, opset: int = 17) -> Path:
    """Export the named model's encoder and box decoder to ONNX; returns the manifest path."""
    from .models.registry import get_model_spec
    from .weights import resolve_weights

    spec = get_model_spec(model_name)
    if spec.point_prompts:
        raise InvalidInputError(f"{model_name}: ONNX export covers box-prompted models only (e.g. litemedsam)")
    model = spec.build(resolve_weights(spec.weights, weights)).eval()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = spec.scaling.size
    image = torch.rand(2, 3, size, size)
    with torch.inference_mode():
        embedding = model.image_encoder(image[:1])
    boxes = torch.tensor([[20.0, 30.0, 120.0, 140.0], [60.0, 50.0, 200.0, 190.0]])
    files = {"encoder": out / "encoder.onnx", "decoder": out / "decoder.onnx"}
    torch.onnx.export(model.image_encoder, (image,), files["encoder"], input_names=ENCODER_INPUTS,
                      output_names=["image_embeddings"], dynamic_axes={"image": {0: "batch"},
                                                                      "image_embeddings": {0: "batch"}},
                      opset_version=opset, dynamo=False)
    torch.onnx.export(_BoxDecoder(model), (embedding, boxes), files["decoder"], input_names=DECODER_INPUTS,
                      output_names=["low_res_logits", "iou"], dynamic_axes={"boxes": {0: "prompts"},
                                                                             "low_res_logits": {0: "prompts"},
                                                                             "iou": {0: "prompts"}},
                      opset_version=opset, dynamo=False)
    manifest = {
        "model": spec.name, "input_size": size, "scaling": spec.scaling.mode, "opset": opset,
        "embedding_shape": list(embedding.shape[1:]), "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "files": {role: {"name": path.name, "sha256": sha256_of(path)} for role, path in files.items()},
    }
    return atomic_write(out / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))


def read_manifest(directory: str | Path) -> dict:
    """The manifest of an export directory, with every file's SHA-256 checked."""
    directory = Path(directory)
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: missing or unreadable ONNX manifest ({exc})") from exc
    for role in ("encoder", "decoder"):
        entry = files.get(role) or {}
        onnx_file = directory / str(entry.get("name", ""))
        if not onnx_file.is_file():
            raise CheckpointError(f"{directory}: the {role} file named in the manifest is missing")
        if sha256_of(onnx_file) != entry.get("sha256"):
            raise CheckpointError(f"{onnx_file}: SHA-256 differs from the manifest; the file is corrupt or replaced")
    return manifest


class OnnxBackend:
    """Encoder and decoder sessions from an export directory, on CUDA when available and asked for."""

    runtime = "onnx"

    def __init__(self, directory: str | Path, device: str = "auto", expected_model: str | None = None) -> None:
        import onnxruntime as ort

        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        if expected_model and self.manifest.get("model") != expected_model:
            raise CheckpointError(f"{directory}: exported for {self.manifest.get('model')!r}, not {expected_model!r}")
        available = ort.get_available_providers()
        wants_cuda = device in ("auto", "cuda")
        if wants_cuda and "CUDAExecutionProvider" in available:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.messages: list[str] = []
        if device == "cuda" and providers[0] != "CUDAExecutionProvider":
            self.messages.append("ONNX Runtime has no CUDA provider here (install onnxruntime-gpu); running on CPU")
        files = self.manifest["files"]
        try:
            self.encoder = ort.InferenceSession(str(self.directory / files["encoder"]["name"]), providers=providers)
            self.decoder = ort.InferenceSession(str(self.directory / files["decoder"]["name"]), providers=providers)
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
