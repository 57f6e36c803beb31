"""Device and runtime policy, and the backend that runs a slice model: PyTorch, or ONNX Runtime from its export."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ProMISeLib.errors import CheckpointError, DeviceUnavailableError, InvalidInputError, OutputError, ProMISeError
from ProMISeLib.io.weights import resolve_weights
from ProMISeLib.models.registry import VOLUME3D, ModelSpec, get_model_spec
from ProMISeLib.runtime.backend import Backend
from ProMISeLib.runtime.choice import PRECISIONS, check_runtime, onnx_installed
from ProMISeLib.runtime.torch_backend import TorchBackend


def encode_ahead_for(device: torch.device) -> int:
    """Slices the walk encodes in the background ahead of itself: 2 where the encoder runs beside the CPU (CUDA);
    none on a CPU, where encoding competes with the decoder."""
    return 2 if device.type == "cuda" else 0


def encode_batch_size(device: torch.device) -> int:
    """Crops per encoder call: 16 on CUDA; one on a CPU, the fastest per slice there (batches of 4 were 5-25%
    slower on both runtimes) with a quarter of the activations' memory."""
    return 16 if device.type == "cuda" else 1


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without CUDA is an error, never a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceUnavailableError("--device cuda was requested but CUDA is not available on this machine")
        return torch.device(device)
    raise InvalidInputError(f"unknown device {device!r}; use auto, cpu or cuda")


def choose_runtime(runtime: str, model: str, device: torch.device, precision: str = "fp32",
                   adapts_model: bool = False) -> tuple[str, str | None]:
    """The runtime that runs, and a note when ``auto`` could not take the faster one.

    ``auto`` takes ONNX Runtime on a CPU: the same masks as PyTorch (tested) and about 3x faster
    encoding there. PyTorch where ONNX Runtime has no export of the model (SAM ViT with point prompts,
    ProMISe 3D), for fp16, on CUDA (the path the GPU figures were measured on) and where a plug-in
    changes the torch module (``adapts_model``); int8 is ONNX only.
    """
    check_runtime(runtime)
    if runtime == "onnx" and adapts_model:
        raise InvalidInputError("a plug-in that changes the model runs with the torch runtime only")
    if runtime != "auto":
        return runtime, None
    spec = get_model_spec(model)
    if precision == "int8":
        return "onnx", None
    if spec.kind == VOLUME3D or spec.point_prompts or precision == "fp16" or device.type != "cpu" or adapts_model:
        return "torch", None
    if not onnx_installed():
        return "torch", ("ONNX Runtime is not installed, so PyTorch runs "
                         "(pip install onnxruntime onnx: about 3x faster encoding on a CPU)")
    return "onnx", None


def check_precision(precision: str, device: torch.device, runtime: str) -> None:
    """Refuse a precision the device and runtime can't run."""
    if precision not in PRECISIONS:
        raise InvalidInputError(f"unknown precision {precision!r}; use fp32, fp16 or int8")
    if precision == "fp16" and (device.type != "cuda" or runtime != "torch"):
        raise InvalidInputError("fp16 runs on CUDA with the torch runtime only")
    if precision == "int8" and (device.type != "cpu" or runtime != "onnx"):
        raise InvalidInputError("int8 runs on the CPU with the ONNX runtime only (--runtime onnx --device cpu)")


def load_backend(spec: ModelSpec, runtime: str, device: torch.device, precision: str, weights: str | None,
                 onnx_dir: str | None, fallback: bool, messages: list[str],
                 adapters: Sequence[Callable] = ()) -> Backend:
    """The backend for a slice model: ONNX Runtime sessions, or the torch module (changed by ``adapters``).

    With ``fallback`` an ONNX Runtime that can't be used gives the PyTorch backend and a note in
    ``messages``; without it the error is raised.
    """
    if runtime == "onnx":
        if weights is not None:  # a wrong checkpoint is refused on any runtime, cached or not
            resolve_weights(spec.weights, weights)
        try:
            return _onnx_backend(spec, device, precision, weights, onnx_dir, messages)
        except (ImportError, OSError, RuntimeError, CheckpointError, OutputError) as exc:
            if not fallback and isinstance(exc, ProMISeError):
                raise
            if not fallback:  # one line for the user, not a traceback
                raise CheckpointError(f"ONNX Runtime could not be used ({exc})") from exc
            messages.append(f"ONNX Runtime could not be used ({exc}); PyTorch runs instead")
    module = spec.build(resolve_weights(spec.weights, weights))
    for adapt in adapters:
        adapt(module)
    return TorchBackend(module.to(device), device, half=precision == "fp16")


def _onnx_backend(spec: ModelSpec, device: torch.device, precision: str, weights: str | None, onnx_dir: str | None,
                  messages: list[str]):
    """ONNX Runtime sessions from ``onnx_dir``, or from the cache (exported there on first use)."""
    from ProMISeLib.runtime.onnx_backend import OnnxBackend, decoder_is_current
    from ProMISeLib.runtime.onnx_cache import cached_export

    directory = onnx_dir or cached_export(spec.name, weights, precision == "int8", messages)
    backend = OnnxBackend(directory, device=device.type, expected_model=spec.name,
                          precision="int8" if precision == "int8" else "fp32")
    messages.extend(backend.messages)
    if not decoder_is_current(backend.manifest):  # a user's own export, from before the regrouped decoder
        messages.append(f"{directory} holds an older decoder graph (same masks, slower); "
                        "run `promise export` again to decode faster")
    return backend


def encoder_for(model: str, device: str = "auto", runtime: str = "auto", cache_mb: float = 64.0):
    """A slice model's predictor alone (its ``embed`` encodes crops), for tools that need the frozen encoder."""
    from ProMISeLib.runtime.predictor import EmbeddingCache, SlicePredictor

    spec = get_model_spec(model)
    where = resolve_device(device)
    chosen, _ = choose_runtime(runtime, model, where)
    backend = load_backend(spec, chosen, where, "fp32", None, None, runtime == "auto", [])
    return SlicePredictor(backend, spec.name, spec.scaling, where, EmbeddingCache(cache_mb), encode_batch_size(where))
