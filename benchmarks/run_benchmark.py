"""One-click benchmark on the labelled scans: ProMISe (through the CLI) vs region growing vs oracle box.

For every tumour case in the data folder (``PROMISE_DATA_DIR``, default ``../shared/data``) the
click is the lesion voxel nearest the lesion's centroid (inside the label). Reported per case:
Dice, HD95 (mm), wall time and peak memory, for

* ``promise``: ``promise segment IMAGE --point X,Y,Z --output ...`` run as a subprocess;
* ``region growing``: SimpleITK ConfidenceConnected from the same seed (what a Slicer user can do
  without AI);
* ``oracle box``: LiteMedSAM on every lesion slice with the ground-truth box (+5 px at 256 px),
  on the whole slice, the official LiteMedSAM way.

    python benchmarks/run_benchmark.py --out benchmarks/results/cpu.json [--cases brain1,STS_002_CT]
    python benchmarks/run_benchmark.py --table benchmarks/results/cpu.json   # print the markdown table
    python benchmarks/run_benchmark.py --compare A.json B.json              # paired: B against A, per scan

The scans, the click and the metrics are the harness's (``harness.select``, ``first_click("centre")``,
``score``); each scan's row is kept in ``--rows`` (default: a temporary folder) as it ends, so a run given a
``--rows`` folder skips the scans already there, and ``--jobs`` runs scans side by side (times and memory are
then shared). ``--out`` gets every row in one JSON, in the data folder's order.

Learned prompts, validated by patient: each case runs with the prompter fold that never saw its
patient (``promise train-prompting`` writes the folds), beside an earlier heuristic run:

    python benchmarks/run_benchmark.py --prompter-folds OUT/folds --skip-baselines \
        --reference benchmarks/results/cpu.json --out benchmarks/results/cpu_learned.json

The same with the rule-based candidates ranked by each fold's prompter (``--prompts fused``):

    python benchmarks/run_benchmark.py --prompter-folds OUT/folds --prompts fused --skip-baselines \
        --reference benchmarks/results/cpu.json --out benchmarks/results/cpu_fused.json

The Dice cost of the int8 encoder, for example (``--extra=`` keeps the flags attached to the option):

    python benchmarks/run_benchmark.py --skip-baselines --extra="--runtime onnx" --out benchmarks/results/cpu_onnx.json
    python benchmarks/run_benchmark.py --skip-baselines --extra="--runtime onnx --precision int8" \
        --out benchmarks/results/cpu_onnx_int8.json
    python benchmarks/run_benchmark.py --compare benchmarks/results/cpu_onnx.json benchmarks/results/cpu_onnx_int8.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from harness import first_click, load, make_segmenter, prompter_for, run_cases, score, select
from ProMISeLib.engine import Segmenter
from ProMISeLib.io.preprocess import CropWindow, normalize_intensities


def run_cli(image: Path, point_lps: np.ndarray, device: str, extra: list[str]) -> tuple[np.ndarray, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out, report = Path(tmp) / "mask.nii.gz", Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "ProMISeLib.cli", "segment", str(image),
               "--point=" + ",".join(f"{v:.4f}" for v in point_lps), "--space", "lps", "--device", device,
               "--output", str(out), "--report", str(report), *extra]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            return None, {"error": proc.stderr.strip().splitlines()[-1], "wall_s": wall}
        facts = json.loads(report.read_text())
        facts["wall_s"] = wall
        return sitk.GetArrayFromImage(sitk.ReadImage(str(out))), facts


def region_growing(volume: np.ndarray, click_kji: tuple[int, int, int]) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    itk = sitk.GetImageFromArray(volume.astype(np.float32, copy=False))
    seed = [tuple(int(v) for v in click_kji[::-1])]
    grown = sitk.ConfidenceConnected(itk, seedList=seed, numberOfIterations=4, multiplier=2.5,
                                     initialNeighborhoodRadius=2, replaceValue=1)
    return sitk.GetArrayFromImage(grown).astype(bool), time.perf_counter() - started


def oracle_box(segmenter: Segmenter, volume: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, float]:
    """LiteMedSAM on each lesion slice with its true box, whole slice padded to a square (official way)."""
    started = time.perf_counter()
    predictor = segmenter.load()
    normalised, _ = normalize_intensities(volume)
    rows, cols = volume.shape[1:]
    crop = CropWindow(0, 0, max(rows, cols))
    margin = 5 * crop.side / predictor.scaling.size
    out = np.zeros(volume.shape, dtype=bool)
    for k in np.flatnonzero(truth.any(axis=(1, 2))):
        embedding = predictor.embed(normalised, [int(k)], crop)[int(k)]
        jj, ii = np.nonzero(truth[k])
        box = np.array([[ii.min() - margin, jj.min() - margin, ii.max() + 1 + margin, jj.max() + 1 + margin]])
        decoded = predictor.decode(embedding, crop.side, box)
        slice_mask = np.zeros((rows, cols), dtype=bool)
        crop.paste(slice_mask, decoded.masks[0])
        out[k] = slice_mask
    return out, time.perf_counter() - started


_ORACLES: dict[str, Segmenter] = {}


def oracle_segmenter(device: str) -> Segmenter:
    """The oracle box's model: on a CPU the harness's segmenter (with the embedding store), else one per device."""
    if device == "cpu":
        return make_segmenter(prompts="heuristic")
    if device not in _ORACLES:
        _ORACLES[device] = Segmenter(device=device, prompts="heuristic")
    return _ORACLES[device]


def metrics(mask: np.ndarray, scan) -> dict:
    """Dice and HD95 (mm; None for an empty mask), named as this script's rows name them."""
    scored = score(mask, scan)
    return {"dice": scored["dice"], "hd95": scored["hd95_mm"]}


