"""Medical Segmentation Decathlon (MSD) task folders: cases, splits, volumes and 1 mm crops.

An MSD task folder holds ``dataset.json`` (``training``: a list of ``{"image", "label"}``
paths, ``test``: unlabelled images), ``imagesTr/`` and ``labelsTr/``. A case's id is its image
file name without ``.nii.gz`` (``colon_001``), the names used by split files such as the ProMISe
fold-0 JSON (``{"colon": {"train": [...], "val": [...], "test": [...]}, ...}``; a file with the
``train``/``val``/``test`` lists at its top level works too).

ProMISe (Li et al., ISBI 2024) trains and tests on 1 mm isotropic crops around a point. Crops
are resampled here directly from the scan with SimpleITK (one interpolation, any rotation or
zoom folded in), rather than resampling the whole scan to 1 mm first: the same voxels, far less
memory. Crop arrays are in (D, H, W) = SimpleITK's (K, J, I) order; outside the scan they hold
0 after normalisation (the window-clipped mean intensity).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import SimpleITK as sitk
from ProMISeLib.errors import ImageReadError, InvalidInputError
from ProMISeLib.io.geometry import ImageGeometry

#: MSD task names and the label value ProMISe segments in each (colon cancer 1, pancreas tumour 2).
TASK_LABELS: dict[str, int] = {"colon": 1, "pancreas": 2}
#: The registered model (and so the preprocessing) of each task.
TASK_MODELS: dict[str, str] = {"colon": "promise-colon", "pancreas": "promise-pancreas"}
SPLITS = ("train", "val", "test", "all")


class CropPreprocessing(Protocol):
    """What cropping needs from a model's preprocessing (``Promise3DPreprocessing`` holds the numbers)."""

    window: tuple[float, float]
    mean: float
    std: float
    spacing_mm: float


def task_preprocessing(task: str) -> CropPreprocessing:
    """The preprocessing (window, mean, std, spacing) of ``task``'s released ProMISe model."""
    from ProMISeLib.models.promise3d.config import PRESETS

    return PRESETS[TASK_MODELS[check_task(task)]].preprocessing


def check_task(task: str) -> str:
    """``task`` if known, else an InvalidInputError naming the choices."""
    if task not in TASK_LABELS:
        raise InvalidInputError(f"unknown task {task!r}; choose one of {', '.join(TASK_LABELS)}")
    return task


@dataclass(frozen=True)
class MSDCase:
    """One labelled case of an MSD task folder."""

    id: str
    image: Path
    label: Path


def case_id(path: str | Path) -> str:
    """``imagesTr/colon_001.nii.gz`` -> ``colon_001``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _read_json(path: Path):
    """A JSON file's content, or a one-line InvalidInputError."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path}: cannot be read as JSON ({exc})") from exc


def read_dataset_json(root: str | Path) -> dict:
    """The parsed ``dataset.json`` of an MSD folder, with one-line errors when it is missing or broken."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InvalidInputError(f"{root}: no such dataset folder")
    manifest = root / "dataset.json"
    if not manifest.is_file():
        raise InvalidInputError(f"{root}: no dataset.json; not an MSD task folder")
    data = _read_json(manifest)
    if not isinstance(data, dict) or not isinstance(data.get("training"), list):
        raise InvalidInputError(f"{manifest}: has no 'training' list")
    return data


def load_splits(path: str | Path, task: str) -> dict[str, list[str]]:
    """``{"train": ids, "val": ids, "test": ids}`` for ``task`` from a split file (fold-0 format)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such split file")
    data = _read_json(path)
    if isinstance(data, dict) and task in data and isinstance(data[task], dict):
        data = data[task]
    if not isinstance(data, dict) or not any(isinstance(data.get(s), list) for s in ("train", "val", "test")):
        raise InvalidInputError(f"{path}: no train/val/test lists for task {task!r}")
    return {s: [str(v) for v in data.get(s, [])] for s in ("train", "val", "test")}


