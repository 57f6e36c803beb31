"""Cases per hour: `promise batch` with 1 and 2 local workers against `promise segment` called once per case.

    python benchmarks/batch.py --cases STS_008_MR_T1,STS_015_MR_T1,STS_019_MR_T1,STS_002_MR_T1 --rounds 3 \
        --out benchmarks/results/batch_cpu.json

Every variant runs the same cases (the whole scan, one click at the lesion voxel nearest its centroid) as
a fresh process, timed from start to exit: the loop is one `promise segment` process per case; a batch
is one `promise batch` process (its manifest validation, its LocalCluster and its workers' model loads
included). The variants take turns within each round (the order rotates), so a shared machine's load
falls on all of them alike. Peak memory: each `promise segment`'s VmHWM (its --report) and each batch
worker's (results.csv's peak_rss_mb). The masks of each batch are compared with the loop's of the round.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "ProMISeModule"))

from ProMISeLib.io.sample_data import get_case, lesion_click, read_case  # noqa: E402

PROMISE = [sys.executable, "-m", "ProMISeLib.cli"]
VARIANTS = ("segment-loop", "batch-1-worker", "batch-2-workers")


def _clicks(case_ids: list[str]) -> list[dict]:
    cases = []
    for case_id in case_ids:
        case = get_case(case_id)
        _, geometry, truth = read_case(case)
        k, j, i = lesion_click(truth)
        lps = geometry.index_to_lps(np.array([i, j, k], dtype=float))
        cases.append({"id": case_id, "image": str(case.image), "points": ",".join(f"{v:.4f}" for v in lps)})
    return cases


def _masks(path: Path) -> dict[str, np.ndarray]:
    import slicerio

    segmentation = slicerio.read_segmentation(str(path))
    voxels = segmentation["voxels"]
    layers = voxels if voxels.ndim == 4 else voxels[np.newaxis]
    return {s["id"]: layers[s.get("layer", 0)] == s["labelValue"] for s in segmentation["segments"]}


def _loop(cases: list[dict], folder: Path) -> dict:
    started, peaks, engine = time.perf_counter(), [], []
    for case in cases:
        report = folder / f"{case['id']}.json"
        subprocess.run([*PROMISE, "segment", case["image"], f"--point={case['points']}", "--output",
                        str(folder / f"{case['id']}.seg.nrrd"), "--report", str(report)], check=True,
                       stdout=subprocess.DEVNULL)
        facts = json.loads(report.read_text())
        peaks.append(facts["peak_rss_mb"])
        engine.append(facts["engine_seconds"])
    return {"wall_s": time.perf_counter() - started, "peak_rss_mb_per_process": peaks, "engine_s_per_case": engine}


def _batch(cases: list[dict], folder: Path, workers: int) -> dict:
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "image", "points"])
        writer.writeheader()
        writer.writerows(cases)
    started = time.perf_counter()
    subprocess.run([*PROMISE, "batch", str(manifest), "--output", str(folder / "out"), "--workers", str(workers)],
                   check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    with (folder / "out" / "results.csv").open(newline="") as handle:
        records = list(csv.DictReader(handle))
    assert all(r["status"] == "ok" for r in records), records
    peaks: dict[str, float] = {}
    for record in records:
        peaks[record["worker"]] = max(peaks.get(record["worker"], 0.0), float(record["peak_rss_mb"]))
    return {"wall_s": wall, "peak_rss_mb_per_worker": peaks,
            "engine_s_per_case": [float(r["seconds"]) for r in records],
            "outputs": {r["id"]: str(folder / "out" / r["output"]) for r in records}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="STS_008_MR_T1,STS_015_MR_T1,STS_019_MR_T1,STS_002_MR_T1")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/batch_cpu.json")
    parser.add_argument("--note", default="", help="what else ran on the machine, recorded with the figures")
    args = parser.parse_args()
    cases = _clicks(args.cases.split(","))
    runs = []
    with tempfile.TemporaryDirectory(prefix="promise-batch-bench-") as scratch:
        for round_index in range(args.rounds):
            shift = round_index % len(VARIANTS)
            loop_masks = None
            for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                folder = Path(scratch) / f"{round_index}-{variant}"
                folder.mkdir()
                load_before = os.getloadavg()[0]
                if variant == "segment-loop":
                    run = _loop(cases, folder)
                    loop_masks = {c["id"]: _masks(folder / f"{c['id']}.seg.nrrd")["Segment_1"] for c in cases}
                else:
                    run = _batch(cases, folder, 1 if variant == "batch-1-worker" else 2)
                run.update(round=round_index, variant=variant, cases_per_hour=len(cases) * 3600 / run["wall_s"],
                           load_before=load_before, load_after=os.getloadavg()[0])
                runs.append(run)
                print(json.dumps({k: v for k, v in run.items() if k != "outputs"}), flush=True)
            for run in runs:
                if run["round"] == round_index and "outputs" in run:
                    run["masks_identical_to_loop"] = sum(
                        np.array_equal(_masks(Path(path))[case_id], loop_masks[case_id])
                        for case_id, path in run.pop("outputs").items())
    summary = _summary(runs, len(cases))
    machine = _machine()
    loads = [r[k] for r in runs for k in ("load_before", "load_after")]
    machine["load_average_1min"] = [round(min(loads), 1), round(max(loads), 1)]  # > cores: other work shared them
    if args.note:
        machine["note"] = args.note
    result = {"command": " ".join(["python", "benchmarks/batch.py", *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine, "cases": cases, "runs": runs,
              "summary": summary}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(summary, indent=1))


def _summary(runs: list[dict], count: int) -> dict:
    by = {v: [r for r in runs if r["variant"] == v] for v in VARIANTS}
    median = {v: statistics.median(r["cases_per_hour"] for r in rs) for v, rs in by.items()}
    loop_peak = max(max(r["peak_rss_mb_per_process"]) for r in by["segment-loop"])
    summary = {"cases": count, "median_cases_per_hour": median,
               "ratio_to_loop": {v: median[v] / median["segment-loop"] for v in VARIANTS[1:]},
               "paired_ratio_to_loop_per_round": {
                   v: [b["cases_per_hour"] / a["cases_per_hour"]
                       for a, b in zip(by["segment-loop"], by[v], strict=True)] for v in VARIANTS[1:]},
               "peak_rss_mb_segment_max": loop_peak}
    for variant in VARIANTS[1:]:
        worker_peak = max(max(r["peak_rss_mb_per_worker"].values()) for r in by[variant])
        summary[f"peak_rss_mb_worker_max_{variant}"] = worker_peak
        summary[f"worker_rss_vs_segment_{variant}"] = worker_peak / loop_peak
    return summary


def _machine() -> dict:
    import dask
    import onnxruntime
    import torch

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown")
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "dask": dask.__version__}


if __name__ == "__main__":
    main()
