"""How far the one-click walk could go: the engine's walk with parts of it handed to the truth.

One click per tumour scan (the voxel nearest the lesion's centroid), fused prompts. Each variant gives
one part of the walk to an oracle that reads the expert label; everything else is the engine's:

* ``engine``: nothing, the engine as shipped;
* ``choice``: on every propagated slice the candidate with the best Dice against the truth is kept
  (the same candidate boxes the engine decoded: its rules' boxes and the prompter's);
* ``extent``: the walk goes on while the truth has the lesion on the slice, and stops where it ends
  (no stop rule, no orthogonal-plane extent);
* ``choice+extent``: both.

The last one bounds what any ranking and any stop rule over these propagated boxes can reach from one
click; the gap to the oracle box on every slice (``run_benchmark.py``) is the boxes themselves. The
prompter is the shipped one, which saw every patient, so each row is an optimistic bound. The oracle
plugs in through the walk's extension point (:class:`ProMISeLib.walk.WalkPlugin`). (The variant that
also gave the click's slice to the truth, 0.865 on 2026-12-06, patched the seed; it is in
``docs/studies/where-one-click-stands.md``.)

    python benchmarks/oracle_walk.py --out ORACLE --shard 0/2   # and --shard 1/2 beside it
    python benchmarks/oracle_walk.py --out ORACLE --summary --save benchmarks/results/oracle_walk.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from harness import load, make_segmenter, protocol, read_rows, run_cases, select
from ProMISeLib.metrics import dice
from ProMISeLib.walk import WalkPlugin, Weighed

VARIANTS = ("engine", "choice", "extent", "choice+extent")


class Oracle(WalkPlugin):
    """The parts of the walk named in ``parts`` decided by ``truth`` (K, J, I), a plug-in of the walk."""

    def __init__(self) -> None:
        self.truth: np.ndarray | None = None
        self.parts: frozenset[str] = frozenset()

    def choose(self, weighed: Weighed) -> int | None:
        if weighed.stage not in ("step", "correction"):  # the propagated slices' choices only
            return None
        target = weighed.crop.extract(self.truth[weighed.k].astype(np.uint8)).astype(bool)
        if "choice" in self.parts and target.any():
            return int(np.argmax([dice(c, target) for c in weighed.candidates]))
        return None

    def stop(self, k: int, mask, reason: str | None) -> str | None:
        if "extent" not in self.parts:
            return reason
        if not self.truth[k].any():
            return "the true lesion ends"
        return None if mask is not None else "mask vanished"


ORACLE = Oracle()  # one per process: its segmenter (and embedding cache) serves every scan


def oracle_job(case, variants: str, runtime: str) -> dict:
    """One scan, the centre click, once per variant (the harness's protocol without corrections)."""
    segmenter = make_segmenter(runtime, "fused", plugins=(ORACLE,))
    scan = load(case)
    ORACLE.truth = scan.truth
    row: dict = {"case": case.id, "lesion_slices": int(scan.truth.any(axis=(1, 2)).sum())}
    for variant in variants.split(","):
        ORACLE.parts = frozenset(variant.split("+")) - {"engine"}
        segmenter.settings = segmenter.run_settings().changed(stop={"orthogonal": "extent" not in ORACLE.parts})
        slices: list[int] = []

        def record(n: int, mask: np.ndarray, slices: list[int] = slices) -> None:
            slices.append(int(mask.any(axis=(1, 2)).sum()))

        done = protocol(segmenter, scan, "centre", 0, record)
        step = done["steps"][0] if done["steps"] else {"dice": 0.0, "hd95_mm": None, "seconds": 0.0}  # an error
        row[variant] = {"dice": step["dice"], "hd95_mm": step["hd95_mm"], "seconds": step["seconds"],
                        "slices": slices[0] if slices else 0, **({"error": done["error"]} if "error" in done else {})}
    return row


def run(args: argparse.Namespace) -> None:
    run_cases(oracle_job, select(args.cases, args.shard), Path(args.out), jobs=args.jobs, threads=args.threads,
              variants=args.variants, runtime=args.runtime)


def summary(root: Path, save: Path | None) -> str:
    rows = read_rows(root)
    variants = [v for v in VARIANTS if rows and all(v in r for r in rows)]
    if save is not None:
        save.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1) + "\n")
    lines = ["| variant | scans | mean Dice | median Dice | scans at 0.80 or more |", "|---|---|---|---|---|"]
    for variant in variants:
        values = [r[variant]["dice"] for r in rows]
        lines.append(f"| {variant} | {len(values)} | {statistics.mean(values):.3f} | {statistics.median(values):.3f}"
                     f" | {sum(v >= 0.8 for v in values)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--runtime", default="onnx", choices=("torch", "onnx"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", default="", help="comma-separated case ids (default: every tumour case)")
    parser.add_argument("--shard", default="0/1", help="I/N: run every N-th scan from the I-th")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (one thread each by default)")
    parser.add_argument("--summary", action="store_true", help="print the table of the scans done")
    parser.add_argument("--save", default=None, help="with --summary: write every per-scan row to this JSON")
    args = parser.parse_args()
    if args.summary:
        print(summary(Path(args.out), Path(args.save) if args.save else None))
        return
    run(args)


if __name__ == "__main__":
    main()
