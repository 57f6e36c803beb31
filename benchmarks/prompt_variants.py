"""Compare prompt variants in one process, with the error split into boundary and extent.

Each variant is a prompts mode plus walk settings overrides by stage. Every scan runs with the
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
from pathlib import Path

import numpy as np
from harness import (
    Scan,
    apply_settings,
    first_click,
    load,
    make_segmenter,
    prompter_for,
    resolved_prompts,
    run_cases,
    score,
    select,
)
from ProMISeLib.errors import ProMISeError
from ProMISeLib.io.sample_data import pad_field_of_view
from ProMISeLib.metrics import dice
from ProMISeLib.prompting import PROMPT_MODES

_SHIFTS: dict[str, object] = {}  # token shift plug-ins by file, one each per process


def decompose(mask: np.ndarray, truth: np.ndarray) -> dict:
    """How much of the error is extent (slices) and how much is boundary (in-slice)."""
    truth_k, pred_k = truth.any(axis=(1, 2)), mask.any(axis=(1, 2))
    both = np.flatnonzero(truth_k & pred_k)
    return {"dice_on_lesion_slices": dice(mask & truth_k[:, None, None], truth),
            "slice_dice": float(np.mean([dice(mask[k], truth[k]) for k in both])) if both.size else 0.0,
            "extra_slices": int((pred_k & ~truth_k).sum()), "missed_slices": int((truth_k & ~pred_k).sum()),
            "lesion_slices": int(truth_k.sum())}


def _plugins(case_id: str, token_shift: str | None, token_shift_folds: str | None) -> tuple:
    """The decoder token shift of the scan (its held-out fold, or one file for all), as plug-ins."""
    from ProMISeTrain.prompter_pipeline import held_out_fold
    from ProMISeTrain.token_shift import TokenShift

    path = str(held_out_fold(Path(token_shift_folds), case_id)) if token_shift_folds else token_shift or ""
    if not path:
        return ()
    if path not in _SHIFTS:

        _SHIFTS[path] = TokenShift.from_file(path)
    return (_SHIFTS[path],)


def variant_job(case, prompts: str, settings: str | None, folds: str | None, token_shift: str | None,
                token_shift_folds: str | None, field_of_view: str | None, pad_mode: str, click: str,
                runtime: str) -> dict:
    """One scan, one click, this variant: the Dice and its split into extent and boundary."""
    segmenter = make_segmenter(runtime, resolved_prompts(prompts, folds),
                               _plugins(case.id, token_shift, token_shift_folds))
    apply_settings(segmenter, settings)  # the mode's defaults, then this variant's fields by stage
    if prompts != "heuristic":  # the fold that never saw this patient (None: the shipped prompter)
        segmenter.set_prompter_weights(prompter_for(case.id, folds))
    scan = load(case)
    if field_of_view:
        field = tuple(float(v) for v in field_of_view.split(","))
        scan = Scan(case.id, *pad_field_of_view(scan.volume, scan.geometry, scan.truth, field, pad_mode))
    point = first_click(click, scan)
    started = time.perf_counter()
    try:
        result = segmenter.segment(scan.volume, scan.geometry, [point[::-1]], space="ijk")
        mask, messages, work = result.mask.astype(bool), result.messages, {
            "decoded_prompts": result.decoded_prompts, "encoded_slices": result.encoded_slices,
            "method": result.method}
    except ProMISeError as exc:
        mask, messages, work = np.zeros_like(scan.truth), [str(exc)], {}
    seconds = time.perf_counter() - started
    if token_shift_folds:  # one segmenter per fold: its embeddings in memory go with the scan
        segmenter.cache.clear()
    return {"case": case.id, "size": scan.geometry.size, "click_kji": [int(v) for v in point], **score(mask, scan),
            **decompose(mask, scan.truth), "seconds": seconds, **work, "messages": messages}


def run(args: argparse.Namespace) -> None:
    run_cases(variant_job, select(args.cases, args.shard), Path(args.out) / args.variant, jobs=args.jobs,
              threads=args.threads, prompts=args.prompts, settings=args.settings, folds=args.folds,
              token_shift=args.token_shift, token_shift_folds=args.token_shift_folds,
              field_of_view=args.field_of_view, pad_mode=args.pad_mode, click=args.click, runtime=args.runtime)


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
    parser.add_argument("--settings", default=None,
                        help='walk settings by stage as JSON, over the mode\'s defaults: {"stop": {"min_score": 0.6}}')
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
    parser.add_argument("--cases", default="", help="comma-separated scan ids (default: every tumour scan)")
    parser.add_argument("--shard", default="0/1", help="I/N: run every N-th scan from the I-th")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (one thread each by default)")
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
