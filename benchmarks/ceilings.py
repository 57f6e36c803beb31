"""Where one click stands: the recorded held-out runs set against the ceilings they are bounded by.

It reads result files already in ``benchmarks/results/`` (no model runs) and prints one table:

- the default (fused prompts) and the rules alone, one click, every scan held out by patient;
- a per-scan oracle choice between those two runs (what any selector between them could reach);
- the default after its corrective clicks (``interactive.py --modes centre --summary ... --save``, or the
  recorded ``refinement_cpu_prompt_batch.json`` of the former ``refinement.py``);
- per propagated slice, the kept candidate, the best of the same candidates, and the true box on the same crop
  (``candidates.json``, of the former ``candidates.py``): how far better ranking, and better boxes, could go;
- the engine's walk with its choice, its extent and its seed handed to the label (``oracle_walk.py``; the
  shipped prompter, so not held out): how far the same boxes go when every decision is right;
- the oracle: the true box on every lesion slice.

    python benchmarks/ceilings.py [--results benchmarks/results] [--save benchmarks/results/ceilings.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _mean(values: list[float]) -> float:
    return statistics.mean(values) if values else float("nan")


def one_click_rows(benchmark: dict) -> list[tuple[str, float, int]]:
    """Mean Dice of the default, the rules, a per-scan best of the two, and the oracle box (a run_benchmark file)."""
    cases = [c for c in benchmark["cases"] if "promise" in c and "heuristic" in c]
    fused = [c["promise"]["dice"] for c in cases]
    rules = [c["heuristic"]["dice"] for c in cases]
    rows = [("one click, fused prompts (the default)", _mean(fused), len(cases)),
            ("one click, rules alone (heuristic)", _mean(rules), len(cases)),
            ("one click, the better of the two per scan (an oracle selector)",
             _mean([max(a, b) for a, b in zip(fused, rules, strict=True)]), len(cases))]
    oracle = [c["oracle_box"]["dice"] for c in cases if "oracle_box" in c]
    rows.append(("the true box on every lesion slice (oracle)", _mean(oracle), len(oracle)))
    return rows


def refinement_rows(refinement: dict) -> list[tuple[str, float, int]]:
    """Mean Dice after each click (the first click, then each corrective one) of an ``interactive.py --save``
    file (its centre-click rows) or a recorded ``refinement.py`` file."""
    runs = [c["modes"]["centre"]["steps"] if "modes" in c else c.get("steps") for c in refinement["cases"]
            if "steps" in c or "centre" in c.get("modes", {})]
    runs = [steps for steps in runs if steps]
    depth = min(len(steps) for steps in runs)
    return [(f"{n} corrective click{'s' if n > 1 else ''} after the first", _mean([s[n]["dice"] for s in runs]),
             len(runs)) for n in range(1, depth)]


def candidate_rows(candidates: dict) -> list[tuple[str, float, int]]:
    """Per propagated lesion slice (2D Dice in each step's crop, mean of scans): kept, best candidate, true box."""
    rows = [r for r in candidates["rows"] if r.get("lesion_steps")]
    return [("2D: the candidate box the engine kept", _mean([r["chosen"] for r in rows]), len(rows)),
            ("2D: the best of the same candidate boxes", _mean([r["best"] for r in rows]), len(rows)),
            ("2D: the true box on the same crop", _mean([r["true_box"] for r in rows]), len(rows))]


def oracle_walk_rows(walk: dict) -> list[tuple[str, float, int]]:
    """Mean Dice of each oracle_walk.py variant over the scans it holds."""
    labels = {"engine": "walk as shipped (shipped prompter, not held out)",
              "choice": "walk, the label picks each slice's candidate",
              "extent": "walk, the label says where the lesion ends",
              "choice+extent": "walk, the label picks and ends",
              "choice+extent+seed": "walk, the label picks, ends, and gives the click's slice"}
    rows = walk["rows"]
    return [(label, _mean([r[v]["dice"] for r in rows]), len(rows)) for v, label in labels.items()
            if rows and all(v in r for r in rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--benchmark", default="cpu_fused.json", help="run_benchmark.py file with both prompt modes")
    parser.add_argument("--refinement", default="refinement_cpu_prompt_batch.json",
                        help="the corrective clicks: an interactive.py --save file (or a refinement.py one)")
    parser.add_argument("--candidates", default="candidates.json")
    parser.add_argument("--oracle-walk", default="oracle_walk.json")
    parser.add_argument("--save", type=Path, help="write the table as JSON here")
    args = parser.parse_args()

    def load(name: str) -> dict:
        return json.loads((args.results / name).read_text())

    rows = one_click_rows(load(args.benchmark))
    rows[3:3] = refinement_rows(load(args.refinement))
    if (args.results / args.oracle_walk).is_file():
        rows[-1:-1] = oracle_walk_rows(load(args.oracle_walk))
    rows += candidate_rows(load(args.candidates))
    print("| what | mean Dice | scans |\n|---|---|---|")
    for label, dice, scans in rows:
        print(f"| {label} | {dice:.3f} | {scans} |")
    if args.save:
        sources = {"benchmark": args.benchmark, "refinement": args.refinement, "candidates": args.candidates,
                   "oracle_walk": args.oracle_walk}
        table = [{"what": label, "mean_dice": dice, "scans": scans} for label, dice, scans in rows]
        args.save.write_text(json.dumps({"sources": sources, "rows": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
