"""Paired comparison of two ``run_benchmark.py`` results: ProMISe's Dice and time per case, and the mean change.

The Dice cost of the int8 encoder, for example (``--extra=`` keeps the flags attached to the option):

    python benchmarks/run_benchmark.py --skip-baselines --extra="--runtime onnx" --out benchmarks/results/cpu_onnx.json
    python benchmarks/run_benchmark.py --skip-baselines --extra="--runtime onnx --precision int8" \\
        --out benchmarks/results/cpu_onnx_int8.json
    python benchmarks/compare_runs.py benchmarks/results/cpu_onnx.json benchmarks/results/cpu_onnx_int8.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def compare(base: dict, other: dict, method: str = "promise") -> tuple[list[str], dict]:
    """Markdown rows for the cases both runs hold, and a summary (mean Dice change, median time ratio)."""
    theirs = {c["case"]: c for c in other["cases"] if method in c}
    rows = ["| case | Dice A | Dice B | B - A | time A s | time B s |", "|---|---|---|---|---|---|"]
    deltas, ratios = [], []
    for case in base["cases"]:
        if method not in case or case["case"] not in theirs:
            continue
        a, b = case[method], theirs[case["case"]][method]
        deltas.append(b["dice"] - a["dice"])
        time_a, time_b = a.get("engine_seconds", a.get("wall_s")), b.get("engine_seconds", b.get("wall_s"))
        if time_a and time_b:
            ratios.append(time_b / time_a)
        rows.append(f"| {case['case']} | {a['dice']:.3f} | {b['dice']:.3f} | {b['dice'] - a['dice']:+.3f} | "
                    + " | ".join("-" if t is None else f"{t:.1f}" for t in (time_a, time_b)) + " |")
    summary = {"cases": len(deltas), "mean_dice_change": statistics.mean(deltas) if deltas else None,
               "worst_dice_change": min(deltas) if deltas else None,
               "median_time_ratio": statistics.median(ratios) if ratios else None}
    return rows, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="the reference run (results JSON)")
    parser.add_argument("b", help="the run to compare with it")
    parser.add_argument("--method", default="promise")
    args = parser.parse_args()
    rows, summary = compare(json.loads(Path(args.a).read_text()), json.loads(Path(args.b).read_text()), args.method)
    print("\n".join(rows))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
