"""The interactive protocol of the field: Dice after each click, clicks to a target Dice, seconds per click.

Per scan and per first prompt (``--modes``):

* ``centre``: the first click at the lesion voxel nearest its centroid;
* ``random:N``: the first click at a random voxel well inside the lesion (draw N, the same for every run);
* ``box``: the label's bounding box, one voxel larger, as a box prompt alone;
* ``box+clicks``: that box, then the corrective clicks.

Then up to ``--clicks`` corrective clicks (5 in the protocol), each at the deepest voxel of the largest
error region (``sample_data.corrective_click``): positive on a miss, negative on a false part. Every click
is a new ``Segmenter.segment`` call with all the prompts so far, as the Slicer panel and the CLI make it.

    python benchmarks/interactive.py --out RUN --shard 0/2 &  python benchmarks/interactive.py --out RUN --shard 1/2
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
import zlib
from pathlib import Path

import numpy as np
import torch
from ProMISeLib.engine import Segmenter
from ProMISeLib.errors import ProMISeError
from ProMISeLib.io.sample_data import (
    corrective_click,
    lesion_click,
    load_cases,
    random_lesion_click,
    read_case,
    select_cases,
)
from ProMISeLib.metrics import dice, hd95

SIZES = ((0.0, 5.0, "under 5 mL"), (5.0, 50.0, "5-50 mL"), (50.0, float("inf"), "over 50 mL"))
TARGETS = (0.80, 0.85)


def label_box(truth: np.ndarray) -> list[list[int]]:
    """The label's bounding box, one voxel larger on each side, as (i, j, k) corners."""
    found = np.argwhere(truth)
    lo = np.maximum(found.min(axis=0) - 1, 0)
    hi = np.minimum(found.max(axis=0) + 1, np.array(truth.shape) - 1)
    return [lo[::-1].tolist(), hi[::-1].tolist()]


def first_prompt(mode: str, truth: np.ndarray, spacing_kji, case_id: str) -> dict:
    """The first prompt of a mode: {"points": [...], "box": corners or None} in (i, j, k)."""
    if mode.startswith("box"):
        return {"points": [], "box": label_box(truth)}
    if mode == "centre":
        click = lesion_click(truth)
    else:
        seed = int(mode.removeprefix("random:"))
        click = random_lesion_click(truth, spacing_kji, np.random.default_rng([seed, zlib.crc32(case_id.encode())]))
    return {"points": [list(click[::-1])], "box": None}


def run_mode(segmenter: Segmenter, volume, geometry, truth, mode: str, clicks: int, case_id: str) -> dict:
    """One scan, one first prompt, then the corrective clicks: a row of steps."""
    spacing_kji = geometry.spacing[::-1]
    prompt = first_prompt(mode, truth, spacing_kji, case_id)
    positives, negatives, box = [tuple(p) for p in prompt["points"]], [], prompt["box"]
    steps, result = [], None
    segmenter.memory.clear()
    corrections = clicks if mode != "box" else 0
    try:
        for n in range(corrections + 1):
            if n:
                found = corrective_click(result.mask, truth, spacing_kji)  # the previous prompt's result
                if found is None:
                    break
                click, positive = found
                (positives if positive else negatives).append(tuple(click[::-1]))
            kwargs = {"box": box} if box is not None else {}
            started = time.perf_counter()
            result = segmenter.segment(volume, geometry, positives or None, negative_points=negatives or None,
                                       space="ijk", **kwargs)
            mask = result.mask.astype(bool)
            steps.append({"dice": dice(mask, truth), "hd95_mm": hd95(mask, truth, spacing_kji) if mask.any() else None,
                          "seconds": time.perf_counter() - started, "positive": None if not n else positive,
                          "decoded_prompts": result.decoded_prompts})
    except (ProMISeError, TypeError) as exc:  # TypeError: an engine without box prompts (an older baseline)
        return {"steps": steps, "error": str(exc).splitlines()[0]}
    return {"steps": steps, "method": result.method if result is not None else None}


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = select_cases(args.cases, args.shard)
    segmenter = Segmenter(device="cpu", runtime=args.runtime, prompts=args.prompts, cache_mb=600)
    for case in cases:
        target = out / f"{case.id}.json"
        if target.exists():
            continue
        if args.folds and args.prompts != "heuristic":
            from ProMISeTrain.prompter_pipeline import held_out_fold

            segmenter.set_prompter_weights(str(held_out_fold(Path(args.folds), case.id)))
        volume, geometry, truth = read_case(case)
        segmenter.cache.clear()
        row = {"case": case.id, "volume_ml": float(truth.sum() * geometry.voxel_volume_ml),
               "prompter": "held-out fold" if args.folds else "shipped", "modes": {}}
        for mode in args.modes.split(","):
            row["modes"][mode] = run_mode(segmenter, volume, geometry, truth, mode, args.clicks, case.id)
        target.write_text(json.dumps(row, indent=1))
        print(json.dumps({"case": case.id, **{m: [round(s["dice"], 3) for s in r["steps"]]
                                              for m, r in row["modes"].items()}}), flush=True)


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
             f"1 / 4 / {clicks + 1} | NoC@0.80 | NoC@0.85 | median s per correction | clicks lowering Dice > 0.02 |",
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
        seconds = f"{statistics.median(later):.2f}" if later and any(later) else "-"
        lines.append(f"| {mode} | {len(runs)} | {means} | {medians} | {noc[0]} | {noc[1]} | {seconds} | "
                     f"{sum(d < -0.02 for d in drops)} of {len(drops)} |")
    return lines


def summary(root: Path, clicks: int, baseline: Path | None = None, plot: Path | None = None,
            save: Path | None = None) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(root.glob("*.json"))]
    if save is not None:
        save.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "cases": rows}, indent=1) + "\n")
    lines = [f"{len(rows)} scans ({rows[0]['prompter'] if rows else '-'} prompter)", *table(rows, clicks)]
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
                  *table(base_rows, depth)]
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
    cases = select_cases(args.cases)[:3]
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
    parser.add_argument("--shard", default="0/1", help="I/N: run every N-th scan from the I-th")
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
