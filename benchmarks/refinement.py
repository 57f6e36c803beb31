"""More clicks refine it: Dice and time after each corrective click, as a user would add them.

Per scan: one click at the lesion voxel nearest its centroid (the benchmarks' click), then up to
``--clicks`` corrective clicks. Each corrective click goes where a user would put it: the voxel
deepest inside the largest error region (``sample_data.corrective_click``), positive on a missed
part, negative on a false one. Every click is a new ``Segmenter.segment`` call with all the clicks so
far, as the Slicer panel and the CLI make it; the segmenter remembers the lesion, so a corrective
click redoes only the slices near it. Per step the script records Dice, HD95, the seconds, and the
slices decoded and encoded.

Results go to ``OUT/<case>.json`` (a rerun skips the scans done; ``--shard I/N`` splits the scans);
``--summary OUT`` prints the table.

    python benchmarks/refinement.py --out /tmp/refinement --runtime onnx
    python benchmarks/refinement.py --summary /tmp/refinement --save benchmarks/results/refinement_cpu.json

With ``--folds`` (the folds folder of ``promise train-prompting``) each scan runs with the prompter
fold that never saw its patient; without it the shipped prompter runs, which was trained on these
scans (all but STS_019), so the one-click Dice is then not a held-out figure.
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
from ProMISeLib.io.sample_data import corrective_click, lesion_click, read_case, select_cases
from ProMISeLib.metrics import dice, hd95
from ProMISeLib.prompting import PROMPT_MODES
from ProMISeTrain.prompter_pipeline import held_out_fold


def step_row(result, truth: np.ndarray, spacing_kji, click=None, positive=None) -> dict:
    mask = result.mask.astype(bool)
    return {"click_kji": None if click is None else [int(v) for v in click], "positive": positive,
            "dice": dice(mask, truth), "hd95_mm": hd95(mask, truth, spacing_kji) if mask.any() else None,
            "seconds": result.elapsed_s, "decoded_slices": result.decoded_slices,
            "decoded_prompts": result.decoded_prompts, "encoded_slices": result.encoded_slices}


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = select_cases(args.cases, args.shard)
    # A fold's card names no default mode, so ``auto`` runs what the shipped card runs.
    shipped = Segmenter(device="cpu", prompts=args.prompts).resolved_prompts
    segmenter = Segmenter(device="cpu", runtime=args.runtime, prompts=shipped, cache_mb=600)
    if args.settings:  # fields of that mode's settings replaced
        segmenter.settings = segmenter.run_settings().changed(**json.loads(args.settings))
    for case in cases:
        target = out / f"{case.id}.json"
        if target.exists():
            continue
        if args.folds and args.prompts != "heuristic":  # the fold that never saw this patient
            segmenter.set_prompter_weights(str(held_out_fold(Path(args.folds), case.id)))
        volume, geometry, truth = read_case(case)
        spacing_kji = geometry.spacing[::-1]
        segmenter.cache.clear()
        positives, negatives = [lesion_click(truth)[::-1]], []
        row = {"case": case.id, "lesion_slices": int(truth.any(axis=(1, 2)).sum()), "steps": []}
        try:
            result = segmenter.segment(volume, geometry, positives, space="ijk")
            row["method"] = result.method
            row["steps"].append(step_row(result, truth, spacing_kji))
            for _ in range(args.clicks):
                found = corrective_click(result.mask, truth, spacing_kji)
                if found is None:
                    break
                click, positive = found
                (positives if positive else negatives).append(click[::-1])
                result = segmenter.segment(volume, geometry, positives, negative_points=negatives or None,
                                           space="ijk")
                row["steps"].append(step_row(result, truth, spacing_kji, click, positive))
            again = segmenter.segment(volume, geometry, positives, negative_points=negatives or None, space="ijk")
            row["same_clicks_again_s"] = again.elapsed_s
        except ProMISeError as exc:
            row["error"] = str(exc)
        target.write_text(json.dumps(row, indent=1))
        print(json.dumps({"case": case.id, "dice": [round(s["dice"], 3) for s in row["steps"]],
                          "seconds": [round(s["seconds"], 2) for s in row["steps"]]}), flush=True)


def summary(root: Path, save: Path | None = None) -> str:
    """Mean and median Dice after each click, and the median seconds of the first and corrective clicks."""
    rows = [json.loads(p.read_text()) for p in sorted(root.glob("*.json"))]
    rows = [r for r in rows if r.get("steps")]
    if save is not None:
        save.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "cases": rows}, indent=1))
    depth = max(len(r["steps"]) for r in rows)
    lines = [f"{len(rows)} scans", "| clicks | mean Dice | median Dice | median HD95 mm | median s | "
             "median slices decoded | median prompts decoded | mean Dice gain on the click |",
             "|---|---|---|---|---|---|---|---|"]
    for n in range(depth):
        # A scan that needed fewer clicks (its mask equals the truth) keeps its last result.
        steps = [r["steps"][min(n, len(r["steps"]) - 1)] for r in rows]
        made = [r["steps"][n] for r in rows if len(r["steps"]) > n]
        gains = [r["steps"][n]["dice"] - r["steps"][n - 1]["dice"] for r in rows if n and len(r["steps"]) > n]
        hd = [s["hd95_mm"] for s in steps if s["hd95_mm"] is not None]
        lines.append(f"| {n + 1} | {statistics.mean(s['dice'] for s in steps):.3f} | "
                     f"{statistics.median(s['dice'] for s in steps):.3f} | "
                     f"{statistics.median(hd):.1f} | {statistics.median(s['seconds'] for s in made):.2f} | "
                     f"{statistics.median(s['decoded_slices'] for s in made):.0f} | "
                     f"{statistics.median(s.get('decoded_prompts', 0) for s in made):.0f} | "
                     f"{statistics.mean(gains) if gains else 0.0:+.3f} |")
    first = [r["steps"][0]["seconds"] for r in rows]
    later = [s["seconds"] for r in rows for s in r["steps"][1:]]
    if later:
        ratios = [statistics.median([s["seconds"] for s in r["steps"][1:]]) / r["steps"][0]["seconds"]
                  for r in rows if len(r["steps"]) > 1]
        lines.append(f"\nfirst click median {statistics.median(first):.1f} s; corrective click median "
                     f"{statistics.median(later):.2f} s (max {max(later):.2f} s); per scan, corrective / first "
                     f"median {statistics.median(ratios):.3f}; same clicks again median "
                     f"{statistics.median(r.get('same_clicks_again_s', 0.0) for r in rows):.3f} s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="folder for the per-scan JSON files")
    parser.add_argument("--clicks", type=int, default=3, help="corrective clicks after the first")
    parser.add_argument("--cases", default="", help="comma-separated case ids (default: every tumour case)")
    parser.add_argument("--prompts", default="auto", choices=PROMPT_MODES)
    parser.add_argument("--folds", default=None, help="the folds folder of `promise train-prompting`")
    parser.add_argument("--runtime", default="onnx", choices=("torch", "onnx"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--settings", default=None,
                        help="PropagationSettings fields as JSON, over the prompt mode's own defaults")
    parser.add_argument("--shard", default="0/1", help="I/N: run every N-th scan from the I-th")
    parser.add_argument("--summary", default=None, help="print the table of this results folder and exit")
    parser.add_argument("--save", default=None, help="with --summary: write every per-scan row to this JSON")
    args = parser.parse_args()
    if args.summary:
        print(summary(Path(args.summary), Path(args.save) if args.save else None))
    else:
        if not args.out:
            parser.error("--out is needed")
        run(args)


if __name__ == "__main__":
    main()
