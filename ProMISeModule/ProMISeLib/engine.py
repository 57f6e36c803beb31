"""The public engine API: a :class:`Segmenter` that turns clicks into a 3D mask.

    from ProMISeLib.engine import Segmenter
    segmenter = Segmenter(model="litemedsam", device="auto")
    result = segmenter.segment(volume_kji, geometry, points=[(x, y, z)], space="lps")
    result.mask  # uint8 (K, J, I) on the input grid

The segmenter loads its model once and keeps an embedding cache, so calling it again for the
same lesion (a moved fiducial) runs only the cheap decoder. It also remembers the lesions it found
on the current volume: a call that adds positive or negative clicks to an earlier call's redoes
only the slices near the new clicks (a refinement click), and the same clicks again cost nothing.
"""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .backends import TorchBackend
from .errors import CheckpointError, DeviceUnavailableError, EmptySegmentationError, InvalidInputError
from .geometry import ImageGeometry, Space
from .lesion_memory import LesionMemory
from .models.registry import DEFAULT_MODEL, VOLUME3D, get_model_spec
from .predictor import EmbeddingCache, SlicePredictor
from .preprocess import Modality, detect_modality, normalize_intensities
from .prompting import PROMPT_MODES, PROMPTER_MODES
from .propagation import LesionPropagator, PropagationSettings, SliceMasks, StepCandidates, assemble
from .result import SegmentationResult, bounding_box
from .runtimes import RUNTIMES, onnx_installed
from .validation import validate_volume
from .weights import resolve_weights

if TYPE_CHECKING:  # SimpleITK is imported only when a 3D model runs
    from .promise3d_inference import Promise3DRunner
    from .prompting.step_ranker import StepRanker

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]
HEURISTIC_METHOD = "heuristic box prompts"


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


def choose_runtime(runtime: str, model: str, device: torch.device, precision: str = "fp32") -> tuple[str, str | None]:
    """The runtime that runs, and a note when ``auto`` could not take the faster one.

    ``auto`` takes ONNX Runtime on a CPU: the same masks as PyTorch (tested) and about 3x faster
    encoding there. PyTorch where ONNX Runtime has no export of the model (SAM ViT with point prompts,
    ProMISe 3D), for fp16 and on CUDA (the path the GPU figures were measured on); int8 is ONNX only.
    """
    if runtime not in RUNTIMES:
        raise InvalidInputError(f"unknown runtime {runtime!r}; use {', '.join(RUNTIMES)}")
    if runtime != "auto":
        return runtime, None
    spec = get_model_spec(model)
    if precision == "int8":
        return "onnx", None
    if spec.kind == VOLUME3D or spec.point_prompts or precision == "fp16" or device.type != "cpu":
        return "torch", None
    if not onnx_installed():
        return "torch", ("ONNX Runtime is not installed, so PyTorch runs "
                         "(pip install onnxruntime onnx: about 3x faster encoding on a CPU)")
    return "onnx", None


def check_prompts(prompts: str) -> str:
    """``prompts`` if it is a prompt mode the engine offers, else an InvalidInputError naming them."""
    if prompts not in PROMPT_MODES:
        raise InvalidInputError(f"unknown prompts {prompts!r}; use one of {', '.join(PROMPT_MODES)}")
    return prompts


