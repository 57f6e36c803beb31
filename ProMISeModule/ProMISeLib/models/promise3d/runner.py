"""ProMISe 3D on a whole volume: a 1 mm crop around each click, the model, the probability back on the grid.

For each positive click (a voxel of the input grid):

1. a ``crop_size``³ grid at the model's spacing (1 mm), with the input's direction cosines and the
   click at voxel ``crop_size // 2`` on every axis, is resampled from the volume with SimpleITK
   (linear; past the image edge it reads the intensity that normalises to 0, i.e. zero padding);
2. intensities are clipped to the model's window and z-normalised with its fixed statistics;
3. the model runs once (every positive click inside the crop is a point prompt);
4. the softmax foreground is resampled (linear) back onto the input grid, where crops overlap the
   larger probability wins; 0.5 is the threshold; the connected component at each click is kept.

    runner = Promise3DRunner.load(path, device="cpu")
    result = runner.segment(volume_kji, geometry, [(k, j, i)], progress=..., cancel=...)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ProMISeLib.errors import EmptySegmentationError, PointOutsideImageError, SegmentationCancelled
from ProMISeLib.io.geometry import ImageGeometry
from ProMISeLib.models.promise3d.config import Promise3DPreprocessing

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]

METHOD = "ProMISe 3D (Li et al.)"


@dataclass
class Promise3DResult:
    """A uint8 (K, J, I) mask on the input grid, the crop grids the model saw, and notes for the user."""

    mask: np.ndarray
    crops: list[ImageGeometry] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


# --- geometry ---------------------------------------------------------------------------------
def crop_geometry(geometry: ImageGeometry, click_kji: Sequence[int], crop_size: int,
                  spacing_mm: float) -> ImageGeometry:
    """The model's crop grid: input directions, isotropic ``spacing_mm``, the click at voxel ``crop_size // 2``."""
    centre = geometry.index_to_lps(np.asarray(click_kji[::-1], dtype=float))
    half = crop_size // 2
    origin = centre - geometry.direction_matrix @ np.full(3, half * spacing_mm)
    return ImageGeometry(size=(crop_size,) * 3, spacing=(float(spacing_mm),) * 3,
                         origin=tuple(float(v) for v in origin), direction=geometry.direction)


