"""How far the coronal/sagittal search sees the lesion along the slice axis, against the truth.

The walk through the slices stops past the extent that the orthogonal planes through the click show
(``PropagationSettings.orthogonal_tolerance`` slices of slack). This script runs only that search,
one click per tumour scan, fused prompts, every scan with the prompter fold that never saw its
patient, and compares the first and last slice it reaches with the label's, for two rankings of the
planes' candidates:

* ``fused``: the default, rule score x Dice with the learned prompter's coarse mask;
* ``seed``: rule score x the 1D IoU of the candidate's row through the click with the seed mask's
  cross-section there (``orthogonal_seed_weight=1``).

An end's error is in slices, positive past the label's end, negative short of it.

    python benchmarks/orthogonal_extents.py --folds OUT/folds --out benchmarks/results/orthogonal_extents.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from ProMISeLib.engine import Segmenter
from ProMISeLib.preprocess import normalize_intensities
from ProMISeLib.prompting.pipeline import held_out_fold
from ProMISeLib.propagation import LesionPropagator
from ProMISeLib.sample_data import lesion_click, load_cases, read_case

RANKINGS = {"fused": 0.0, "seed": 1.0}  # orthogonal_seed_weight of each (fused: no seed given)


def reach(extents: dict) -> tuple[int, int] | None:
    """The first and last slice the planes' lesion reaches."""
    return (min(extents), max(extents)) if extents else None


def case_row(segmenter: Segmenter, case) -> dict:
    volume, geometry, truth = read_case(case)
    normalised = normalize_intensities(volume, "auto")[0]
    click = lesion_click(truth)
    slices = np.flatnonzero(truth.any(axis=(1, 2)))
    row = {"case": case.id, "truth": [int(slices[0]), int(slices[-1])], "click_k": click[0]}
    settings = replace(segmenter.run_settings(), orthogonal_seed_weight=RANKINGS["seed"])
    propagator = LesionPropagator(segmenter.load(), normalised, (geometry.spacing[1], geometry.spacing[0]),
                                  geometry.spacing[2], settings, prompter=segmenter.learned_prompter(), fused=True)
    seed = propagator.seed(click, [click], [])[:2]  # the same for both rankings: found once
    for name in RANKINGS:  # without the seed the planes keep the fused ranking
        found = reach(propagator.orthogonal_extents(click, seed if name == "seed" else None))
        row[name] = list(found) if found else None
        row[f"{name}_errors"] = ([row["truth"][0] - found[0], found[1] - row["truth"][1]] if found else None)
    return row


def summarise(rows: list[dict]) -> dict:
    out = {}
    for name in RANKINGS:
        errors = np.array([e for r in rows if r[f"{name}_errors"] for e in r[f"{name}_errors"]])
        out[name] = {"ends": int(errors.size), "median_error": float(np.median(errors)),
                     "mean_abs_error": round(float(np.mean(np.abs(errors))), 2),
                     "short_by_more_than_2": int(np.sum(errors < -2)), "short_by_more_than_4": int(np.sum(errors < -4)),
                     "past_by_more_than_2": int(np.sum(errors > 2)), "past_by_more_than_4": int(np.sum(errors > 4))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file for the per-scan rows and the summary")
    parser.add_argument("--folds", default=None, help="the folds folder of `promise train-prompting`")
    parser.add_argument("--runtime", default="onnx", choices=("torch", "onnx"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    segmenter = Segmenter(device="cpu", runtime=args.runtime, prompts="fused", cache_mb=300)
    segmenter.replace_settings(encode_ahead=0)
    rows = []
    for case in [c for c in load_cases() if c.label_values]:
        if args.folds:
            segmenter.set_prompter_weights(str(held_out_fold(Path(args.folds), case.id)))
        rows.append(case_row(segmenter, case))
        print(json.dumps(rows[-1]), flush=True)
    result = {"date": time.strftime("%Y-%m-%d"), "folds": bool(args.folds), "summary": summarise(rows), "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
