"""The public engine API: a :class:`Segmenter` that turns clicks (and a box) into a 3D mask.

    from ProMISeLib.engine import Segmenter
    segmenter = Segmenter(model="litemedsam", device="auto")
    result = segmenter.segment(volume_kji, geometry, points=[(x, y, z)], space="lps")
    result.mask  # uint8 (K, J, I) on the input grid

The segmenter validates the input, turns the clicks into voxels once, and hands the work to the
slice walk (``ProMISeLib.walk``) or to a whole-volume 3D model. It loads its model once and keeps an
embedding cache, so calling it again for the same lesion (a moved fiducial) runs only the cheap
decoder. It also remembers the lesions it found on the current volume: a call that adds positive or
negative clicks to an earlier call's redoes only the slices near the new clicks, and the same clicks
again cost nothing.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ProMISeLib.errors import EmptySegmentationError, InvalidInputError
from ProMISeLib.io.geometry import ImageGeometry, Space
from ProMISeLib.io.preprocess import Modality, detect_modality, normalize_intensities
from ProMISeLib.io.validation import validate_volume
from ProMISeLib.io.weights import resolve_weights
from ProMISeLib.models.registry import DEFAULT_MODEL, VOLUME3D, get_model_spec
from ProMISeLib.prompting import check_prompts
from ProMISeLib.result import SegmentationResult, bounding_box
from ProMISeLib.runtime.embedding_store import EmbeddingStore
from ProMISeLib.runtime.loader import (
    check_precision,
    choose_runtime,
    encode_ahead_for,
    encode_batch_size,
    load_backend,
    resolve_device,
)
from ProMISeLib.runtime.predictor import EmbeddingCache, SlicePredictor
from ProMISeLib.walk import WALK_DEFAULTS, SliceMasks, WalkPlugin, WalkSettings, assemble
from ProMISeLib.walk.choose import chooser_for
from ProMISeLib.walk.context import WalkContext
from ProMISeLib.walk.correct import slices_past_ends
from ProMISeLib.walk.lesions import click_key, lesions_afresh, lesions_refined
from ProMISeLib.walk.memory import LesionMemory

if TYPE_CHECKING:  # SimpleITK is imported only when a 3D model runs
    from ProMISeLib.models.promise3d.runner import Promise3DRunner

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]
HEURISTIC_METHOD = "heuristic box prompts"


class Segmenter:
    """A loaded model plus its embedding cache; call :meth:`segment` as often as needed."""

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "auto", weights: str | None = None,
                 cache_mb: float = 1024.0, settings: WalkSettings | None = None, runtime: str = "auto",
                 onnx_dir: str | None = None, precision: str = "fp32",
                 prompts: str = "auto", prompter_weights: str | None = None,
                 plugins: Sequence[WalkPlugin] = (), embedding_store: str | EmbeddingStore | None = None) -> None:
        """``prompts`` chooses how clicks become per-slice boxes: ``heuristic`` (the rule-based box
        search), ``learned`` (the backbone's trained prompter, or ``prompter_weights``, picks each box),
        ``fused`` (the rule-based candidates, ranked by the learned prompter), or ``auto``: the mode the
        prompter's card names as its default, else heuristic.

        ``runtime``: ``auto`` runs ONNX Runtime on a CPU where it is installed (same masks, faster; the
        model is exported into the cache on first use) and PyTorch otherwise; :attr:`runtime` is the one
        chosen. Should ONNX Runtime fail to load, ``auto`` runs PyTorch and says so in :attr:`messages`;
        an explicit ``onnx`` raises instead.

        ``plugins`` (:class:`~ProMISeLib.walk.WalkPlugin`) see every step of the walk and may choose its
        candidate, end it, or change the torch model (the walk's one extension point).

        ``embedding_store`` (a folder, or an :class:`EmbeddingStore`) keeps every crop's embedding on disk, so a
        later run (another process, another day) encodes only crops it has not seen.

        ``settings`` (:class:`~ProMISeLib.walk.WalkSettings`) replace the prompt mode's defaults
        (``WALK_DEFAULTS``); ``settings=None`` runs each mode with its own.
        """
        self.spec = get_model_spec(model)
        self.prompts = check_prompts(prompts)
        self.prompter_weights = prompter_weights
        self.plugins = tuple(plugins)
        self._prompter = None
        self._prompter_resolved = False
        self._mode = "heuristic"  # the prompts that run, once resolved
        if self.spec.kind == VOLUME3D and runtime == "onnx":
            raise InvalidInputError(f"{model} runs with the torch runtime only")
        self._volume3d = None  # a Promise3DRunner, for volume3d models
        self.precision = precision
        self.onnx_dir = onnx_dir
        self.device = resolve_device("cpu" if precision == "int8" and device == "auto" else device)
        self.messages: list[str] = []
        self.requested_runtime = runtime
        asked = "onnx" if runtime == "auto" and onnx_dir else runtime  # an export directory asks for ONNX Runtime
        adapts = any(p.adapts_model for p in self.plugins)
        self.runtime, note = choose_runtime(asked, model, self.device, precision, adapts)  # "torch" or "onnx"
        if note:
            self.messages.append(note)
        check_precision(precision, self.device, self.runtime)
        self.weights_path = weights
        self.settings = settings  # None: the prompt mode's defaults
        self.encode_ahead = encode_ahead_for(self.device)
        if embedding_store is not None and not isinstance(embedding_store, EmbeddingStore):
            embedding_store = EmbeddingStore(embedding_store)
        self.cache = EmbeddingCache(cache_mb, embedding_store)
        self.memory = LesionMemory()  # lesions found on the current volume, for cheap refinement clicks
        self._predictor: SlicePredictor | None = None
        self._normalised: tuple[weakref.ref, str, np.ndarray, str] | None = None

    @property
    def model_name(self) -> str:
        return self.spec.name

    def run_settings(self) -> WalkSettings:
        """The settings a call runs with: those given, else the resolved prompt mode's defaults."""
        return self.settings if self.settings is not None else WALK_DEFAULTS[self.resolved_prompts]

    def load(self) -> SlicePredictor | Promise3DRunner:
        """Load the weights (hash-checked) and build the model, once.

        Returns the slice predictor, or for a ``volume3d`` model its Promise3DRunner.
        """
        if self.spec.kind == VOLUME3D:
            if self._volume3d is None:
                from ProMISeLib.models.promise3d.runner import Promise3DRunner

                path = resolve_weights(self.spec.weights, self.weights_path)  # checked against its sidecar
                self._volume3d = Promise3DRunner.load(path, self.device, half=self.precision == "fp16", verify=False)
            return self._volume3d
        if self._predictor is None:
            fallback = self.requested_runtime == "auto" and self.precision != "int8"
            backend = load_backend(self.spec, self.runtime, self.device, self.precision, self.weights_path,
                                   self.onnx_dir, fallback, self.messages,
                                   [p.adapt_model for p in self.plugins if p.adapts_model])
            for plugin in self.plugins:
                backend = plugin.adapt_backend(backend)
            self.runtime = "onnx" if backend.runtime.startswith("onnx") else "torch"
            self._predictor = SlicePredictor(backend, self.spec.name, self.spec.scaling, self.device, self.cache,
                                             encode_batch_size(self.device))
        return self._predictor

    def learned_prompter(self):
        """The learned prompter this segmenter uses (loaded once, hash-checked), or None for the heuristic."""
        if self.spec.kind != "slice":
            return None
        if not self._prompter_resolved:
            from ProMISeLib.prompting.prompter import resolve_prompter

            self._prompter, self._mode = resolve_prompter(self.prompts, self.spec.prompter_path,
                                                          self.prompter_weights)
            self._prompter_resolved = True
        return self._prompter

    def set_prompter_weights(self, path: str | None) -> None:
        """Use another prompter file from the next segment() on; the model and its embedding cache stay."""
        self.prompter_weights = path
        self.memory.clear()
        self._prompter, self._prompter_resolved, self._mode = None, False, "heuristic"

    @property
    def resolved_prompts(self) -> str:
        """The prompts that run: 'fused', 'learned' or 'heuristic' (``auto`` resolved through the card)."""
        return self._mode if self.learned_prompter() is not None else "heuristic"

    def _method_name(self, prompter) -> str:
        names = [p.name for p in self.plugins if p.name]
        suffix = f"; plug-ins: {', '.join(names)}" if names else ""
        if prompter is None:
            return HEURISTIC_METHOD + suffix
        if self._mode == "fused":
            return f"fused prompts (box search ranked by {prompter.name}{suffix})"
        return f"learned prompts ({prompter.name}{suffix})"

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

    def segment(self, volume: np.ndarray, geometry: ImageGeometry, points: Sequence[Sequence[float]] | None = None,
                negative_points: Sequence[Sequence[float]] | None = None, space: Space = "lps",
                modality: Modality = "auto", progress: ProgressFn | None = None,
                cancel: CancelFn | None = None, box: Sequence[Sequence[float]] | None = None,
                alternative: int = 0) -> SegmentationResult:
        """Segment the lesion at ``points`` (positive clicks) and/or in ``box`` in a (K, J, I) ``volume``.

        Points are in ``space`` ('lps', 'ras' or 'ijk'). ``box`` is two opposite corners in ``space``, an
        axis-aligned box there (inclusive voxel indices with 'ijk'): a complete prompt on its own, it bounds
        the result in all three axes, and clicks refine it. Raises PointOutsideImageError for a click or box
        outside the image, EmptySegmentationError when nothing is found, and SegmentationCancelled when
        ``cancel()`` turns true.

        A first click can mean several structures: ``result.alternatives`` says how many distinct hypotheses
        it has (up to 3, best first), and ``alternative=n`` follows the n-th instead of the best.

        For box-prompted models the segmenter remembers the lesions of the current volume (the same
        array object): call it again with one more click, positive or negative, and only that
        click's neighbourhood is redone. ``result.decoded_prompts`` says how much decoding a call did.
        """
        started = time.perf_counter()
        volume, positives, negatives, bounds = self._prompts(volume, geometry, points, negative_points, space, box,
                                                             alternative)
        if self.spec.kind == VOLUME3D:
            return self._segment_volume3d(volume, geometry, positives, negatives, modality, progress, cancel)
        if progress:
            first_onnx = self._predictor is None and self.runtime == "onnx" and self.onnx_dir is None
            progress(0.0, "loading model" + (" (ONNX Runtime: its first use exports it, about 15 s)" if first_onnx
                                             else ""))
        predictor = self.load()
        encoded_before, hits_before, decoded_before = predictor.encoded, self.cache.hits, predictor.decoded_prompts
        ctx, context = self._walk_context(volume, geometry, modality, bounds, progress, cancel)
        prompter = self.learned_prompter()
        if self.spec.point_prompts:  # every click prompts every slice it is on: each call starts afresh
            lesions = lesions_afresh(ctx, positives, negatives, progress, alternative)
        else:
            self.memory.bind(ctx.volume, context)
            lesions = lesions_refined(ctx, self.memory, positives, negatives, progress, alternative)
        mask = assemble(volume.shape, lesions, negatives)
        if not mask.any():
            raise EmptySegmentationError("the result is empty (negative clicks removed everything)")
        store = self.cache.store
        messages = self.messages + list(ctx.messages) + _lesion_notes(lesions, volume.shape)
        if store is not None and store.messages:
            messages += store.messages
            store.messages.clear()
        if progress:
            progress(1.0, "done")
        return SegmentationResult(
            mask=mask, geometry=geometry, bbox_kji=bounding_box(mask), elapsed_s=time.perf_counter() - started,
            method=self._method_name(prompter), model=self.spec.name, device=str(self.device), messages=messages,
            runtime=predictor.backend.runtime, encoded_slices=predictor.encoded - encoded_before,
            cached_slices=self.cache.hits - hits_before, decoded_slices=ctx.decoded_slices,
            decoded_prompts=predictor.decoded_prompts - decoded_before, alternative=alternative,
            alternatives=next((lesion.hypotheses for lesion in lesions if lesion.hypotheses), 1),
        )

    def encode_for_corrections(self, volume: np.ndarray, geometry: ImageGeometry,
                               points: Sequence[Sequence[float]] | None = None,
                               negative_points: Sequence[Sequence[float]] | None = None, space: Space = "lps",
                               modality: Modality = "auto", cancel: CancelFn | None = None,
                               box: Sequence[Sequence[float]] | None = None, alternative: int = 0) -> int:
        """Encode the slices that a corrective click on the result of :meth:`segment` with these same arguments
        may walk onto: past each lesion's ends, nearest first, until ``cancel()`` turns true.

        Run it while the user looks at that result (Slicer's worker does, in the background): the correction
        then decodes only. Returns how many slices it encoded; 0 where the segmenter does not remember that
        result (another volume or settings since, or a model that does not refine).
        """
        volume, positives, negatives, bounds = self._prompts(volume, geometry, points, negative_points, space, box,
                                                             alternative)
        if self.spec.kind == VOLUME3D or self.spec.point_prompts:
            return 0
        predictor = self.load()
        ctx, context = self._walk_context(volume, geometry, modality, bounds, None, cancel)
        lesions = self.memory.state(ctx.volume, context, click_key(bounds is not None, positives, negatives,
                                                                   alternative))
        before = predictor.encoded
        for lesion in lesions or []:
            for k in slices_past_ends(ctx, lesion):
                if cancel is not None and cancel():
                    return predictor.encoded - before
                predictor.embed(ctx.volume, [k], lesion.crop)
        return predictor.encoded - before

    def _prompts(self, volume: np.ndarray, geometry: ImageGeometry, points, negative_points, space: Space, box,
                 alternative: int) -> tuple[np.ndarray, list, list, np.ndarray | None]:
        """A call's checked volume, its clicks as voxels (positive, negative) and its box's voxel bounds."""
        volume = validate_volume(np.asarray(volume))
        if volume.shape != geometry.shape_kji:
            raise InvalidInputError(f"array shape {volume.shape} does not match the geometry {geometry.shape_kji}")
        if (points is None or len(points) == 0) and box is None:
            raise InvalidInputError("at least one positive point or a box is needed")
        positives = _voxels(geometry, points, space)
        negatives = _voxels(geometry, negative_points, space)
        bounds = geometry.box_to_voxels_kji(np.asarray(box, float), space) if box is not None else None
        if bounds is not None and (self.spec.kind == VOLUME3D or self.spec.point_prompts):
            raise InvalidInputError(f"{self.spec.name} takes no box prompt; use a box-prompted model (litemedsam)")
        _check_alternative(alternative, bool(positives) and bounds is None and self.spec.kind != VOLUME3D)
        return volume, positives, negatives, bounds

    def _walk_context(self, volume: np.ndarray, geometry: ImageGeometry, modality: Modality, bounds,
                      progress: ProgressFn | None, cancel: CancelFn | None) -> tuple[WalkContext, tuple]:
        """The walk's context for a call, and what the lesion memory's states depend on besides the volume."""
        normalised, _ = self._normalise(volume, modality)
        prompter = self.learned_prompter()
        settings = self.run_settings()
        ctx = WalkContext(self.load(), normalised, (geometry.spacing[1], geometry.spacing[0]), geometry.spacing[2],
                          settings, progress, cancel, chooser=chooser_for(self.resolved_prompts, prompter),
                          plugins=self.plugins, bounds=bounds, point_prompts=self.spec.point_prompts,
                          encode_ahead=self.encode_ahead)
        return ctx, (geometry.spacing, settings, self._mode, id(prompter), self.plugins, bounds, self.encode_ahead)

    def _segment_volume3d(self, volume: np.ndarray, geometry: ImageGeometry, positives: list, negatives: list,
                          modality: Modality, progress: ProgressFn | None, cancel: CancelFn | None
                          ) -> SegmentationResult:
        """A whole-volume 3D model (ProMISe 3D): one crop per click, no slice walk."""
        from ProMISeLib.models.promise3d.runner import segment_volume3d

        if progress:
            progress(0.0, "loading model")
        runner = self.load()
        used = detect_modality(volume) if modality == "auto" else modality
        return segment_volume3d(runner, self.spec.name, volume, geometry, positives, negatives, used, self.messages,
                                progress, cancel)


def _check_alternative(alternative: int, has_hypotheses: bool) -> None:
    """Refuse an alternative that no first click can have, before any model runs."""
    if isinstance(alternative, bool) or not isinstance(alternative, (int, np.integer)) or alternative < 0:
        raise InvalidInputError(f"alternative must be a whole number from 0, not {alternative!r}")
    if alternative and not has_hypotheses:
        raise InvalidInputError("alternatives are the hypotheses of a first click: give a positive point and no box "
                                "(a 2D box-prompted model)")


def _voxels(geometry: ImageGeometry, points: Sequence[Sequence[float]] | None, space: Space
            ) -> list[tuple[int, int, int]]:
    """Points in ``space`` as (k, j, i) voxels (an error names a point outside the image)."""
    if points is None or len(points) == 0:
        return []
    return [tuple(int(v) for v in p) for p in geometry.to_voxel_kji(np.asarray(points, float), space)]


def _lesion_notes(lesions: list[SliceMasks], shape_kji: tuple[int, int, int]) -> list[str]:
    """Each lesion's stop notes, and a note where a lesion reaches the edge of a crop inside the image."""
    notes: list[str] = []
    rows, cols = shape_kji[1:]
    for lesion in lesions:
        notes.extend(lesion.stops)
        edge = lesion.crop
        inside = edge.j0 > 0 or edge.i0 > 0 or edge.j0 + edge.side < rows or edge.i0 + edge.side < cols
        for k, m in lesion.masks.items():
            if inside and (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()):
                notes.append(f"the lesion reaches the edge of the analysed region on slice {k}")
                break
    return notes


_DEFAULT_SEGMENTERS: dict[tuple[str, str], Segmenter] = {}


def segment(volume: np.ndarray, geometry: ImageGeometry, points: Sequence[Sequence[float]] | None = None,
            negative_points: Sequence[Sequence[float]] | None = None, space: Space = "lps",
            model: str = DEFAULT_MODEL, device: str = "auto", **kwargs) -> SegmentationResult:
    """One-call API: a shared :class:`Segmenter` per (model, device) segments the clicks."""
    key = (model, device)
    if key not in _DEFAULT_SEGMENTERS:
        _DEFAULT_SEGMENTERS[key] = Segmenter(model=model, device=device)
    return _DEFAULT_SEGMENTERS[key].segment(volume, geometry, points, negative_points, space, **kwargs)
