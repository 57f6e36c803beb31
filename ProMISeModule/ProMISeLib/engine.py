"""The public engine API: a :class:`Segmenter` that turns clicks into a 3D mask.

    from ProMISeLib.engine import Segmenter
    segmenter = Segmenter(model="litemedsam", device="auto")
    result = segmenter.segment(volume_kji, geometry, points=[(x, y, z)], space="lps")
    result.mask  # uint8 (K, J, I) on the input grid

The segmenter loads its model once and keeps an embedding cache, so calling it again for the
same lesion (a refinement click, a moved fiducial) runs only the cheap decoder.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .backends import TorchBackend
from .errors import DeviceUnavailableError, EmptySegmentationError, InvalidInputError
from .geometry import ImageGeometry, Space
from .models.registry import DEFAULT_MODEL, get_model_spec
from .predictor import EmbeddingCache, SlicePredictor
from .preprocess import Modality, normalize_intensities
from .propagation import LesionPropagator, PropagationSettings, assemble
from .result import SegmentationResult, bounding_box
from .validation import validate_volume
from .weights import resolve_weights

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without CUDA is an error, never a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceUnavailableError("--device cuda was requested but CUDA is not available on this machine")
        return torch.device(device)
    raise InvalidInputError(f"unknown device {device!r}; use auto, cpu or cuda")


class Segmenter:
    """A loaded model plus its embedding cache; call :meth:`segment` as often as needed."""

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "auto", weights: str | None = None,
                 cache_mb: float = 1024.0, settings: PropagationSettings | None = None, runtime: str = "torch",
                 onnx_dir: str | None = None, precision: str = "fp32") -> None:
        self.spec = get_model_spec(model)
        if runtime not in ("torch", "onnx"):
            raise InvalidInputError(f"unknown runtime {runtime!r}; use torch or onnx")
        if precision not in ("fp32", "fp16"):
            raise InvalidInputError(f"unknown precision {precision!r}; use fp32 or fp16")
        self.precision = precision
        self.runtime = runtime
        self.onnx_dir = onnx_dir
        self.device = resolve_device(device)
        if precision == "fp16" and (self.device.type != "cuda" or runtime != "torch"):
            raise InvalidInputError("fp16 runs on CUDA with the torch runtime only")
        self.messages: list[str] = []
        self.weights_path = weights
        self.settings = settings or PropagationSettings(point_prompts=self.spec.point_prompts)
        self.cache = EmbeddingCache(cache_mb)
        self._predictor: SlicePredictor | None = None
        self._normalised: tuple[weakref.ref, str, np.ndarray, str] | None = None

    @property
    def model_name(self) -> str:
        return self.spec.name

    def load(self) -> SlicePredictor:
        """Load the weights (hash-checked) and build the model, once."""
        if self._predictor is None:
            if self.runtime == "onnx":
                model = self._onnx_backend()
            else:
                module = self.spec.build(resolve_weights(self.spec.weights, self.weights_path)).to(self.device)
                model = TorchBackend(module, self.device, half=self.precision == "fp16")
            batch = 16 if self.device.type == "cuda" else 4
            self._predictor = SlicePredictor(model, self.spec.name, self.spec.scaling, self.device, self.cache, batch)
        return self._predictor

    def _onnx_backend(self):
        """ONNX Runtime sessions from ``onnx_dir`` (exported into the cache on first use if not given)."""
        from .onnx_backend import MANIFEST, OnnxBackend, export_onnx
        from .settings import cache_dir

        directory = self.onnx_dir or cache_dir() / "onnx" / self.spec.name
        if self.onnx_dir is None and not (directory / MANIFEST).is_file():
            export_onnx(self.spec.name, directory, self.weights_path)
        backend = OnnxBackend(directory, device=self.device.type, expected_model=self.spec.name)
        self.messages.extend(backend.messages)
        return backend

    def _normalise(self, volume: np.ndarray, modality: Modality) -> tuple[np.ndarray, str]:
        """Normalised volume, reused while the very same array object is segmented again.

        A weak reference identifies the array (an ``id`` could be reused by a later array); the
        caller must not modify the array in place between calls.
        """
        cached = self._normalised
        if cached is not None and cached[0]() is volume and cached[1] == modality:
            return cached[2], cached[3]
        normalised, used = normalize_intensities(volume, modality)
        try:
            self._normalised = (weakref.ref(volume), modality, normalised, used)
        except TypeError:  # a view type without weak references: do not cache
            self._normalised = None
        return normalised, used

    def segment(self, volume: np.ndarray, geometry: ImageGeometry, points: Sequence[Sequence[float]],
                negative_points: Sequence[Sequence[float]] | None = None, space: Space = "lps",
                modality: Modality = "auto", progress: ProgressFn | None = None,
                cancel: CancelFn | None = None) -> SegmentationResult:
        """Segment the lesion at ``points`` (positive clicks) in a (K, J, I) ``volume``.

        Points are in ``space`` ('lps', 'ras' or 'ijk'). Raises PointOutsideImageError for a
        click outside the image, EmptySegmentationError when nothing is found, and
        SegmentationCancelled when ``cancel()`` turns true.
        """
        started = time.perf_counter()
        volume = validate_volume(np.asarray(volume))
        if volume.shape != geometry.shape_kji:
            raise InvalidInputError(f"array shape {volume.shape} does not match the geometry {geometry.shape_kji}")
        if points is None or len(points) == 0:
            raise InvalidInputError("at least one positive point is needed")
        positives = [tuple(int(v) for v in p) for p in geometry.to_voxel_kji(np.asarray(points, float), space)]
        negatives = []
        if negative_points is not None and len(negative_points):
            negatives = [tuple(int(v) for v in p)
                         for p in geometry.to_voxel_kji(np.asarray(negative_points, float), space)]
        if progress:
            progress(0.0, "loading model")
        predictor = self.load()
        encoded_before, hits_before = predictor.encoded, self.cache.hits
        normalised, _ = self._normalise(volume, modality)
        spacing_ji = (geometry.spacing[1], geometry.spacing[0])
        propagator = LesionPropagator(predictor, normalised, spacing_ji, geometry.spacing[2], self.settings,
                                      progress, cancel)
        lesions = []
        covered = np.zeros(volume.shape, dtype=bool)
        for index, click in enumerate(positives):
            if covered[click]:
                continue  # already inside a lesion found from an earlier click: used as a point prompt
            if progress:
                progress(0.05, f"finding the lesion at click {index + 1}")
            crop, seed_mask, score = propagator.seed(click, positives, negatives)
            if score < 0.5:
                propagator.messages.append(f"weak result: the model's confidence at the click is {score:.2f}")
            extents = propagator.orthogonal_extents(click) if self.settings.orthogonal_stop else None
            lesion = propagator.propagate(click[0], crop, seed_mask, positives, negatives, extents=extents)
            lesions.append(lesion)
            covered |= assemble(volume.shape, [lesion], []).astype(bool)
        mask = assemble(volume.shape, lesions, negatives)
        if not mask.any():
            raise EmptySegmentationError("the result is empty (negative clicks removed everything)")
        messages = self.messages + list(propagator.messages)
        for lesion in lesions:
            messages.extend(lesion.stops)
            for k, m in lesion.masks.items():
                edge = lesion.crop
                if m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any():
                    rows, cols = volume.shape[1:]
                    inside = edge.j0 > 0 or edge.i0 > 0 or edge.j0 + edge.side < rows or edge.i0 + edge.side < cols
                    if inside:
                        messages.append(f"the lesion reaches the edge of the analysed region on slice {k}")
                        break
        if progress:
            progress(1.0, "done")
        return SegmentationResult(
            mask=mask, geometry=geometry, bbox_kji=bounding_box(mask), elapsed_s=time.perf_counter() - started,
            method="heuristic box prompts", model=self.spec.name, device=str(self.device), messages=messages,
            runtime=self._predictor.backend.runtime,
            encoded_slices=predictor.encoded - encoded_before, cached_slices=self.cache.hits - hits_before,
        )


_DEFAULT_SEGMENTERS: dict[tuple[str, str], Segmenter] = {}


def segment(volume: np.ndarray, geometry: ImageGeometry, points: Sequence[Sequence[float]],
            negative_points: Sequence[Sequence[float]] | None = None, space: Space = "lps",
            model: str = DEFAULT_MODEL, device: str = "auto", **kwargs) -> SegmentationResult:
    """One-call API: a shared :class:`Segmenter` per (model, device) segments the clicks."""
    key = (model, device)
    if key not in _DEFAULT_SEGMENTERS:
        _DEFAULT_SEGMENTERS[key] = Segmenter(model=model, device=device)
    return _DEFAULT_SEGMENTERS[key].segment(volume, geometry, points, negative_points, space, **kwargs)