class Segmenter:
    """A loaded model plus its embedding cache; call :meth:`segment` as often as needed."""

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "auto", weights: str | None = None,
                 cache_mb: float = 1024.0, settings: PropagationSettings | None = None, runtime: str = "auto",
                 onnx_dir: str | None = None, precision: str = "fp32", parity_permuted_click: bool = False,
                 prompts: str = "auto", prompter_weights: str | None = None, token_shift: str | None = "auto") -> None:
        """``parity_permuted_click`` (ProMISe 3D models only) passes the click the way the official tester
        does (in-plane coordinates swapped), to reproduce published numbers.

        ``prompts`` chooses how clicks become per-slice boxes: ``heuristic`` (the rule-based box
        search), ``learned`` (the backbone's trained prompter, or ``prompter_weights``, picks each
        box), ``fused`` (the rule-based candidates, ranked by the learned prompter), or ``auto``: the
        mode the prompter's card names as its default (the one that beat the heuristic in validation
        by patient), else heuristic.

        ``token_shift`` adds a learned shift to the decoder's output tokens (SAM's weights stay as
        shipped): ``auto`` uses the backbone's shipped shift when its card names it the default,
        ``off`` (or None) never, and a path uses that shift file.

        ``runtime``: ``auto`` runs ONNX Runtime on a CPU where it is installed (same masks, faster; the
        model is exported into the cache on first use) and PyTorch otherwise (:func:`choose_runtime`);
        :attr:`runtime` is the one chosen. Should ONNX Runtime fail to load, ``auto`` runs PyTorch and says
        so in :attr:`messages`; an explicit ``onnx`` raises instead.
        """
        self.spec = get_model_spec(model)
        self.prompts = check_prompts(prompts)
        self.prompter_weights = prompter_weights
        self._prompter = None
        self._prompter_resolved = False
        self._mode = "heuristic"  # the prompts that run, once resolved
        if self.spec.kind == VOLUME3D and runtime == "onnx":
            raise InvalidInputError(f"{model} runs with the torch runtime only")
        self.parity_permuted_click = parity_permuted_click
        self._volume3d = None  # a Promise3DRunner, for volume3d models
        if precision not in ("fp32", "fp16", "int8"):
            raise InvalidInputError(f"unknown precision {precision!r}; use fp32, fp16 or int8")
        self.precision = precision
        self.onnx_dir = onnx_dir
        self.device = resolve_device("cpu" if precision == "int8" and device == "auto" else device)
        self.messages: list[str] = []
        self.requested_runtime = runtime
        asked = "onnx" if runtime == "auto" and onnx_dir else runtime  # an export directory asks for ONNX Runtime
        self.runtime, note = choose_runtime(asked, model, self.device, precision)  # "torch" or "onnx"; checks it
        if note:
            self.messages.append(note)
        if precision == "fp16" and (self.device.type != "cuda" or self.runtime != "torch"):
            raise InvalidInputError("fp16 runs on CUDA with the torch runtime only")
        if precision == "int8" and (self.device.type != "cpu" or self.runtime != "onnx"):
            raise InvalidInputError("int8 runs on the CPU with the ONNX runtime only (--runtime onnx --device cpu)")
        self.weights_path = weights
        # Encode-ahead pays where the encoder runs beside the CPU (CUDA); on a small CPU it competes with the decoder.
        self._settings_given = settings is not None  # else the fused prompts add their own stop settings
        self.settings = settings or PropagationSettings(point_prompts=self.spec.point_prompts,
                                                        encode_ahead=2 if self.device.type == "cuda" else 0)
        self.token_shift = token_shift or "off"
        self._applied_shift: Path | None = None  # the shift the loaded model carries
        self.cache = EmbeddingCache(cache_mb)
        self.memory = LesionMemory()  # lesions found on the current volume, for cheap refinement clicks
        #: Called with each propagation step's candidates when set (diagnostics; ``benchmarks/candidates.py``).
        self.on_candidates: Callable[[StepCandidates], None] | None = None
        #: A learned step ranker (``prompting.step_ranker``) that picks each propagated slice's mask and ends the walk.
        self.step_ranker: StepRanker | None = None
        self._predictor: SlicePredictor | None = None
        self._normalised: tuple[weakref.ref, str, np.ndarray, str] | None = None

    @property
    def model_name(self) -> str:
        return self.spec.name

    def run_settings(self) -> PropagationSettings:
        """The settings a call runs with: those given, else the defaults plus the fused prompts' own stop."""
        if self._settings_given or self.resolved_prompts != "fused":
            return self.settings
        return self.settings.for_fused()

    def replace_settings(self, **fields) -> PropagationSettings:
        """Replace these fields of :meth:`run_settings` (the mode's own defaults kept); returns the result."""
        self.settings = replace(self.run_settings(), **fields)
        self._settings_given = True
        return self.settings

    def load(self) -> SlicePredictor | Promise3DRunner:
        """Load the weights (hash-checked) and build the model, once.

        Returns the slice predictor, or for a ``volume3d`` model its Promise3DRunner.
        """
        if self.spec.kind == VOLUME3D:
            if self._volume3d is None:
                from .promise3d_inference import Promise3DRunner

                path = resolve_weights(self.spec.weights, self.weights_path)  # checked against its sidecar
                self._volume3d = Promise3DRunner.load(path, self.device, half=self.precision == "fp16",
                                                      parity_permuted_click=self.parity_permuted_click,
                                                      verify=False)
            return self._volume3d
        if self._predictor is None:
            shift_path = self._applied_shift = self.token_shift_path()
            model = None
            if self.runtime == "onnx":
                if self.weights_path is not None:  # a wrong checkpoint is refused on any runtime, cached or not
                    resolve_weights(self.spec.weights, self.weights_path)
                try:
                    model = self._onnx_backend(shift_path)
                except (ImportError, OSError, RuntimeError, CheckpointError) as exc:
                    if self.requested_runtime != "auto" or self.precision == "int8":
                        raise
                    self.runtime = "torch"  # auto: PyTorch gives the same masks, more slowly; said, not silent
                    self.messages.append(f"ONNX Runtime could not be used ({exc}); PyTorch runs instead")
            if model is None:
                module = self.spec.build(resolve_weights(self.spec.weights, self.weights_path))
                if shift_path is not None:
                    from .prompting.token_shift import apply_token_shift, load_token_shift

                    apply_token_shift(module, load_token_shift(shift_path)[0])
                module = module.to(self.device)
                model = TorchBackend(module, self.device, half=self.precision == "fp16")
            # On a CPU one slice per encoder call is the fastest per slice (batches of 4 were 5-25% slower on
            # both runtimes) and needs a quarter of the activations' memory.
            batch = 16 if self.device.type == "cuda" else 1
            self._predictor = SlicePredictor(model, self.spec.name, self.spec.scaling, self.device, self.cache, batch)
        return self._predictor

    def learned_prompter(self):
        """The learned prompter this segmenter uses (loaded once, hash-checked), or None for the heuristic.

        The choice is made once per segmenter, so a segment() call never re-reads the weights.
        """
        if self.prompts == "heuristic" or self.spec.kind != "slice":
            return None
        if not self._prompter_resolved:
            self._prompter, self._mode = self._load_prompter()
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

    def _load_prompter(self):
        from .prompting.prompter import LearnedPrompter, card_path, default_mode

        path = self.prompter_weights or self.spec.prompter_path
        if path is None or not Path(path).is_file():
            if self.prompts in PROMPTER_MODES:
                raise CheckpointError(f"{self.spec.name}: no learned prompter weights "
                                      f"({path or 'none shipped for this model'})")
            return None, "heuristic"
        mode = self.prompts
        if mode == "auto":
            try:  # the card alone says which mode won the prompter's validation
                mode = default_mode(json.loads(card_path(Path(path)).read_text()))
            except (OSError, ValueError):
                mode = None  # a missing or broken card is reported by the loader below
            if mode is None and self.prompter_weights is not None:
                mode = "learned"  # weights the user named, without a validated default
            if mode is None:
                return None, "heuristic"
        return LearnedPrompter.from_file(Path(path)), mode

    def token_shift_path(self) -> Path | None:
        """The decoder token shift this segmenter's model carries, or None (frozen tokens).

        Chosen when the model loads. ``auto`` never shifts the rule-based fallback: with heuristic
        prompts every part of the run is hand-written rules and frozen SAM, unless a file is named.
        """
        if self._predictor is not None:
            return self._applied_shift
        from .prompting.token_shift import resolve_token_shift

        if self.token_shift == "auto" and self.resolved_prompts == "heuristic":
            return None
        return resolve_token_shift(self.spec, self.token_shift)

    def _method_name(self, prompter) -> str:
        shift = self.token_shift_path()
        suffix = f"; decoder tokens shifted by {shift.stem}" if shift is not None else ""
        if prompter is None:
            return HEURISTIC_METHOD + suffix
        if self._mode == "fused":
            return f"fused prompts (box search ranked by {prompter.name}{suffix})"
        return f"learned prompts ({prompter.name}{suffix})"

    def _onnx_backend(self, shift_path: Path | None = None):
        """ONNX Runtime sessions from ``onnx_dir`` (exported into the cache on first use if not given).

        With a token shift the cached export lives in its own folder, named by the shift's hash, and
        the manifest must record that very shift.
        """
        from .download import sha256_of
        from .onnx_backend import (
            MANIFEST,
            OnnxBackend,
            add_int8_encoder,
            decoder_is_current,
            export_into_cache,
            int8_is_current,
            read_manifest,
            token_shift_sha,
        )
        from .settings import cache_dir

        shift_sha = sha256_of(shift_path) if shift_path is not None else None
        folder = self.spec.name if shift_sha is None else f"{self.spec.name}-shift-{shift_sha[:12]}"
        directory = self.onnx_dir or cache_dir() / "onnx" / folder
        if self.onnx_dir is None:  # the cache: exported on first use, or anew for an older decoder graph
            manifest = read_manifest(directory) if (directory / MANIFEST).is_file() else None
            if manifest is None or not decoder_is_current(manifest) or token_shift_sha(manifest) != shift_sha:
                export_into_cache(self.spec.name, directory, self.weights_path, shift_path, shift_sha)
                manifest = read_manifest(directory)
            if self.precision == "int8" and not int8_is_current(manifest):
                add_int8_encoder(directory)  # quantised into the cache on first use (or anew), like the fp32 export
        backend = OnnxBackend(directory, device=self.device.type, expected_model=self.spec.name,
                              precision="int8" if self.precision == "int8" else "fp32")
        if token_shift_sha(backend.manifest) != shift_sha:
            want = f"the token shift {shift_path}" if shift_path is not None else "frozen decoder tokens (off)"
            raise CheckpointError(f"{directory}: its decoder carries another token shift than this run's, {want}; "
                                  f"export it with `promise export --token-shift` set the same way")
        self.messages.extend(backend.messages)
        if not decoder_is_current(backend.manifest):  # a user's own export, from before the regrouped decoder
            self.messages.append(f"{directory} holds an older decoder graph (same masks, slower); "
                                 "run `promise export` again to decode faster")
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

        For box-prompted models the segmenter remembers the lesions of the current volume (the same
        array object): call it again with one more click, positive or negative, and only that
        click's neighbourhood is redone; the clicks of the earlier call are applied first, in the
        order they were applied then. ``result.decoded_prompts`` says how much decoding a call did.
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
        if self.spec.kind == VOLUME3D:
            return self._segment_volume3d(volume, geometry, positives, negatives, modality, progress, cancel,
                                          started)
        if progress:
            first_onnx = self._predictor is None and self.runtime == "onnx" and self.onnx_dir is None
            progress(0.0, "loading model" + (" (ONNX Runtime: its first use exports it, about 15 s)" if first_onnx
                                             else ""))
        predictor = self.load()
        encoded_before, hits_before, decoded_before = predictor.encoded, self.cache.hits, predictor.decoded_prompts
        normalised, _ = self._normalise(volume, modality)
        spacing_ji = (geometry.spacing[1], geometry.spacing[0])
        prompter = self.learned_prompter()
        fused = self.resolved_prompts == "fused"
        settings = self.run_settings()
        propagator = LesionPropagator(predictor, normalised, spacing_ji, geometry.spacing[2], settings,
                                      progress, cancel, prompter=prompter, fused=fused)
        propagator.on_candidates = self.on_candidates
        propagator.step_ranker = self.step_ranker
        if settings.point_prompts:  # every click prompts every slice it is on: each call starts afresh
            lesions = self._lesions_afresh(propagator, positives, negatives, progress)
        else:
            self.memory.bind(normalised, (geometry.spacing, settings, self._mode, id(prompter),
                                           id(self.step_ranker)))
            lesions = self._lesions_refined(propagator, positives, negatives, progress)
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
            method=self._method_name(prompter),
            model=self.spec.name, device=str(self.device), messages=messages,
            runtime=self._predictor.backend.runtime,
            encoded_slices=predictor.encoded - encoded_before, cached_slices=self.cache.hits - hits_before,
            decoded_slices=propagator.decoded_slices, decoded_prompts=predictor.decoded_prompts - decoded_before,
        )

    def _new_lesion(self, propagator: LesionPropagator, click: tuple[int, int, int], positives: list,
                    negatives: list) -> SliceMasks:
        """Seed search at the click, the orthogonal extent, and the propagation through the lesion."""
        settings = propagator.settings
        crop, seed_mask, score = propagator.seed(click, positives, negatives)
        use_extents = settings.orthogonal_stop if propagator.prompter is None or propagator.fused \
            else settings.learned_orthogonal_stop
        extents = propagator.orthogonal_extents(click, (crop, seed_mask)) if use_extents else None
        lesion = propagator.propagate(click[0], crop, seed_mask, positives, negatives, extents=extents)
        if score < 0.5:
            lesion.stops.insert(0, f"weak result: the model's confidence at the click is {score:.2f}")
        return lesion

    def _lesions_afresh(self, propagator: LesionPropagator, positives: list, negatives: list,
                        progress: ProgressFn | None) -> list[SliceMasks]:
        """One lesion per positive click not inside an earlier one, every click prompting every step."""
        lesions: list[SliceMasks] = []
        for index, click in enumerate(positives):
            if any(lesion.contains(click) for lesion in lesions):
                continue  # already inside a lesion found from an earlier click: used as a point prompt
            if progress:
                progress(0.05, f"finding the lesion at click {index + 1}")
            lesions.append(self._new_lesion(propagator, click, positives, negatives))
        return lesions

    def _lesions_refined(self, propagator: LesionPropagator, positives: list, negatives: list,
                         progress: ProgressFn | None) -> list[SliceMasks]:
        """The lesions of the clicks applied one at a time, starting from the longest run of them
        that an earlier call already applied.

        The clicks are applied in order: those of the remembered run first, as they were applied
        then, and the new ones after them, the positive ones before the negative ones. A positive
        click inside a lesion changes nothing; one within a lesion's crop and ``correction_reach``
        slices refines it (:meth:`LesionPropagator.correct`); any other seeds a new lesion. A negative
        click refines each lesion it is inside. So a user adding clicks one by one pays for each
        new click's neighbourhood only; the same clicks again cost nothing.
        """
        clicks = [("+", *c) for c in positives] + [("-", *c) for c in negatives]
        key, lesions = self.memory.longest(clicks)
        remaining = list(clicks)
        for click in key:
            remaining.remove(click)
        applied = [tuple(c[1:]) for c in key if c[0] == "-"]  # the negative clicks so far move box sides
        for click in remaining:
            voxel, positive = tuple(click[1:]), click[0] == "+"
            if not positive:
                applied.append(voxel)
            lesions = self._apply_click(propagator, lesions, voxel, positive, applied, progress)
            key = key + (click,)
            self.memory.put(key, lesions)
        return list(lesions)

    def _apply_click(self, propagator: LesionPropagator, lesions: list[SliceMasks], click: tuple[int, int, int],
                     positive: bool, negatives: list, progress: ProgressFn | None) -> list[SliceMasks]:
        """``lesions`` after one more click (a new list; the lesions themselves are never changed)."""
        lesions = list(lesions)
        if positive:
            if any(lesion.contains(click) for lesion in lesions):
                return lesions
            reach = propagator.settings.correction_reach
            owner = next((n for n, lesion in enumerate(lesions) if lesion.reaches(click, reach)), None)
            if owner is None:
                if progress:
                    progress(0.05, "finding the lesion at the click")
                return lesions + [self._new_lesion(propagator, click, [click], negatives)]
            targets = [owner]
        else:
            targets = [n for n, lesion in enumerate(lesions) if lesion.contains(click)]
        for n in targets:
            if progress:
                progress(0.05, f"refining with a {'positive' if positive else 'negative'} click")
            lesions[n] = propagator.correct(lesions[n], click, positive, negatives)
        return lesions

    def _segment_volume3d(self, volume: np.ndarray, geometry: ImageGeometry, positives: list, negatives: list,
                          modality: Modality, progress: ProgressFn | None, cancel: CancelFn | None,
                          started: float) -> SegmentationResult:
        """A whole-volume 3D model (ProMISe 3D): one crop per click, no slice propagation."""
        from .promise3d_inference import METHOD

        if progress:
            progress(0.0, "loading model")
        runner = self.load()
        out = runner.segment(volume, geometry, positives, progress=progress, cancel=cancel)
        messages = list(self.messages)
        if negatives:
            messages.append("negative clicks are not used by ProMISe 3D (its prompt encoder has no labels)")
        used = detect_modality(volume) if modality == "auto" else modality
        if used == "mr":
            messages.append("ProMISe 3D was trained on CT (Hounsfield units); this image does not look like CT")
        messages.extend(out.messages)
        return SegmentationResult(
            mask=out.mask, geometry=geometry, bbox_kji=bounding_box(out.mask),
            elapsed_s=time.perf_counter() - started, method=METHOD, model=self.spec.name, device=str(self.device),
            messages=messages, runtime=runner.runtime,
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
