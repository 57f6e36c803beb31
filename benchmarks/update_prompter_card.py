"""Record the end-to-end cross-validation of a learned prompter's modes in its weights card.

Reads a ``run_benchmark.py --prompter-folds ... --reference HEURISTIC.json`` result, where every
scan ran with the fold that never saw its patient, in one prompts mode (``learned``: the prompter
picks each box; ``fused``: it ranks the rule-based candidates), and writes into the card under
``validation.end_to_end``:

* ``heuristic_mean_dice``: the rule-based search alone on the same scans and clicks;
* ``modes.<mode>``: per scan the Dice, HD95, time and which fold ran, and the mean Dice;
* ``shipped_file_validation.<mode>``: the scans the shipped file itself never saw, with its Dice on
  them (a test reproduces one of them);
* ``default``: the mode with the best mean Dice if it beats the heuristic by ``--margin``, else
  false (the engine's ``prompts="auto"`` then runs the heuristic).

    python benchmarks/update_prompter_card.py benchmarks/results/cpu_learned.json --mode learned \\
        ProMISeModule/ProMISeLib/assets/litemedsam-prompter.json
    python benchmarks/update_prompter_card.py benchmarks/results/cpu_fused.json --mode fused \\
        ProMISeModule/ProMISeLib/assets/litemedsam-prompter.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def mode_entry(results: dict) -> tuple[dict, float | None]:
    """The card entry of one benchmark run, and the heuristic's mean Dice on its scans (None if incomplete)."""
    rows = {}
    for c in results["cases"]:
        rows[c["case"]] = {
            "fold": c.get("prompter_fold"),
            "dice": round(c["promise"]["dice"], 4),
            "hd95": c["promise"].get("hd95"),
            "heuristic_dice": round(c["heuristic"]["dice"], 4) if "heuristic" in c else None,
            "seconds": round(c["promise"].get("wall_s", float("nan")), 1),
        }
    heuristic_values = [r["heuristic_dice"] for r in rows.values() if r["heuristic_dice"] is not None]
    heuristic = float(np.mean(heuristic_values)) if len(heuristic_values) == len(rows) else None
    entry = {"benchmark": results.get("command"), "date": results.get("date"), "machine": results.get("machine"),
             "mean_dice": round(float(np.mean([r["dice"] for r in rows.values()])), 4), "per_scan": rows}
    return entry, heuristic


def best_default(end_to_end: dict, margin: float) -> str | bool:
    """The validated mode that beats the heuristic by ``margin`` with the best mean Dice, else False."""
    heuristic = end_to_end.get("heuristic_mean_dice")
    if heuristic is None:
        return False
    winners = {mode: e["mean_dice"] for mode, e in end_to_end["modes"].items() if e["mean_dice"] > heuristic + margin}
    return max(winners, key=winners.get) if winners else False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results")
    parser.add_argument("card")
    parser.add_argument("--mode", choices=("learned", "fused"), required=True, help="the prompts mode that ran")
    parser.add_argument("--margin", type=float, default=0.0, help="Dice a mode must gain to be the default")
    args = parser.parse_args()
    card_file = Path(args.card)
    card = json.loads(card_file.read_text())
    entry, heuristic = mode_entry(json.loads(Path(args.results).read_text()))
    end_to_end = card["validation"].get("end_to_end", {})
    if "modes" not in end_to_end:  # an older card: one learned entry
        end_to_end = {"heuristic_mean_dice": None, "modes": {}}
    if heuristic is not None:
        end_to_end["heuristic_mean_dice"] = round(heuristic, 4)
    end_to_end["modes"][args.mode] = entry
    card["validation"]["end_to_end"] = end_to_end
    held = set(card["data"]["held_out_patients"])
    shipped = card["validation"].get("shipped_file_validation", {})
    if not all(isinstance(v, dict) for v in shipped.values()):
        shipped = {}
    shipped[args.mode] = {case: r["dice"] for case, r in entry["per_scan"].items()
                          if any(case == g or case.startswith(g + "_") for g in held)}
    card["validation"]["shipped_file_validation"] = shipped
    card["default"] = best_default(end_to_end, args.margin)
    card_file.write_text(json.dumps(card, indent=1) + "\n")
    print(f"{args.mode} {entry['mean_dice']:.3f} vs heuristic {end_to_end['heuristic_mean_dice']}; "
          f"default={card['default']}; shipped file: {shipped[args.mode]}")


if __name__ == "__main__":
    main()
