"""The learned prompter at inference: a trained :class:`PromptNet` that picks the box on each slice.

Weights are a safetensors file with a JSON card beside it (``<name>.safetensors`` +
``<name>.json``): the network's configuration, the data and recipe it was trained with, its
validation figures and the SHA-256 of the weights file, which is checked before loading.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ProMISeLib.errors import CheckpointError
from ProMISeLib.io.download import sha256_of
from ProMISeLib.prompting import PROMPTER_MODES
from ProMISeLib.prompting.net import PromptNet, PromptNetConfig, click_map, downsample_mask

CARD_SUFFIX = ".json"


@dataclass
class CoarseMask:
    """The network's answer on one slice: a grid mask and the box it implies in crop pixels."""

    mask: np.ndarray  # (64, 64) bool
    box: np.ndarray | None  # (x0, y0, x1, y1) crop pixels, None when the mask is empty
    probability: float  # mean probability inside the mask

    def in_crop(self, side: int) -> np.ndarray:
        """The grid mask resampled to the (side, side) crop."""
        zoom = side / self.mask.shape[0]
        rows = np.minimum((np.arange(side) / zoom).astype(int), self.mask.shape[0] - 1)
        return self.mask[np.ix_(rows, rows)]


def card_path(weights: Path) -> Path:
    return Path(weights).with_suffix(CARD_SUFFIX)


def default_mode(card: dict) -> str | None:
    """The prompts mode a card names as the default ('fused' or 'learned'), or None for the heuristic.

    ``true`` (older cards) means 'learned'.
    """
    value = card.get("default")
    if value is True:
        return "learned"
    return value if value in PROMPTER_MODES else None


def read_checked_card(weights: Path, what: str) -> tuple[dict, dict]:
    """The card of a safetensors file and its tensors, after the card's SHA-256 is checked.

    A missing file or card, a card that is not JSON, a hash that differs or a file that is not
    safetensors give a CheckpointError naming ``what`` (e.g. "prompter").
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = Path(weights)
    card_file = card_path(weights)
    if not weights.is_file() or not card_file.is_file():
        raise CheckpointError(f"{weights}: {what} weights or their card {card_file.name} are missing")
    try:
        card = json.loads(card_file.read_text())
        expected = card["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{card_file}: not a valid {what} card ({exc})") from exc
    actual = sha256_of(weights)
    if actual != expected:
        raise CheckpointError(f"{weights}: SHA-256 {actual[:12]}... does not match its card ({expected[:12]}...); "
                              "the file is corrupt or was replaced")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights}: cannot be read as safetensors ({exc})") from exc
    return card, state


def load_prompt_net(weights: Path) -> tuple[PromptNet, dict]:
    """Load a prompt network and its card; a wrong hash, a bad file or wrong keys give a CheckpointError."""
    card, state = read_checked_card(weights, "prompter")
    try:
        config = PromptNetConfig(**card["config"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{card_path(Path(weights))}: not a valid prompter card ({exc})") from exc
    net = PromptNet(config)
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not fit the card's configuration
        raise CheckpointError(f"{weights}: weights do not fit the configuration in its card ({exc})") from exc
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{weights}: keys do not match the prompt network (missing {result.missing_keys[:3]}, "
                              f"unexpected {result.unexpected_keys[:3]})")
    return net.eval(), card


class LearnedPrompter:
    """Runs a prompt network on one slice embedding and turns its coarse mask into a box."""

    def __init__(self, net: PromptNet, card: dict | None = None, name: str = "learned") -> None:
        self.net = net.eval()
        self.card = card or {}
        self.name = name
        self.grid = net.config.grid

    @classmethod
    def from_file(cls, weights: Path, name: str | None = None) -> LearnedPrompter:
        net, card = load_prompt_net(weights)
        return cls(net, card, name or card.get("name", Path(weights).stem))

    @torch.inference_mode()
    def probability(self, embedding: torch.Tensor, prior: np.ndarray | None = None,
                    clicks_rc: list[tuple[float, float]] | None = None) -> np.ndarray:
        """(64, 64) foreground probability; ``prior`` is a grid fraction map, clicks are grid (row, col)."""
        grid = (self.grid, self.grid)
        prior_map = np.zeros(grid, np.float32) if prior is None else prior.astype(np.float32)
        clicks = click_map(clicks_rc or [], self.grid, self.net.config.click_sigma)
        features = embedding.detach().to("cpu", torch.float32)
        logits = self.net(features, torch.from_numpy(prior_map)[None, None], torch.from_numpy(clicks)[None, None])
        return torch.sigmoid(logits)[0, 0].numpy()

    def to_grid(self, side: int, point_rc: tuple[float, float]) -> tuple[float, float]:
        """Crop pixel (row, col) -> grid (row, col)."""
        scale = self.grid / side
        return ((point_rc[0] + 0.5) * scale, (point_rc[1] + 0.5) * scale)

    def prior(self, crop_mask: np.ndarray) -> np.ndarray:
        """A crop-resolution mask as the network's prior (cell fractions)."""
        return downsample_mask(crop_mask, self.grid)

    def seed(self, embedding: torch.Tensor, side: int, click_rc: tuple[int, int]) -> CoarseMask:
        """The structure at a click (crop pixels (row, col)) on the click's own slice."""
        point = self.to_grid(side, click_rc)
        prob = self.probability(embedding, None, [point])
        return self._coarse(prob, _component_near(prob > 0.5, point), side)

    def follow(self, embedding: torch.Tensor, side: int, previous: np.ndarray, reach: int = 2) -> CoarseMask:
        """The structure on a slice next to one where its mask is ``previous`` (crop resolution)."""
        prior = self.prior(previous)
        prob = self.probability(embedding, prior, None)
        near = ndimage.binary_dilation(prior > 0.25, iterations=reach)
        labels, _ = ndimage.label(prob > 0.5)
        keep = np.unique(labels[near & (labels > 0)])
        return self._coarse(prob, np.isin(labels, keep[keep > 0]), side)

    def _coarse(self, prob: np.ndarray, mask: np.ndarray, side: int) -> CoarseMask:
        if not mask.any():
            return CoarseMask(mask, None, 0.0)
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        cell = side / self.grid
        box = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32) * cell
        return CoarseMask(mask, box, float(prob[mask].mean()))


