"""The ProMISe (Li et al., ISBI 2024) training loss: Dice + cross-entropy + a boundary term.

``L = 0.5 * Dice + 0.5 * CE + 10 * MSE(edge(P), edge(Y))`` where ``P`` is the softmax of the
logits, ``Y`` the one-hot label, and ``edge(t) = |t - AvgPool3d(t)|`` with kernel (5, 5, 1),
stride 1, padding (2, 2, 0). The boundary term is added only when the crop holds foreground.

Facts copied from the public code (MedICL-VU/ProMISe ``trainer.py``), quirks included:

* Dice is MONAI's ``DiceCELoss(include_background=False, softmax=True, to_onehot_y=True)``:
  per sample and per foreground channel ``1 - (2 sum(PY) + 1e-5) / (sum(P) + sum(Y) + 1e-5)``,
  averaged; cross-entropy is over all channels and voxels.
* The pooling kernel (5, 5, 1) acts on the (B, C, D, H, W) tensor, so it smooths D and H but
  not W: the "boundary" is the in-plane edge of D-H planes, not a 3D edge. It is kept as is,
  so that training matches the published model.
* Upstream compares the two-channel ``edge(P)`` with the one-channel ``edge(y)`` by
  broadcasting. For two classes that equals comparing with ``edge(one-hot Y)`` (the background
  edge equals the foreground edge), which is what is done here and generalises to C classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: The published weights and kernel.
DICE_WEIGHT = 0.5
CE_WEIGHT = 0.5
EDGE_WEIGHT = 10.0
EDGE_KERNEL = (5, 5, 1)


def edge_map(t: torch.Tensor, kernel: tuple[int, int, int] = EDGE_KERNEL) -> torch.Tensor:
    """``|t - AvgPool3d(t)|`` on a (B, C, D, H, W) tensor (stride 1, same-size zero padding)."""
    if t.dim() != 5:
        raise ValueError(f"edge_map needs a (B, C, D, H, W) tensor, got shape {tuple(t.shape)}")
    padding = tuple((k - 1) // 2 for k in kernel)
    return (t - F.avg_pool3d(t, kernel_size=kernel, stride=1, padding=padding)).abs()


def one_hot_labels(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices (B, D, H, W) or (B, 1, D, H, W) as a float one-hot (B, C, D, H, W)."""
    if target.dim() == 5:
        if target.shape[1] != 1:
            raise ValueError(f"target must have one channel of class indices, got shape {tuple(target.shape)}")
        target = target[:, 0]
    if target.dim() != 4:
        raise ValueError(f"target must be (B, D, H, W) or (B, 1, D, H, W), got shape {tuple(target.shape)}")
    return F.one_hot(target.long(), num_classes).permute(0, 4, 1, 2, 3).float()


class BoundaryAwareLoss(nn.Module):
    """DiceCE (softmax, Dice without background) plus the edge MSE; see the module docstring."""

    def __init__(self, dice_weight: float = DICE_WEIGHT, ce_weight: float = CE_WEIGHT,
                 edge_weight: float = EDGE_WEIGHT, edge_kernel: tuple[int, int, int] = EDGE_KERNEL,
                 include_background: bool = False, smooth: float = 1e-5) -> None:
        super().__init__()
        if any(k % 2 == 0 for k in edge_kernel):
            raise ValueError(f"edge kernel sizes must be odd, got {edge_kernel}")
        self.dice_weight, self.ce_weight, self.edge_weight = dice_weight, ce_weight, edge_weight
        self.edge_kernel = tuple(edge_kernel)
        self.include_background = include_background
        self.smooth = smooth

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unweighted terms ``dice``, ``ce``, ``edge`` (edge is 0 without foreground) and the ``total``."""
        if logits.dim() != 5:
            raise ValueError(f"logits must be (B, C, D, H, W), got shape {tuple(logits.shape)}")
        num_classes = logits.shape[1]
        onehot = one_hot_labels(target, num_classes).to(logits.device)
        if onehot.shape != logits.shape:
            raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
        probs = torch.softmax(logits, dim=1)
        first = 0 if self.include_background else 1
        p, y = probs[:, first:], onehot[:, first:]
        spatial = (2, 3, 4)
        intersection = (p * y).sum(spatial)
        denominator = p.sum(spatial) + y.sum(spatial)
        dice = (1.0 - (2.0 * intersection + self.smooth) / (denominator + self.smooth)).mean()
        ce = F.cross_entropy(logits, onehot.argmax(dim=1))
        if bool(onehot[:, 1:].sum() > 0):  # foreground anywhere in the batch, as upstream
            edge = F.mse_loss(edge_map(probs, self.edge_kernel), edge_map(onehot, self.edge_kernel))
        else:
            edge = logits.new_zeros(())
        total = self.dice_weight * dice + self.ce_weight * ce + self.edge_weight * edge
        return {"total": total, "dice": dice, "ce": ce, "edge": edge}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss of logits (B, C, D, H, W) against class indices (B, D, H, W) or (B, 1, D, H, W)."""
        return self.terms(logits, target)["total"]
