"""Record the end-to-end cross-validation of a learned prompter in its weights card.

Reads a ``run_benchmark.py --prompter-folds ... --reference HEURISTIC.json`` result, where every
scan ran with the fold that never saw its patient, and writes into the card:

* per scan: the learned and heuristic Dice and HD95, and which fold ran;
* the means, and ``default``: true when the learned prompts beat the heuristic on held-out scans
  (the engine then uses them when ``prompts="auto"``);
* ``shipped_file_validation``: the scans the shipped file itself never saw, with its Dice on them
  (a test reproduces one of them).

    python benchmarks/update_prompter_card.py benchmarks/results/cpu_learned.json \\
        ProMISeModule/ProMISeLib/assets/litemedsam-prompter.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results")
    parser.add_argument("card")
    parser.add_argument("--margin", type=float, default=0.0, help="Dice the learned prompts must gain to be default")
    args = parser.parse_args()
    results = json.loads(Path(args.results).read_text())
    card_file = Path(args.card)
    card = json.loads(card_file.read_text())
    rows = {}
    for c in results["cases"]:
        rows[c["case"]] = {
            "fold": c.get("prompter_fold"),
            "learned_dice": round(c["promise"]["dice"], 4),
            "learned_hd95": c["promise"].get("hd95"),
            "heuristic_dice": round(c["heuristic"]["dice"], 4) if "heuristic" in c else None,
            "learned_seconds": round(c["promise"].get("wall_s", float("nan")), 1),
        }
    learned = float(np.mean([r["learned_dice"] for r in rows.values()]))
    heuristic_values = [r["heuristic_dice"] for r in rows.values() if r["heuristic_dice"] is not None]
    heuristic = float(np.mean(heuristic_values)) if len(heuristic_values) == len(rows) else None
    held = set(card["data"]["held_out_patients"])
    shipped = {case: r["learned_dice"] for case, r in rows.items()
               if any(case == g or case.startswith(g + "_") for g in held)}
    card["validation"]["end_to_end"] = {
        "benchmark": results.get("command"), "date": results.get("date"), "machine": results.get("machine"),
        "per_scan": rows, "learned_mean_dice": round(learned, 4),
        "heuristic_mean_dice": None if heuristic is None else round(heuristic, 4),
    }
    card["validation"]["shipped_file_validation"] = shipped
    card["default"] = heuristic is not None and learned > heuristic + args.margin
    card_file.write_text(json.dumps(card, indent=1) + "\n")
    print(f"learned {learned:.3f} vs heuristic {heuristic}; default={card['default']}; shipped file: {shipped}")


if __name__ == "__main__":
    main()
