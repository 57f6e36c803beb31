"""From clicks to a 3D mask with a frozen 2D box-prompted model.

The model was trained on boxes, so a click is turned into boxes:

1. **Seed search** on the click's slice: square boxes of several physical sizes centred on
   the click are decoded in one batch. Each candidate mask (its component at the click, holes
   filled) is re-prompted with its own bounding box; a mask that the model reproduces from its
   own box is a fixed point. Candidates are scored by the model's predicted IoU times that
   agreement.
2. **ROI crop**: the crop is re-centred on the chosen lesion and sized to a few lesion
   diameters, so the lesion is large in the model's 256 px input; the seed is redone there.
3. **Orthogonal planes**: the same search on the coronal and sagittal planes through the click
   (resampled to square pixels) tells how far the lesion reaches along the slice axis.
4. **Propagation** slice by slice, both ways: boxes of several sizes around the previous
   slice's mask are decoded and scored like the seed. It stops where the lesion ends: past
   the extent seen in the orthogonal planes, or where the mask vanishes, grows abruptly, loses
   the model's confidence, or its intensities stop matching the lesion's.

With fused prompts (a learned prompter beside the rules) the candidates of steps 1, 3 and 4 are
the same rule-based ones plus the mask of the prompter's own box, and they are ranked by the
rule score times their Dice with the prompter's coarse mask: the rules give clean boundaries,
the network says which of the nested structures at the click is the lesion.

Positive clicks that the mask does not reach seed another lesion; negative clicks move the
nearest side of their slice's boxes past them and cut their component out. Clicks become point
prompts only for point-trained models.

**Refinement** (:meth:`LesionPropagator.correct`): a further click on a computed lesion redoes
only its neighbourhood. A positive click adds the structure the box search finds at it on its
slice; a negative click re-decodes its slice with the boxes moved past it and keeps a candidate
that leaves the click out. From there the walk goes both ways, one box per slice
(``correction_scales``), until the new masks agree with the lesion's (IoU at least
``correction_agreement``) and keeps the rest, so a correction costs a few slices' decoding, not
the whole lesion's. A correction scores its candidates by the model's predicted IoU without
re-decoding them from their own boxes (``correction_verify``), which halves its decoding.
A positive click only adds voxels, a negative one only removes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .errors import EmptySegmentationError, SegmentationCancelled
from .metrics import dice
from .predictor import SlicePredictor
from .preprocess import CropWindow
from .prompting.step_ranker import StepRanker, WalkContext, step_features

if TYPE_CHECKING:
    from .prompting.prompter import LearnedPrompter

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


@dataclass(frozen=True)
class PropagationSettings:
    """Tunable constants, in physical units where that makes them scan-independent."""

    context_mm: float = 160.0  # side of the first, wide crop used to find the lesion
    seed_half_sizes_mm: tuple[float, ...] = (3, 4, 6, 9, 13, 19, 27, 38, 54, 76)
    crop_to_lesion: float = 4.0  # ROI crop side / lesion diameter
    min_crop_px: int = 48
    box_margin: float = 0.06  # fraction of box size added on each side (seed self-consistency check)
    box_margin_px: float = 2.0
    min_area_fraction: float = 0.04  # of the largest slice area so far
    max_growth: float = 2.2  # area ratio to the previous slice
    intensity_z: float = 2.5  # allowed shift of the mask's mean intensity, in lesion SDs
    min_score: float = 0.7  # predicted IoU x self-consistency of the chosen mask
    propagation_scales: tuple[float, ...] = (0.5, 0.7, 0.85, 1.0, 1.1)  # box sizes tried around the previous mask
    propagation_verify: bool = True  # score each slice's candidates by re-decoding them from their own boxes
    seed_shifts: tuple[float, ...] = (0.0,)  # the click search's boxes also move off the click by these fractions
    # of their half-size, across and down (a click near a lesion's edge sits off its box's centre)
    planes_through_seed: bool = False  # the coronal/sagittal planes pass through the seed mask's deepest point,
    # not the click (an off-centre click's planes cut the lesion short)
    min_seed_score: float = 0.3  # below this the click is reported as finding nothing
    crop_snap: int = 16  # the context crop snaps to this grid so a moved click reuses its embedding
    orthogonal_stop: bool = True  # stop where the lesion ends in the coronal/sagittal planes through the click
    orthogonal_context_mm: float = 160.0  # crop side in the coronal/sagittal planes (the most, with the next)
    orthogonal_to_lesion: float | None = None  # > 0: that crop's side / the seed's diameter (lesion-relative)
    orthogonal_aspects: tuple[float, ...] = (1.0,)  # box height/width ratios tried there (long along the slice axis)
    orthogonal_tolerance: int = 1  # slices allowed past the extent seen in the orthogonal planes
    orthogonal_seed_weight: float = 0.0  # > 0: the planes' candidates are ranked by the rule score times their
    # agreement with the seed's cross-section (1D IoU along the click's row) to this power, and not by the learned
    # prompter, which was trained on axial slices (0: off)
    orthogonal_boxes: bool = False  # each propagated slice also tries the box the orthogonal planes draw on it
    fused_network_stop: bool = False  # fused prompts: the walk ends where the learned prompter sees no lesion
    network_extends: bool = False  # fused prompts: past the orthogonal extent the walk goes on while the learned
    extend_agreement: float = 0.5  # prompter sees the lesion and the mask agrees with its mask (Dice) this well
    learned_orthogonal_stop: bool = False  # the same with the learned prompter (it learns where lesions end)
    learned_prior: str = "decoder"  # the learned prompter follows its own masks ('coarse') or the decoder's
    learned_roi_seed: bool = False  # the learned prompter also picks the box on the click's slice in the ROI
    fill_holes: bool = True  # fill holes of each 2D mask (necrotic cores are part of a lesion)
    click_radius_mm: float = 3.0  # accept a candidate whose mask passes this close to the click
    point_prompts: bool = False  # pass clicks to the decoder as points (hurts box-trained LiteMedSAM)
    encode_ahead: int = 2  # slices encoded in the background ahead of the propagation (0: off)
    fusion_weight: float = 1.0  # fused prompts: exponent of the agreement with the learned mask in the ranking
    correction_reach: int = 6  # a positive click up to this many slices past a lesion's ends refines it
    correction_agreement: float = 0.9  # a refinement's walk stops where its mask and the lesion's agree (IoU)
    correction_scales: tuple[float, ...] | None = (1.0,)  # box sizes of a refinement's walk (None: propagation's)
    correction_extend_mm: float = 10.0  # a positive click past a lesion's end extends it this far past the click
    correction_verify: bool = False  # a refinement also re-decodes each candidate from its own box to score it
    ranker_stop: float = 0.5  # with a step ranker: the walk ends where the kept candidate's predicted Dice is lower
    ranker_choice: bool = True  # with a step ranker: it also picks each slice's candidate (else the rules do)

    def for_fused(self) -> PropagationSettings:
        """These settings with the fused prompts' validated stop: a wider, elongated search in the orthogonal
        planes and more slack past it (the learned ranking keeps the longer walk on the lesion)."""
        return replace(self, **FUSED_DEFAULTS)


#: What ``--prompts fused`` changes in the default settings (validated together, by patient).
FUSED_DEFAULTS = {"orthogonal_context_mm": 320.0, "orthogonal_aspects": (1.0, 1.7, 2.8), "orthogonal_tolerance": 4}


@dataclass(frozen=True)
class StepCandidates:
    """What one propagation step weighed (for diagnostics: :attr:`LesionPropagator.on_candidates`)."""

    k: int
    crop: CropWindow
    previous: np.ndarray  # the neighbouring slice's mask the boxes came from
    candidates: list[np.ndarray]  # crop masks, one per box that reached the previous mask
    predicted: list[float]  # the model's predicted IoU of each
    scores: list[float]  # the rule score of each (predicted IoU, times self-consistency when verified)
    coarse: np.ndarray | None  # the learned prompter's coarse mask (fused prompts), else None
    chosen: int  # the index kept


@dataclass
class SliceMasks:
    """Per-slice crop masks of one lesion."""

    crop: CropWindow
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    stops: list[str] = field(default_factory=list)
    start_k: int = 0  # the slice the lesion was found on
    reference: tuple[float, float] = (0.0, 1.0)  # the lesion's intensity mean and SD on that slice (stop rule)

    def contains(self, click_kji: tuple[int, int, int]) -> bool:
        """Whether the voxel is inside the lesion's mask."""
        k, j, i = click_kji
        mask = self.masks.get(k)
        return mask is not None and self.crop.contains((j, i)) and bool(mask[j - self.crop.j0, i - self.crop.i0])

    def reaches(self, click_kji: tuple[int, int, int], slices: int) -> bool:
        """Whether the voxel is in the lesion's crop, at most ``slices`` past its first or last slice."""
        k, j, i = click_kji
        return (self.crop.contains((j, i)) and bool(self.masks)
                and min(self.masks) - slices <= k <= max(self.masks) + slices)


