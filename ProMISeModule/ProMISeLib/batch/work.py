"""One image's rows through one Segmenter: what a worker runs, in a Dask worker or in-process (Slicer).

Each row runs as one ``promise segment`` call would: the same Segmenter call on the same image and
prompts, from a clean lesion memory, so its mask is the same. The embedding cache is kept across the
rows of the image (rows on one lesion share its slices' embeddings) and emptied for the next image.
Nothing is written here: the masks go back to the caller, which writes the image's file.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

import numpy as np

from ProMISeLib.batch.manifest import Row
from ProMISeLib.batch.plan import ImageJob
from ProMISeLib.batch.results import one_line
from ProMISeLib.errors import InvalidInputError, ProMISeError
from ProMISeLib.io.geometry import ImageGeometry
from ProMISeLib.io.volumes import read_image, read_label
from ProMISeLib.metrics import dice, hd95


@dataclass
class RowOutcome:
    """One row's result: its facts and its mask inside the mask's bounding box, or its error."""

    id: str
    error: str | None = None
    facts: dict = field(default_factory=dict)
    crop: np.ndarray | None = None  # bool, the mask inside its bounding box
    corner: tuple[int, int, int] | None = None  # (k, j, i) of the crop's first voxel

    def mask(self, shape_kji: tuple[int, int, int]) -> np.ndarray:
        """The full (K, J, I) uint8 mask."""
        full = np.zeros(shape_kji, np.uint8)
        k, j, i = self.corner
        full[k:k + self.crop.shape[0], j:j + self.crop.shape[1], i:i + self.crop.shape[2]] = self.crop
        return full


@dataclass
class ImageOutcome:
    """The rows of one image, the image's grid (None if it could not be read) and where they ran."""

    geometry: ImageGeometry | None
    rows: list[RowOutcome]
    worker: str = ""
    peak_rss_mb: float = 0.0


def failed_image(job: ImageJob, error: BaseException | str) -> ImageOutcome:
    """Every row of ``job`` failed with ``error``."""
    return ImageOutcome(None, [RowOutcome(row.id, one_line(error)) for row in job.rows])


def segment_image(segmenter, job: ImageJob, modality: str = "auto") -> ImageOutcome:
    """Segment every row of ``job``; a row that fails is recorded with its one-line error, the others go on."""
    from ProMISeLib.io.process import peak_rss_mb

    segmenter.cache.clear()  # another image's embeddings are of no more use
    try:
        volume, geometry = read_image(job.image)
    except ProMISeError as exc:
        outcome = failed_image(job, exc)
    else:
        labels: dict = {}
        outcome = ImageOutcome(geometry, [_segment_row(segmenter, volume, geometry, row, modality, labels)
                                          for row in job.rows])
    outcome.worker, outcome.peak_rss_mb = f"{socket.gethostname()}:{os.getpid()}", peak_rss_mb()
    return outcome


def _segment_row(segmenter, volume: np.ndarray, geometry: ImageGeometry, row: Row, modality: str,
                 labels: dict) -> RowOutcome:
    segmenter.memory.clear()  # each row is its own lesion, as in its own `promise segment`
    try:
        result = segmenter.segment(volume, geometry, list(row.points) or None, list(row.negative), space=row.space,
                                   modality=modality, box=row.box)
        facts = {"voxels": result.voxel_count, "volume_ml": f"{result.volume_ml:.4f}",
                 "first_slice": result.slice_range[0], "last_slice": result.slice_range[1],
                 "seconds": f"{result.elapsed_s:.2f}", "model": result.model, "method": result.method,
                 "runtime": result.runtime, "device": result.device, "notes": " | ".join(result.messages)}
        if row.label is not None:
            if row.label not in labels:
                labels[row.label] = _read_label(row.label, geometry)
            truth = labels[row.label] == row.label_value if row.label_value is not None else labels[row.label] > 0
            spacing_kji = tuple(geometry.spacing[::-1])
            facts.update(dice=f"{dice(result.mask, truth):.4f}", hd95_mm=f"{hd95(result.mask, truth, spacing_kji):.2f}")
    except ProMISeError as exc:
        return RowOutcome(row.id, one_line(exc))
    (k0, k1), (j0, j1), (i0, i1) = result.bbox_kji
    return RowOutcome(row.id, None, facts, result.mask[k0:k1, j0:j1, i0:i1].astype(bool), (k0, j0, i0))


def _read_label(path, geometry: ImageGeometry) -> np.ndarray:
    try:
        return read_label(path, geometry)
    except RuntimeError as exc:  # SimpleITK's read error
        raise InvalidInputError(f"{path}: the label cannot be read ({one_line(exc)})") from exc
