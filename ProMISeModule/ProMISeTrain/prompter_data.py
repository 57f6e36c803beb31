"""Training samples for the learned prompter: frozen embeddings of labelled structures, cached on disk.

For every labelled structure (a tumour, or one organ of a multi-label scan) the ROI crop the
engine would use is simulated from the label: centred on the structure at the click's slice and
sized to ``roi_to_lesion`` diameters, with random jitter of scale and position. Each slice of the
structure, plus a few slices past either end (where the answer is "nothing"), is encoded once by
the frozen encoder; the embeddings are stored as float16 with the label downsampled to the
embedding grid. The wide context crop around the click (the engine's first view) is stored too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from ProMISeLib.io.preprocess import CropWindow, normalize_intensities
from ProMISeLib.io.sample_data import Case, lesion_click, patient_group
from ProMISeLib.io.volumes import atomic_write, read_image, read_label
from ProMISeLib.prompting.net import GRID, downsample_mask
from ProMISeLib.walk.masks import box_of
from ProMISeLib.walk.settings import SeedSettings

FORMAT_VERSION = 2


@dataclass(frozen=True)
class ExtractionSettings:
    """How the simulated ROI crops and slices are chosen."""

    past_end: int = 2  # slices encoded beyond each end of a structure (negatives: the structure has ended)
    max_slices_organ: int = 12  # organs are subsampled to this many slices (tumours keep every slice)
    min_slices: int = 3
    min_diameter_px: int = 6
    roi_to_lesion: float = 4.0  # ROI side / diameter the shipped prompter was trained at (kept apart from the
    # engine's crop_to_lesion so inference settings never change the training recipe)
    scale_range: tuple[float, float] = (0.75, 1.5)  # ROI side jitter around roi_to_lesion x diameter
    shift_fraction: float = 0.08  # ROI centre jitter, fraction of the side
    seed: int = 0


@dataclass
class StructureSamples:
    """One structure's encoded slices (float16 embeddings) and targets on the embedding grid."""

    case_id: str
    structure: str
    group: str  # patient / scan group for leave-one-out (a CT and an MR of one patient share a group)
    click_kji: tuple[int, int, int]
    slices: np.ndarray  # (S,) slice indices with embeddings
    embeddings: np.ndarray  # (S, C, 64, 64) float16, ROI crop
    targets: dict[int, np.ndarray]  # slice -> (64, 64) float32 label fraction, for slices k0-3 .. k1+3
    context_embedding: np.ndarray  # (C, 64, 64) float16, wide crop at the click's slice
    context_target: np.ndarray  # (64, 64)
    context_click: tuple[float, float]  # (row, col) of the click on the context grid (0-64)
    roi_click: tuple[float, float]  # (row, col) of the click on the ROI grid (0-64)
    extent: tuple[int, int]  # first and last slice of the structure