def case_job(case, device: str, extra: str, prompter_folds: str | None, prompts: str, skip_baselines: bool,
             skip_oracle: bool) -> dict:
    """One scan: the CLI from the centre click, and the baselines (region growing, the oracle box)."""
    scan = load(case)
    click = first_click("centre", scan)
    point = scan.geometry.index_to_lps(np.array(click[::-1], dtype=float))
    row = {"case": case.id, "lesion_ml": scan.volume_ml, "lesion_slices": int(scan.truth.any(axis=(1, 2)).sum()),
           "click_kji": [int(v) for v in click]}
    arguments = extra.split() if extra else []
    if prompter_folds:  # cross-validation: the fold that never saw this patient
        fold = Path(prompter_for(case.id, prompter_folds))
        arguments += ["--prompts", prompts, "--prompter-weights", str(fold)]
        row["prompter_fold"] = fold.name
    mask, facts = run_cli(case.image, point, device, arguments)
    row["promise"] = {"dice": 0.0, "hd95": None, **facts} if mask is None else {**metrics(mask, scan), **facts}
    if not skip_baselines:
        grown, seconds = region_growing(scan.volume, click)
        row["region_growing"] = {**metrics(grown, scan), "wall_s": seconds}
    if not (skip_oracle or skip_baselines):
        oracle, seconds = oracle_box(oracle_segmenter(device), scan.volume, scan.truth)
        row["oracle_box"] = {**metrics(oracle, scan), "wall_s": seconds}
    return row


def evaluate(args: argparse.Namespace) -> dict:
    cases = select(args.cases)
    reference = {}
    if args.reference:
        earlier = json.loads(Path(args.reference).read_text())
        reference = {c["case"]: c for c in earlier["cases"]}
        missing = [c.id for c in cases if c.id not in reference]
        if missing:
            raise SystemExit(f"--reference lacks {missing}")
    results = {"date": time.strftime("%Y-%m-%d"), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                          f"{torch.__version__}, {args.threads} threads, device {args.device}", "cases": []}
    if args.device != "cpu" and torch.cuda.is_available():
        results["machine"] += f" ({torch.cuda.get_device_name(0)})"
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_cases(case_job, cases, Path(args.rows or tmp), jobs=args.jobs, threads=args.threads,
                         device=args.device, extra=args.extra, prompter_folds=args.prompter_folds,
                         prompts=args.prompts, skip_baselines=args.skip_baselines, skip_oracle=args.skip_oracle)
    order = {c.id: n for n, c in enumerate(cases)}
    for row in sorted((r for r in rows if r["case"] in order), key=lambda r: order[r["case"]]):
        if args.reference:  # an earlier run on the same cases and clicks (e.g. the heuristic prompts)
            earlier = reference[row["case"]]
            if list(earlier["click_kji"]) != list(row["click_kji"]):
                raise SystemExit(f"{row['case']}: --reference used another click {earlier['click_kji']}")
            row[args.reference_label] = earlier["promise"]
            for method in ("region_growing", "oracle_box"):
                if method not in row and method in earlier:
                    row[method] = earlier[method]
        results["cases"].append(row)
    results["peak_rss_mb_benchmark"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=float))
    return results


