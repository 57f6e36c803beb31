"""SAM ViT-B/L/H from segment-anything's modules, loaded from the official checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ProMISeLib.errors import CheckpointError
from ProMISeLib.models.sam_modules import sam_modeling

_VIT = {
    "vit_b": {"embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn": (2, 5, 8, 11)},
    "vit_l": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "global_attn": (5, 11, 17, 23)},
    "vit_h": {"embed_dim": 1280, "depth": 32, "num_heads": 16, "global_attn": (7, 15, 23, 31)},
}


def build_sam(kind: str, checkpoint: Path | None = None) -> nn.Module:
    """A frozen SAM (``Sam`` instance) of ``kind`` in eval mode; strict-load ``checkpoint`` if given."""
    m = sam_modeling()
    cfg = _VIT[kind]
    encoder = m.ImageEncoderViT(
        depth=cfg["depth"], embed_dim=cfg["embed_dim"], img_size=1024, mlp_ratio=4,
        norm_layer=lambda dim: nn.LayerNorm(dim, eps=1e-6), num_heads=cfg["num_heads"], patch_size=16,
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=cfg["global_attn"], window_size=14, out_chans=256,
    )
    sam = m.Sam(
        image_encoder=encoder,
        prompt_encoder=m.PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                                       mask_in_chans=16),
        mask_decoder=m.MaskDecoder(num_multimask_outputs=3, transformer=m.TwoWayTransformer(
            depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8), transformer_dim=256, iou_head_depth=3,
            iou_head_hidden_dim=256),
    )
    if checkpoint is not None:
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:
            reason = type(exc).__name__
            raise CheckpointError(f"{checkpoint}: unreadable or not a PyTorch weights file ({reason})") from exc
        result = sam.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            names = (result.missing_keys + result.unexpected_keys)[:3]
            raise CheckpointError(f"{checkpoint}: not a SAM {kind} checkpoint (key mismatch: {', '.join(names)})")
    sam.eval()
    sam.requires_grad_(False)
    return sam