class MSDDataset:
    """The labelled cases of one MSD task folder, optionally limited to one split."""

    def __init__(self, root: str | Path, task: str, split: str = "all", splits_file: str | Path | None = None):
        self.root = Path(root).expanduser()
        self.task = check_task(task)
        self.label_value = TASK_LABELS[task]
        if split not in SPLITS:
            raise InvalidInputError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        self.split = split
        manifest = read_dataset_json(self.root)
        every = []
        for entry in manifest["training"]:
            if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                raise InvalidInputError(f"{self.root / 'dataset.json'}: a training entry lacks image or label")
            every.append(MSDCase(case_id(entry["image"]), self._path(entry["image"]), self._path(entry["label"])))
        self.cases = self._select(every, split, splits_file)
        for case in self.cases:
            for path in (case.image, case.label):
                if not path.is_file():
                    raise InvalidInputError(f"{path}: listed in dataset.json but missing")

    def _path(self, relative: str) -> Path:
        return (self.root / relative).resolve()

    def _select(self, every: list[MSDCase], split: str, splits_file: str | Path | None) -> list[MSDCase]:
        if splits_file is None:
            if split in ("val", "test"):
                raise InvalidInputError(f"split {split!r} needs a split file (--splits); without one "
                                        "every labelled case is used for training")
            return every
        if split == "all":
            return every
        wanted = load_splits(splits_file, self.task)[split]
        by_id = {case.id: case for case in every}
        missing = [i for i in wanted if i not in by_id]
        if missing:
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise InvalidInputError(f"{splits_file}: {len(missing)} {split} case(s) not in {self.root} ({shown})")
        return [by_id[i] for i in wanted]

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, ImageGeometry]]:
        """(image float32, binary label bool, geometry) per case, (K, J, I) arrays on the scan's grid."""
        for case in self.cases:
            volumes = load_case(case, self.label_value)
            yield volumes.image_array(), volumes.label_array(), volumes.geometry


@dataclass
class CaseVolumes:
    """A case read with SimpleITK: the scan, its binary label (uint8 0/1) on the same grid, and voxel lists."""

    id: str
    image: sitk.Image
    label: sitk.Image
    geometry: ImageGeometry
    _foreground: np.ndarray | None = None

    def image_array(self) -> np.ndarray:
        return sitk.GetArrayFromImage(self.image).astype(np.float32, copy=False)

    def label_array(self) -> np.ndarray:
        return sitk.GetArrayFromImage(self.label).astype(bool)

    def foreground(self) -> np.ndarray:
        """Flat (K, J, I) indices of the label's voxels (cached)."""
        if self._foreground is None:
            self._foreground = np.flatnonzero(sitk.GetArrayViewFromImage(self.label))
        return self._foreground


def _read(path: Path) -> sitk.Image:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ImageReadError(f"{path}: cannot be read as an image") from exc
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidInputError(f"{path}: a 3D scalar image is needed")
    return image


def load_case(case: MSDCase, label_value: int) -> CaseVolumes:
    """Read a case; the label becomes ``label == label_value``. Raises when the label grid differs."""
    image = _read(case.image)
    label = _read(case.label)
    geometry = ImageGeometry.from_sitk(image)
    other = ImageGeometry.from_sitk(label)
    if other.size != geometry.size or not np.allclose(other.index_to_lps_matrix(), geometry.index_to_lps_matrix(),
                                                      atol=1e-3):
        raise InvalidInputError(f"{case.label}: label geometry differs from the image (size {other.size} vs "
                                f"{geometry.size}, spacing {other.spacing} vs {geometry.spacing})")
    binary = sitk.Cast(label == label_value, sitk.sitkUInt8)
    binary.CopyInformation(image)  # headers equal within 1e-3 mm; make them identical for resampling
    return CaseVolumes(case.id, image, binary, geometry)


