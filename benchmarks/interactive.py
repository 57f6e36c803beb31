"""The interactive protocol of the field: Dice after each click, clicks to a target Dice, seconds per click.

Per scan and per first prompt (``--modes``):

* ``centre``: the first click at the lesion voxel nearest its centroid;
* ``random:N``: the first click at a random voxel well inside the lesion (draw N, the same for every run);
* ``box``: the label's bounding box, one voxel larger, as a box prompt alone;
* ``box+clicks``: that box, then the corrective clicks.

Then up to ``--clicks`` corrective clicks (5 in the protocol), each at the deepest voxel of the largest
error region (``sample_data.corrective_click``): positive on a miss, negative on a false part. Every click
is a new ``Segmenter.segment`` call with all the prompts so far, as the Slicer panel and the CLI make it.

    python benchmarks/interactive.py --out RUN --modes centre,random:1,random:2,box --clicks 3     # 2 processes
    python benchmarks/interactive.py --summary RUN --baseline BASE --plot benchmarks/results/interactive.png

``--summary`` prints mean and median Dice after each click, NoC@0.80 and NoC@0.85 (the clicks needed to
reach that Dice, capped at the clicks given), the median seconds of a correction, how many clicks lowered
the Dice by more than 0.02, and the same split by lesion size (under 5 mL, 5-50 mL, over 50 mL). ``--plot``
draws Dice against clicks, one line per first prompt, with ``--baseline`` (another run's folder) dashed.
``--soak`` makes 100 consecutive calls in one segmenter over changing scans and clicks and records the RSS.

Held out by patient: with ``--folds`` (the folds folder of ``promise train-prompting``) each scan runs with
the prompter fold that never saw its patient; without it the shipped prompter runs, which saw all these
patients but STS_019, so the first click is then an optimistic figure (the corrections' rules learn nothing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from harness import (
    alternatives,
    apply_settings,
    load,
    make_segmenter,
    prompter_for,
    protocol,
    quantiles,
    resolved_prompts,
    run_cases,
    select,
)
from ProMISeLib.engine import Segmenter
from ProMISeLib.errors import ProMISeError
from ProMISeLib.io.sample_data import load_cases, random_lesion_click, read_case

SIZES = ((0.0, 5.0, "under 5 mL"), (5.0, 50.0, "5-50 mL"), (50.0, float("inf"), "over 50 mL"))
TARGETS = (0.80, 0.85)


def protocol_job(case, modes: str, clicks: int, prompts: str, folds: str | None, runtime: str,
                 encode_ahead: bool = True, with_alternatives: bool = True, settings: str | None = None) -> dict:
    """One scan through the protocol, for every first prompt of ``modes`` (``settings``: walk settings by stage,
    JSON, over the mode's defaults)."""
    segmenter = make_segmenter(runtime, resolved_prompts(prompts, folds))
    apply_settings(segmenter, settings)
    if prompts != "heuristic":
        segmenter.set_prompter_weights(prompter_for(case.id, folds))
    scan = load(case)
    row = {"case": case.id, "volume_ml": scan.volume_ml, "prompter": "held-out fold" if folds else "shipped",
           "modes": {}}
    for mode in modes.split(","):
        row["modes"][mode] = protocol(segmenter, scan, mode, clicks, encode_ahead=encode_ahead)
        if with_alternatives:
            row["modes"][mode]["alternatives"] = alternatives(segmenter, scan, mode)
    return row


def run(args: argparse.Namespace) -> None:
    run_cases(protocol_job, select(args.cases, args.shard), Path(args.out), jobs=args.jobs, threads=args.threads,
              modes=args.modes, clicks=args.clicks, prompts=args.prompts, folds=args.folds, runtime=args.runtime,
              encode_ahead=not args.no_encode_ahead, with_alternatives=not args.no_alternatives, settings=args.settings)


def _curve(steps: list[dict], clicks: int) -> list[float]:
    """Dice after 1..clicks+1 prompts; a scan that stopped early (no error left) keeps its last Dice."""
    values = [s["dice"] for s in steps] or [0.0]
    return [values[min(n, len(values) - 1)] for n in range(clicks + 1)]


def _noc(curve: list[float], target: float) -> int:
    """Clicks to reach ``target`` (the first prompt counts as one); never reached counts as the prompts allowed."""
    return next((n + 1 for n, d in enumerate(curve) if d >= target), len(curve))


def table(rows: list[dict], clicks: int, title: str = "") -> list[str]:
    """Markdown rows: per first prompt, mean / median Dice after each prompt, NoC, seconds, harmful clicks."""
    modes = sorted({m for r in rows for m in r["modes"]}, key=lambda m: (m.startswith("box"), m))
    header = " | ".join(f"{n + 1}" for n in range(clicks + 1))
    lines = [f"{title}| first prompt | scans | mean Dice after 1 .. {clicks + 1} prompts: {header} | median after "
             f"1 / 4 / {clicks + 1} | NoC@0.80 | NoC@0.85 | s per correction: median / p90 / max | "
             "clicks lowering Dice > 0.02 |",
             "|---|---|---|---|---|---|---|---|"]
    for mode in modes:
        runs = [r["modes"][mode] for r in rows if mode in r["modes"] and r["modes"][mode]["steps"]]
        if not runs:
            continue
        depth = clicks if mode != "box" else 0
        curves = [_curve(r["steps"], depth) for r in runs]
        means = " / ".join(f"{statistics.mean(c[n] for c in curves):.3f}" for n in range(depth + 1))
        medians = " / ".join(f"{statistics.median(c[min(n, depth)] for c in curves):.3f}" for n in (0, 3, depth))
        later = [s["seconds"] for r in runs for s in r["steps"][1:]]
        drops = [b["dice"] - a["dice"] for r in runs for a, b in zip(r["steps"], r["steps"][1:], strict=False)]
        noc = [f"{statistics.mean(_noc(c, t) for c in curves):.2f}" if depth else "-" for t in TARGETS]
        spread = quantiles(later)
        seconds = f"{spread['median']:.2f} / {spread['p90']:.1f} / {spread['max']:.1f}" if later and any(later) else "-"
        lines.append(f"| {mode} | {len(runs)} | {means} | {medians} | {noc[0]} | {noc[1]} | {seconds} | "
                     f"{sum(d < -0.02 for d in drops)} of {len(drops)} |")
    return lines


def alternatives_table(rows: list[dict]) -> list[str]:
    """Markdown rows: per first click, the Dice of the best hypothesis against the best of its alternatives."""
    lines = ["| first click | scans | clicks with 2+ hypotheses | mean Dice, first hypothesis | best of the "
             "alternatives (one more interaction) | median, first / best |", "|---|---|---|---|---|---|"]
    for mode in sorted({m for r in rows for m in r["modes"] if not m.startswith("box")}):
        found = [[a["dice"] for a in r["modes"][mode].get("alternatives", []) if "dice" in a]
                 for r in rows if mode in r["modes"]]
        found = [f for f in found if f]
        if not found:
            continue
        first, best = [f[0] for f in found], [max(f) for f in found]
        lines.append(f"| {mode} | {len(found)} | {sum(len(f) > 1 for f in found)} | {statistics.mean(first):.3f} | "
                     f"{statistics.mean(best):.3f} | {statistics.median(first):.3f} / {statistics.median(best):.3f} |")
    return lines


def latency_table(rows: list[dict], base_rows: list[dict], clicks: int) -> list[str]:
    """Markdown rows: per first prompt, the seconds of corrections 1..clicks (median / p90 / max, how many over
    3 s and 10 s), the encoding ahead between clicks, and the baseline's seconds for the very same clicks (the
    steps whose Dice agree to 1e-9 in both runs: the same masks, so the same next click)."""
    base = {r["case"]: r for r in base_rows}
    lines = ["| first prompt | corrections | s per correction: median / p90 / max | over 3 s / 10 s | encoding ahead "
             "between clicks, s: median / max | baseline, the same clicks: median / p90 / max | over 3 s / 10 s |",
             "|---|---|---|---|---|---|---|"]

    def spread(values: list[float]) -> str:
        q = quantiles(values)
        return f"{q['median']:.2f} / {q['p90']:.1f} / {q['max']:.1f} | {sum(v > 3 for v in values)} / " \
               f"{sum(v > 10 for v in values)}"

    for mode in sorted({m for r in rows for m in r["modes"] if not m.startswith("box")}):
        ours, theirs, ahead = [], [], []
        for r in rows:
            steps = r["modes"].get(mode, {}).get("steps", [])
            ahead += [s["ahead_seconds"] for s in steps if "ahead_seconds" in s]
            other = base.get(r["case"], {}).get("modes", {}).get(mode, {}).get("steps", [])
            for n in range(1, min(clicks, len(steps) - 1) + 1):
                same = all(abs(a["dice"] - b["dice"]) < 1e-9 for a, b in zip(steps[: n + 1], other, strict=False))
                if n < len(other) and same:
                    ours.append(steps[n]["seconds"])
                    theirs.append(other[n]["seconds"])
        if ours:
            q = quantiles(ahead) if ahead else None
            shown = f"{q['median']:.1f} / {q['max']:.1f}" if q else "-"
            lines.append(f"| {mode} | {len(ours)} | {spread(ours)} | {shown} | {spread(theirs)} |")
    return lines


def summary(root: Path, clicks: int, baseline: Path | None = None, plot: Path | None = None,
            save: Path | None = None) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(root.glob("*.json"))]
    if save is not None:
        save.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "cases": rows}, indent=1) + "\n")
    lines = [f"{len(rows)} scans ({rows[0]['prompter'] if rows else '-'} prompter)", *table(rows, clicks), "",
             *alternatives_table(rows)]
    for lo, hi, name in SIZES:
        part = [r for r in rows if lo <= r["volume_ml"] < hi]
        if part:
            lines += ["", f"lesions {name}: {len(part)} scans", *table(part, clicks)]
    ours = {r["case"] for r in rows}
    base_rows = [_as_interactive(json.loads(p.read_text())) for p in sorted(baseline.glob("*.json"))
                 if p.stem in ours] if baseline else []
    if base_rows:
        depth = min(clicks, max(len(m["steps"]) for r in base_rows for m in r["modes"].values()) - 1)
        lines += ["", f"baseline {baseline}: the same {len(base_rows)} scans, {depth} corrections",
                  *table(base_rows, depth), "", "corrections paired with the baseline's",
                  *latency_table(rows, base_rows, clicks)]
    if plot is not None:
        _plot(rows, base_rows, clicks, plot)
    return "\n".join(lines)


