"""Evaluation of a ProMISe 3D model: one click per case, Dice and NSD at 5 mm, a JSON and CSV report.

The protocol of Li et al. (ISBI 2024): one click inside the lesion; one 1 mm crop centred on it;
the softmax foreground pasted back onto the scan's grid and thresholded at 0.5; Dice and
normalised surface Dice (5 mm) against the label on the scan's own grid. The click is the label
voxel nearest the lesion centroid (``click="centroid"``, what a user does and what the other
benchmarks here use) or, as in the paper, a seeded random label voxel (``click="random"``).

The model is reached through :data:`Predictor`, a small callable interface, so that any
inference path (a plain PyTorch model, or another runtime) can be evaluated the same way.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from ProMISeLib.errors import InvalidInputError
from ProMISeLib.io.geometry import ImageGeometry
from ProMISeLib.io.sample_data import lesion_click
from ProMISeLib.io.volumes import atomic_write
from ProMISeLib.metrics import dice, nsd

from ProMISeTrain.msd import CaseVolumes, CropPreprocessing, MSDDataset, load_case, task_preprocessing

if TYPE_CHECKING:
    import argparse

    import torch
    from ProMISeLib.models.promise3d.runner import Promise3DRunner

ClickRule = Literal["centroid", "random"]
CLICK_RULES: tuple[str, ...] = ("centroid", "random")

Predictor = Callable[[CaseVolumes, tuple[int, int, int]], np.ndarray]
"""(case, click voxel (k, j, i)) -> foreground probability (float, 0..1) on the case's scan grid (K, J, I)."""


def choose_click(mask: np.ndarray, rule: ClickRule = "centroid", rng: np.random.Generator | None = None
                 ) -> tuple[int, int, int]:
    """The click (k, j, i) inside ``mask``: nearest its centroid, or a random label voxel (seeded ``rng``)."""
    if not mask.any():
        raise InvalidInputError("the label is empty: there is no lesion to click")
    if rule == "centroid":
        return lesion_click(mask)
    if rule == "random":
        voxels = np.argwhere(mask)
        rng = rng if rng is not None else np.random.default_rng(0)
        return tuple(int(v) for v in voxels[rng.integers(len(voxels))])
    raise InvalidInputError(f"unknown click rule {rule!r}; use one of {', '.join(CLICK_RULES)}")


def paste_back(probability: np.ndarray, grid: ImageGeometry, geometry: ImageGeometry) -> np.ndarray:
    """A crop's (D, H, W) probability resampled (linear) onto the scan grid ``geometry``; 0 outside the crop."""
    from ProMISeLib.models.promise3d.runner import footprint, resample, to_sitk

    out = np.zeros(geometry.shape_kji, dtype=np.float32)
    block = footprint(geometry, grid)
    if block is not None:
        sub = geometry.with_size([s.stop - s.start for s in block[::-1]], [s.start for s in block[::-1]])
        out[block] = resample(to_sitk(probability, grid), sub, 0.0)
    return out