class CaseCache:
    """The last few cases read (a small LRU), so repeated crops of one case skip the disk."""

    def __init__(self, size: int = 2):
        self.size = size
        self._items: OrderedDict[str, CaseVolumes] = OrderedDict()

    def get(self, case: MSDCase, label_value: int) -> CaseVolumes:
        key = f"{case.image}|{label_value}"
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        volumes = load_case(case, label_value)
        if self.size > 0:
            self._items[key] = volumes
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return volumes


# --- crops -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CropGrid:
    """A cubic grid of ``size`` voxels centred on ``centre_lps`` (voxel size//2 holds the centre)."""

    centre_lps: tuple[float, float, float]
    size: int
    spacing: tuple[float, float, float]  # (i, j, k) mm
    direction: tuple[float, ...]  # 9 values, columns = the crop's i, j, k axes in LPS

    @classmethod
    def around(cls, centre_lps: Sequence[float], geometry: ImageGeometry, size: int, spacing_mm: float = 1.0,
               rotation_deg: float = 0.0, zoom: Sequence[float] = (1.0, 1.0, 1.0)) -> CropGrid:
        """A crop aligned with the scan's axes, optionally rotated about its K axis and zoomed per (i, j, k) axis.

        A zoom above 1 magnifies (the crop covers less anatomy); the rotation turns the crop in the
        scan's I-J (axial) plane.
        """
        angle = np.deg2rad(rotation_deg)
        c, s = np.cos(angle), np.sin(angle)
        rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        direction = geometry.direction_matrix @ rotation
        spacing = tuple(float(spacing_mm / z) for z in zoom)
        return cls(tuple(float(v) for v in centre_lps), int(size), spacing,
                   tuple(float(v) for v in direction.ravel()))

    @property
    def origin_lps(self) -> np.ndarray:
        half = np.full(3, self.size // 2, dtype=float) * np.asarray(self.spacing)
        return np.asarray(self.centre_lps) - np.asarray(self.direction).reshape(3, 3) @ half

    @property
    def geometry(self) -> ImageGeometry:
        return ImageGeometry((self.size,) * 3, self.spacing, tuple(float(v) for v in self.origin_lps),
                             self.direction)

    def resample(self, image: sitk.Image, linear: bool = True) -> np.ndarray:
        """``image`` sampled on this grid as float32 (K, J, I); NaN outside the scan."""
        out = sitk.Resample(image, [self.size] * 3, sitk.Transform(),
                            sitk.sitkLinear if linear else sitk.sitkNearestNeighbor,
                            tuple(float(v) for v in self.origin_lps), self.spacing, self.direction,
                            float("nan"), sitk.sitkFloat32)
        return sitk.GetArrayFromImage(out)


def normalise(raw: np.ndarray, preprocessing: CropPreprocessing, shift_hu: float = 0.0) -> np.ndarray:
    """Clip to the window, add ``shift_hu`` (augmentation), z-normalise; NaN (outside the scan) -> 0."""
    low, high = preprocessing.window
    out = np.clip(raw, low, high) + np.float32(shift_hu)
    out = (out - np.float32(preprocessing.mean)) / np.float32(preprocessing.std)
    return np.nan_to_num(out, nan=0.0).astype(np.float32, copy=False)


def image_crop(volumes: CaseVolumes, grid: CropGrid, preprocessing: CropPreprocessing,
               shift_hu: float = 0.0) -> np.ndarray:
    """The normalised model input on ``grid`` (D, H, W)."""
    return normalise(grid.resample(volumes.image), preprocessing, shift_hu)


def label_crop(volumes: CaseVolumes, grid: CropGrid) -> np.ndarray:
    """The binary label on ``grid`` (uint8 D, H, W): linear interpolation thresholded at 0.5, as upstream."""
    values = grid.resample(volumes.label)
    return (np.nan_to_num(values, nan=0.0) >= 0.5).astype(np.uint8)