def _component_at(mask: np.ndarray, point_ji: tuple[int, int], radius: int = 0, fill: bool = False) -> np.ndarray:
    """The connected component of ``mask`` at ``point_ji`` (empty if none).

    With ``fill`` holes are filled first (a necrotic core belongs to the lesion); with ``radius``
    a component within that many pixels of the point counts when none covers it.
    """
    if fill:
        mask = ndimage.binary_fill_holes(mask)
    labels, _ = ndimage.label(mask)
    value = labels[point_ji]
    if not value and radius > 0:
        j, i = point_ji
        window = labels[max(j - radius, 0) : j + radius + 1, max(i - radius, 0) : i + radius + 1]
        hits = window[window > 0]
        value = int(np.bincount(hits).argmax()) if hits.size else 0
    return labels == value if value else np.zeros_like(mask, dtype=bool)


def _box_of(mask: np.ndarray, margin: float = 0.0, margin_px: float = 0.0) -> np.ndarray:
    """(x0, y0, x1, y1) box of a mask, widened by a relative and an absolute margin."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    dx = (x1 - x0) * margin + margin_px
    dy = (y1 - y0) * margin + margin_px
    return np.array([x0 - dx, y0 - dy, x1 + dx, y1 + dy], dtype=np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


class LesionPropagator:
    """Runs the seed search and the slice-by-slice propagation for one volume."""

    def __init__(self, predictor: SlicePredictor, volume: np.ndarray, spacing_ji: tuple[float, float],
                 slice_mm: float, settings: PropagationSettings | None = None, progress: ProgressFn | None = None,
                 cancel: CancelFn | None = None, prompter: LearnedPrompter | None = None, fused: bool = False) -> None:
        """With a ``prompter`` the learned network picks each slice's box; with ``fused`` as well, the
        rule-based candidates stay and the network only ranks them (its box's mask joins them)."""
        self.predictor = predictor
        self.prompter = prompter
        self.fused = fused and prompter is not None
        self._coarse: dict[int, np.ndarray] = {}  # learned prompter's crop masks of the lesion being followed
        self.volume = volume  # normalised 0-255, (K, J, I)
        self.pixel_mm = float(np.sqrt(spacing_ji[0] * spacing_ji[1]))
        self.spacing_ji = spacing_ji
        self.slice_mm = float(slice_mm)
        self.settings = settings or PropagationSettings()
        self.progress = progress
        self.cancel = cancel
        self.messages: list[str] = []
        self.decoded_slices = 0  # axial slices decoded in this propagator's calls
        self.network_ended = False  # the last step ended because the learned prompter saw no lesion
        self.last_coarse: np.ndarray | None = None  # the learned prompter's crop mask in the last step (fused)
        #: Called with each propagation step's :class:`StepCandidates` when set (benchmarks/candidates.py).
        self.on_candidates: Callable[[StepCandidates], None] | None = None
        self.last_step: StepCandidates | None = None  # what the last propagation step weighed (None: it had no choice)
        #: A learned step ranker (prompting.step_ranker): it picks each propagated slice's candidate and ends the walk.
        self.step_ranker: StepRanker | None = None
        self.walk: WalkContext | None = None  # the propagation's 3D context, while a walk runs

    # --- helpers --------------------------------------------------------------------------
    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            raise SegmentationCancelled("segmentation cancelled")

    def _report(self, fraction: float, message: str) -> None:
        if self.progress is not None:
            self.progress(min(max(fraction, 0.0), 1.0), message)

    def _embedding(self, k: int, crop: CropWindow):
        self._check_cancel()
        self.decoded_slices += 1
        return self.predictor.embed(self.volume, [k], crop)[k]

    @staticmethod
    def _points_in_crop(points: list[tuple[int, int, int]], k: int, crop: CropWindow):
        """(x, y) crop coordinates of the clicks on slice k."""
        return [(p[2] - crop.i0, p[1] - crop.j0) for p in points if p[0] == k]

    def _prompt_points(self, k: int, crop: CropWindow, positives, negatives):
        if not self.settings.point_prompts:
            return None, None
        pos = self._points_in_crop(positives, k, crop)
        neg = self._points_in_crop(negatives, k, crop)
        if not pos and not neg:
            return None, None
        pts = np.array(pos + neg, dtype=np.float32)
        labels = np.array([1] * len(pos) + [0] * len(neg))
        return pts, labels

    def _exclude(self, boxes: np.ndarray, k: int, crop: CropWindow, negatives) -> np.ndarray:
        """Move the nearest side of each box past any negative click inside it (box-trained models)."""
        boxes = np.array(boxes, dtype=np.float32, copy=True).reshape(-1, 4)
        for x, y in self._points_in_crop(negatives, k, crop):
            for box in boxes:
                x0, y0, x1, y1 = box
                if x0 <= x <= x1 and y0 <= y <= y1:
                    gaps = [x - x0, y - y0, x1 - x, y1 - y]
                    side = int(np.argmin(gaps))
                    box[side] = (x + 1, y + 1, x - 1, y - 1)[side]
        return boxes

    # --- seed -----------------------------------------------------------------------------
    def seed(self, click_kji: tuple[int, int, int], positives, negatives) -> tuple[CropWindow, np.ndarray, float]:
        """Find the lesion at the click; return the ROI crop, its crop mask and a score (0-1)."""
        k, j, i = click_kji
        s = self.settings
        self._coarse = {}
        rows, cols = self.volume.shape[1:]
        side = int(min(max(rows, cols), max(s.min_crop_px, round(s.context_mm / self.pixel_mm))))
        crop = CropWindow.around((j, i), side, snap=s.crop_snap)
        if np.ptp(crop.extract(self.volume[k])) < 1e-3:
            raise EmptySegmentationError("the image is uniform around the click: there is nothing to segment")
        mask, score = self._search(k, (j, i), crop, positives, negatives)
        if not mask.any() or score < s.min_seed_score:
            raise EmptySegmentationError(
                "no structure found at the click; click nearer the centre of the lesion or add a positive point"
            )
        # Re-centre and shrink the crop so the lesion fills more of the model's input.
        box = _box_of(mask)
        diameter = max(box[2] - box[0], box[3] - box[1])
        new_side = int(max(s.min_crop_px, round(diameter * s.crop_to_lesion)))
        if new_side < 0.8 * side:
            centre = ((box[1] + box[3]) / 2 + crop.j0, (box[0] + box[2]) / 2 + crop.i0)
            roi = CropWindow.around(centre, new_side)
            offset_box = box + np.array([crop.i0 - roi.i0, crop.j0 - roi.j0] * 2, dtype=np.float32)
            learned = None
            if self.prompter is not None and s.learned_roi_seed:
                embedding = self._embedding(k, roi)
                points, labels = self._prompt_points(k, roi, positives, negatives)
                learned = self._learned_at_click(embedding, roi.side, (j - roi.j0, i - roi.i0), self.pixel_mm,
                                                 lambda b: self._exclude(b, k, roi, negatives), points, labels, k)
            if learned is not None:
                return roi, learned[0], learned[1]
            refined, refined_score = self._refine(k, (j, i), roi, offset_box, positives, negatives)
            if refined.any():
                return roi, refined, refined_score
            self.messages.append("the tighter ROI lost the lesion; kept the wide crop")
        return crop, mask, score

    def _search(self, k: int, click_ji: tuple[int, int], crop: CropWindow, positives, negatives,
                verify: bool = True):
        embedding = self._embedding(k, crop)
        points, labels = self._prompt_points(k, crop, positives, negatives)
        return self._best_at_click(embedding, crop.side, (click_ji[0] - crop.j0, click_ji[1] - crop.i0),
                                   self.pixel_mm, lambda b: self._exclude(b, k, crop, negatives), points, labels,
                                   verify=verify, shifts=self.settings.seed_shifts)

    def _best_at_click(self, embedding, side: int, click_rc: tuple[int, int], pixel_mm: float,
                       exclude=None, points=None, labels=None, aspects=(1.0,),
                       verify: bool = True, shifts: tuple[float, ...] = (0.0,)) -> tuple[np.ndarray, float]:
        """Box search around a click on one embedded crop: the best self-consistent candidate.

        Without ``verify`` the candidates are scored by the model's predicted IoU alone (half the decoding).
        ``shifts`` move the boxes off the click (:meth:`_candidates_at_click`).
        """
        if self.prompter is not None and self.fused:
            return self._fused_at_click(embedding, side, click_rc, pixel_mm, exclude, points, labels, aspects,
                                        verify, shifts)
        if self.prompter is not None:
            found = self._learned_at_click(embedding, side, click_rc, pixel_mm, exclude, points, labels)
            if found is not None:
                return found
            self.messages.append("the learned prompter found nothing at the click; used the box search")
        candidates, scores = self._candidates_at_click(embedding, side, click_rc, pixel_mm, exclude, points, labels,
                                                       aspects=aspects, verify=verify, shifts=shifts)
        if not candidates:
            return np.zeros((side, side), bool), 0.0
        best = int(np.argmax(scores))
        return candidates[best], scores[best]

    def _candidates_at_click(self, embedding, side, click_rc, pixel_mm, exclude, points, labels, extra=None,
                             aspects=(1.0,), verify: bool = True, shifts: tuple[float, ...] = (0.0,)):
        """Rule-based candidates at a click with their scores (predicted IoU x self-consistency, or the
        predicted IoU alone without ``verify``). Each box size is tried with its centre moved off the
        click by every pair of ``shifts`` (fractions of its half-size, across and down)."""
        s = self.settings
        cj, ci = click_rc
        radii = np.array(s.seed_half_sizes_mm) / pixel_mm
        radii = radii[radii < side]
        boxes = np.stack([[ci + dx * r - r, cj + (dy - 1) * r * a, ci + dx * r + r + 1, cj + (dy + 1) * r * a + 1]
                          for a in aspects for r in radii if r * a < side for dy in shifts for dx in shifts]
                         ).astype(np.float32)
        if extra is not None:
            boxes = np.concatenate([boxes, extra[None].astype(np.float32)])
        if exclude is not None:
            boxes = exclude(boxes)
        first = self.predictor.decode(embedding, side, boxes, points, labels)
        radius = int(round(s.click_radius_mm / pixel_mm))
        kept = [(c, float(p)) for c, p in zip((_component_at(m, (cj, ci), radius, s.fill_holes) for m in first.masks),
                                               first.iou, strict=True) if c.any()]
        if not kept or not verify:
            return [c for c, _ in kept], [p for _, p in kept]
        candidates = [c for c, _ in kept]
        own_boxes = np.stack([_box_of(c, s.box_margin, s.box_margin_px) for c in candidates])
        if exclude is not None:
            own_boxes = exclude(own_boxes)
        second = self.predictor.decode(embedding, side, own_boxes, points, labels)
        scores = [float(p) * _iou(c, _component_at(a, (cj, ci), radius, s.fill_holes))
                  for c, a, p in zip(candidates, second.masks, second.iou, strict=True)]
        return candidates, scores

    def _fused_choice(self, candidates: list[np.ndarray], scores: list[float], coarse: np.ndarray) -> tuple[int, float]:
        """The index of the candidate with the best rule score x Dice with the learned coarse mask, and the
        best rule score."""
        s = self.settings
        fused = [sc * max(dice(c, coarse), 1e-3) ** s.fusion_weight for c, sc in zip(candidates, scores, strict=True)]
        # The stop rules read the best rule score: the lesion goes on if any candidate is confident.
        return int(np.argmax(fused)), max(scores)

    def _fuse(self, candidates: list[np.ndarray], scores: list[float], coarse: np.ndarray) -> tuple[np.ndarray, float]:
        """The candidate :meth:`_fused_choice` picks, and the best rule score."""
        best, score = self._fused_choice(candidates, scores, coarse)
        return candidates[best], score

    def _fused_at_click(self, embedding, side, click_rc, pixel_mm, exclude, points, labels, aspects=(1.0,),
                        verify: bool = True, shifts: tuple[float, ...] = (0.0,)):
        """The rule-based search at a click, ranked by the learned prompter's mask at the click."""
        coarse = self.prompter.seed(embedding, side, click_rc)
        extra = None
        if coarse.box is not None:
            extra = coarse.box + np.array([-1, -1, 1, 1], np.float32) * self.settings.box_margin_px
        candidates, scores = self._candidates_at_click(embedding, side, click_rc, pixel_mm, exclude, points, labels,
                                                       extra, aspects, verify, shifts)
        if not candidates:
            return np.zeros((side, side), bool), 0.0
        return self._fuse(candidates, scores, coarse.in_crop(side))

    def _learned_at_click(self, embedding, side: int, click_rc: tuple[int, int], pixel_mm: float, exclude=None,
                          points=None, labels=None, k: int | None = None) -> tuple[np.ndarray, float] | None:
        """The learned prompter's box at a click, decoded; None when it sees nothing there."""
        s = self.settings
        coarse = self.prompter.seed(embedding, side, click_rc)
        if coarse.box is None:
            return None
        if k is not None:
            self._coarse = {k: coarse.in_crop(side)}  # the prior for the neighbouring slices
        box = coarse.box + np.array([-1, -1, 1, 1], np.float32) * s.box_margin_px
        if exclude is not None:
            box = exclude(box[None])[0]
        out = self.predictor.decode(embedding, side, box[None], points, labels)
        mask = _component_at(out.masks[0], click_rc, int(round(s.click_radius_mm / pixel_mm)), s.fill_holes)
        if not mask.any():
            return None
        return mask, float(out.iou[0])

    def orthogonal_extents(self, click_kji: tuple[int, int, int], seed: tuple[CropWindow, np.ndarray] | None = None
                           ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """The lesion seen in the coronal and sagittal planes through the click.

        Each plane is resampled to square pixels, searched like the click's slice, and read back
        per axial slice k as the lesion's column range (coronal) and row range (sagittal) through
        the click. Returns {k: (rows (j0, j1) or None, cols (i0, i1) or None)} for the slices the
        lesion reaches in either plane.

        With the ``seed`` (its crop and mask on the click's slice) and ``orthogonal_seed_weight`` set,
        each plane's candidates are ranked by how well their row through the click matches the seed's
        cross-section there (:meth:`_plane_by_seed`). With ``planes_through_seed`` the planes pass through
        the seed mask's deepest point (in mm) instead of the click.
        """
        k, j, i = click_kji
        depth = self.volume.shape[0]
        extents: dict[int, list] = {}
        seed_slice = None  # the seed mask on the click's slice, when a setting reads it
        if seed is not None:
            on_slice = np.zeros(self.volume.shape[1:], dtype=bool)
            seed[0].paste(on_slice, seed[1])
            if self.settings.planes_through_seed and on_slice.any():
                inside = ndimage.distance_transform_edt(on_slice, sampling=self.spacing_ji)
                j, i = (int(v) for v in np.unravel_index(np.argmax(inside), inside.shape))
            if self.settings.orthogonal_seed_weight > 0:
                seed_slice = on_slice
        for axis, (plane, in_plane_mm, centre) in enumerate(
            ((self.volume[:, j, :], self.spacing_ji[1], i), (self.volume[:, :, i], self.spacing_ji[0], j))
        ):
            zoom = self.slice_mm / in_plane_mm
            rows = max(2, int(round(depth * zoom)))
            resampled = ndimage.zoom(plane, (rows / depth, 1.0), order=1)
            click_r = int(round((k + 0.5) * rows / depth - 0.5))
            side = int(min(max(resampled.shape), max(self.settings.min_crop_px,
                                                      round(self._plane_context_mm(seed) / in_plane_mm))))
            crop = CropWindow.around((click_r, centre), side, snap=self.settings.crop_snap)
            self._check_cancel()
            embedding = self.predictor.embed(resampled[None], [0], crop)[0]
            click_rc = (click_r - crop.j0, centre - crop.i0)
            if seed_slice is not None:
                line = seed_slice[j, :] if axis == 0 else seed_slice[:, i]  # the plane's columns are the slice's
                mask, score = self._plane_by_seed(embedding, crop, click_rc, in_plane_mm, line)
            else:
                mask, score = self._best_at_click(embedding, crop.side, click_rc, in_plane_mm,
                                                  aspects=self.settings.orthogonal_aspects)
            if score < self.settings.min_seed_score:
                continue
            full = np.zeros(resampled.shape, dtype=bool)
            crop.paste(full, mask)
            for kk in range(depth):
                r = int(round((kk + 0.5) * rows / depth - 0.5))
                hits = np.flatnonzero(full[min(max(r, 0), rows - 1)])
                if hits.size:
                    extents.setdefault(kk, [None, None])[1 - axis] = np.array([hits[0], hits[-1] + 1])
        return {kk: (v[0], v[1]) for kk, v in extents.items()}

    def _plane_context_mm(self, seed: tuple[CropWindow, np.ndarray] | None) -> float:
        """The orthogonal planes' crop side in mm: ``orthogonal_to_lesion`` times the seed's diameter when
        set, at most ``orthogonal_context_mm``."""
        s = self.settings
        if not s.orthogonal_to_lesion or seed is None or not seed[1].any():
            return s.orthogonal_context_mm
        box = _box_of(seed[1])
        diameter_mm = float(max(box[2] - box[0], box[3] - box[1])) * self.pixel_mm
        return min(s.orthogonal_context_mm, s.orthogonal_to_lesion * diameter_mm)

    def _plane_by_seed(self, embedding, crop: CropWindow, click_rc: tuple[int, int], pixel_mm: float,
                       seed_line: np.ndarray) -> tuple[np.ndarray, float]:
        """The box search in an orthogonal plane, ranked by the rule score times the 1D IoU (to the power
        ``orthogonal_seed_weight``) of each candidate's row through the click with ``seed_line``, the seed
        mask's cross-section along the plane's columns. Returns the best candidate and its rule score.

        With a learned prompter its box's mask is one more candidate, but it does not rank them: trained
        on axial slices, its ranking sees the lesion short along the slice axis (benchmarks/README.md).
        """
        s = self.settings
        extra = None
        if self.prompter is not None:
            coarse = self.prompter.seed(embedding, crop.side, click_rc)
            if coarse.box is not None:
                extra = coarse.box + np.array([-1, -1, 1, 1], np.float32) * s.box_margin_px
        candidates, scores = self._candidates_at_click(embedding, crop.side, click_rc, pixel_mm, None, None, None,
                                                       extra, s.orthogonal_aspects)
        if not candidates:
            return np.zeros((crop.side, crop.side), bool), 0.0
        line = np.zeros(crop.side, dtype=bool)
        lo, hi = max(crop.i0, 0), min(crop.i0 + crop.side, seed_line.size)
        line[lo - crop.i0 : hi - crop.i0] = seed_line[lo:hi]
        ranked = [sc * _iou(c[click_rc[0]], line) ** s.orthogonal_seed_weight
                  for c, sc in zip(candidates, scores, strict=True)]
        best = int(np.argmax(ranked))
        return candidates[best], scores[best]

    def _refine(self, k: int, click_ji, crop: CropWindow, box: np.ndarray, positives, negatives):
        """Decode a known box on a new crop, iterating to the box's fixed point (twice at most)."""
        s = self.settings
        embedding = self._embedding(k, crop)
        cj, ci = click_ji[0] - crop.j0, click_ji[1] - crop.i0
        points, labels = self._prompt_points(k, crop, positives, negatives)
        margin_box = box + np.array([-1, -1, 1, 1], np.float32) * (
            np.array([box[2] - box[0], box[3] - box[1]] * 2, np.float32) * s.box_margin + s.box_margin_px)
        mask, score = np.zeros((crop.side, crop.side), bool), 0.0
        for _ in range(2):
            margin_box = self._exclude(margin_box, k, crop, negatives)[0]
            out = self.predictor.decode(embedding, crop.side, margin_box[None], points, labels)
            component = _component_at(out.masks[0], (cj, ci), int(round(s.click_radius_mm / self.pixel_mm)),
                                      s.fill_holes)
            if not component.any():
                break
            mask, score = component, float(out.iou[0])
            margin_box = _box_of(mask, s.box_margin, s.box_margin_px)
        return mask, score

    # --- propagation ----------------------------------------------------------------------
    def _step(self, k: int, crop: CropWindow, previous: np.ndarray, positives, negatives,
              require: tuple[int, int] | None = None, forbid: tuple[int, int] | None = None,
              scales: tuple[float, ...] | None = None, verify: bool = True, extra_box: np.ndarray | None = None,
              network_stop: bool = False):
        """Best mask on slice k from boxes around the previous mask; returns (mask, score) or (None, 0).

        With ``require`` (crop row, column) only candidates that reach that point count; with
        ``forbid`` only those that leave it out, if any does. ``scales`` replaces the box sizes
        tried around the previous mask (``propagation_scales``). Without ``verify`` the candidates
        are scored by the predicted IoU alone, not re-decoded from their own boxes. ``extra_box`` is
        one more candidate box (crop x0, y0, x1, y1). With ``network_stop`` a slice where the learned
        prompter sees no lesion gives (None, 0).
        """
        s = self.settings
        embedding = self._embedding(k, crop)
        coarse = None
        self.network_ended, self.last_coarse, self.last_step = False, None, None
        if self.prompter is not None and (self.fused or require is not None):
            coarse = self.prompter.follow(embedding, crop.side, previous)
            self.last_coarse = coarse.in_crop(crop.side) if coarse.box is not None else np.zeros_like(previous)
            if network_stop and coarse.box is None:
                self.network_ended = True
                return None, 0.0
        elif self.prompter is not None:
            return self._learned_step(k, crop, embedding, previous, positives, negatives)
        tight = _box_of(previous)
        centre = (tight[:2] + tight[2:]) / 2
        half = (tight[2:] - tight[:2]) / 2
        boxes = [np.concatenate([centre - half * f - s.box_margin_px, centre + half * f + s.box_margin_px])
                 for f in (scales or s.propagation_scales)]
        if coarse is not None and coarse.box is not None:  # the learned box's mask is one more candidate
            boxes.append(coarse.box + np.array([-1, -1, 1, 1], np.float32) * s.box_margin_px)
        if extra_box is not None:
            boxes.append(extra_box)
        boxes = np.stack(boxes).astype(np.float32)
        boxes = self._exclude(boxes, k, crop, negatives)
        points, labels = self._prompt_points(k, crop, positives, negatives)
        first = self.predictor.decode(embedding, crop.side, boxes, points, labels)
        reach = ndimage.binary_dilation(previous, iterations=max(2, int(round(3 / self.pixel_mm))))
        candidates, predicted = [], []
        for mask, iou in zip(first.masks, first.iou, strict=True):
            if s.fill_holes:
                mask = ndimage.binary_fill_holes(mask)
            labels_2d, _ = ndimage.label(mask)
            keep = np.unique(labels_2d[reach & mask])
            component = np.isin(labels_2d, keep[keep > 0])
            if require is not None:
                at_point = _component_at(mask, require, int(round(s.click_radius_mm / self.pixel_mm)))
                if not at_point.any():
                    continue
                component = component | at_point
            if component.any():
                candidates.append(component)
                predicted.append(float(iou))
        if forbid is not None and any(not c[forbid] for c in candidates):
            predicted = [p for c, p in zip(candidates, predicted, strict=True) if not c[forbid]]
            candidates = [c for c in candidates if not c[forbid]]
        if not candidates:
            return None, 0.0
        if verify:
            own = self._exclude(np.stack([_box_of(c, 0.0, s.box_margin_px) for c in candidates]), k, crop, negatives)
            second = self.predictor.decode(embedding, crop.side, own, points, labels)
            scores = [float(p) * _iou(c, a) for c, a, p in zip(candidates, second.masks, second.iou, strict=True)]
        else:
            scores = predicted
        reference = self.last_coarse
        if reference is not None:
            best, score = self._fused_choice(candidates, scores, reference)
        else:
            best = int(np.argmax(scores))
            score = scores[best]
        if self.step_ranker is not None and self.walk is not None:  # its predicted Dice ends the walk
            quality = self.step_ranker.predict(step_features(k, crop.extract(self.volume[k]), (crop.j0, crop.i0),
                                                             previous, candidates, predicted, scores, self.walk))
            if s.ranker_choice:
                best = int(np.argmax(quality))
            score = float(quality[best])
        self.last_step = StepCandidates(k, crop, previous, candidates, predicted, scores, reference, best)
        if self.on_candidates is not None:
            self.on_candidates(self.last_step)
        return candidates[best], score

    def _learned_step(self, k: int, crop: CropWindow, embedding, previous: np.ndarray, positives, negatives):
        """The learned prompter's box on slice k given the previous mask; (None, 0) where the lesion ends."""
        s = self.settings
        prior = previous
        if s.learned_prior == "coarse":  # the network's own mask on the neighbouring slice, as in training rollouts
            prior = next((self._coarse[kk] for kk in (k - 1, k + 1) if kk in self._coarse), previous)
        coarse = self.prompter.follow(embedding, crop.side, prior)
        if coarse.box is None:
            return None, 0.0
        self._coarse[k] = coarse.in_crop(crop.side)
        box = coarse.box + np.array([-1, -1, 1, 1], np.float32) * s.box_margin_px
        box = self._exclude(box[None], k, crop, negatives)
        points, labels = self._prompt_points(k, crop, positives, negatives)
        out = self.predictor.decode(embedding, crop.side, box, points, labels)
        mask = out.masks[0]
        if s.fill_holes:
            mask = ndimage.binary_fill_holes(mask)
        labels_2d, _ = ndimage.label(mask)
        near = ndimage.binary_dilation(coarse.in_crop(crop.side), iterations=2)
        keep = np.unique(labels_2d[near & mask])
        mask = np.isin(labels_2d, keep[keep > 0])
        if not mask.any():
            return None, 0.0
        return mask, float(out.iou[0])

    def _stop_reason(self, k: int, crop: CropWindow, mask: np.ndarray | None, score: float, previous: np.ndarray,
                     largest: int, reference: tuple[float, float]) -> str | None:
        """Why the lesion ends at slice k (the mask vanished, grew, lost confidence or intensity), or None.

        With a step ranker, ``score`` is its predicted Dice and it alone decides."""
        s = self.settings
        if self.step_ranker is not None and self.walk is not None:
            if mask is None:
                return "mask vanished"
            return "the step ranker sees no lesion" if score < s.ranker_stop else None
        if mask is None or mask.sum() < s.min_area_fraction * largest:
            return "mask vanished"
        if mask.sum() > s.max_growth * previous.sum():
            return "mask grew abruptly"
        if score < s.min_score:
            return "low model confidence"
        if abs(float(crop.extract(self.volume[k])[mask].mean()) - reference[0]) > s.intensity_z * reference[1]:
            return "intensity no longer matches the lesion"
        return None

    def _orthogonal_box(self, extents: dict | None, k: int, crop: CropWindow) -> np.ndarray | None:
        """The box that the coronal (columns) and sagittal (rows) extents draw on slice k, in crop
        coordinates; None where either plane misses the slice or the setting is off."""
        if not self.settings.orthogonal_boxes or not extents or k not in extents:
            return None
        rows, cols = extents[k]
        if rows is None or cols is None:
            return None
        m = self.settings.box_margin_px
        return np.array([cols[0] - crop.i0 - m, rows[0] - crop.j0 - m, cols[1] - crop.i0 + m, rows[1] - crop.j0 + m],
                        dtype=np.float32)

    def propagate(self, start_k: int, crop: CropWindow, start_mask: np.ndarray, positives, negatives,
                  progress_span: tuple[float, float] = (0.1, 1.0), extents: dict | None = None) -> SliceMasks:
        """Follow the lesion from ``start_k`` up and down; return the crop masks per slice."""
        s = self.settings
        ref_pixels = crop.extract(self.volume[start_k])[start_mask]
        reference = (float(ref_pixels.mean()), float(max(ref_pixels.std(), 4.0)))
        result = SliceMasks(crop=crop, masks={start_k: start_mask}, start_k=start_k, reference=reference)
        depth = self.volume.shape[0]
        done = 0
        estimate = max(8, 2 * int(round(np.sqrt(start_mask.sum()) * self.pixel_mm / 3)))
        try:
            for direction in (1, -1):
                previous = start_mask
                largest = start_mask.sum()
                k = start_k + direction
                reach = [kk for kk in (extents or {}) if (kk - start_k) * direction >= 0]
                limit = max(reach, key=lambda kk: abs(kk - start_k)) if reach else start_k  # the planes' farthest slice
                self.walk = WalkContext(reference, start_k, int(start_mask.sum()), self.pixel_mm, self.slice_mm,
                                        extents, limit if reach else None)
                while 0 <= k < depth:
                    beyond = False  # past the extent seen in the orthogonal planes (and its slack)
                    if extents:
                        beyond = (k - limit) * direction > s.orthogonal_tolerance
                        if beyond and not (self.fused and s.network_extends):
                            result.stops.append(f"stopped at slice {k}: the lesion ends in the coronal/sagittal planes")
                            break
                    done += 1
                    lo, hi = progress_span
                    self._report(lo + (hi - lo) * min(done / estimate, 0.95), f"slice {k}")
                    if s.encode_ahead > 0:  # the next slices encode in the background while this one decodes
                        ahead = [k + direction * n for n in range(s.encode_ahead + 1)]
                        if extents:
                            ahead = [kk for kk in ahead if (kk - limit) * direction <= s.orthogonal_tolerance]
                        self.predictor.prefetch(self.volume, [kk for kk in ahead if 0 <= kk < depth], crop)
                    mask, score = self._step(k, crop, previous, positives, negatives, verify=s.propagation_verify,
                                             extra_box=self._orthogonal_box(extents, k, crop),
                                             network_stop=self.fused and (s.fused_network_stop or beyond))
                    reason = ("the learned prompter sees no lesion" if self.network_ended
                              else self._stop_reason(k, crop, mask, score, previous, largest, reference))
                    if not reason and beyond and (self.last_coarse is None
                                                  or dice(mask, self.last_coarse) < s.extend_agreement):
                        reason = "the lesion ends in the coronal/sagittal planes and the learned prompter disagrees"
                    if reason:
                        result.stops.append(f"stopped at slice {k}: {reason}")
                        break
                    result.masks[k] = mask
                    largest = max(largest, int(mask.sum()))
                    previous = mask
                    k += direction
                if s.encode_ahead > 0:
                    self.predictor.cancel_prefetch()  # slices queued past where this direction stopped
        finally:
            self.walk = None  # a cancelled walk leaves no context behind
        return result

    # --- refinement -----------------------------------------------------------------------
    def correct(self, lesion: SliceMasks, click_kji: tuple[int, int, int], positive: bool,
                negatives: list[tuple[int, int, int]]) -> SliceMasks:
        """``lesion`` refined by one more click; only the slices near the click are decoded again.

        ``negatives`` are the negative clicks applied to this lesion so far (this one included);
        they move box sides on their slices.

        - A **positive** click adds the structure that the seed's box search finds at it (on the
          lesion's crop) to its slice, then follows that structure to the neighbouring slices,
          adding it to the lesion's masks. It stays within the lesion's slices, except on the side
          where the click lies past the lesion's end: there it goes on at most
          ``correction_extend_mm`` past the click (another click there extends it further).
          It only adds voxels.
        - A **negative** click re-decodes its slice with the boxes moved past it, keeping the best
          candidate that leaves the click out (if none does, the click's component is cut out),
          then re-decodes the neighbouring slices from that mask. It only removes voxels.
          A click slice left empty ends the lesion there, on the side away from the slice the lesion
          was found on; the walk back towards that slice stops before it.

        Each way, the walk stops where its mask agrees with the lesion's (IoU at least
        ``correction_agreement``) or a stop rule ends it: the rest of the lesion stays as it was.
        """
        s = self.settings
        k, j, i = click_kji
        crop, old = lesion.crop, lesion.masks
        click_ji = (j - crop.j0, i - crop.i0)
        result = SliceMasks(crop=crop, masks=dict(old), stops=list(lesion.stops), start_k=lesion.start_k,
                            reference=lesion.reference)
        depth = self.volume.shape[0]
        if positive:
            found, score = self._search(k, (j, i), crop, [], negatives, s.correction_verify)  # the seed's search
            if not found.any() or score < s.min_seed_score:
                nearest = old[k] if k in old else old[min(old, key=lambda kk: abs(kk - k))]
                disk = np.zeros_like(nearest)
                radius = max(1, int(round(s.click_radius_mm / self.pixel_mm)))
                disk[max(click_ji[0] - radius, 0) : click_ji[0] + radius + 1,
                     max(click_ji[1] - radius, 0) : click_ji[1] + radius + 1] = True
                found, _ = self._step(k, crop, nearest | disk, [], negatives, require=click_ji,
                                      verify=s.correction_verify)
            if found is None or not found.any():
                self.messages.append(f"the positive click on slice {k} found no structure there; it changed nothing")
                return lesion
            result.masks[k] = found | old[k] if k in old else found
            follow, largest = found, int(found.sum())
            extend = max(1, int(np.ceil(s.correction_extend_mm / self.slice_mm)))  # past a click beyond an end
            lo = max(0, k - extend) if k < min(old) else min(old)
            hi = min(depth - 1, k + extend) if k > max(old) else max(old)
        else:
            new, _ = self._step(k, crop, old[k], [], negatives, forbid=click_ji, verify=s.correction_verify)
            if new is not None:
                new = new & old[k]
                if new[click_ji]:  # no candidate left the click out: cut its component out by hand
                    new = new & ~_component_at(new, click_ji)
            if new is None or not new.any():  # nothing left on the click's slice: the lesion ends there
                side = np.sign(k - lesion.start_k)
                for b in [b for b in old if side == 0 or (b - k) * side >= 0]:
                    del result.masks[b]
                result.stops.append(f"the negative click on slice {k} removed the lesion from there on")
                return result
            result.masks[k] = new
            follow, largest = new, max(int(m.sum()) for m in old.values())
            lo, hi = min(old), max(old)
        for direction in (1, -1):
            towards_start = not positive and (lesion.start_k - k) * direction > 0  # never redo the seed slice
            previous, kk = follow, k + direction
            while lo <= kk <= hi and not (towards_start and kk == lesion.start_k):
                mask, score = self._step(kk, crop, previous, [], negatives, scales=s.correction_scales,
                                         verify=s.correction_verify)
                if not positive and mask is not None:
                    mask = mask & old[kk]
                reason = self._stop_reason(kk, crop, mask, score, previous, largest, lesion.reference)
                if reason:  # the rest stays as it was
                    result.stops.append(f"refinement at slice {k} stopped at slice {kk}: {reason}")
                    break
                merged = mask | old[kk] if positive and kk in old else mask
                result.masks[kk] = merged
                if kk in old and _iou(merged, old[kk]) >= s.correction_agreement:
                    break  # back on the lesion's own masks: the rest stays
                if positive:
                    largest = max(largest, int(mask.sum()))
                previous, kk = mask, kk + direction
        return result


def assemble(shape_kji: tuple[int, int, int], lesions: list[SliceMasks],
             negatives: list[tuple[int, int, int]]) -> np.ndarray:
    """Paste per-slice crop masks into a (K, J, I) uint8 volume; cut out negative-click components."""
    volume = np.zeros(shape_kji, dtype=np.uint8)
    rows, cols = shape_kji[1:]
    for lesion in lesions:
        for k, crop_mask in lesion.masks.items():
            slice_mask = np.zeros((rows, cols), dtype=bool)
            lesion.crop.paste(slice_mask, crop_mask)
            volume[k][slice_mask] = 1
    for k, j, i in negatives:
        if volume[k, j, i]:
            volume[k][_component_at(volume[k].astype(bool), (j, i))] = 0
    return volume
