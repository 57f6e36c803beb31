"""Learned shifts of the frozen decoder's output tokens (Incremental Pattern Shifting, after ProMISe/Wang).

SAM's mask decoder starts from learned output tokens: one for the IoU head and four mask tokens.
A token shift adds a trained vector to each (5 x 256 numbers, 5 kB); every SAM weight stays as
shipped. The shift is trained on the cached frozen embeddings of the labelled scans with the
prompts the propagation gives the decoder: the neighbouring slice's box, at the box sizes the walk
tries, plus the structure's own box (the seed and the self-consistency check). The target is the
structure on the slice itself, so the decoder learns to find the lesion inside a box drawn from
the slice next to it (where a box-trained SAM tends to fill the box or follow a nested structure).
The IoU head is asked for what the frozen head predicts on the same box: the rules threshold and
rank that score, and a head that learned the true IoU (lower than SAM's) stopped the walk early.

Weights: safetensors with a JSON card beside it (recipe, held-out figures, SHA-256).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from ProMISeLib.errors import CheckpointError
from ProMISeLib.io.download import sha256_of
from ProMISeLib.io.volumes import atomic_write
from ProMISeLib.prompting.prompter import card_path, read_checked_card
from ProMISeLib.walk import WalkPlugin
from ProMISeLib.walk.settings import StepSettings
from torch import nn
from torch.nn import functional as F

from ProMISeTrain.prompter_data import GRID, StructureSamples

INPUT = 256  # the decoder's prompt coordinates: LiteMedSAM's 256-pixel input
KEYS = ("mask_tokens.weight", "iou_token.weight")  # the decoder parameters a shift adds to


@dataclass(frozen=True)
class ShiftSettings:
    """The training recipe (recorded in the card)."""

    iterations: int = 150
    slices_per_step: int = 4
    neighbour_boxes: int = 2  # boxes drawn from a neighbouring slice's label per slice (plus its own box)
    scales: tuple[float, ...] = StepSettings().scales
    scale_jitter: float = 0.05  # log-normal SD on each box's size
    margin_px: tuple[float, float] = (2.0, 8.0)  # margin added on each side, in input pixels
    lr: float = 5e-3
    iou_weight: float = 1.0  # weight of the IoU head's squared error
    iou_target: str = "frozen"  # what the IoU head learns: the frozen head's prediction for the same box
    # ('frozen': the rules' score thresholds keep their meaning) or the mask's true IoU ('true')
    tumour_weight: float = 2.0  # sampling weight of tumour structures relative to organs
    seed: int = 0
    threads: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


def shift_of(decoder: nn.Module) -> dict[str, torch.Tensor]:
    """Zero shifts shaped like the decoder's output tokens."""
    return {key: torch.zeros_like(decoder.get_parameter(key)) for key in KEYS}


def apply_token_shift(model: nn.Module, shift: dict[str, torch.Tensor]) -> nn.Module:
    """Add ``shift`` to the output tokens of ``model.mask_decoder`` (in memory; returns the model)."""
    decoder = model.mask_decoder
    with torch.no_grad():
        for key in KEYS:
            parameter = decoder.get_parameter(key)
            if key not in shift or tuple(shift[key].shape) != tuple(parameter.shape):
                found = tuple(shift[key].shape) if key in shift else "missing"
                raise CheckpointError(f"token shift {key}: {found}, the decoder needs {tuple(parameter.shape)}")
            parameter.add_(shift[key].to(parameter))
    return model


def save_token_shift(shift: dict[str, torch.Tensor], path: Path, card: dict) -> Path:
    """Write the shift (safetensors) and its card with the SHA-256, both atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {key: value.detach().contiguous() for key, value in shift.items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))
    card = dict(card, sha256=sha256_of(path), size_bytes=path.stat().st_size)
    atomic_write(card_path(path), lambda tmp: tmp.write_text(json.dumps(card, indent=1) + "\n"))
    return path


def load_token_shift(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The shift and its card; a wrong hash, a bad file or other keys give a CheckpointError."""
    card, state = read_checked_card(Path(path), "token shift")
    if sorted(state) != sorted(KEYS):
        raise CheckpointError(f"{path}: not a token shift (keys {sorted(state)[:3]}, expected {list(KEYS)})")
    return state, card


#: The shift trained on the labelled scans for LiteMedSAM (its card holds the held-out figures).
SHIPPED = Path(__file__).resolve().parent / "assets" / "litemedsam-token-shift.safetensors"