def _component_near(mask: np.ndarray, point_rc: tuple[float, float]) -> np.ndarray:
    """The connected component of ``mask`` at, or else nearest to, a grid point."""
    labels, count = ndimage.label(mask)
    if not count:
        return mask & False
    r = min(max(int(point_rc[0]), 0), mask.shape[0] - 1)
    c = min(max(int(point_rc[1]), 0), mask.shape[1] - 1)
    if labels[r, c]:
        return labels == labels[r, c]
    _, (rows, cols) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    return labels == labels[rows[r, c], cols[r, c]]


def resolve_prompter(prompts: str, shipped: Path | None, weights: str | None) -> tuple[LearnedPrompter | None, str]:
    """The learned prompter a prompts mode runs, and the mode that runs ('fused', 'learned' or 'heuristic').

    ``weights`` (a user's file) replaces the ``shipped`` one. ``auto`` runs the mode the card names as the
    default (the one that beat the heuristic in validation by patient), a user's file without one as
    'learned', and the heuristic where there is no prompter. 'fused' or 'learned' without weights is an error.
    """
    if prompts == "heuristic":
        return None, "heuristic"
    path = weights or shipped
    if path is None or not Path(path).is_file():
        if prompts in PROMPTER_MODES:
            raise CheckpointError(f"no learned prompter weights ({path or 'none shipped for this model'})")
        return None, "heuristic"
    mode = prompts
    if mode == "auto":
        try:  # the card alone says which mode won the prompter's validation
            mode = default_mode(json.loads(card_path(Path(path)).read_text()))
        except (OSError, ValueError):
            mode = None  # a missing or broken card is reported by the loader below
        if mode is None and weights is not None:
            mode = "learned"  # weights the user named, without a validated default
        if mode is None:
            return None, "heuristic"
    return LearnedPrompter.from_file(Path(path)), mode
