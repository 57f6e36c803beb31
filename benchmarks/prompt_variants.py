"""Compare prompt variants in one process, with the error split into boundary and extent.

Each variant is a prompts mode plus PropagationSettings overrides. Every scan runs with the
prompter fold that never saw its patient (``promise train-prompting`` writes the folds). Per scan
the script records:

* the Dice;
* the Dice with the prediction cut to the true lesion's slices (what a perfect extent would add);
* the mean 2D Dice on slices where both the prediction and the truth have the lesion (boundary quality);
* the predicted slices outside the lesion, and the lesion slices missed.

Results go to ``OUT/<variant>/<case>.json``; a rerun skips the scans already done, so shards can run
side by side (``--shard 0/2`` and ``--shard 1/2``). ``--summary`` prints the paired means of the
variants given.

    python benchmarks/prompt_variants.py --folds OUT/folds --out /tmp/variants --variant heuristic \\
        --prompts heuristic
    python benchmarks/prompt_variants.py --folds OUT/folds --out /tmp/variants --variant fused --prompts fused
    python benchmarks/prompt_variants.py --folds OUT/folds --out /tmp/variants --variant fused-rules-stop \\
        --prompts fused --settings '{}'
    python benchmarks/prompt_variants.py --out /tmp/variants --summary heuristic fused fused-rules-stop
    python benchmarks/prompt_variants.py --folds OUT/folds --out /tmp/variants --variant fused-shift --prompts fused \
        --token-shift-folds SHIFT_OUT/folds

``--token-shift-folds`` (the folds folder of ``promise train-token-shift``) gives every scan the decoder
token shift that never saw its patient; ``--token-shift`` sets one for all (``auto``, ``off`` or a file).

``--field-of-view I,J,K`` pads every scan out to that extent in mm before the click
(``--pad-mode mirror`` fills it with mirrored tissue, ``constant`` with the lowest value): the
sarcoma scans are cropped 5 cm around the tumour, and real scans are not.

``--click random:SEED`` clicks each scan at a random voxel instead of the one nearest the lesion's centroid:
at least 3 mm inside the lesion's edge, on a slice where the lesion has at least half its largest area
(``sample_data.random_lesion_click``; the same SEED gives the same clicks in every variant).

``--settings`` replaces the engine's default settings (for ``fused``, ``'{}'`` drops its own
stop settings, ``FUSED_DEFAULTS``). Without it the engine's defaults run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from ProMISeLib.engine import Segmenter
from ProMISeLib.errors import ProMISeError
from ProMISeLib.io.sample_data import lesion_click, load_cases, pad_field_of_view, random_lesion_click, read_case
from ProMISeLib.metrics import dice
from ProMISeLib.prompting import PROMPT_MODES
from ProMISeLib.walk import WalkSettings
from ProMISeTrain.prompter_pipeline import held_out_fold
from ProMISeTrain.token_shift import TokenShift


def decompose(mask: np.ndarray, truth: np.ndarray) -> dict:
    """Dice, and how much of the error is extent (slices) and how much is boundary (in-slice)."""
    truth_k, pred_k = truth.any(axis=(1, 2)), mask.any(axis=(1, 2))
    both = np.flatnonzero(truth_k & pred_k)
    return {"dice": dice(mask, truth), "dice_on_lesion_slices": dice(mask & truth_k[:, None, None], truth),
            "slice_dice": float(np.mean([dice(mask[k], truth[k]) for k in both])) if both.size else 0.0,
            "extra_slices": int((pred_k & ~truth_k).sum()), "missed_slices": int((truth_k & ~pred_k).sum()),
            "lesion_slices": int(truth_k.sum())}


def click_of(truth: np.ndarray, spacing_kji: tuple[float, float, float], case_id: str, rule: str):
    """The scan's click (k, j, i): ``centre`` (the voxel nearest the centroid) or ``random:SEED``."""
    if rule == "centre":
        return lesion_click(truth)
    seed = int(rule.removeprefix("random:"))
    return random_lesion_click(truth, spacing_kji, np.random.default_rng([seed, zlib.crc32(case_id.encode())]))


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out) / args.variant
    out.mkdir(parents=True, exist_ok=True)
    shard, shards = (int(v) for v in args.shard.split("/"))
    wanted = set(args.cases.split(",")) if args.cases else None
    cases = [c for c in load_cases() if c.label_values and (wanted is None or c.id in wanted)][shard::shards]
    settings = None if args.settings is None else WalkSettings().changed(**json.loads(args.settings))
    field = tuple(float(v) for v in args.field_of_view.split(",")) if args.field_of_view else None

    def shift_of(case) -> str:
        if args.token_shift_folds:
            return str(held_out_fold(Path(args.token_shift_folds), case.id))
        return args.token_shift or ""

    cases.sort(key=shift_of)  # one engine per token shift, each built once
    engines: dict[str, Segmenter] = {}
    for case in cases:
        target = out / f"{case.id}.json"
        if target.exists():
            continue
        shift = shift_of(case)
        if shift not in engines:
            engines.clear()  # the previous shift's engine and its embedding cache go
            engines[shift] = Segmenter(device="cpu", runtime=args.runtime, prompts=args.prompts, settings=settings,
                                       cache_mb=300, plugins=[TokenShift.from_file(shift)] if shift else [])
        segmenter = engines[shift]
        if args.folds and args.prompts != "heuristic":  # the fold that never saw this patient; one engine, one cache
            segmenter.set_prompter_weights(str(held_out_fold(Path(args.folds), case.id)))
        volume, geometry, truth = read_case(case)
        if field is not None:
            volume, geometry, truth = pad_field_of_view(volume, geometry, truth, field, args.pad_mode)
        click = click_of(truth, tuple(geometry.spacing[::-1]), case.id, args.click)
        started = time.perf_counter()
        try:
            result = segmenter.segment(volume, geometry, [click[::-1]], space="ijk")
            mask, messages, work = result.mask.astype(bool), result.messages, {
                "decoded_prompts": result.decoded_prompts, "encoded_slices": result.encoded_slices,
                "method": result.method}
        except ProMISeError as exc:
            mask, messages, work = np.zeros_like(truth), [str(exc)], {}
        row = {"case": case.id, "size": geometry.size, "click_kji": [int(v) for v in click], **decompose(mask, truth),
               "seconds": time.perf_counter() - started, **work, "messages": messages}
        target.write_text(json.dumps(row, indent=1))
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items() if k != "messages"}),
              flush=True)