class RunnerPredictor:
    """The evaluation hook around :class:`~ProMISeLib.models.promise3d.runner.Promise3DRunner`.

    Paper protocol (default): one crop centred on the click (the single point prompt, crop voxel
    ``crop_size // 2``), softmax foreground pasted back, thresholded by the caller. With
    ``keep_component`` the runner's full :meth:`segment` is used instead (what a user gets: only
    the connected object at the click; an empty result scores 0).
    """

    def __init__(self, runner: Promise3DRunner, keep_component: bool = False):
        self.runner = runner
        self.keep_component = keep_component

    @classmethod
    def for_model(cls, model: torch.nn.Module, preprocessing: CropPreprocessing, device: torch.device | str = "cpu",
                  keep_component: bool = False) -> RunnerPredictor:
        from ProMISeLib.models.promise3d.runner import Promise3DRunner

        return cls(Promise3DRunner(model, preprocessing, device), keep_component)

    def __call__(self, volumes: CaseVolumes, click_kji: tuple[int, int, int]) -> np.ndarray:
        from ProMISeLib.models.promise3d.runner import crop_geometry, normalise, resample

        runner = self.runner
        if self.keep_component:
            from ProMISeLib.errors import EmptySegmentationError

            try:
                return runner.segment(volumes.image_array(), volumes.geometry, [click_kji]).mask.astype(np.float32)
            except EmptySegmentationError:
                return np.zeros(volumes.geometry.shape_kji, dtype=np.float32)
        pre = runner.preprocessing
        grid = crop_geometry(volumes.geometry, click_kji, runner.crop_size, pre.spacing_mm)
        crop = normalise(resample(volumes.image, grid, pre.pad_value), pre)
        probability = runner.predict_crop(crop, np.full((1, 3), float(runner.crop_size // 2), dtype=np.float32))
        return paste_back(probability, grid, volumes.geometry)


@dataclass
class CaseResult:
    """One case's scores."""

    id: str
    dice: float
    nsd: float
    click_kji: tuple[int, int, int]
    truth_voxels: int
    predicted_voxels: int
    seconds: float


def evaluate_cases(predictor: Predictor, dataset: MSDDataset, click: ClickRule = "centroid", seed: int = 0,
                   tolerance_mm: float = 5.0, threshold: float = 0.5, progress: bool = False) -> list[CaseResult]:
    """Run ``predictor`` once per case of ``dataset`` and score it (Dice, NSD at ``tolerance_mm``)."""
    from tqdm.auto import tqdm

    results = []
    for index, case in enumerate(tqdm(dataset.cases, desc="evaluate", unit="case", disable=not progress,
                                      leave=False)):
        started = time.perf_counter()
        volumes = load_case(case, dataset.label_value)
        truth = volumes.label_array()
        if not truth.any():
            continue  # no lesion to click (MSD has a few such cases); nothing to score
        where = choose_click(truth, click, np.random.default_rng([seed, index]))
        predicted = predictor(volumes, where) >= threshold
        spacing_kji = volumes.geometry.spacing[::-1]
        results.append(CaseResult(case.id, dice(predicted, truth), nsd(predicted, truth, spacing_kji, tolerance_mm),
                                  where, int(truth.sum()), int(predicted.sum()), time.perf_counter() - started))
    return results


def summarise(results: Sequence[CaseResult]) -> dict[str, float | int | None]:
    """Mean and median Dice and NSD over cases (None without cases)."""
    if not results:
        return {"cases": 0, "mean_dice": None, "mean_nsd": None, "median_dice": None, "median_nsd": None}
    d = np.array([r.dice for r in results])
    s = np.array([r.nsd for r in results])
    return {"cases": len(results), "mean_dice": float(d.mean()), "mean_nsd": float(s.mean()),
            "median_dice": float(np.median(d)), "median_nsd": float(np.median(s))}


def load_model(model: str | Path, task: str, device: torch.device | str = "cpu"
               ) -> tuple[torch.nn.Module, CropPreprocessing]:
    """A registered model name (``promise-colon``) or a path to a converted/trained checkpoint, on ``device``."""
    from ProMISeLib.models.promise3d.checkpoint import load_promise3d

    return load_promise3d(model, task=task, device=device)


def evaluate(model: str | Path | torch.nn.Module | Predictor, dataset: MSDDataset | str | Path, split: str = "test",
             *, task: str | None = None, splits_file: str | Path | None = None, output: str | Path | None = None,
             click: ClickRule = "centroid", seed: int = 0, tolerance_mm: float = 5.0, device: str = "auto",
             preprocessing: CropPreprocessing | None = None, keep_component: bool = False,
             progress: bool = False) -> dict:
    """Evaluate a model on a split of an MSD task; write ``output`` (JSON) and a CSV beside it when given.

    ``model``: a registered name, a checkpoint path, a ``torch.nn.Module`` (then ``preprocessing``
    defaults to the task's), or any :data:`Predictor`. ``dataset``: an :class:`MSDDataset` (used as
    is) or its folder (then ``task``, ``split`` and ``splits_file`` choose the cases).
    """
    from torch import nn

    if click not in CLICK_RULES:
        raise InvalidInputError(f"unknown click rule {click!r}; use one of {', '.join(CLICK_RULES)}")
    if not isinstance(dataset, MSDDataset):
        if task is None:
            raise InvalidInputError("a task (colon or pancreas) is needed to read an MSD folder")
        dataset = MSDDataset(dataset, task, split, splits_file)
    if output is not None:
        _check_report_path(Path(output))
    from ProMISeLib.runtime.loader import resolve_device

    name = str(model) if isinstance(model, (str, Path)) else type(model).__name__
    if isinstance(model, (str, Path)):
        torch_device = resolve_device(device)
        module, preprocessing = load_model(model, dataset.task, torch_device)
        predictor: Predictor = RunnerPredictor.for_model(module, preprocessing, torch_device, keep_component)
    elif isinstance(model, nn.Module):
        torch_device = next(model.parameters()).device
        predictor = RunnerPredictor.for_model(model, preprocessing or task_preprocessing(dataset.task),
                                              torch_device, keep_component)
    else:
        predictor = model
    results = evaluate_cases(predictor, dataset, click=click, seed=seed, tolerance_mm=tolerance_mm, progress=progress)
    scored = {r.id for r in results}
    report = {"model": name, "task": dataset.task, "split": dataset.split, "data": str(dataset.root),
              "click": click, "seed": seed, "tolerance_mm": tolerance_mm,
              "postprocessing": "connected object at the click" if keep_component else "threshold 0.5 (paper)",
              **summarise(results), "skipped_empty_label": sorted({c.id for c in dataset.cases} - scored),
              "per_case": [asdict(r) for r in results]}
    if output is not None:
        write_report(Path(output), report)
    return report


def _check_report_path(path: Path) -> None:
    from ProMISeLib.errors import OutputError

    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{path}: folder {folder} does not exist")
    if path.suffix.lower() != ".json":
        raise OutputError(f"{path}: the report must be a .json file (a .csv is written beside it)")


def write_report(path: Path, report: dict) -> tuple[Path, Path]:
    """``path`` (JSON, everything) and ``path`` with ``.csv`` (one row per case), both written atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(report, indent=1)))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "dice", "nsd", "click_k", "click_j", "click_i", "truth_voxels", "predicted_voxels",
                     "seconds"])
    for row in report["per_case"]:
        writer.writerow([row["id"], f"{row['dice']:.6f}", f"{row['nsd']:.6f}", *row["click_kji"],
                         row["truth_voxels"], row["predicted_voxels"], f"{row['seconds']:.2f}"])
    csv_path = path.with_suffix(".csv")
    atomic_write(csv_path, lambda tmp: tmp.write_text(buffer.getvalue()))
    return path, csv_path


def run_cli(args: argparse.Namespace) -> int:
    """``promise evaluate``: the arguments of :func:`ProMISeLib.cli.build_parser` to an :func:`evaluate` run."""
    import sys

    split = args.split or ("test" if args.splits else "all")
    report = evaluate(args.weights or args.model, args.data, split, task=args.task, splits_file=args.splits,
                      output=args.output, click=args.click, seed=args.seed, device=args.device,
                      progress=sys.stderr.isatty())
    for row in report["per_case"]:
        print(f"{row['id']}: Dice {row['dice']:.3f}  NSD {row['nsd']:.3f}")
    if report["cases"]:
        print(f"{report['cases']} case(s): mean Dice {report['mean_dice']:.3f}, "
              f"mean NSD at {report['tolerance_mm']:g} mm {report['mean_nsd']:.3f}")
    print(f"report: {args.output} (and {Path(args.output).with_suffix('.csv')})")
    return 0

