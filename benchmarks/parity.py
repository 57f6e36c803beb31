"""Behaviour parity: the masks of two versions of the engine, compared voxel for voxel.

Per scan it runs the harness's protocol (``harness.protocol``) in these variants:

* ``default``: the default prompts from the centre click, then three corrective clicks;
* ``random``: the default prompts from the first random click (``random:1``), then three corrective clicks;
* ``heuristic``: ``prompts="heuristic"`` from the centre click;
* ``box``: the label's box alone.

Each mask is saved (``OUT/<case>.npz``, bit-packed) with its SHA-256 and Dice (``OUT/<case>.json``).
``--compare A B`` then says, step by step, which masks differ. A change that claims "behaviour unchanged"
runs this before and after (the embedding store and the decode memo make the second run cheap):

    git worktree add /tmp/before <commit>
    PYTHONPATH=/tmp/before/ProMISeModule python benchmarks/parity.py --out /tmp/parity-before
    python benchmarks/parity.py --out /tmp/parity-after
    python benchmarks/parity.py --compare /tmp/parity-before /tmp/parity-after
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
from harness import load, make_segmenter, protocol, run_cases, select

#: name: (prompts, first prompt, corrective clicks)
VARIANTS = {"default": ("auto", "centre", 3), "random": ("auto", "random:1", 3),
            "heuristic": ("heuristic", "centre", 0), "box": ("auto", "box", 0)}


def _digest(mask: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(mask.astype(np.uint8)).tobytes()).hexdigest()


def parity_job(case, folder: str, variants: str) -> dict:
    """The rows and masks of one scan, every variant (masks into ``folder/<case>.npz``)."""
    scan = load(case)
    row: dict = {"case": case.id, "steps": {}}
    masks: dict[str, np.ndarray] = {}
    for name in variants.split(","):
        prompts, mode, clicks = VARIANTS[name]

        def record(n: int, mask: np.ndarray, name: str = name) -> None:
            masks[f"{name}-{n + 1}"] = np.packbits(mask.astype(bool))
            row["steps"][f"{name}-{n + 1}"] = {"sha256": _digest(mask), "voxels": int(mask.sum())}

        done = protocol(make_segmenter(prompts=prompts), scan, mode, clicks, record)
        for n, step in enumerate(done["steps"]):
            row["steps"][f"{name}-{n + 1}"]["dice"] = step["dice"]
        if "error" in done:
            row["steps"][f"{name}-error"] = {"sha256": done["error"], "dice": 0.0, "voxels": 0}
    np.savez_compressed(Path(folder) / f"{case.id}.npz", **masks)
    return row


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
                print(f"{path.stem} {step}: {x and round(x.get('dice', 0), 4)} -> {y and round(y.get('dice', 0), 4)}")
            else:
                same += 1
    print(f"{same} masks identical, {differ} differ")
    return differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="folder for the per-scan masks and rows")
    parser.add_argument("--cases", default="", help="comma-separated case ids (default: every tumour case)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two output folders and exit")
    args = parser.parse_args()
    if args.compare:
        raise SystemExit(1 if compare(Path(args.compare[0]), Path(args.compare[1])) else 0)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    run_cases(parity_job, select(args.cases), Path(args.out), jobs=args.jobs, threads=args.threads, folder=args.out,
              variants=args.variants)


if __name__ == "__main__":
    main()
