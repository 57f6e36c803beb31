"""Behaviour parity: the masks of two versions of the engine, compared voxel for voxel.

Per scan it runs, through the public API only (so the same file runs on any version):

* ``default``: the default prompts from the centre click, then three corrective clicks placed as
  ``refinement.py`` places them (the deepest voxel of the largest error region);
* ``heuristic``: ``prompts="heuristic"`` from the centre click.

Each mask is saved (``OUT/<case>.npz``, bit-packed) with its SHA-256 and Dice (``OUT/<case>.json``).
``--compare A B`` then says, step by step, which masks differ. A refactor that claims "behaviour
unchanged" runs this before and after:

    git worktree add /tmp/before <commit>
    PYTHONPATH=/tmp/before/ProMISeModule python benchmarks/parity.py --out /tmp/parity-before --shard 0/2 &
    PYTHONPATH=/tmp/before/ProMISeModule python benchmarks/parity.py --out /tmp/parity-before --shard 1/2
    python benchmarks/parity.py --out /tmp/parity-after --shard 0/2 &   # and 1/2
    python benchmarks/parity.py --compare /tmp/parity-before /tmp/parity-after
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from ProMISeLib.engine import Segmenter
from ProMISeLib.errors import ProMISeError
from ProMISeLib.io.sample_data import corrective_click, lesion_click, load_cases, read_case
from ProMISeLib.metrics import dice

CORRECTIONS = 3


def _digest(mask: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(mask.astype(np.uint8)).tobytes()).hexdigest()


def run_case(case, segmenters: dict[str, Segmenter]) -> tuple[dict, dict[str, np.ndarray]]:
    """The rows and masks of one scan: default with its corrections, then heuristic."""
    volume, geometry, truth = read_case(case)
    spacing_kji = geometry.spacing[::-1]
    row: dict = {"case": case.id, "steps": {}}
    masks: dict[str, np.ndarray] = {}

    def record(name: str, mask: np.ndarray) -> None:
        masks[name] = np.packbits(mask.astype(bool))
        row["steps"][name] = {"sha256": _digest(mask), "dice": dice(mask.astype(bool), truth),
                              "voxels": int(mask.sum())}

    for mode, segmenter in segmenters.items():
        segmenter.cache.clear()
        segmenter.memory.clear()
        positives, negatives = [lesion_click(truth)[::-1]], []
        try:
            result = segmenter.segment(volume, geometry, positives, space="ijk")
            record(f"{mode}-1", result.mask)
            for n in range(CORRECTIONS if mode == "default" else 0):
                found = corrective_click(result.mask, truth, spacing_kji)
                if found is None:
                    break
                click, positive = found
                (positives if positive else negatives).append(click[::-1])
                result = segmenter.segment(volume, geometry, positives, negative_points=negatives or None,
                                           space="ijk")
                record(f"{mode}-{n + 2}", result.mask)
        except ProMISeError as exc:
            row["steps"][f"{mode}-error"] = {"sha256": str(exc), "dice": 0.0, "voxels": 0}
    return row, masks


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shard, shards = (int(v) for v in args.shard.split("/"))
    wanted = set(filter(None, args.cases.split(",")))
    cases = [c for c in load_cases() if c.label_values and (not wanted or c.id in wanted)][shard::shards]
    segmenters = {"default": Segmenter(device="cpu"), "heuristic": Segmenter(device="cpu", prompts="heuristic")}
    for case in cases:
        target = out / f"{case.id}.json"
        if target.exists():
            continue
        row, masks = run_case(case, segmenters)
        np.savez_compressed(out / f"{case.id}.npz", **masks)
        target.write_text(json.dumps(row, indent=1))
        print(json.dumps({"case": case.id, **{k: round(v["dice"], 3) for k, v in row["steps"].items()}}), flush=True)


def compare(a: Path, b: Path) -> int:
    """Print the steps whose masks differ; return how many differ (0: identical)."""
    differ = same = 0
    for path in sorted(a.glob("*.json")):
        other = b / path.name
        if not other.exists():
            print(f"{path.stem}: missing in {b}")
            differ += 1
            continue
        left, right = json.loads(path.read_text())["steps"], json.loads(other.read_text())["steps"]
        for step in sorted(set(left) | set(right)):
            x, y = left.get(step), right.get(step)
            if x is None or y is None or x["sha256"] != y["sha256"]:
                differ += 1
                print(f"{path.stem} {step}: {x and round(x['dice'], 4)} -> {y and round(y['dice'], 4)}")
            else:
                same += 1
    print(f"{same} masks identical, {differ} differ")
    return differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="folder for the per-scan masks and rows")
    parser.add_argument("--cases", default="", help="comma-separated case ids (default: every tumour case)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shard", default="0/1", help="I/N: run every N-th scan from the I-th")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two output folders and exit")
    args = parser.parse_args()
    if args.compare:
        raise SystemExit(1 if compare(Path(args.compare[0]), Path(args.compare[1])) else 0)
    run(args)


if __name__ == "__main__":
    main()
