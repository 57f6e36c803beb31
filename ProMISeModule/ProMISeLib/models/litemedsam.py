"""LiteMedSAM: the TinyViT encoder with segment-anything's prompt encoder and mask decoder.

The model takes a 256x256 slice scaled to [0, 1] (min-max per slice) with 3 identical channels;
unlike SAM it applies no ImageNet mean/std normalisation. It is built frozen: eval mode and
``requires_grad=False`` everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ProMISeLib.errors import CheckpointError
from ProMISeLib.models.sam_modules import sam_modeling
from ProMISeLib.models.tiny_vit import TinyViTEncoder

IMAGE_SIZE = 256
EMBEDDING_SIZE = 64
EMBED_DIM = 256


class LiteMedSAM(nn.Module):
    """Container with ``image_encoder``, ``prompt_encoder`` and ``mask_decoder`` (SAM's attribute names)."""

    image_size: int = IMAGE_SIZE
    mask_threshold: float = 0.0

    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module) -> None:
        super().__init__()
        # Registration order follows the checkpoint file (encoder, decoder, prompt encoder).
        self.image_encoder = image_encoder
        self.mask_decoder = mask_decoder
        self.prompt_encoder = prompt_encoder

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 256, 256) in [0, 1] -> image embeddings (B, 256, 64, 64)."""
        return self.image_encoder(images)

    def decode_boxes(self, embedding: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Single-mask logits for boxes on ONE image.

        Args:
            embedding: (1, 256, 64, 64) embedding of one image.
            boxes: (N, 4) boxes as x0, y0, x1, y1 in 256-pixel input coordinates.

        Returns:
            mask logits (N, 1, 256, 256) and predicted IoU (N, 1). The decoder upsamples the 64x64
            embedding 4x, so the logits are already at the 256x256 model input resolution;
            threshold them at ``mask_threshold`` (0) for a mask.
        """
        if embedding.shape[0] != 1:
            raise ValueError("decode_boxes takes the embedding of one image; loop over a batch")
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes.reshape(-1, 4), masks=None)
        return self.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )


def _short_reason(exc: BaseException, limit: int = 120) -> str:
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_state(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"LiteMedSAM checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged pickle/zip can fail with almost any exception type
        raise CheckpointError(
            f"LiteMedSAM checkpoint {path} is unreadable or corrupt (truncated download or not a "
            f"PyTorch file): {_short_reason(exc)}"
        ) from exc
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"LiteMedSAM checkpoint {path} does not hold a state dict of tensors")
    return state


def _first(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _check_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Raise CheckpointError naming the first missing/unexpected keys or mismatched shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_first(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch (file vs model): {_first(mismatched)}")
    if problems:
        raise CheckpointError(f"{path} is not a LiteMedSAM checkpoint: " + "; ".join(problems))


def build_litemedsam(checkpoint: str | Path | None = None) -> LiteMedSAM:
    """Build LiteMedSAM, frozen and in eval mode; load ``checkpoint`` (a state dict) strictly if given.

    Raises:
        CheckpointError: the file is missing, unreadable/corrupt, or its keys or shapes do not match.
    """
    sam = sam_modeling()
    model = LiteMedSAM(
        image_encoder=TinyViTEncoder(),
        prompt_encoder=sam.PromptEncoder(
            embed_dim=EMBED_DIM,
            image_embedding_size=(EMBEDDING_SIZE, EMBEDDING_SIZE),
            input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
            mask_in_chans=16,
        ),
        mask_decoder=sam.MaskDecoder(
            num_multimask_outputs=3,
            transformer=sam.TwoWayTransformer(depth=2, embedding_dim=EMBED_DIM, mlp_dim=2048, num_heads=8),
            transformer_dim=EMBED_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    )
    if checkpoint is not None:
        path = Path(checkpoint)
        state = _load_state(path)
        _check_state(model, state, path)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:  # pragma: no cover - _check_state catches the known causes
            raise CheckpointError(
                f"{path} does not load into LiteMedSAM: {str(exc).splitlines()[0]}"
            ) from exc
    model.eval()
    model.requires_grad_(False)
    return model
