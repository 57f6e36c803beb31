"""Record the end-to-end held-out validation of a decoder token shift in its card, and whether it is the default.

Reads two ``prompt_variants.py`` result folders on the same scans and clicks, each scan run with the folds
that never saw its patient: one with the token shift (``--token-shift-folds``) and one without (the
reference, frozen decoder tokens). Writes into the card under ``validation.end_to_end``:

* ``per_scan``: the Dice with and without the shift, and which shift fold ran;
* ``mean_dice`` / ``reference_mean_dice`` and the paired change;
* ``shipped_file_validation``: the scans the shipped shift itself never saw, with its Dice on them
  (a test reproduces one);

and sets ``default`` (the engine's ``token_shift="auto"`` applies the shift) when the mean gains more
than ``--margin``. The card's SHA-256 entry is left as it is (it covers the weights file, not the card).

    python benchmarks/update_token_shift_card.py /tmp/variants/fused-token-shift /tmp/variants/fused \\
        --folds SHIFT_OUT/folds ProMISeModule/ProMISeLib/assets/litemedsam-token-shift.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def end_to_end(shifted: dict[str, dict], reference: dict[str, dict], fold_of: dict[str, str], held_out: list[str],
               command: str) -> dict:
    """The card's ``validation.end_to_end`` from per-scan rows (scans in both runs only)."""
    common = sorted(set(shifted) & set(reference))
    if not common:
        raise SystemExit("no scans in common between the two runs")
    rows = {c: {"dice": round(shifted[c]["dice"], 4), "reference_dice": round(reference[c]["dice"], 4),
                "fold": fold_of.get(c)} for c in common}
    change = [rows[c]["dice"] - rows[c]["reference_dice"] for c in common]
    shipped = {c: rows[c]["dice"] for c in common if any(c == g or c.startswith(g + "_") for g in held_out)}
    return {
        "benchmark": command, "scans": len(common),
        "mean_dice": round(float(np.mean([rows[c]["dice"] for c in common])), 4),
        "reference_mean_dice": round(float(np.mean([rows[c]["reference_dice"] for c in common])), 4),
        "mean_change": round(float(np.mean(change)), 4), "median_change": round(float(np.median(change)), 4),
        "per_scan": rows, "shipped_file_validation": shipped,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shifted", help="prompt_variants.py folder of the run with the token shift")
    parser.add_argument("reference", help="prompt_variants.py folder of the same run without it")
    parser.add_argument("card")
    parser.add_argument("--folds", required=True, help="the folds folder of `promise train-token-shift`")
    parser.add_argument("--margin", type=float, default=0.0)
    args = parser.parse_args()

    from ProMISeLib.sample_data import patient_group

    def rows(folder: str) -> dict[str, dict]:
        return {p.stem: json.loads(p.read_text()) for p in Path(folder).glob("*.json")}

    index = json.loads((Path(args.folds) / "index.json").read_text())
    shifted = rows(args.shifted)
    fold_of = {c: index[patient_group(c)].removesuffix(".safetensors") for c in shifted}
    card_file = Path(args.card)
    card = json.loads(card_file.read_text())
    command = (f"prompt_variants.py --prompts fused --token-shift-folds {args.folds} vs the same without; "
               f"rows {args.shifted} and {args.reference}")
    entry = end_to_end(shifted, rows(args.reference), fold_of, card["data"]["held_out_patients"], command)
    card.setdefault("validation", {})["end_to_end"] = entry
    card["default"] = entry["mean_change"] > args.margin
    card_file.write_text(json.dumps(card, indent=1) + "\n")
    print(f"{entry['scans']} scans: mean Dice {entry['mean_dice']} with the shift, {entry['reference_mean_dice']} "
          f"without (change {entry['mean_change']:+.4f}, median {entry['median_change']:+.4f}); "
          f"default: {card['default']}")


if __name__ == "__main__":
    main()
