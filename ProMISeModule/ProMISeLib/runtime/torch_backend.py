"""The PyTorch :class:`~ProMISeLib.runtime.backend.Backend`.

It decodes with :class:`~ProMISeLib.models.prompt_batch_decoder.PromptBatchDecoder`: SAM's mask decoder with its
products regrouped so that N prompts on one image share the image side (the ONNX export decodes the same way).
"""

from __future__ import annotations

import numpy as np
import torch

from ProMISeLib.models.prompt_batch_decoder import PromptBatchDecoder


class TorchBackend:
    """A frozen PyTorch model with SAM's ``image_encoder``, ``prompt_encoder`` and ``mask_decoder`` (a
    :class:`~ProMISeLib.runtime.backend.Backend`)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, half: bool = False) -> None:
        self.model = model
        self.device = device
        self.half = half
        self.runtime = "torch-fp16" if half else "torch"
        self.decoder = PromptBatchDecoder(model.prompt_encoder, model.mask_decoder)
        if self.half:
            self.model.image_encoder.half()  # the encoder in fp16; prompts and decoder stay fp32

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device)
        if self.half:
            return self.model.image_encoder(images.half()).float()
        return self.model.image_encoder(images)

    @torch.inference_mode()
    def decode(self, embedding: torch.Tensor, boxes: np.ndarray, points: np.ndarray | None = None,
               labels: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        box_t = torch.as_tensor(boxes, dtype=torch.float32, device=self.device).reshape(-1, 4)
        n = box_t.shape[0]
        point_prompt = None
        if points is not None and len(points):
            coords = torch.as_tensor(points, dtype=torch.float32, device=self.device)
            lab = torch.as_tensor(labels, dtype=torch.int64, device=self.device)
            point_prompt = (coords[None].expand(n, -1, -1), lab[None].expand(n, -1))
        sparse, _ = self.model.prompt_encoder(points=point_prompt, boxes=box_t, masks=None)
        return self.decoder(embedding.to(self.device), sparse)
