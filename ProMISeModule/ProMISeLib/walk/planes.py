"""Stage 3 of the walk: how far the lesion reaches along the slice axis, seen in the orthogonal planes.

The coronal and sagittal planes through the click are resampled to square pixels and searched like the
click's slice; each is read back per axial slice as the lesion's column range (coronal) and row range
(sagittal). The walk stops a little past the farthest slice they reach (``stop.orthogonal_tolerance``).

With a box prompt the planes go through the box's centre and the box itself, projected on each plane,
prompts it (LiteMedSAM was trained on boxes): the ranges they give on each axial slice make that slice's
box, and the walk ends where they end.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ProMISeLib.io.preprocess import CropWindow
from ProMISeLib.walk.context import Voxel, WalkContext
from ProMISeLib.walk.masks import largest_component
from ProMISeLib.walk.search import best_at_click
from ProMISeLib.walk.stop import found_at_click

#: {k: (rows (j0, j1) or None, cols (i0, i1) or None)} for the axial slices the lesion reaches in either plane.
Extents = dict[int, tuple[np.ndarray | None, np.ndarray | None]]


def _planes(ctx: WalkContext, j: int, i: int):
    """The coronal plane at row j and the sagittal plane at column i, each resampled to square pixels:
    yields (axis, resampled plane, its in-plane pixel mm, its rows per axial slice)."""
    depth = ctx.volume.shape[0]
    for axis, (plane, in_plane_mm) in enumerate(((ctx.volume[:, j, :], ctx.spacing_ji[1]),
                                                 (ctx.volume[:, :, i], ctx.spacing_ji[0]))):
        rows = max(2, int(round(depth * ctx.slice_mm / in_plane_mm)))
        yield axis, ndimage.zoom(plane, (rows / depth, 1.0), order=1), in_plane_mm, rows / depth


def _read_back(extents: dict[int, list], full: np.ndarray, axis: int, per_slice: float) -> None:
    """Each axial slice's range of ``full`` (a resampled plane's mask) into ``extents``."""
    rows = full.shape[0]
    for kk in range(int(round(rows / per_slice))):
        r = int(round((kk + 0.5) * per_slice - 0.5))
        hits = np.flatnonzero(full[min(max(r, 0), rows - 1)])
        if hits.size:
            extents.setdefault(kk, [None, None])[1 - axis] = np.array([hits[0], hits[-1] + 1])


def orthogonal_extents(ctx: WalkContext, click_kji: Voxel) -> Extents:
    """The lesion seen in the coronal and sagittal planes through the click."""
    s = ctx.settings
    k, j, i = click_kji
    extents: dict[int, list] = {}
    for axis, resampled, in_plane_mm, per_slice in _planes(ctx, j, i):
        centre = (i, j)[axis]
        click_r = int(round((k + 0.5) * per_slice - 0.5))
        side = int(min(max(resampled.shape),
                       max(s.seed.min_crop_px, round(s.stop.orthogonal_context_mm / in_plane_mm))))
        crop = CropWindow.around((click_r, centre), side, snap=s.seed.crop_snap)
        ctx.check_cancel()
        embedding = ctx.predictor.embed(resampled[None], [0], crop)[0]
        click_rc = (click_r - crop.j0, centre - crop.i0)
        mask, score = best_at_click(ctx, "plane", k, None, embedding, crop.side, click_rc, in_plane_mm,
                                    aspects=s.stop.orthogonal_aspects)
        if not found_at_click(ctx, mask, score):
            continue
        full = np.zeros(resampled.shape, dtype=bool)
        crop.paste(full, mask)
        _read_back(extents, full, axis, per_slice)
    return {kk: (v[0], v[1]) for kk, v in extents.items()}


def box_extents(ctx: WalkContext) -> Extents:
    """The lesion in the coronal and sagittal planes through the box prompt's centre, each prompted with the
    box's projection on it (the largest component inside the box)."""
    s = ctx.settings
    (k0, k1), (j0, j1), (i0, i1) = ctx.bounds
    extents: dict[int, list] = {}
    for axis, resampled, _, per_slice in _planes(ctx, (j0 + j1) // 2, (i0 + i1) // 2):
        c0, c1 = ((i0, i1), (j0, j1))[axis]
        r0, r1 = k0 * per_slice, (k1 + 1) * per_slice
        side = int(min(max(resampled.shape),
                       max(s.seed.min_crop_px, round(max(r1 - r0, c1 + 1 - c0) * s.seed.crop_to_lesion))))
        crop = CropWindow.around(((r0 + r1) / 2, (c0 + c1 + 1) / 2), side)
        ctx.check_cancel()
        embedding = ctx.predictor.embed(resampled[None], [0], crop)[0]
        box = np.array([[c0 - crop.i0, r0 - crop.j0, c1 + 1 - crop.i0, r1 - crop.j0]], np.float32)
        decoded = ctx.predictor.decode(embedding, crop.side, box, None, None).masks[0]
        inside = np.zeros_like(decoded)
        inside[max(int(np.floor(box[0, 1])), 0) : max(int(np.ceil(box[0, 3])), 0),
               max(c0 - crop.i0, 0) : max(c1 + 1 - crop.i0, 0)] = True
        mask = decoded & inside
        if s.boxes.fill_holes:
            mask = ndimage.binary_fill_holes(mask)
        mask = largest_component(mask)
        if not mask.any():
            continue
        full = np.zeros(resampled.shape, dtype=bool)
        crop.paste(full, mask)
        _read_back(extents, full, axis, per_slice)
    return {kk: (v[0], v[1]) for kk, v in extents.items()}
