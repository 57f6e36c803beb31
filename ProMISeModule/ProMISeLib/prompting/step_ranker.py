"""The learned step ranker: which of a propagated slice's candidate masks is the lesion, and whether it is there.

At each step of the walk the frozen decoder turns a few boxes around the previous slice's mask into
candidate masks. The rules keep the one with the best predicted IoU and stop on hand-set thresholds
(confidence, growth, intensity, the orthogonal planes' extent). The ranker instead predicts each
candidate's Dice with the true lesion on that slice from a few numbers that describe it against the
walk's 3D context, keeps the best and ends the walk where even the best is predicted to miss.

The features (:data:`FEATURES`) are cheap: the model's own scores, the candidate's agreement with
the previous slice's mask and with the other candidates, its intensity against the lesion's at the
click, and where the slice lies against the extent seen in the coronal and sagittal planes. The
network is a small MLP (about 2 k parameters) trained on the labelled scans.

It is an opt-in API (``Segmenter.step_ranker``), trained and measured by ``benchmarks/step_ranker_study.py``.
Held out by patient it does no better than the rules (benchmarks/README.md, "A learned step ranker"), so
no ranker ships and no prompt mode uses one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from ..metrics import dice

#: The features of one candidate, in order.
FEATURES = (
    "predicted_iou", "rule_score", "score_to_best", "dice_previous", "log_area_previous", "log_area_start",
    "intensity_z", "log_sd_ratio", "centroid_shift", "past_planes", "planes_on_slice", "rows_overlap",
    "cols_overlap", "distance_from_click", "on_crop_edge", "consensus", "edge_contrast",
)


@dataclass(frozen=True)
class WalkContext:
    """What the walk knows at a step, besides the step's candidates."""

    reference: tuple[float, float]  # the lesion's intensity mean and SD on the click's slice
    start_k: int
    start_area: int  # pixels of the click slice's mask
    pixel_mm: float
    slice_mm: float
    extents: dict | None  # {k: (rows or None, cols or None)} from the orthogonal planes, in volume pixels
    limit: int | None  # the farthest slice of those extents in this walk's direction


def _overlap_1d(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def step_features(k: int, image: np.ndarray, crop_origin: tuple[int, int], previous: np.ndarray,
                  candidates: list[np.ndarray], predicted: list[float], scores: list[float],
                  context: WalkContext) -> np.ndarray:
    """(n_candidates, len(FEATURES)) features of one step's candidates.

    ``image`` is the slice's normalised crop, ``crop_origin`` the crop's (row, column) in the volume,
    ``previous`` the neighbouring slice's crop mask; every candidate is a non-empty crop mask.
    """
    mean_ref, sd_ref = context.reference
    prev_area = max(int(previous.sum()), 1)
    prev_centre = np.array(ndimage.center_of_mass(previous)) if previous.any() else None
    direction = 1 if k >= context.start_k else -1
    past = 0.0
    if context.limit is not None:
        past = float(np.clip((k - context.limit) * direction, -10, 10))
    rows_cols = context.extents.get(k) if context.extents else None
    best_score = max(max(scores), 1e-6)
    radius_mm = np.sqrt(context.start_area / np.pi) * context.pixel_mm
    distance = abs(k - context.start_k) * context.slice_mm / max(radius_mm, 1e-3)
    edge = np.zeros(previous.shape, dtype=bool)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    rows = []
    for mask, iou, score in zip(candidates, predicted, scores, strict=True):
        area = int(mask.sum())
        pixels = image[mask]
        ring = ndimage.binary_dilation(mask, iterations=3) & ~mask
        shift = 0.0
        if prev_centre is not None:
            shift = float(np.linalg.norm(np.array(ndimage.center_of_mass(mask)) - prev_centre)) / np.sqrt(prev_area)
        where = np.nonzero(mask)
        row_range = (where[0].min() + crop_origin[0], where[0].max() + 1 + crop_origin[0])
        col_range = (where[1].min() + crop_origin[1], where[1].max() + 1 + crop_origin[1])
        rows_overlap = cols_overlap = 0.0
        if rows_cols is not None:
            if rows_cols[0] is not None:
                rows_overlap = _overlap_1d(row_range, tuple(rows_cols[0]))
            if rows_cols[1] is not None:
                cols_overlap = _overlap_1d(col_range, tuple(rows_cols[1]))
        others = [dice(mask, o) for o in candidates if o is not mask]
        rows.append([
            iou, score, score / best_score, dice(mask, previous), np.log(area / prev_area),
            np.log(area / max(context.start_area, 1)),
            (float(pixels.mean()) - mean_ref) / sd_ref, np.log(max(float(pixels.std()), 1e-3) / sd_ref),
            shift, past, float(rows_cols is not None), rows_overlap, cols_overlap, distance,
            float((mask & edge).sum()) / area, float(np.mean(others)) if others else 1.0,
            (float(pixels.mean()) - float(image[ring].mean())) / sd_ref if ring.any() else 0.0,
        ])
    return np.asarray(rows, dtype=np.float32)


class StepRanker(nn.Module):
    """Features of a candidate -> its predicted Dice with the lesion on that slice (0-1)."""

    def __init__(self, n_features: int = len(FEATURES), hidden: int = 32) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, 1))

    def set_normalisation(self, features: np.ndarray) -> None:
        """Standardise the inputs with the training features' mean and SD (frozen buffers)."""
        with torch.no_grad():
            self.mean.copy_(torch.as_tensor(features.mean(0)))
            self.scale.copy_(torch.as_tensor(np.maximum(features.std(0), 1e-3)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net((features - self.mean) / self.scale)).squeeze(-1)

    @torch.no_grad()
    def predict(self, features: np.ndarray) -> np.ndarray:
        return self(torch.as_tensor(features, dtype=torch.float32)).numpy()


def train_ranker(features: np.ndarray, targets: np.ndarray, epochs: int = 60, seed: int = 0, lr: float = 3e-3,
                 weight_decay: float = 1e-4) -> tuple[StepRanker, list[float]]:
    """Fit a :class:`StepRanker` to candidates' true Dice (mean squared error); returns it and the epoch losses."""
    torch.manual_seed(seed)
    model = StepRanker(features.shape[1])
    model.set_normalisation(features)
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(targets, dtype=torch.float32)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), 256):
            batch = order[start:start + 256]
            loss = ((model(x[batch]) - y[batch]) ** 2).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        losses.append(total / len(x))
    return model, losses
