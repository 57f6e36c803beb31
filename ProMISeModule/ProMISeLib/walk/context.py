"""The small context every stage of the walk shares: the model, the volume, the settings and the callbacks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ProMISeLib.errors import SegmentationCancelled
from ProMISeLib.io.preprocess import CropWindow
from ProMISeLib.runtime.predictor import SlicePredictor
from ProMISeLib.walk.choose import Chooser
from ProMISeLib.walk.hooks import WalkPlugin, Weighed
from ProMISeLib.walk.settings import WalkSettings

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]
Voxel = tuple[int, int, int]
#: A box prompt as inclusive voxel ranges ((k0, k1), (j0, j1), (i0, i1)).
Bounds = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


@dataclass
class WalkContext:
    """One volume being segmented: what the seed, the planes, the steps and the corrections all read.

    ``chooser`` is the prompt mode (:mod:`ProMISeLib.walk.choose`): which boxes every stage decodes and which
    candidate it keeps.
    """

    predictor: SlicePredictor
    volume: np.ndarray  # normalised 0-255, (K, J, I)
    spacing_ji: tuple[float, float]
    slice_mm: float
    settings: WalkSettings = field(default_factory=WalkSettings)
    progress: ProgressFn | None = None
    cancel: CancelFn | None = None
    chooser: Chooser = field(default_factory=Chooser)
    plugins: Sequence[WalkPlugin] = ()
    bounds: Bounds | None = None  # the user's box: the lesion is searched for inside it only
    point_prompts: bool = False  # the model's: clicks go to the decoder as points too (point-trained SAM)
    encode_ahead: int = 0  # the runtime's: slices encoded in the background ahead of the walk (0: off)
    messages: list[str] = field(default_factory=list)
    decoded_slices: int = 0  # axial slices decoded through this context

    def __post_init__(self) -> None:
        self.slice_mm = float(self.slice_mm)
        self.pixel_mm = float(np.sqrt(self.spacing_ji[0] * self.spacing_ji[1]))

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            raise SegmentationCancelled("segmentation cancelled")

    def report(self, fraction: float, message: str) -> None:
        if self.progress is not None:
            self.progress(min(max(fraction, 0.0), 1.0), message)

    def embedding(self, k: int, crop: CropWindow):
        """The encoder's embedding of slice k in ``crop`` (cached by the predictor)."""
        self.check_cancel()
        self.decoded_slices += 1
        return self.predictor.embed(self.volume, [k], crop)[k]

    def choose(self, stage: str, k: int, crop: CropWindow | None, previous: np.ndarray | None,
               candidates: list[np.ndarray], predicted: list[float], scores: list[float], coarse: np.ndarray | None,
               chooser: Chooser | None = None, first: int | None = None) -> int:
        """The index of the candidate kept: the chooser's (``self.chooser`` unless given; ``first`` when it ranked
        them already), then the plug-ins'."""
        best = first if first is not None else (chooser or self.chooser).pick(candidates, scores, coarse)
        if self.plugins:
            weighed = Weighed(stage, k, crop, previous, candidates, predicted, scores, coarse, best)
            for plugin in self.plugins:
                choice = plugin.choose(weighed)
                if choice is not None:
                    best = int(choice)
        return best

    def allows(self, k: int) -> bool:
        """Whether slice k is inside the box prompt's slices (always, without a box)."""
        return self.bounds is None or self.bounds[0][0] <= k <= self.bounds[0][1]

    def box_mask(self, crop: CropWindow) -> np.ndarray | None:
        """The box prompt's rows and columns as a crop mask (None without a box)."""
        if self.bounds is None:
            return None
        (_, _), (j0, j1), (i0, i1) = self.bounds
        inside = np.zeros((crop.side, crop.side), dtype=bool)
        inside[max(j0 - crop.j0, 0) : max(j1 + 1 - crop.j0, 0), max(i0 - crop.i0, 0) : max(i1 + 1 - crop.i0, 0)] = True
        return inside

    def radius_px(self, pixel_mm: float | None = None) -> int:
        """``boxes.click_radius_mm`` in pixels of ``pixel_mm`` (the axial pixel by default)."""
        return int(round(self.settings.boxes.click_radius_mm / (pixel_mm or self.pixel_mm)))

    @staticmethod
    def points_in_crop(points: Sequence[Voxel], k: int, crop: CropWindow) -> list[tuple[int, int]]:
        """(x, y) crop coordinates of the clicks on slice k."""
        return [(p[2] - crop.i0, p[1] - crop.j0) for p in points if p[0] == k]

    def prompt_points(self, k: int, crop: CropWindow, positives, negatives):
        """The clicks on slice k as the decoder's point prompts (point-trained models only), else (None, None)."""
        if not self.point_prompts:
            return None, None
        pos = self.points_in_crop(positives, k, crop)
        neg = self.points_in_crop(negatives, k, crop)
        if not pos and not neg:
            return None, None
        return np.array(pos + neg, dtype=np.float32), np.array([1] * len(pos) + [0] * len(neg))

    def exclude(self, boxes: np.ndarray, k: int, crop: CropWindow, negatives) -> np.ndarray:
        """Move the nearest side of each box past any negative click inside it (box-trained models)."""
        boxes = np.array(boxes, dtype=np.float32, copy=True).reshape(-1, 4)
        for x, y in self.points_in_crop(negatives, k, crop):
            for box in boxes:
                x0, y0, x1, y1 = box
                if x0 <= x <= x1 and y0 <= y <= y1:
                    gaps = [x - x0, y - y0, x1 - x, y1 - y]
                    side = int(np.argmin(gaps))
                    box[side] = (x + 1, y + 1, x - 1, y - 1)[side]
        return boxes