def _as_interactive(row: dict) -> dict:
    """A row of this script, or of ``parity.py`` (the centre click and three corrections, same protocol)."""
    if "modes" in row:
        return row
    steps = [row["steps"][f"default-{n}"] for n in range(1, 7) if f"default-{n}" in row["steps"]]
    case = next(c for c in load_cases() if c.id == row["case"])
    _, geometry, truth = read_case(case)
    return {"case": row["case"], "volume_ml": float(truth.sum() * geometry.voxel_volume_ml), "prompter": "shipped",
            "modes": {"centre": {"steps": [{"dice": s["dice"], "seconds": 0.0} for s in steps]}}}


def _plot(rows: list[dict], base_rows: list[dict], clicks: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for runs, style, suffix in ((rows, "-", ""), (base_rows, "--", " (main before)")):
        modes = sorted({m for r in runs for m in r["modes"]})
        for mode in modes:
            done = [r["modes"][mode] for r in runs if mode in r["modes"] and r["modes"][mode]["steps"]]
            if not done:
                continue
            most = max(len(r["steps"]) for r in done) - 1  # a baseline may have made fewer corrections
            depth = min(clicks, most) if mode != "box" else 0
            curves = np.array([_curve(r["steps"], depth) for r in done])
            x = np.arange(1, depth + 2)
            if depth:
                axis.plot(x, curves.mean(axis=0), style, marker="o", label=f"{mode}{suffix}")
            else:
                axis.plot(x, curves.mean(axis=0), "s", markersize=8, label=f"{mode} alone{suffix}")
    axis.set_xlabel("prompts (first prompt + corrective clicks)")
    axis.set_ylabel("mean Dice")
    axis.set_ylim(0.3, 1.0)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")
    axis.set_title(f"Dice against clicks, {len(rows)} scans")
    figure.tight_layout()
    figure.savefig(path)


def soak(args: argparse.Namespace) -> None:
    """100 consecutive calls in one segmenter over changing scans and clicks; the RSS after each."""
    def rss_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        return float("nan")

    torch.set_num_threads(args.threads)
    cases = select(args.cases)[:3]
    scans = [read_case(c) for c in cases]
    segmenter = Segmenter(device="cpu", runtime=args.runtime, prompts=args.prompts, cache_mb=300)
    rng = np.random.default_rng(0)
    samples = []
    for call in range(args.calls):
        volume, geometry, truth = scans[call % len(scans)]
        click = random_lesion_click(truth, geometry.spacing[::-1], rng)
        try:
            segmenter.segment(volume, geometry, [click[::-1]], space="ijk")
        except ProMISeError:
            pass
        samples.append(rss_mb())
        print(json.dumps({"call": call + 1, "rss_mb": round(samples[-1], 1)}), flush=True)
        _soak_report(Path(args.soak), [c.id for c in cases], samples, args.calls)


def _soak_report(path: Path, scans: list[str], samples: list[float], calls: int) -> None:
    """The soak's report so far (rewritten after every call, so a stopped soak still has one)."""
    warm_at = len(scans) * 2 - 1  # after every scan was seen twice
    report = {"date": time.strftime("%Y-%m-%d"), "calls_planned": calls, "calls_done": len(samples), "scans": scans,
              "rss_mb": samples}
    if len(samples) > warm_at:
        warm, later = samples[warm_at], samples[warm_at:]
        report.update(rss_after_warm_up_mb=warm, rss_max_after_warm_up_mb=max(later),
                      rss_min_after_warm_up_mb=min(later), rss_last_mb=samples[-1],
                      growth_after_warm_up=max(later) / warm - 1, max_over_min_after_warm_up=max(later) / min(later))
    path.write_text(json.dumps(report, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="folder for the per-scan JSON files")
    parser.add_argument("--modes", default="centre,random:1,random:2,box,box+clicks")
    parser.add_argument("--clicks", type=int, default=5, help="corrective clicks after the first prompt")
    parser.add_argument("--cases", default="", help="comma-separated case ids (default: every tumour case)")
    parser.add_argument("--prompts", default="auto")
    parser.add_argument("--folds", default=None, help="the folds folder of `promise train-prompting`")
    parser.add_argument("--runtime", default="onnx", choices=("torch", "onnx"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-encode-ahead", action="store_true",
                        help="no encoding ahead for the next correction between clicks (the panel's worker does it)")
    parser.add_argument("--no-alternatives", action="store_true", help="skip walking each first click's alternatives")
    parser.add_argument("--settings", default=None,
                        help='walk settings by stage over the defaults, JSON: \'{"correction": {"reach": 12}}\'')
    parser.add_argument("--shard", default="0/1", help="I/N: run every N-th scan from the I-th")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one thread each by default)")
    parser.add_argument("--summary", default=None, help="print the tables of this results folder and exit")
    parser.add_argument("--baseline", default=None, help="with --summary: another run's folder, for comparison")
    parser.add_argument("--plot", default=None, help="with --summary: write the Dice-against-clicks PNG here")
    parser.add_argument("--save", default=None, help="with --summary: write every per-scan row to this JSON")
    parser.add_argument("--soak", default=None, help="run the soak and write its report JSON here")
    parser.add_argument("--calls", type=int, default=100, help="calls of the soak")
    args = parser.parse_args()
    if args.summary:
        print(summary(Path(args.summary), args.clicks, Path(args.baseline) if args.baseline else None,
                      Path(args.plot) if args.plot else None, Path(args.save) if args.save else None))
        return
    if args.soak:
        soak(args)
        return
    run(args)


if __name__ == "__main__":
    main()