def compare(base: dict, other: dict, method: str = "promise") -> tuple[list[str], dict]:
    """Markdown rows for the cases both runs hold, and a summary (mean and median Dice change, scans better and
    worse by more than 0.01, median time ratio)."""
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
               "median_dice_change": statistics.median(deltas) if deltas else None,
               "worst_dice_change": min(deltas) if deltas else None,
               "better_by_0.01": sum(d > 0.01 for d in deltas), "worse_by_0.01": sum(d < -0.01 for d in deltas),
               "median_time_ratio": statistics.median(ratios) if ratios else None}
    return rows, summary


def _fmt(value, digits=2):
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def table(results: dict) -> str:
    methods = [m for m in ("promise", "heuristic", "region_growing", "oracle_box")
               if all(m in c for c in results["cases"])]
    lines = ["| case | lesion mL | slices | " + " | ".join(f"{m} Dice | {m} HD95 mm" for m in methods)
             + " | promise s | promise MB |", "|" + "---|" * (3 + 2 * len(methods) + 2)]
    for c in results["cases"]:
        cells = [c["case"], _fmt(c["lesion_ml"], 1), str(c["lesion_slices"])]
        for m in methods:
            cells += [_fmt(c[m]["dice"]), _fmt(c[m].get("hd95"), 1)]
        cells += [_fmt(c["promise"].get("wall_s"), 1), _fmt(c["promise"].get("peak_rss_mb"), 0)]
        lines.append("| " + " | ".join(cells) + " |")
    summary = ["", "| method | mean Dice | median Dice | median HD95 mm | median time s |", "|---|---|---|---|---|"]
    for m in methods:
        d = [c[m]["dice"] for c in results["cases"]]
        h = [c[m]["hd95"] for c in results["cases"] if c[m].get("hd95") is not None and np.isfinite(c[m]["hd95"])]
        t = [c[m]["wall_s"] for c in results["cases"] if c[m].get("wall_s") is not None]
        summary.append(f"| {m} | {np.mean(d):.3f} | {np.median(d):.3f} | {_fmt(statistics.median(h) if h else None, 1)}"
                       f" | {_fmt(statistics.median(t) if t else None, 1)} |")
    return "\n".join(lines + summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/cpu.json")
    parser.add_argument("--cases", default="", help="comma-separated case ids (default: every tumour case)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-oracle", action="store_true")
    parser.add_argument("--skip-baselines", action="store_true", help="skip region growing and the oracle")
    parser.add_argument("--prompter-folds", default=None,
                        help="folder of per-patient prompter folds (promise train-prompting): run each case "
                             "with the fold that held its patient out")
    parser.add_argument("--prompts", default="learned", choices=("learned", "fused"),
                        help="the prompts mode run with --prompter-folds")
    parser.add_argument("--reference", default=None,
                        help="results JSON of an earlier run on the same cases: its promise column is added under "
                             "--reference-label, and its baselines are reused where this run skips them")
    parser.add_argument("--reference-label", default="heuristic")
    parser.add_argument("--extra", default="", help="extra arguments for `promise segment`")
    parser.add_argument("--rows", default=None,
                        help="folder for the per-scan rows (a rerun skips the scans there; default: a temporary one)")
    parser.add_argument("--jobs", type=int, default=1, help="scans run side by side (worker processes)")
    parser.add_argument("--table", default=None, help="print the markdown table of a results JSON and exit")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"),
                        help="print the paired comparison of two results JSON files (B against A) and exit")
    parser.add_argument("--method", default="promise", help="with --compare: the column compared")
    args = parser.parse_args()
    if args.compare:
        rows, summary = compare(*(json.loads(Path(p).read_text()) for p in args.compare), args.method)
        print("\n".join(rows))
        print(json.dumps(summary, indent=1))
        return
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    print(table(evaluate(args)))


if __name__ == "__main__":
    main()
