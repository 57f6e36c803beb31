"""Training the ProMISe 3D model (Li et al., ISBI 2024) with its published recipe.

Recipe (from the paper's public code): AdamW, lr 4e-4, no weight decay, batch 1, gradient-norm
clip 1.0 (per top-level module, as upstream clips encoder, prompt encoder and decoder apart),
a linear lr decay to 1 % over 500 epochs stepped once per epoch (upstream's ``LinearLR``), the
boundary-aware loss of :mod:`ProMISeTrain.losses`, one crop per training case per epoch, and
these augmentations (upstream's MONAI pipeline for colon and pancreas):

* intensity shift of +-20 HU after window clipping (p 0.5);
* rotation by up to +-30 degrees in the axial plane (p 0.3) and in-plane zoom 0.9-1.1 (p 0.3);
* a positive (p 2/3, centred on a label voxel) or negative crop of 1.2x the model crop
  (154 mm for 128), then a random model-size crop inside it;
* flips on each axis (p 0.5 each) and a rot90 (k 1-3) in the first two axes (p 0.5).

Rotation, zoom and both crops are folded into one resampling from the scan (see
:class:`ProMISeTrain.msd.CropGrid`). Prompts: 10 label voxels of the crop (drawn with
replacement) plus 20 random crop voxels; a crop without label gets the 20 random ones only.

Only trainable parameters (after freezing SAM) go to the optimizer. Every epoch writes, in the
output folder, ``last.pt`` (trainable weights, optimizer, scheduler, epoch, history; atomic,
read back with ``torch.load(weights_only=True)``), ``history.json``, ``loss.png`` and, when the
validation Dice (or, without validation cases, the training loss) improves, the best model in
the converted checkpoint format.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from ProMISeLib.errors import CheckpointError, InvalidInputError
from ProMISeLib.io.volumes import atomic_write
from torch import nn

from ProMISeTrain.losses import BoundaryAwareLoss
from ProMISeTrain.msd import (
    CaseCache,
    CaseVolumes,
    CropGrid,
    CropPreprocessing,
    MSDCase,
    MSDDataset,
    image_crop,
    label_crop,
    task_preprocessing,
)

STATE_FILE = "last.pt"
STATE_FORMAT = "promise3d-train/1"


@dataclass(frozen=True)
class Augmentation:
    """The random transforms of one training crop and their probabilities (upstream's values)."""

    shift_hu: float = 20.0
    shift_prob: float = 0.5
    rotate_deg: float = 30.0
    rotate_prob: float = 0.3
    zoom_range: tuple[float, float] = (0.9, 1.1)
    zoom_prob: float = 0.3
    flip_prob: float = 0.5
    rot90_prob: float = 0.5


@dataclass
class TrainOptions:
    """Hyper-parameters and run settings; defaults are the published recipe."""

    lr: float = 4e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lr_decay_epochs: int | None = 500  # LinearLR 1 -> lr_end_factor over this many epochs; None: constant
    lr_end_factor: float = 0.01
    steps_per_epoch: int | None = None  # None: one crop per training case
    positive_fraction: float = 2.0 / 3.0
    window_ratio: float = 1.2
    positive_points: int = 10
    random_points: int = 20
    augmentation: Augmentation | None = field(default_factory=Augmentation)
    validate_every: int = 1
    tolerance_mm: float = 5.0
    seed: int = 0
    num_workers: int = 0
    cache_cases: int = 2


# --- samples ---------------------------------------------------------------------------------
def _background_voxel(volumes: CaseVolumes, rng: np.random.Generator, low: float, tries: int = 200) -> int:
    """A random voxel outside the label and inside the body (above the window's low end), as a flat index."""
    image = sitk.GetArrayViewFromImage(volumes.image)
    label = sitk.GetArrayViewFromImage(volumes.label)
    flat = int(rng.integers(image.size))
    for _ in range(tries):
        index = np.unravel_index(flat, image.shape)
        if label[index] == 0 and image[index] > low:
            return flat
        flat = int(rng.integers(image.size))
    return flat


def crop_centre(volumes: CaseVolumes, rng: np.random.Generator, window_mm: float, positive_fraction: float,
                low: float) -> np.ndarray:
    """LPS centre of a positive (label voxel) or negative crop window, kept inside the scan where it fits."""
    geometry = volumes.geometry
    foreground = volumes.foreground()
    if foreground.size and rng.random() < positive_fraction:
        flat = int(foreground[rng.integers(foreground.size)])
    else:
        flat = _background_voxel(volumes, rng, low)
    ijk = np.array(np.unravel_index(flat, geometry.shape_kji), dtype=float)[::-1]
    spacing, size = np.asarray(geometry.spacing), np.asarray(geometry.size)
    extent = size * spacing
    position = ijk * spacing  # mm from the first voxel centre, along the scan's axes
    lowest, highest = window_mm / 2 - spacing / 2, extent - spacing / 2 - window_mm / 2
    position = np.where(extent >= window_mm, np.clip(position, lowest, highest), (extent - spacing) / 2)
    return geometry.index_to_lps(position / spacing)


def sample_training_crop(volumes: CaseVolumes, preprocessing: CropPreprocessing, rng: np.random.Generator,
                         augmentation: Augmentation | None = None, positive_fraction: float = 2.0 / 3.0,
                         window_ratio: float = 1.2, crop_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One training crop (image float32, label uint8; both (D, H, W)) with the published augmentations."""
    size = int(crop_size)
    spacing = float(preprocessing.spacing_mm)
    window = round(size * window_ratio)
    centre = crop_centre(volumes, rng, window * spacing, positive_fraction, preprocessing.window[0])
    # The random model-size crop inside the window: an offset of the centre along the scan's axes.
    offset = rng.uniform(-(window - size) / 2, (window - size) / 2, 3) * spacing
    centre = centre + volumes.geometry.direction_matrix @ offset
    aug = augmentation
    rotation = zoom_i = zoom_j = 0.0
    shift = 0.0
    if aug is not None:
        if rng.random() < aug.shift_prob:
            shift = float(rng.uniform(-aug.shift_hu, aug.shift_hu))
        if rng.random() < aug.rotate_prob:
            rotation = float(rng.uniform(-aug.rotate_deg, aug.rotate_deg))
        if rng.random() < aug.zoom_prob:
            zoom_i, zoom_j = (float(v) - 1.0 for v in rng.uniform(*aug.zoom_range, 2))
    grid = CropGrid.around(centre, volumes.geometry, size, spacing, rotation, (1.0 + zoom_i, 1.0 + zoom_j, 1.0))
    image = image_crop(volumes, grid, preprocessing, shift)
    label = label_crop(volumes, grid)
    if aug is not None:
        for axis in range(3):
            if rng.random() < aug.flip_prob:
                image, label = np.flip(image, axis), np.flip(label, axis)
        if rng.random() < aug.rot90_prob:
            k = int(rng.integers(1, 4))
            image, label = np.rot90(image, k, axes=(0, 1)), np.rot90(label, k, axes=(0, 1))
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def sample_points(label: np.ndarray, rng: np.random.Generator, positive: int = 10, random: int = 20) -> np.ndarray:
    """Prompt points (N, 3) float in crop voxels, (D, H, W) order: ``positive`` label voxels, then ``random`` any."""
    chosen = []
    voxels = np.argwhere(label > 0)
    if len(voxels) and positive:
        chosen.append(voxels[rng.integers(len(voxels), size=positive)])
    chosen.append(rng.integers(0, np.array(label.shape), size=(random, 3)))
    return np.concatenate(chosen).astype(np.float32)


def _seed_for(seed: int, epoch: int, index: int | None) -> list[int]:
    """Seed words of one crop (``index``) or of an epoch's case order (None): reproducible under resume."""
    return [int(seed), int(epoch)] + ([0] if index is None else [1, int(index)])


class TrainingCrops(torch.utils.data.Dataset):
    """The crops of one epoch: item ``n`` is a seeded random crop of case ``order[n]`` and its prompts."""

    def __init__(self, cases: Sequence[MSDCase], label_value: int, preprocessing: CropPreprocessing,
                 options: TrainOptions, epoch: int, crop_size: int):
        self.cases, self.label_value = list(cases), label_value
        self.preprocessing, self.options, self.epoch = preprocessing, options, epoch
        self.crop_size = crop_size
        steps = options.steps_per_epoch or len(self.cases)
        order_rng = np.random.default_rng(_seed_for(options.seed, epoch, None))
        repeats = math.ceil(steps / max(len(self.cases), 1))
        self.order = np.concatenate([order_rng.permutation(len(self.cases)) for _ in range(repeats)])[:steps]
        self.cache = CaseCache(options.cache_cases)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(_seed_for(self.options.seed, self.epoch, index))
        volumes = self.cache.get(self.cases[int(self.order[index])], self.label_value)
        image, label = sample_training_crop(volumes, self.preprocessing, rng, self.options.augmentation,
                                            self.options.positive_fraction, self.options.window_ratio,
                                            self.crop_size)
        points = sample_points(label, rng, self.options.positive_points, self.options.random_points)
        return {"image": torch.from_numpy(image)[None], "label": torch.from_numpy(label.astype(np.int64)),
                "points": torch.from_numpy(points)}


# --- model -----------------------------------------------------------------------------------
def _config_dict(config: Any) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else asdict(config)


@dataclass
class InitialWeights:
    """Where a model's starting weights came from, and which state keys that source restores."""

    source: str  # "sam", "random" or a checkpoint path
    restored: frozenset[str]  # keys the source gives back on a rebuild (not saved in training states)


def build_model(config: Any, init: str | Path | None = None) -> tuple[nn.Module, InitialWeights]:
    """A ``Promise3D`` for ``config`` with initial weights and SAM frozen.

    ``init``: a registered model (``promise-colon``) or one of our ProMISe weights files (path),
    ``"sam"`` (SAM ViT-B from the weights registry into the encoder's SAM parts, as the paper
    starts), ``"random"``, or None (SAM for a ViT-B-sized encoder, random otherwise).
    """
    from ProMISeLib.models.promise3d.model import Promise3D, is_rebuildable

    model = Promise3D(config)
    if init is None:  # SAM ViT-B fits an encoder of its sizes only
        init = "sam" if (config.embed_dim, config.depth, config.patch_size) == (768, 12, 16) else "random"
    init = str(init)
    restored: set[str] = set()
    if init == "sam":
        from ProMISeLib.io.weights import resolve_weights
        from ProMISeLib.models.registry import get_model_spec

        not_from_sam = set(model.load_sam_weights(resolve_weights(get_model_spec("sam_vit_b").weights)))
        restored = {f"encoder.{k}" for k in model.encoder.state_dict()
                    if k not in not_from_sam and not is_rebuildable(f"encoder.{k}")}
    elif init != "random":
        from ProMISeLib.models.promise3d.checkpoint import load_state_into
        from ProMISeLib.models.promise3d.config import PRESETS

        if init in PRESETS:  # a registered model (fine-tuning the released weights)
            from ProMISeLib.io.weights import resolve_weights
            from ProMISeLib.models.registry import get_model_spec

            load_state_into(model, resolve_weights(get_model_spec(init).weights))
        else:
            load_state_into(model, Path(init))
        restored = {name for name, _ in model.named_parameters()}
    model.freeze_sam()
    return model, InitialWeights(init, frozenset(restored))


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name."""
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def fixed_state(model: nn.Module, initial: InitialWeights) -> dict[str, torch.Tensor]:
    """What a training state must keep besides the trainable parameters: frozen parameters and buffers that
    neither the initial-weights source nor the model itself (its shifted-window masks) can rebuild."""
    from ProMISeLib.models.promise3d.model import is_rebuildable

    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {name: t.detach().cpu().clone() for name, t in model.state_dict().items()
            if name not in trainable and name not in initial.restored and not is_rebuildable(name)}


def _clip_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """Trainable parameters grouped by top-level module (each clipped on its own, as upstream)."""
    groups = [[p for p in child.parameters() if p.requires_grad] for child in model.children()]
    own = [p for p in model.parameters(recurse=False) if p.requires_grad]
    return [g for g in [*groups, own] if g]


# --- checkpoints -----------------------------------------------------------------------------
def save_state(path: Path, state: dict) -> Path:
    """Write a training state atomically (torch.save to a temporary file, then rename)."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict:
    """Read a training state with ``weights_only=True`` (tensors and plain containers only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(f"{path}: not a readable training checkpoint ({type(exc).__name__})") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a ProMISe training checkpoint")
    return state


# --- the loop --------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What a run produced (``model``: the trained model as it is after the last epoch)."""

    model: nn.Module
    epochs: int
    history: list[dict]
    best_epoch: int | None
    best_score: float | None
    best_model: Path | None
    state: Path


def _scheduler(optimizer: torch.optim.Optimizer, options: TrainOptions) -> torch.optim.lr_scheduler.LRScheduler:
    if options.lr_decay_epochs:
        return torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=options.lr_end_factor,
                                                 total_iters=options.lr_decay_epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def train(dataset: MSDDataset, config: Any, output_dir: str | Path, epochs: int = 200, *,
          options: TrainOptions | None = None, val_dataset: MSDDataset | None = None,
          init: str | Path | None = None, resume: bool = False, device: str = "auto",
          preprocessing: CropPreprocessing | None = None, progress: bool = True,
          verbose: bool | None = None) -> TrainResult:
    """Train a ``Promise3D`` of ``config`` on ``dataset`` for ``epochs`` epochs in all (a resumed run counts
    the epochs already done); see the module docstring for what is written to ``output_dir``.

    ``progress`` shows tqdm bars; ``verbose`` (default: as ``progress``) prints one line per epoch.
    """
    from ProMISeLib.runtime.loader import resolve_device
    from tqdm.auto import tqdm

    from ProMISeTrain.evaluate3d import RunnerPredictor, evaluate_cases, summarise

    options = options or TrainOptions()
    verbose = progress if verbose is None else verbose
    if not len(dataset):
        raise InvalidInputError(f"{dataset.root}: no training cases")
    output = Path(output_dir).expanduser()
    state_path = output / STATE_FILE
    if resume and not state_path.is_file():
        raise InvalidInputError(f"{output}: no {STATE_FILE} to resume from")
    if not resume and state_path.exists():
        raise InvalidInputError(f"{output}: holds a training run already; pass --resume to continue it, "
                                "or choose another folder")
    output.mkdir(parents=True, exist_ok=True)
    preprocessing = preprocessing or task_preprocessing(dataset.task)
    crop_size = int(config.crop_size)
    torch_device = resolve_device(device)

    torch.manual_seed(options.seed)
    model, initial = build_model(config, init)
    model.to(torch_device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=options.lr, weight_decay=options.weight_decay)
    scheduler = _scheduler(optimizer, options)
    criterion = BoundaryAwareLoss()
    history: list[dict] = []
    best: dict[str, Any] = {"epoch": None, "score": None, "metric": None}
    start = 0
    config_dict = _config_dict(config)
    if resume:
        state = load_state(state_path)
        if state.get("model_config") != config_dict:
            raise CheckpointError(f"{state_path}: was trained with another model configuration "
                                  "(--reduced or not must match the first run)")
        if state.get("init") != initial.source:
            raise CheckpointError(f"{state_path}: started from {state.get('init')!r}, not {initial.source!r} "
                                  "(--init must match the first run)")
        saved = {**state["fixed"], **state["trainable"]}
        missing = set(trainable_state(model)) | set(fixed_state(model, initial))
        missing -= set(saved)
        if missing:
            raise CheckpointError(f"{state_path}: lacks weights ({', '.join(sorted(missing)[:3])})")
        model.load_state_dict(saved, strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, history, best = int(state["epoch"]), list(state["history"]), dict(state["best"])
        model.to(torch_device)
    groups = _clip_groups(model)
    for epoch in range(start, epochs):
        torch.manual_seed(options.seed * 100_003 + epoch)
        crops = TrainingCrops(dataset.cases, dataset.label_value, preprocessing, options, epoch, crop_size)
        loader = torch.utils.data.DataLoader(crops, batch_size=1, shuffle=False, num_workers=options.num_workers)
        model.train()
        started = time.perf_counter()
        steps: list[dict[str, float]] = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", unit="crop", disable=not progress, leave=False)
        for batch in bar:
            image = batch["image"].to(torch_device)
            label = batch["label"].to(torch_device)
            points = batch["points"].to(torch_device)
            terms = criterion.terms(model(image, points), label)
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            for group in groups:
                torch.nn.utils.clip_grad_norm_(group, options.grad_clip)
            optimizer.step()
            steps.append({k: float(v.detach()) for k, v in terms.items()})
            bar.set_postfix(loss=f"{steps[-1]['total']:.4f}")
        bar.close()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "seconds": 0.0,
                                  "loss": float(np.mean([s["total"] for s in steps])),
                                  **{k: float(np.mean([s[k] for s in steps])) for k in ("dice", "ce", "edge")},
                                  "step_losses": [s["total"] for s in steps]}
        if val_dataset is not None and len(val_dataset) and (epoch + 1) % options.validate_every == 0:
            predictor = RunnerPredictor.for_model(model, preprocessing, torch_device)
            summary = summarise(evaluate_cases(predictor, val_dataset, tolerance_mm=options.tolerance_mm,
                                               progress=progress))
            record["val_dice"], record["val_nsd"] = summary["mean_dice"], summary["mean_nsd"]
        record["seconds"] = time.perf_counter() - started
        history.append(record)
        improved = _update_best(best, record)
        best_path = output / "best.safetensors"
        if improved:
            _export_best(model, preprocessing, best_path, dataset.task, record)
        state = {"format": STATE_FORMAT, "epoch": epoch + 1, "trainable": trainable_state(model),
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "history": history,
                 "fixed": fixed_state(model, initial), "best": best, "model_config": config_dict,
                 "task": dataset.task, "init": initial.source, "options": _options_dict(options)}
        save_state(state_path, state)
        write_history(output, history)
        if verbose:
            shown = f"epoch {epoch + 1}/{epochs}: loss {record['loss']:.4f} ({record['seconds']:.0f} s)"
            if "val_dice" in record and record["val_dice"] is not None:
                shown += f", val Dice {record['val_dice']:.3f}, NSD {record['val_nsd']:.3f}"
            tqdm.write(shown + (" (best)" if improved else ""))
    best_model = output / "best.safetensors"
    return TrainResult(model, len(history), history, best["epoch"], best["score"],
                       best_model if best_model.is_file() else None, state_path)


def _options_dict(options: TrainOptions) -> dict:
    out = asdict(options)
    out["augmentation"] = None if options.augmentation is None else asdict(options.augmentation)
    return json.loads(json.dumps(out))  # plain lists/dicts: safe for weights_only loading


def _update_best(best: dict[str, Any], record: dict[str, Any]) -> bool:
    """Best by validation Dice when there is one, else by the lowest training loss."""
    if record.get("val_dice") is not None:
        metric, score, better = "val_dice", float(record["val_dice"]), lambda new, old: new > old
    else:
        metric, score, better = "loss", float(record["loss"]), lambda new, old: new < old
    if best["score"] is None or best["metric"] != metric or better(score, best["score"]):
        best.update(epoch=record["epoch"], score=score, metric=metric)
        return True
    return False


def _export_best(model: nn.Module, preprocessing: CropPreprocessing, path: Path, task: str, record: dict) -> None:
    from ProMISeLib.models.promise3d.checkpoint import save_promise3d

    save_promise3d(model, path, preprocessing=preprocessing, name=f"promise3d-{task}-trained",
                   metadata={"task": task, "epoch": record["epoch"], "val_dice": record.get("val_dice"),
                             "val_nsd": record.get("val_nsd"), "loss": record["loss"]})


def write_history(output: Path, history: list[dict]) -> None:
    """``history.json`` and ``loss.png`` (drawn with Pillow) in ``output``."""
    atomic_write(output / "history.json", lambda tmp: tmp.write_text(json.dumps(history, indent=1)))
    draw_curves(output / "loss.png", history)


def draw_curves(path: Path, history: list[dict], width: int = 800, height: int = 420) -> Path:
    """A PNG of the per-step (grey) and per-epoch (blue) training loss, and validation Dice (orange, 0-1)."""
    from PIL import Image, ImageDraw

    left, right, top, bottom = 60, 60, 30, 40
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    plot_w, plot_h = width - left - right, height - top - bottom
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    steps = [loss for record in history for loss in record.get("step_losses", [])]
    epochs = len(history)
    top_loss = max([*steps, *(r["loss"] for r in history), 1e-6])

    def xy(position: float, value: float, scale: float) -> tuple[float, float]:
        return (left + plot_w * position, top + plot_h * (1.0 - min(max(value / scale, 0.0), 1.0)))

    if steps:
        points = [xy(i / max(len(steps) - 1, 1), v, top_loss) for i, v in enumerate(steps)]
        if len(points) > 1:
            draw.line(points, fill=(190, 190, 190), width=1)
    if epochs:
        points = [xy((i + 1) / epochs if epochs > 1 else 0.5, r["loss"], top_loss) for i, r in enumerate(history)]
        if len(points) > 1:
            draw.line(points, fill=(30, 90, 200), width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(30, 90, 200))
        val = [(i, r["val_dice"]) for i, r in enumerate(history) if r.get("val_dice") is not None]
        vpoints = [xy((i + 1) / epochs if epochs > 1 else 0.5, v, 1.0) for i, v in val]
        if len(vpoints) > 1:
            draw.line(vpoints, fill=(230, 120, 20), width=2)
        for x, y in vpoints:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(230, 120, 20))
    draw.text((left, 8), "training loss (blue: epoch mean, grey: steps); validation Dice (orange)", fill="black")
    draw.text((4, top - 4), f"{top_loss:.3g}", fill=(30, 90, 200))
    draw.text((4, top + plot_h - 8), "0", fill=(30, 90, 200))
    draw.text((left + plot_w + 6, top - 4), "1.0", fill=(230, 120, 20))
    draw.text((left + plot_w + 6, top + plot_h - 8), "0.0", fill=(230, 120, 20))
    draw.text((left, top + plot_h + 8), "epoch 1", fill="black")
    draw.text((left + plot_w - 50, top + plot_h + 8), f"epoch {epochs}", fill="black")
    return atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))