def to_sitk(array_kji: np.ndarray, geometry: ImageGeometry) -> sitk.Image:
    """A float32 SimpleITK image of ``array_kji`` placed on ``geometry``."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_kji, dtype=np.float32))
    geometry.apply_to_sitk(image)
    return image


def resample(image: sitk.Image, target: ImageGeometry, default: float) -> np.ndarray:
    """``image`` linearly resampled onto ``target`` (physical space), as a float32 (K, J, I) array."""
    reference = sitk.Image([int(v) for v in target.size], sitk.sitkFloat32)
    target.apply_to_sitk(reference)
    out = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, float(default), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def footprint(geometry: ImageGeometry, crop: ImageGeometry) -> tuple[slice, slice, slice] | None:
    """The (K, J, I) block of ``geometry`` that ``crop`` covers, or None when it misses the image."""
    edge = np.array([-0.5, crop.size[0] - 0.5])
    corners = np.array([[a, b, c] for a in edge for b in edge for c in edge])
    index = geometry.lps_to_index(crop.index_to_lps(corners))
    low = np.maximum(np.floor(index.min(axis=0)).astype(int), 0)
    high = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 1, np.asarray(geometry.size))
    if np.any(high <= low):
        return None
    return tuple(slice(int(lo), int(hi)) for lo, hi in zip(low[::-1], high[::-1], strict=True))


def normalise(raw: np.ndarray, preprocessing: Promise3DPreprocessing) -> np.ndarray:
    """Clip to the window (HU), subtract the mean, divide by the std (float32)."""
    low, high = preprocessing.window
    out = np.clip(raw, low, high).astype(np.float32, copy=False)
    return (out - np.float32(preprocessing.mean)) / np.float32(preprocessing.std)


# --- the runner -------------------------------------------------------------------------------
class Promise3DRunner:
    """A loaded ProMISe 3D model and its preprocessing; :meth:`segment` as often as needed."""

    def __init__(self, model: torch.nn.Module, preprocessing: Promise3DPreprocessing,
                 device: torch.device | str = "cpu", half: bool = False) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.preprocessing = preprocessing
        self.half = half and self.device.type == "cuda"
        self.crop_size = int(model.config.crop_size)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu", half: bool = False,
             verify: bool = True) -> Promise3DRunner:
        """From one of our weights files (safetensors + sidecar; see :mod:`ProMISeLib.models.promise3d.checkpoint`)."""
        from ProMISeLib.models.promise3d.checkpoint import load_promise3d

        model, preprocessing = load_promise3d(path, device="cpu", verify=verify)
        return cls(model, preprocessing, device, half)

    @property
    def runtime(self) -> str:
        return "torch-fp16" if self.half else "torch"

    def predict_crop(self, crop: np.ndarray, points_dhw: np.ndarray,
                     on_step: Callable[[int, int], None] | None = None) -> np.ndarray:
        """A normalised (S, S, S) crop and (N, 3) crop voxels -> foreground probability (S, S, S)."""
        image = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None, None].to(self.device)
        points = torch.as_tensor(np.asarray(points_dhw, dtype=np.float32))[None].to(self.device)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self.half):
            logits = self.model(image, points, on_step=on_step)
        return torch.softmax(logits.float(), dim=1)[0, 1].cpu().numpy()

    def segment(self, volume: np.ndarray, geometry: ImageGeometry, clicks_kji: Sequence[Sequence[int]],
                progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> Promise3DResult:
        """Segment the object at each click; raises PointOutsideImageError, EmptySegmentationError,
        SegmentationCancelled."""
        clicks = [tuple(int(v) for v in c) for c in clicks_kji]
        for click in clicks:
            if len(click) != 3 or any(v < 0 or v >= n for v, n in zip(click, volume.shape, strict=True)):
                raise PointOutsideImageError(f"voxel {click} (k, j, i) lies outside the image {volume.shape}")
        if not clicks:
            raise EmptySegmentationError("no click to segment")

        def check_cancel() -> None:
            if cancel is not None and cancel():
                raise SegmentationCancelled("segmentation cancelled")

        pre = self.preprocessing
        image = to_sitk(volume, geometry)
        probability = np.zeros(volume.shape, dtype=np.float32)
        result = Promise3DResult(mask=np.zeros(volume.shape, dtype=np.uint8))
        blocks: list[tuple[slice, slice, slice]] = []
        clicks_lps = geometry.index_to_lps(np.asarray([c[::-1] for c in clicks], dtype=float))
        for n, click in enumerate(clicks):
            check_cancel()
            if probability[click] > 0.5:
                continue  # inside the object of an earlier click
            start, span = 0.05 + 0.9 * n / len(clicks), 0.9 / len(clicks)
            if progress:
                progress(start, f"ProMISe 3D: resampling around click {n + 1}")
            grid = crop_geometry(geometry, click, self.crop_size, pre.spacing_mm)
            crop = normalise(resample(image, grid, pre.pad_value), pre)
            inside = grid.lps_to_index(clicks_lps)[:, ::-1]  # every click in crop (k, j, i) = (d, h, w)
            keep = np.all((inside > -0.5) & (inside < self.crop_size - 0.5), axis=1)
            points = np.vstack([np.full((1, 3), float(self.crop_size // 2)), inside[keep & (np.arange(len(clicks))
                                                                                            != n)]])

            def on_step(done: int, total: int, start: float = start, span: float = span) -> None:
                check_cancel()
                if progress:
                    progress(start + span * 0.9 * done / total, f"ProMISe 3D: encoder block {done}/{total}")

            crop_probability = self.predict_crop(crop, points, on_step)
            check_cancel()
            block = footprint(geometry, grid)
            if block is not None:
                sub = geometry.with_size([s.stop - s.start for s in block[::-1]], [s.start for s in block[::-1]])
                back = resample(to_sitk(crop_probability, grid), sub, 0.0)
                np.maximum(probability[block], back, out=probability[block])
                blocks.append(block)
            result.crops.append(grid)
        if progress:
            progress(0.96, "ProMISe 3D: keeping the object at the click")
        result.mask = self._components(probability > 0.5, blocks, clicks, geometry, result.messages)
        if progress:
            progress(1.0, "done")
        return result

    @staticmethod
    def _components(foreground: np.ndarray, blocks: list[tuple[slice, slice, slice]],
                    clicks: list[tuple[int, int, int]], geometry: ImageGeometry, messages: list[str]) -> np.ndarray:
        """The connected components (26-connected) of ``foreground`` at the clicks, as uint8."""
        from scipy import ndimage

        if not foreground.any():
            raise EmptySegmentationError("ProMISe 3D found nothing at the click (no voxel above 0.5)")
        low = np.min([[s.start for s in b] for b in blocks], axis=0)
        high = np.max([[s.stop for s in b] for b in blocks], axis=0)
        region = tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
        labels, _ = ndimage.label(foreground[region], structure=np.ones((3, 3, 3), dtype=bool))
        spacing = np.asarray(geometry.spacing[::-1])
        keep = set()
        for click in clicks:
            local = tuple(c - s.start for c, s in zip(click, region, strict=True))
            if all(0 <= v < n for v, n in zip(local, labels.shape, strict=True)) and labels[local]:
                keep.add(int(labels[local]))
                continue
            voxels = np.argwhere(labels > 0)
            nearest = voxels[np.argmin((((voxels - np.asarray(local)) * spacing) ** 2).sum(axis=1))]
            keep.add(int(labels[tuple(nearest)]))
            distance = float(np.sqrt((((nearest - np.asarray(local)) * spacing) ** 2).sum()))
            messages.append(f"the click {click} is not inside the result; kept the object {distance:.1f} mm away")
        mask = np.zeros(foreground.shape, dtype=np.uint8)
        mask[region] = np.isin(labels, sorted(keep)).astype(np.uint8)
        return mask


def segment_volume3d(runner: Promise3DRunner, model: str, volume: np.ndarray, geometry: ImageGeometry,
                     positives: list, negatives: list, modality_used: str, notes: list[str], progress=None,
                     cancel=None):
    """ProMISe 3D on one volume: one crop per positive click, no slice walk; a SegmentationResult."""
    import time

    from ProMISeLib.result import SegmentationResult, bounding_box

    started = time.perf_counter()
    out = runner.segment(volume, geometry, positives, progress=progress, cancel=cancel)
    messages = list(notes)
    if negatives:
        messages.append("negative clicks are not used by ProMISe 3D (its prompt encoder has no labels)")
    if modality_used == "mr":
        messages.append("ProMISe 3D was trained on CT (Hounsfield units); this image does not look like CT")
    messages.extend(out.messages)
    return SegmentationResult(mask=out.mask, geometry=geometry, bbox_kji=bounding_box(out.mask),
                              elapsed_s=time.perf_counter() - started, method=METHOD, model=model,
                              device=str(runner.device), messages=messages, runtime=runner.runtime)