class TokenShift(WalkPlugin):
    """The decoder token shift as a walk plug-in: ``Segmenter(plugins=[TokenShift.from_file(path)])``.

    It adds the trained vectors to the frozen decoder's output tokens before the model runs, so it needs
    the PyTorch runtime (``auto`` takes it). Measured and not adopted as the default (docs/studies/).
    """

    def __init__(self, shift: dict[str, torch.Tensor], name: str = "token shift") -> None:
        self.shift = shift
        self.name = name

    @classmethod
    def from_file(cls, path: str | Path = SHIPPED) -> TokenShift:
        """A shift file (safetensors with its card), hash-checked."""
        shift, _ = load_token_shift(Path(path))
        return cls(shift, f"decoder tokens shifted by {Path(path).stem}")

    def adapt_model(self, module: nn.Module) -> None:
        apply_token_shift(module, self.shift)


class ShiftedDecoder:
    """The frozen decoder with a trainable shift of its output tokens (the shift is the only parameter)."""

    def __init__(self, model: nn.Module, shift: dict[str, torch.Tensor] | None = None) -> None:
        self.decoder = model.mask_decoder
        self.prompt_encoder = model.prompt_encoder
        self.base = {key: self.decoder.get_parameter(key).detach().clone() for key in KEYS}
        start = shift if shift is not None else shift_of(self.decoder)
        self.shift = {key: start[key].detach().clone().requires_grad_(True) for key in KEYS}
        self.dense_pe = self.prompt_encoder.get_dense_pe()

    def __call__(self, embedding: torch.Tensor, boxes: torch.Tensor, shifted: bool = True):
        """Mask logits (N, 256, 256) and predicted IoU (N,) for boxes (N, 4) in input pixels on one embedding."""
        from torch.func import functional_call

        sparse, dense = self.prompt_encoder(points=None, boxes=boxes, masks=None)
        params = {key: self.base[key] + self.shift[key] for key in KEYS} if shifted else {}
        logits, iou = functional_call(self.decoder, params, args=(), kwargs={
            "image_embeddings": embedding, "image_pe": self.dense_pe, "sparse_prompt_embeddings": sparse,
            "dense_prompt_embeddings": dense, "multimask_output": False})
        return logits[:, 0], iou[:, 0]


def label_box(fraction: np.ndarray, scale: float = 1.0, margin: float = 3.0) -> np.ndarray:
    """Box (x0, y0, x1, y1, input pixels) of a grid label, scaled about its centre and widened by ``margin``."""
    mask = fraction > 0.5
    if not mask.any():
        mask = fraction >= fraction.max()
    rows, cols = np.nonzero(mask)
    box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32) * (INPUT / GRID)
    centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2
    return np.concatenate([centre - half * scale - margin, centre + half * scale + margin]).clip(0, INPUT)


