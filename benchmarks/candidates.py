"""Where a propagated slice's error comes from: the candidate boxes, or the choice among them.

One click per tumour scan, fused prompts, every scan with the prompter fold that never saw its
patient (as ``prompt_variants.py``). At each propagation step the engine reports the candidates it
weighed (``Segmenter.on_candidates``). On the steps whose slice has the lesion, the script scores
them against the truth in the step's ROI crop:

* ``chosen``: the 2D Dice of the mask the engine kept;
* ``best``: the best candidate's (a perfect choice among the same boxes);
* ``coarse``: the learned prompter's own coarse mask (64 x 64 grid, upsampled);
* ``true_box``: the frozen model prompted with the true mask's box on that crop (as the oracle);
* ``rules_only``: the candidate the rule score alone picks (no learned ranking);
* ``with_previous``: the fused ranking times the candidate's Dice with the previous slice's mask, squared.

Each value is a mean over the scan's steps; ``--summary`` averages the scans. The walk itself is
the engine's, so the later columns are what a different choice would have given on the same step,
not on the walk that choice would have made.

    python benchmarks/candidates.py --folds OUT/folds --out CANDS --shard 0/2   # and 1/2 beside it
    python benchmarks/candidates.py --out CANDS --summary --save benchmarks/results/candidates.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from ProMISeLib.engine import Segmenter
from ProMISeLib.errors import ProMISeError
from ProMISeLib.metrics import dice
from ProMISeLib.preprocess import normalize_intensities
from ProMISeLib.prompting.pipeline import held_out_fold
from ProMISeLib.propagation import StepCandidates, _box_of
from ProMISeLib.sample_data import lesion_click, load_cases, read_case
from scipy import ndimage

COLUMNS = ("chosen", "best", "coarse", "true_box", "rules_only", "with_previous")


def score_steps(steps: list[StepCandidates], truth: np.ndarray, segmenter: Segmenter, normalised: np.ndarray) -> dict:
    """The mean of each column over the steps whose slice has the lesion."""
    predictor = segmenter.load()
    margin = segmenter.run_settings().box_margin_px
    values: dict[str, list[float]] = {c: [] for c in COLUMNS}
    past_end = 0
    for step in steps:
        target = step.crop.extract(truth[step.k].astype(np.uint8)).astype(bool)
        if not target.any():
            past_end += 1
            continue
        scores = [dice(c, target) for c in step.candidates]
        values["chosen"].append(scores[step.chosen])
        values["best"].append(max(scores))
        coarse = step.coarse if step.coarse is not None else np.zeros_like(target)
        values["coarse"].append(dice(coarse, target))
        embedding = predictor.embed(normalised, [step.k], step.crop)[step.k]
        decoded = predictor.decode(embedding, step.crop.side, _box_of(target, 0.0, margin)[None])
        values["true_box"].append(dice(ndimage.binary_fill_holes(decoded.masks[0]), target))
        values["rules_only"].append(scores[int(np.argmax(step.scores))])
        ranked = [s * max(dice(c, coarse), 1e-3) * max(dice(c, step.previous), 1e-3) ** 2
                  for c, s in zip(step.candidates, step.scores, strict=True)]
        values["with_previous"].append(scores[int(np.argmax(ranked))])
    row = {c: float(np.mean(v)) if v else None for c, v in values.items()}
    return {**row, "lesion_steps": len(values["chosen"]), "steps_past_end": past_end}


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shard, shards = (int(v) for v in args.shard.split("/"))
    segmenter = Segmenter(device="cpu", runtime=args.runtime, prompts="fused", cache_mb=800)
    segmenter.replace_settings(encode_ahead=0)
    steps: list[StepCandidates] = []
    segmenter.on_candidates = steps.append
    for case in [c for c in load_cases() if c.label_values][shard::shards]:
        target = out / f"{case.id}.json"
        if target.exists():
            continue
        if args.folds:
            segmenter.set_prompter_weights(str(held_out_fold(Path(args.folds), case.id)))
        volume, geometry, truth = read_case(case)
        steps.clear()
        started = time.perf_counter()
        try:
            result = segmenter.segment(volume, geometry, [lesion_click(truth)[::-1]], space="ijk")
            volume_dice = dice(result.mask.astype(bool), truth)
        except ProMISeError:
            volume_dice = 0.0
        row = {"case": case.id, "dice": volume_dice, "seconds": time.perf_counter() - started,
               **score_steps(steps, truth, segmenter, normalize_intensities(volume, "auto")[0])}
        target.write_text(json.dumps(row, indent=1))
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)


def summary(root: Path, save: Path | None) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(root.glob("*.json"))]
    rows = [r for r in rows if r["lesion_steps"]]
    if save is not None:
        save.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))
    header = "| scans | lesion steps | " + " | ".join(COLUMNS) + " |"
    means = " | ".join(f"{statistics.mean(r[c] for r in rows):.3f}" for c in COLUMNS)
    return "\n".join([header, "|---" * (len(COLUMNS) + 2) + "|",
                      f"| {len(rows)} | {sum(r['lesion_steps'] for r in rows)} | {means} |"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--folds", default=None, help="the folds folder of `promise train-prompting`")
    parser.add_argument("--runtime", default="onnx", choices=("torch", "onnx"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shard", default="0/1", help="I/N: run every N-th scan from the I-th")
    parser.add_argument("--summary", action="store_true", help="print the table of the scans done")
    parser.add_argument("--save", default=None, help="with --summary: write every per-scan row to this JSON")
    args = parser.parse_args()
    if args.summary:
        print(summary(Path(args.out), Path(args.save) if args.save else None))
        return
    run(args)


if __name__ == "__main__":
    main()
