"""Which structure does a click mean? The seed's candidates on the click's slice, and ways to rank them.

For each scan and first click (``centre``, ``random:N`` as in ``interactive.py``), the seed's box search runs
on the click's slice in its context crop; each candidate is written with its rule score (predicted IoU x
self-consistency), its Dice with the learned prompter's coarse mask (the fused ranking), its 2D Dice with the
label, and two test-time appearance cues from the frozen encoder's features (PerSAM-like): the cosine
distance between the mean feature inside it and in a ring 2 or 4 cells outside (``c2``, ``c4``), and the
features' homogeneity inside; and its agreement with the coronal and sagittal planes through the click (the
1D IoU of its chords through the click with the ranges the planes' own search gives on this slice).
``--shifts`` adds boxes whose centre is moved by these fractions of the half size (the click is then
off-centre in the box); the pairwise IoU of the candidates is written for consensus rankings.

    python benchmarks/seed_candidates.py --out RUN.jsonl --shard 0/2 &  python benchmarks/seed_candidates.py \\
        --out RUN2.jsonl --shard 1/2 --shifts=-0.6,0,0.6
    python benchmarks/seed_candidates.py --summary "RUN*.jsonl"

``--summary`` prints, per first click, the mean 2D Dice of the best candidate (the set's ceiling) and of the
candidate each ranking picks (all candidates / the centred boxes only).
"""

from __future__ import annotations

import argparse
import glob
import json

import numpy as np
import torch
from interactive import first_prompt
from ProMISeLib.engine import Segmenter
from ProMISeLib.io.preprocess import CropWindow
from ProMISeLib.io.sample_data import read_case, select_cases
from ProMISeLib.metrics import dice
from ProMISeLib.prompting.net import downsample_mask
from ProMISeLib.walk.context import WalkContext
from ProMISeLib.walk.masks import box_of, component_at, iou
from ProMISeLib.walk.planes import orthogonal_extents
from scipy import ndimage