def _target(fraction: np.ndarray) -> torch.Tensor:
    """The grid label at the decoder's 256 x 256 output (bilinear fraction)."""
    tensor = torch.from_numpy(np.ascontiguousarray(fraction, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=(INPUT, INPUT), mode="bilinear", align_corners=False)[0, 0]


def _present(fraction: np.ndarray | None) -> bool:
    return fraction is not None and float(fraction.max()) > 0.25


def propagation_pairs(structure: StructureSamples) -> list[tuple[int, int, int]]:
    """(position in ``slices``, slice, neighbouring slice) for each slice of the structure with a labelled neighbour."""
    pairs = []
    for position, k in enumerate(structure.slices.tolist()):
        if _present(structure.targets.get(k)):
            pairs += [(position, k, k + d) for d in (-1, 1) if _present(structure.targets.get(k + d))]
    return pairs


def _embedding(structure: StructureSamples, position: int) -> torch.Tensor:
    return torch.from_numpy(structure.embeddings[position].astype(np.float32))[None]


def shift_loss(decoder: ShiftedDecoder, structure: StructureSamples, position: int, k: int, boxes: np.ndarray,
               iou_weight: float = 1.0, shifted: bool = True, iou_target: str = "frozen") -> torch.Tensor:
    """BCE + soft Dice of the masks from ``boxes`` against slice k's label, plus the IoU head's squared error.

    ``iou_target`` 'frozen' asks the IoU head for the frozen decoder's prediction on the same box, so
    the scores the rules threshold and rank keep their meaning; 'true' asks for the mask's IoU with the label.
    """
    embedding, box_tensor = _embedding(structure, position), torch.from_numpy(np.asarray(boxes, np.float32))
    logits, iou = decoder(embedding, box_tensor, shifted)
    target = _target(structure.targets[k]).expand_as(logits)
    probability = torch.sigmoid(logits).flatten(1)
    flat = target.flatten(1)
    soft_dice = (2 * (probability * flat).sum(1) + 1) / (probability.sum(1) + flat.sum(1) + 1)
    with torch.no_grad():
        if iou_target == "frozen":
            wanted = decoder(embedding, box_tensor, False)[1]
        else:
            hard, truth = (logits > 0).flatten(1), flat > 0.5
            wanted = ((hard & truth).sum(1) / ((hard | truth).sum(1) + 1e-6)).float()
    return (F.binary_cross_entropy_with_logits(logits, target) + (1 - soft_dice).mean()
            + iou_weight * F.mse_loss(iou, wanted))


def train_token_shift(model: nn.Module, structures: list[StructureSamples], settings: ShiftSettings | None = None,
                      say: Callable[[str], None] | None = None) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Train a token shift on cached embeddings; returns the shift and the loss per step."""
    settings = settings or ShiftSettings()
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    rng = np.random.default_rng(settings.seed)
    bank = [(index, pair) for index, s in enumerate(structures) for pair in propagation_pairs(s)]
    if not bank:
        raise ValueError("no slices with a labelled neighbour to train a token shift on")
    weights = np.array([settings.tumour_weight if structures[i].structure == "lesion" else 1.0 for i, _ in bank])
    decoder = ShiftedDecoder(model)
    optimiser = torch.optim.AdamW(list(decoder.shift.values()), lr=settings.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=settings.lr, total_steps=settings.iterations)
    losses, started = [], time.perf_counter()
    for step in range(settings.iterations):
        loss = torch.zeros(())
        for pick in rng.choice(len(bank), settings.slices_per_step, p=weights / weights.sum()):
            index, (position, k, neighbour) = bank[pick]
            s = structures[index]
            sizes = [rng.choice(settings.scales) for _ in range(settings.neighbour_boxes)] + [1.0]
            sources = [neighbour] * settings.neighbour_boxes + [k]
            boxes = np.stack([label_box(s.targets[source], float(size * np.exp(rng.normal(0, settings.scale_jitter))),
                                        float(rng.uniform(*settings.margin_px)))
                              for size, source in zip(sizes, sources, strict=True)])
            loss = loss + shift_loss(decoder, s, position, k, boxes, settings.iou_weight, True, settings.iou_target)
        loss = loss / settings.slices_per_step
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if say is not None and (step % 25 == 0 or step == settings.iterations - 1):
            say(f"step {step + 1}/{settings.iterations}: loss {np.mean(losses[-25:]):.4f} "
                f"({time.perf_counter() - started:.0f} s)")
    return {key: value.detach() for key, value in decoder.shift.items()}, losses


@torch.no_grad()
def neighbour_box_dice(model: nn.Module, structure: StructureSamples, shift: dict[str, torch.Tensor] | None,
                       scales: tuple[float, ...] = (0.85, 1.0, 1.1)) -> dict[str, float]:
    """Mean 2D Dice on a structure's slices, decoding boxes drawn from each neighbour's label at ``scales``.

    Half of the (slice, neighbour) pairs are used (alternating), so the figure costs half the decodes.
    Returns the mean Dice per scale (``"s0.85"`` ...), of the candidate with the highest predicted IoU
    (``"picked"``) and of the structure's own box (``"own"``).
    """
    decoder = ShiftedDecoder(model, shift)
    rows = []
    for position, k, neighbour in propagation_pairs(structure):
        if (k + int(neighbour > k)) % 2:
            continue
        boxes = [label_box(structure.targets[neighbour], size) for size in scales] + [label_box(structure.targets[k])]
        logits, iou = decoder(_embedding(structure, position), torch.from_numpy(np.stack(boxes)), shift is not None)
        masks, truth = logits > 0, _target(structure.targets[k]) > 0.5
        dice = (2 * (masks & truth).sum((1, 2)) / (masks.sum((1, 2)) + truth.sum() + 1e-6)).numpy()
        picked = dice[int(np.argmax(iou[: len(scales)].numpy()))]
        rows.append([*dice.tolist(), float(picked)])
    if not rows:
        return {}
    mean = np.mean(rows, axis=0)
    names = [f"s{size:g}" for size in scales] + ["own", "picked"]
    return {name: round(float(value), 4) for name, value in zip(names, mean, strict=True)}
