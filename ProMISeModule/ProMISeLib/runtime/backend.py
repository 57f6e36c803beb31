"""What a runtime gives the predictor: the :class:`Backend` protocol, which the PyTorch and ONNX Runtime backends
implement (``torch_backend.TorchBackend``, ``onnx_backend.OnnxBackend``).

* ``encode(images)``: (B, 3, S, S) float32 model input -> (B, C, h, w) image embeddings;
* ``decode(embedding, boxes, points, labels)``: one image's embedding and N box prompts in model-input pixels
  (and optional point prompts) -> (N, 1, H, W) mask logits and (N, 1) predicted IoU;
* ``runtime``: what runs, as results report it ("torch", "torch-fp16", "onnx", "onnx-int8", ...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch


@runtime_checkable
class Backend(Protocol):
    """One frozen slice model's encoder and box decoder on one runtime."""

    runtime: str

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, embedding: torch.Tensor, boxes: np.ndarray, points: np.ndarray | None = None,
               labels: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...