def structures_of(case: Case, label: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """(name, mask) of every structure in a case's label: the tumour, or each organ value."""
    if case.label_values is not None:
        yield "lesion", np.isin(label, case.label_values)
        return
    names: dict[str, str] = {}
    names_file = case.label.with_name(case.label.name.replace(".nii.gz", "_labels.json"))
    if names_file.is_file():
        names = {str(k): str(v) for k, v in json.loads(names_file.read_text()).items()}
    for value in np.unique(label):
        if value:
            yield names.get(str(int(value)), f"label{int(value)}"), label == value


def _simulated_roi(mask2d: np.ndarray, rng: np.random.Generator, settings: ExtractionSettings,
                   propagation: SeedSettings) -> CropWindow:
    box = box_of(mask2d)
    diameter = max(box[2] - box[0], box[3] - box[1])
    scale = float(np.exp(rng.uniform(*np.log(settings.scale_range))))
    side = int(max(propagation.min_crop_px, round(diameter * settings.roi_to_lesion * scale)))
    centre = np.array([(box[1] + box[3]) / 2, (box[0] + box[2]) / 2])
    centre += rng.uniform(-settings.shift_fraction, settings.shift_fraction, 2) * side
    return CropWindow.around((float(centre[0]), float(centre[1])), side)


def _grid_point(crop: CropWindow, j: int, i: int) -> tuple[float, float]:
    scale = GRID / crop.side
    return ((j - crop.j0 + 0.5) * scale, (i - crop.i0 + 0.5) * scale)


def extract_structure(case_id: str, name: str, mask: np.ndarray, volume: np.ndarray, pixel_mm: float,
                      embed: Callable[[np.ndarray, list[int], CropWindow], dict[int, torch.Tensor]],
                      settings: ExtractionSettings, organ: bool) -> StructureSamples | None:
    """Encode one structure's slices in a simulated ROI crop; None when it is too small to use."""
    present = np.flatnonzero(mask.any(axis=(1, 2)))
    if present.size < settings.min_slices:
        return None
    click = lesion_click(mask)
    k_click = click[0]
    box = box_of(mask[k_click])
    if max(box[2] - box[0], box[3] - box[1]) < settings.min_diameter_px:
        return None
    digest = hashlib.blake2b(f"{case_id}/{name}/{settings.seed}".encode(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    propagation = SeedSettings()
    roi = _simulated_roi(mask[k_click], rng, settings, propagation)
    k0, k1 = int(present[0]), int(present[-1])
    inside = list(range(k0, k1 + 1))
    if organ and len(inside) > settings.max_slices_organ:
        picks = np.linspace(0, len(inside) - 1, settings.max_slices_organ).round().astype(int)
        inside = sorted({inside[p] for p in picks} | {k_click})
    depth = volume.shape[0]
    outside = [k for d in range(1, settings.past_end + 1) for k in (k0 - d, k1 + d) if 0 <= k < depth]
    slices = sorted(set(inside) | set(outside))
    features = embed(volume, slices, roi)
    embeddings = np.stack([features[k][0].float().numpy().astype(np.float16) for k in slices])
    targets = {k: downsample_mask(roi.extract(mask[k].astype(np.float32)))
               for k in range(max(k0 - 3, 0), min(k1 + 4, depth))}
    rows, cols = volume.shape[1:]
    side = int(min(max(rows, cols), max(propagation.min_crop_px, round(propagation.context_mm / pixel_mm))))
    context = CropWindow.around((click[1], click[2]), side, snap=propagation.crop_snap)
    context_embedding = embed(volume, [k_click], context)[k_click][0].float().numpy().astype(np.float16)
    return StructureSamples(
        case_id=case_id, structure=name, group=patient_group(case_id), click_kji=click,
        slices=np.array(slices), embeddings=embeddings, targets=targets,
        context_embedding=context_embedding,
        context_target=downsample_mask(context.extract(mask[k_click].astype(np.float32))),
        context_click=_grid_point(context, click[1], click[2]), roi_click=_grid_point(roi, click[1], click[2]),
        extent=(k0, k1),
    )


def save_samples(samples: list[StructureSamples], path: Path) -> None:
    """Write one case's structures to a compressed .npz (atomically)."""
    arrays: dict[str, np.ndarray] = {"version": np.array(FORMAT_VERSION)}
    meta = []
    for index, s in enumerate(samples):
        prefix = f"s{index}_"
        arrays[prefix + "slices"] = s.slices
        arrays[prefix + "embeddings"] = s.embeddings
        keys = sorted(s.targets)
        arrays[prefix + "target_slices"] = np.array(keys)
        arrays[prefix + "targets"] = np.stack([s.targets[k] for k in keys]).astype(np.float16)
        arrays[prefix + "context_embedding"] = s.context_embedding
        arrays[prefix + "context_target"] = s.context_target.astype(np.float16)
        meta.append({"case_id": s.case_id, "structure": s.structure, "group": s.group,
                     "click_kji": list(s.click_kji), "context_click": list(s.context_click),
                     "roi_click": list(s.roi_click), "extent": list(s.extent)})
    arrays["meta"] = np.array(json.dumps(meta))
    atomic_write(path, lambda tmp: np.savez(tmp, **arrays))


def load_samples(path: Path) -> list[StructureSamples]:
    """Read a file written by :func:`save_samples`."""
    with np.load(path) as data:
        if int(data["version"]) != FORMAT_VERSION:
            raise ValueError(f"{path}: old sample format; delete it to re-extract")
        meta = json.loads(str(data["meta"]))
        out = []
        for index, m in enumerate(meta):
            prefix = f"s{index}_"
            keys = data[prefix + "target_slices"]
            targets = dict(zip(keys.tolist(), data[prefix + "targets"].astype(np.float32), strict=True))
            out.append(StructureSamples(
                case_id=m["case_id"], structure=m["structure"], group=m["group"],
                click_kji=tuple(m["click_kji"]), slices=data[prefix + "slices"],
                embeddings=data[prefix + "embeddings"], targets=targets,
                context_embedding=data[prefix + "context_embedding"],
                context_target=data[prefix + "context_target"].astype(np.float32),
                context_click=tuple(m["context_click"]), roi_click=tuple(m["roi_click"]), extent=tuple(m["extent"]),
            ))
    return out


def cache_file(cache: Path, case_id: str, settings: ExtractionSettings) -> Path:
    """Where one case's samples are cached: the name carries a digest of everything that shapes them
    (the extraction settings, the engine's context crop, the file format), so a changed recipe never
    reads samples made under another."""
    propagation = SeedSettings()
    recipe = {"format": FORMAT_VERSION, "extraction": asdict(settings), "context_mm": propagation.context_mm,
              "min_crop_px": propagation.min_crop_px, "crop_snap": propagation.crop_snap}
    digest = hashlib.blake2b(json.dumps(recipe, sort_keys=True).encode(), digest_size=6).hexdigest()
    return cache / f"{case_id}-{digest}.npz"


def extract_case(case: Case, embed, settings: ExtractionSettings, cache: Path) -> list[StructureSamples]:
    """All usable structures of one case, from the cache file of the same recipe when present."""
    path = cache_file(cache, case.id, settings)
    if path.is_file():
        return load_samples(path)
    volume, geometry = read_image(case.image)
    label = read_label(case.label, geometry)
    normalised, _ = normalize_intensities(volume, "auto")
    pixel_mm = float(np.sqrt(geometry.spacing[0] * geometry.spacing[1]))
    organ = case.label_values is None
    samples = []
    for name, mask in structures_of(case, label):
        found = extract_structure(case.id, name, mask, normalised, pixel_mm, embed, settings, organ)
        if found is not None:
            samples.append(found)
    save_samples(samples, path)
    return samples
