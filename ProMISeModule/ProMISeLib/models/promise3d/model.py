"""The whole ProMISe 3D model (Li et al., ISBI 2024): crop + clicks -> two-class logits.

    from ProMISeLib.models.promise3d.model import Promise3D, Promise3DConfig

    model = Promise3D(Promise3DConfig.reduced())       # or .full(): the released sizes
    model.freeze_sam()                                 # only ProMISe's own parts stay trainable
    logits = model(image, points)                      # (B, 2, D, H, W)

``image`` is a (B, 1, D, H, W) float32 crop of ``model.config.crop_size``³ voxels at 1 mm, already
clipped and normalised; ``points`` is (B, N, 3) crop voxel indices in the same (D, H, W) order.
The model converts them to the order the released weights expect (the corrected click; the
official tester's permuted click: the click with H and W swapped).

State-dict keys: ``encoder.*`` (the released ``encoder_dict``), ``prompt.0-3.*`` (``feature_dict``;
only ``prompt.3`` is used) and ``decoder.*`` (``decoder_dict``, ``head`` for ``cls_hao``). The
shifted-window ``attn_mask`` buffers are persistent, as in the released files; :meth:`rebuild_buffers`
recomputes them (our weights files leave them out). A full-size model can be built on the ``meta``
device (``with torch.device("meta"): Promise3D(Promise3DConfig.full())``).

Training: :meth:`freeze_sam` freezes SAM's parameters (patch and position embeddings, attention
projections, relative positions h/w, MLPs, and the scalar ``attn.lr`` the public code also leaves
frozen) and the unused prompt encoders; :meth:`trainable_parameters` lists what stays trainable.
:meth:`load_sam_weights` starts from SAM ViT-B weights the way the public code does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ProMISeLib.models.promise3d.config import Promise3DConfig
from ProMISeLib.models.promise3d.decoder import Promise3DDecoder
from ProMISeLib.models.promise3d.encoder import Promise3DEncoder, StepCallback
from ProMISeLib.models.promise3d.prompt import Promise3DPromptEncoder, click_grid

__all__ = ["Promise3D", "Promise3DConfig"]

_TRAINABLE_ENCODER = re.compile(
    r"^encoder\.(depth_embed|slice_embed\..*|neck_3d\..*"
    r"|blocks\.\d+\.(norm1|norm2|adapter|adapter_back)\..*|blocks\.\d+\.attn\.rel_pos_d)$"
)
_REBUILDABLE = re.compile(r"^encoder\.blocks\.\d+\.attn_mask$")


def is_rebuildable(key: str) -> bool:
    """True for buffers the model recomputes itself (the shifted-window masks)."""
    return bool(_REBUILDABLE.match(key))


class Promise3D(nn.Module):
    """ProMISe 3D: encoder, four prompt encoders (the last one used) and decoder."""

    def __init__(self, config: Promise3DConfig | None = None) -> None:
        super().__init__()
        self.config = config or Promise3DConfig.full()
        self.encoder = Promise3DEncoder(self.config)
        self.prompt = nn.ModuleList(Promise3DPromptEncoder(self.config)
                                    for _ in range(self.config.num_prompt_encoders))
        self.decoder = Promise3DDecoder(self.config)

    # --- inference --------------------------------------------------------------------------
    def forward(self, image: torch.Tensor, points: torch.Tensor, on_step: StepCallback | None = None) -> torch.Tensor:
        """(B, 1, S, S, S) crop and (B, N, 3) clicks in (D, H, W) crop voxels -> (B, classes, S, S, S) logits.

        ``on_step(done, total)`` is called after every encoder block (progress, cancel).
        """
        cfg = self.config
        side = cfg.crop_size
        if image.dim() != 5 or image.shape[1] != 1 or tuple(image.shape[2:]) != (side, side, side):
            raise ValueError(f"image must be (B, 1, {side}, {side}, {side}), got {tuple(image.shape)}")
        if points.dim() != 3 or points.shape[0] != image.shape[0] or points.shape[2] != 3:
            raise ValueError(f"points must be (B, N, 3) with B = {image.shape[0]}, got {tuple(points.shape)}")
        features = self.encoder(image, on_step=on_step)
        features[-1] = self.prompt[-1](features[-1], click_grid(points.to(image.device), side))
        image_hwd = image.permute(0, 1, 3, 4, 2)  # the encoder's (H, W, D) layout
        small = F.interpolate(image_hwd, scale_factor=2 * cfg.grid / side, mode="trilinear")
        logits = self.decoder(features, small)
        return logits.permute(0, 1, 4, 2, 3)  # back to (D, H, W)

    def rebuild_buffers(self, device: torch.device | str | None = None) -> None:
        """Recompute the shifted-window masks on ``device`` (default: where the weights are)."""
        if device is None:
            device = self.encoder.pos_embed.device
        self.encoder.rebuild_buffers(device)

    # --- training ---------------------------------------------------------------------------
    def is_trainable(self, name: str) -> bool:
        """Whether the parameter ``name`` is trained (ProMISe's parts), rather than SAM's frozen ones."""
        last = f"prompt.{len(self.prompt) - 1}."
        if name.startswith(last):
            return ".cross_attn_token_to_image." not in name  # never called, so never trained
        return name.startswith("decoder.") or bool(_TRAINABLE_ENCODER.match(name))

    def freeze_sam(self) -> Promise3D:
        """Freeze every SAM parameter and the unused prompt encoders; everything else trainable."""
        for name, param in self.named_parameters():
            param.requires_grad_(self.is_trainable(name))
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters :meth:`freeze_sam` leaves trainable (for an optimiser)."""
        for name, param in self.named_parameters():
            if self.is_trainable(name):
                yield param

    def load_sam_weights(self, sam: str | Path | Mapping[str, torch.Tensor]) -> list[str]:
        """:meth:`load_sam_image_encoder` from a SAM ViT-B checkpoint file (``sam_vit_b_01ec64.pth``) or state."""
        if isinstance(sam, (str, Path)):
            sam = torch.load(sam, map_location="cpu", weights_only=True)
        return self.load_sam_image_encoder(sam)

    @torch.no_grad()
    def load_sam_image_encoder(self, sam_state: Mapping[str, torch.Tensor]) -> list[str]:
        """Copy SAM ViT-B image-encoder weights (``image_encoder.*`` or bare keys) into the encoder.

        ``rel_pos_d`` starts as the mean of ``rel_pos_h`` and ``rel_pos_w``, as in the public code.
        Returns the encoder keys that SAM does not provide (ProMISe's own parts). Shapes must match.
        """
        own = self.encoder.state_dict()
        loaded = set()
        for key, value in sam_state.items():
            name = key.removeprefix("image_encoder.")
            if name in own and not is_rebuildable(f"encoder.{name}"):
                if own[name].shape != value.shape:
                    raise ValueError(f"{key}: SAM has {tuple(value.shape)}, the encoder {tuple(own[name].shape)}")
                own[name].copy_(value)
                loaded.add(name)
        for block in self.encoder.blocks:
            block.attn.rel_pos_d.copy_(0.5 * (block.attn.rel_pos_h + block.attn.rel_pos_w))
        return sorted(k for k in own if k not in loaded and not is_rebuildable(f"encoder.{k}"))
