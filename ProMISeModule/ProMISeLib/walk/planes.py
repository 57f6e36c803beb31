"""Stage 3 of the walk: how far the lesion reaches along the slice axis, seen in the orthogonal planes.

The coronal and sagittal planes through the click are resampled to square pixels and searched like the
click's slice; each is read back per axial slice as the lesion's column range (coronal) and row range
(sagittal). The walk stops a little past the farthest slice they reach (``orthogonal_tolerance``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ProMISeLib.io.preprocess import CropWindow
from ProMISeLib.walk.context import Voxel, WalkContext
from ProMISeLib.walk.search import best_at_click

#: {k: (rows (j0, j1) or None, cols (i0, i1) or None)} for the axial slices the lesion reaches in either plane.
Extents = dict[int, tuple[np.ndarray | None, np.ndarray | None]]


def orthogonal_extents(ctx: WalkContext, click_kji: Voxel) -> Extents:
    """The lesion seen in the coronal and sagittal planes through the click."""
    s = ctx.settings
    k, j, i = click_kji
    depth = ctx.volume.shape[0]
    extents: dict[int, list] = {}
    for axis, (plane, in_plane_mm, centre) in enumerate(
        ((ctx.volume[:, j, :], ctx.spacing_ji[1], i), (ctx.volume[:, :, i], ctx.spacing_ji[0], j))
    ):
        zoom = ctx.slice_mm / in_plane_mm
        rows = max(2, int(round(depth * zoom)))
        resampled = ndimage.zoom(plane, (rows / depth, 1.0), order=1)
        click_r = int(round((k + 0.5) * rows / depth - 0.5))
        side = int(min(max(resampled.shape), max(s.min_crop_px, round(s.orthogonal_context_mm / in_plane_mm))))
        crop = CropWindow.around((click_r, centre), side, snap=s.crop_snap)
        ctx.check_cancel()
        embedding = ctx.predictor.embed(resampled[None], [0], crop)[0]
        click_rc = (click_r - crop.j0, centre - crop.i0)
        mask, score = best_at_click(ctx, embedding, crop.side, click_rc, in_plane_mm, aspects=s.orthogonal_aspects)
        if score < s.min_seed_score:
            continue
        full = np.zeros(resampled.shape, dtype=bool)
        crop.paste(full, mask)
        for kk in range(depth):
            r = int(round((kk + 0.5) * rows / depth - 0.5))
            hits = np.flatnonzero(full[min(max(r, 0), rows - 1)])
            if hits.size:
                extents.setdefault(kk, [None, None])[1 - axis] = np.array([hits[0], hits[-1] + 1])
    return {kk: (v[0], v[1]) for kk, v in extents.items()}
