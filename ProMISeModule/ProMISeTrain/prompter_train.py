"""Training the prompt network on cached frozen embeddings, and leave-one-out validation.

Each training example is one slice of one structure, in one of three roles, as the engine meets it:

* ``seed``: a click anywhere inside the structure on that slice, no prior (the first slice);
* ``propagate``: the (perturbed) label of the neighbouring slice as prior, no click; slices past
  the structure's end teach the network to answer "nothing", which is where propagation stops;
* ``context``: the click in the wide first crop, from which the engine sizes its ROI.

The prior is perturbed (dilated, eroded, shifted, sometimes taken two slices away) so that the
network learns to follow an imperfect mask, like the one the frozen decoder returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from ProMISeLib.prompting.net import PromptNet, PromptNetConfig, click_map
from ProMISeLib.prompting.prompter import LearnedPrompter
from scipy import ndimage
from torch.nn import functional as F

from ProMISeTrain.prompter_data import StructureSamples


@dataclass(frozen=True)
class TrainSettings:
    """The training recipe (recorded in the weights card)."""

    iterations: int = 1500
    batch_size: int = 24
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    p_seed: float = 0.3
    p_context: float = 0.1
    p_skip: float = 0.15  # prior taken two slices away
    max_dilate: int = 2
    max_erode: int = 1
    max_shift: int = 1
    tumour_weight: float = 2.0  # sampling weight of tumour structures relative to organs
    click_depth_power: float = 2.0  # a training click's weight: its distance to the structure's edge to this
    # power (0: anywhere inside alike; 2 favours the middle)
    threads: int = 1  # torch threads; one avoids OpenMP spin-waits that make small convolutions crawl

    def to_dict(self) -> dict:
        return asdict(self)


def soft_dice_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus soft Dice per sample (Dice smoothed by 1 so an empty target asks for an empty mask)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits).flatten(1)
    flat = target.flatten(1)
    dice = (2 * (prob * flat).sum(1) + 1) / (prob.sum(1) + flat.sum(1) + 1)
    return bce + (1 - dice).mean()


def _binary(fraction: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    mask = fraction > threshold
    if not mask.any() and fraction.max() > 0:
        mask = fraction >= fraction.max()
    return mask


class SampleBank:
    """Index of every usable example in a set of structures."""

    def __init__(self, structures: list[StructureSamples], tumour_weight: float = 2.0) -> None:
        self.structures = structures
        self.roi: list[tuple[int, int]] = []  # (structure, position in slices)
        self.inside: list[tuple[int, int]] = []
        weights, inside_weights = [], []
        for s_index, s in enumerate(structures):
            w = tumour_weight if s.structure == "lesion" else 1.0
            for pos, k in enumerate(s.slices.tolist()):
                neighbours = [k + d for d in (-1, 1) if s.targets.get(k + d, np.zeros(1)).max() > 0.25]
                if neighbours:  # reachable by propagation
                    self.roi.append((s_index, pos))
                    weights.append(w)
                if s.targets[k].max() > 0.5:
                    self.inside.append((s_index, pos))
                    inside_weights.append(w)
        self.roi_p = np.array(weights) / np.sum(weights)
        self.inside_p = np.array(inside_weights) / np.sum(inside_weights)

    def __len__(self) -> int:
        return len(self.roi)


def _perturb(mask: np.ndarray, rng: np.random.Generator, settings: TrainSettings) -> np.ndarray:
    op = rng.integers(-settings.max_erode, settings.max_dilate + 1)
    if op > 0:
        mask = ndimage.binary_dilation(mask, iterations=int(op))
    elif op < 0:
        eroded = ndimage.binary_erosion(mask, iterations=int(-op))
        mask = eroded if eroded.any() else mask
    shift = rng.integers(-settings.max_shift, settings.max_shift + 1, 2)
    return np.roll(mask, tuple(int(v) for v in shift), axis=(0, 1))


def _random_click(target: np.ndarray, rng: np.random.Generator, power: float) -> tuple[float, float]:
    """A click inside the structure, weighted by its distance to the edge to ``power``."""
    inside = target > 0.5
    depth = ndimage.distance_transform_edt(inside)
    cells = np.argwhere(inside)
    weights = depth[inside] ** power
    r, c = cells[rng.choice(len(cells), p=weights / weights.sum())]
    return float(r + rng.uniform(0.1, 0.9)), float(c + rng.uniform(0.1, 0.9))


def make_batch(bank: SampleBank, rng: np.random.Generator, settings: TrainSettings, sigma: float):
    """(embedding, prior, click, target) float32 tensors for one random batch."""
    emb, prior, click, target = [], [], [], []
    power = settings.click_depth_power
    for _ in range(settings.batch_size):
        role = rng.random()
        if role < settings.p_context:
            s = bank.structures[bank.inside[rng.choice(len(bank.inside), p=bank.inside_p)][0]]
            emb.append(s.context_embedding)
            prior.append(np.zeros_like(s.context_target))
            click.append(click_map([_random_click(s.context_target, rng, power)] if s.context_target.max() > 0.5
                                   else [s.context_click], sigma=sigma))
            target.append(s.context_target)
        elif role < settings.p_context + settings.p_seed:
            s_index, pos = bank.inside[rng.choice(len(bank.inside), p=bank.inside_p)]
            s = bank.structures[s_index]
            k = int(s.slices[pos])
            emb.append(s.embeddings[pos])
            prior.append(np.zeros_like(s.targets[k]))
            click.append(click_map([_random_click(s.targets[k], rng, power)], sigma=sigma))
            target.append(s.targets[k])
        else:
            s_index, pos = bank.roi[rng.choice(len(bank.roi), p=bank.roi_p)]
            s = bank.structures[s_index]
            k = int(s.slices[pos])
            sides = [d for d in (-1, 1) if s.targets.get(k + d, np.zeros(1)).max() > 0.25]
            d = int(rng.choice(sides))
            source = k + d
            far = k + 2 * d
            if rng.random() < settings.p_skip and s.targets.get(far, np.zeros(1)).max() > 0.25:
                source = far
            emb.append(s.embeddings[pos])
            prior.append(_perturb(_binary(s.targets[source]), rng, settings).astype(np.float32))
            click.append(np.zeros_like(s.targets[k]))
            target.append(s.targets[k])
    as_tensor = lambda items: torch.from_numpy(np.stack(items).astype(np.float32))  # noqa: E731
    return as_tensor(emb), as_tensor(prior)[:, None], as_tensor(click)[:, None], as_tensor(target)[:, None]


def train_prompt_net(structures: list[StructureSamples], settings: TrainSettings | None = None,
                     config: PromptNetConfig | None = None,
                     progress: Callable[[int, float], None] | None = None) -> tuple[PromptNet, list[float]]:
    """Train a fresh network; returns it (in eval mode) and the loss per iteration."""
    settings = settings or TrainSettings()
    config = config or PromptNetConfig()
    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        return _train(structures, settings, config, progress)
    finally:
        torch.set_num_threads(threads)


def fit_reduction(structures: list[StructureSamples], dim: int, pixels: int = 200_000,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Channel mean and the ``dim`` leading principal components of the embeddings' pixel vectors."""
    rng = np.random.default_rng(seed)
    stacks = [s.embeddings for s in structures]
    per_stack = max(1, pixels // len(stacks))
    rows = []
    for stack in stacks:
        n, c, h, w = stack.shape
        flat = stack.transpose(0, 2, 3, 1).reshape(-1, c)
        rows.append(flat[rng.choice(flat.shape[0], min(per_stack, flat.shape[0]), replace=False)])
    sample = np.concatenate(rows).astype(np.float64)
    mean = sample.mean(axis=0)
    _, vectors = np.linalg.eigh(np.cov(sample - mean, rowvar=False))
    return mean.astype(np.float32), vectors[:, ::-1][:, :dim].T.astype(np.float32)


def reduce_structures(structures: list[StructureSamples], mean: np.ndarray,
                      components: np.ndarray) -> list[StructureSamples]:
    """Copies whose embeddings are projected on the components (float16), as the network's ``reduce`` does."""
    def project(stack: np.ndarray) -> np.ndarray:
        flat = stack.astype(np.float32)
        out = np.einsum("dc,...chw->...dhw", components, flat) - (components @ mean)[:, None, None]
        return out.astype(np.float16)

    return [replace(s, embeddings=project(s.embeddings), context_embedding=project(s.context_embedding))
            for s in structures]


def _train(structures: list[StructureSamples], settings: TrainSettings, config: PromptNetConfig,
           progress: Callable[[int, float], None] | None) -> tuple[PromptNet, list[float]]:
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    if not structures:
        raise ValueError("no usable training structures")
    mean, components = fit_reduction(structures, config.reduced_dim, seed=settings.seed)
    bank = SampleBank(reduce_structures(structures, mean, components), settings.tumour_weight)
    if not len(bank):
        raise ValueError("no usable training structures")
    net = PromptNet(config)
    net.set_reduction(mean, components)
    trainable = [p for p in net.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=settings.lr, total_steps=settings.iterations,
                                                   pct_start=0.1)
    losses = []
    net.train()
    for step in range(settings.iterations):
        emb, prior, click, target = make_batch(bank, rng, settings, config.click_sigma)
        loss = soft_dice_bce(net.forward_reduced(emb, prior, click), target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, losses[-1])
    net.eval()
    return net, losses


def coarse_rollout(net: PromptNet, s: StructureSamples, min_area_fraction: float = 0.04) -> dict[int, np.ndarray]:
    """The network alone, closed loop on the grid: seed at the click, follow its own masks both ways."""
    prompter = LearnedPrompter(net)
    grid = net.config.grid
    position = {int(k): p for p, k in enumerate(s.slices.tolist())}
    k_click = int(s.click_kji[0])

    def embedding(k: int) -> torch.Tensor:
        return torch.from_numpy(s.embeddings[position[k]].astype(np.float32))[None]

    click_pixel = (s.roi_click[0] - 0.5, s.roi_click[1] - 0.5)  # grid cell centre -> "pixel" on a side-64 crop
    masks = {k_click: prompter.seed(embedding(k_click), grid, click_pixel).mask}
    largest = masks[k_click].sum()
    for direction in (1, -1):
        previous = masks[k_click]
        k = k_click + direction
        while k in position and previous.any():
            mask = prompter.follow(embedding(k), grid, previous).mask
            if mask.sum() < min_area_fraction * largest:
                break
            masks[k] = mask
            largest = max(largest, mask.sum())
            previous = mask
            k += direction
    return masks


def rollout_dice(net: PromptNet, s: StructureSamples) -> float:
    """3D Dice on the grid of :func:`coarse_rollout` against the label (slices with a target)."""
    masks = coarse_rollout(net, s)
    inter = total = 0.0
    for k, target in s.targets.items():
        truth = target > 0.5
        pred = masks.get(k, np.zeros_like(truth))
        inter += np.count_nonzero(truth & pred)
        total += np.count_nonzero(truth) + np.count_nonzero(pred)
    return 2 * inter / total if total else 1.0