def appearance(embedding: torch.Tensor, candidate: np.ndarray) -> dict[str, float]:
    """Feature contrast between a candidate and rings 2 and 4 cells outside it, and its inner homogeneity."""
    features = embedding[0].float().numpy()
    frac = downsample_mask(candidate, features.shape[-1])
    inside = frac > 0.5 if (frac > 0.5).any() else frac >= frac.max()
    mean_in = features[:, inside].mean(1)
    out = {}
    for cells in (2, 4):
        ring = ndimage.binary_dilation(frac > 0, iterations=cells) & ~(frac > 0)
        mean_out = features[:, ring].mean(1) if ring.any() else mean_in
        out[f"c{cells}"] = float(1 - mean_in @ mean_out / (np.linalg.norm(mean_in) * np.linalg.norm(mean_out) + 1e-9))
    cells = features[:, inside] / (np.linalg.norm(features[:, inside], axis=0, keepdims=True) + 1e-9)
    out["homog"] = float(mean_in / np.linalg.norm(mean_in) @ cells.mean(1))
    return out


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    """1D IoU of two half-open intervals."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def plane_agreement(candidate: np.ndarray, click: tuple[int, int], crop: CropWindow, ranges) -> float:
    """Mean 1D IoU of the candidate's row and column chords through the click with the planes' ranges
    (1 where the planes found nothing on this slice)."""
    rows_range, cols_range = ranges
    agreements = []
    for chord, found, offset in ((candidate[click[0], :], cols_range, crop.i0),
                                 (candidate[:, click[1]], rows_range, crop.j0)):
        if found is None:
            continue
        hits = np.flatnonzero(chord)
        agreements.append(_overlap((hits[0] + offset, hits[-1] + 1 + offset), tuple(found)) if hits.size else 0.0)
    return float(np.mean(agreements)) if agreements else 1.0


def candidates(ctx: WalkContext, embedding, side: int, click: tuple[int, int], coarse_box, shifts) -> tuple:
    """The seed's candidates (boxes of every size, moved by ``shifts``, and the prompter's box) with scores."""
    s = ctx.settings
    cj, ci = click
    radii = np.array(s.seed_half_sizes_mm) / ctx.pixel_mm
    boxes, moved = [], []
    for r in radii[radii < side]:
        for dy in shifts:
            for dx in shifts:
                y, x = cj + dy * r, ci + dx * r
                boxes.append([x - r, y - r, x + r + 1, y + r + 1])
                moved.append(bool(dx or dy))
    if coarse_box is not None:
        boxes.append(coarse_box + np.array([-1, -1, 1, 1]) * s.box_margin_px)
        moved.append(False)
    first = ctx.predictor.decode(embedding, side, np.array(boxes, np.float32), None, None)
    radius = ctx.radius_px()
    kept = [(component_at(m, click, radius, s.fill_holes), float(p), mv)
            for m, p, mv in zip(first.masks, first.iou, moved, strict=True)]
    kept = [c for c in kept if c[0].any()]
    own = np.stack([box_of(c[0], s.box_margin, s.box_margin_px) for c in kept])
    second = ctx.predictor.decode(embedding, side, own, None, None)
    scores = [p * iou(c, component_at(a, click, radius, s.fill_holes))
              for (c, p, _), a in zip(kept, second.masks, strict=True)]
    return [c for c, _, _ in kept], scores, [mv for _, _, mv in kept]


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    segmenter = Segmenter(device="cpu", runtime="onnx", cache_mb=600)
    shifts = [float(x) for x in args.shifts.split(",")]
    with open(args.out, "a") as out:
        for case in select_cases(args.cases, args.shard):
            volume, geometry, truth = read_case(case)
            segmenter.cache.clear()
            normalised, _ = segmenter._normalise(volume, "auto")
            ctx = WalkContext(segmenter.load(), normalised, (geometry.spacing[1], geometry.spacing[0]),
                              geometry.spacing[2], segmenter.run_settings(), prompter=segmenter.learned_prompter(),
                              fused=True)
            s = ctx.settings
            for mode in args.modes.split(","):
                i, j, k = first_prompt(mode, truth, geometry.spacing[::-1], case.id)["points"][0]
                side = int(min(max(volume.shape[1:]), max(s.min_crop_px, round(s.context_mm / ctx.pixel_mm))))
                crop = CropWindow.around((j, i), side, snap=s.crop_snap)
                embedding = ctx.embedding(k, crop)
                click = (j - crop.j0, i - crop.i0)
                coarse = ctx.prompter.seed(embedding, crop.side, click)
                masks, scores, moved = candidates(ctx, embedding, crop.side, click, coarse.box, shifts)
                label = crop.extract(truth[k]).astype(bool)
                ranges = orthogonal_extents(ctx, (k, j, i)).get(k, (None, None))
                rows = [dict(area=int(m.sum()), score=sc, coarse=dice(m, coarse.in_crop(crop.side)),
                             truth=dice(m, label), shifted=mv, planes=plane_agreement(m, click, crop, ranges),
                             **appearance(embedding, m))
                        for m, sc, mv in zip(masks, scores, moved, strict=True)]
                inter = np.array([[np.count_nonzero(a & b) for b in masks] for a in masks], float)
                areas = np.diag(inter)
                pair = inter / (areas[:, None] + areas[None, :] - inter)
                out.write(json.dumps(dict(case=case.id, mode=mode, k=int(k), cands=rows,
                                          pair=np.round(pair, 3).tolist())) + "\n")
                out.flush()


RANKINGS = {
    "fused (shipped)": lambda c, cons: c["score"] * max(c["coarse"], 1e-3),
    "rule score": lambda c, cons: c["score"],
    "score x sqrt(coarse)": lambda c, cons: c["score"] * max(c["coarse"], 1e-3) ** 0.5,
    "score x contrast (c4)": lambda c, cons: c["score"] * c["c4"],
    "fused x contrast (c4)": lambda c, cons: c["score"] * max(c["coarse"], 1e-3) * c["c4"],
    "score x planes": lambda c, cons: c["score"] * c["planes"],
    "fused x planes": lambda c, cons: c["score"] * max(c["coarse"], 1e-3) * c["planes"],
    "score x consensus": lambda c, cons: c["score"] * cons,
    "fused x consensus": lambda c, cons: c["score"] * max(c["coarse"], 1e-3) * cons,
}


def summary(pattern: str) -> None:
    rows = [json.loads(line) for path in sorted(glob.glob(pattern)) for line in open(path)]
    for mode in sorted({r["mode"] for r in rows}):
        chosen = [r for r in rows if r["mode"] == mode and r["cands"]]
        print(f"{mode} ({len(chosen)} scans): best of the candidates "
              f"{np.mean([max(c['truth'] for c in r['cands']) for r in chosen]):.3f}")
        for name, rank in RANKINGS.items():
            picks = {True: [], False: []}
            for r in chosen:
                pair = np.array(r["pair"])
                for centred_only in (False, True):
                    index = [n for n, c in enumerate(r["cands"]) if not (centred_only and c["shifted"])]
                    weights = np.array([r["cands"][n]["score"] for n in index])
                    cons = pair[np.ix_(index, index)] @ weights / max(weights.sum(), 1e-9)
                    best = max(range(len(index)), key=lambda m: rank(r["cands"][index[m]], cons[m]))
                    picks[centred_only].append(r["cands"][index[best]]["truth"])
            print(f"  {name:24s} {np.mean(picks[False]):.3f} (centred boxes only {np.mean(picks[True]):.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="JSON-lines file the candidates are appended to")
    parser.add_argument("--modes", default="centre,random:1,random:2")
    parser.add_argument("--cases", default="")
    parser.add_argument("--shard", default="0/1")
    parser.add_argument("--shifts", default="0", help="box centre moves, in half sizes (0: centred boxes only)")
    parser.add_argument("--summary", default=None, help="print the rankings of these JSON-lines files and exit")
    args = parser.parse_args()
    if args.summary:
        summary(args.summary)
    else:
        run(args)


if __name__ == "__main__":
    main()