def summary(root: Path, variants: list[str], save: Path | None = None) -> str:
    """Paired means over the scans every variant has; ``save`` writes every per-scan row to one JSON."""
    data = {v: {p.stem: json.loads(p.read_text()) for p in (root / v).glob("*.json")} for v in variants}
    if save is not None:
        save.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "variants": data}, indent=1))
    common = sorted(set.intersection(*(set(d) for d in data.values())))
    header = ("| variant | mean Dice | median Dice | Dice on lesion slices | slice Dice | extra slices | missed slices "
              "| median prompts decoded | paired change vs first | better / worse (> 0.01) |")
    lines = [f"{len(common)} scans in common", header, "|---|---|---|---|---|---|---|---|---|---|"]
    first = [data[variants[0]][c]["dice"] for c in common]
    for v in variants:
        rows = [data[v][c] for c in common]
        change = [r["dice"] - f for r, f in zip(rows, first, strict=True)]
        paired = "- | -" if v == variants[0] else (
            f"{statistics.mean(change):+.3f} (median {statistics.median(change):+.3f}) | "
            f"{sum(d > 0.01 for d in change)} / {sum(d < -0.01 for d in change)}")
        prompts = [r["decoded_prompts"] for r in rows if "decoded_prompts" in r]  # recorded since 2026-12-02
        lines.append(f"| {v} | {statistics.mean(r['dice'] for r in rows):.3f} | "
                     f"{statistics.median(r['dice'] for r in rows):.3f} | "
                     f"{statistics.mean(r['dice_on_lesion_slices'] for r in rows):.3f} | "
                     f"{statistics.mean(r['slice_dice'] for r in rows):.3f} | "
                     f"{sum(r['extra_slices'] for r in rows)} | {sum(r['missed_slices'] for r in rows)} | "
                     f"{statistics.median(prompts) if prompts else '-'} | {paired} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--variant", default=None, help="a name for this run's folder")
    parser.add_argument("--prompts", default="fused", choices=PROMPT_MODES)
    parser.add_argument("--settings", default=None, help="PropagationSettings fields as JSON (replaces the defaults)")
    parser.add_argument("--folds", default=None, help="the folds folder of `promise train-prompting`")
    parser.add_argument("--token-shift", default=None,
                        help="a decoder token shift file for every scan, plugged into the walk (default: none)")
    parser.add_argument("--token-shift-folds", default=None,
                        help="the folds folder of `promise train-token-shift`: each scan gets the shift that "
                             "never saw its patient")
    parser.add_argument("--field-of-view", default=None,
                        help="I,J,K: pad every scan out to this extent in mm (real scans are not cropped)")
    parser.add_argument("--click", default="centre", help="centre, or random:SEED (a random voxel inside the lesion)")
    parser.add_argument("--pad-mode", default="mirror", choices=("mirror", "constant"))
    parser.add_argument("--runtime", default="onnx", choices=("torch", "onnx"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", default=None, help="comma-separated scan ids (default: every tumour scan)")
    parser.add_argument("--shard", default="0/1", help="I/N: run every N-th scan from the I-th")
    parser.add_argument("--summary", nargs="+", default=None, help="print the paired table of these variants")
    parser.add_argument("--save", default=None, help="with --summary: write every per-scan row to this JSON")
    args = parser.parse_args()
    if args.summary:
        print(summary(Path(args.out), args.summary, Path(args.save) if args.save else None))
        return
    if not args.variant:
        parser.error("--variant names the run")
    run(args)


if __name__ == "__main__":
    main()