# --- command line ----------------------------------------------------------------------------
def run_cli(args: argparse.Namespace) -> int:
    """``promise train``: the arguments of :func:`ProMISeLib.cli.build_parser` to a :func:`train` run."""
    import sys

    from ProMISeLib.models.promise3d.model import Promise3DConfig

    splits = args.splits
    dataset = MSDDataset(args.data, args.task, "train" if splits else "all", splits)
    val_dataset = MSDDataset(args.data, args.task, "val", splits) if splits else None
    config = Promise3DConfig.reduced() if args.reduced else Promise3DConfig.full()
    options = TrainOptions(seed=args.seed, num_workers=args.workers)
    if args.steps_per_epoch:
        options.steps_per_epoch = args.steps_per_epoch
    if not splits:
        print("note: no --splits file: every labelled case trains, none validates; the best model is the one "
              "with the lowest training loss", file=sys.stderr)
    result = train(dataset, config, args.output, args.epochs, options=options, val_dataset=val_dataset,
                   init=args.init, resume=args.resume, device=args.device, progress=sys.stderr.isatty(),
                   verbose=True)
    print(f"{args.output}: {result.epochs} epoch(s) done; state {result.state.name}"
          + (f", best model {result.best_model} (epoch {result.best_epoch})" if result.best_model else ""))
    return 0
