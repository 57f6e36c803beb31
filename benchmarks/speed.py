"""Speed of the engine in-process: first click, refinement click, encoder and decoder costs.

    python benchmarks/speed.py --device cpu --cases STS_002_MR_T1,brain1 --out benchmarks/results/speed_cpu.json
    python benchmarks/speed.py --device cuda --pack PACK.npz ...   # pre-normalised volumes (no SimpleITK needed)
    python benchmarks/speed.py --device cpu --runtime onnx --precision int8 ...   # int8 encoder (CPU)
    python benchmarks/speed.py --device cuda --plain ...   # also time the per-slice plugin way, same lesions

For each case: the first click (one-click 3D, model already loaded), a correction click added to it
where a user would put it (``sample_data.corrective_click``; the segmenter redoes only its
neighbourhood), a moved click one voxel away (``refine_click_s``: a new seed, every embedding from the
cache), the slices encoded (and encoded ahead in the background), the box prompts decoded, and peak
memory. Once per run: encoder milliseconds per slice at batch 1 and at the best batch, decoder
milliseconds per box prompt, and a large matmul as the machine's compute ceiling, with the
encoder's FLOPs per slice (counted by torch's FlopCounterMode in the run).

The cases are the harness's labelled scans (``harness.named``, in the order given), read and clicked as every
benchmark does; the segmenter is built here, without the benchmarks' embedding store, so a first click is timed
cold.

``--plain`` times, per case, what per-slice SAM plugins do: PyTorch fp32, every slice of the
volume encoded whole (padded square, resized to the model's input, no ROI crop, one slice per
call) and one box decoded per slice (the lesion's box on that slice, its 3D box elsewhere); the
JSON gets ``plain_s`` and ``plain_ratio`` = plain time / our first-click time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ProMISeModule"))

from harness import Scan, first_click, load, named, score  # noqa: E402
from ProMISeLib.engine import Segmenter  # noqa: E402
from ProMISeLib.io.geometry import ImageGeometry  # noqa: E402
from ProMISeLib.io.preprocess import CropWindow, normalize_intensities  # noqa: E402
from ProMISeLib.io.sample_data import corrective_click  # noqa: E402
from ProMISeLib.prompting import PROMPT_MODES  # noqa: E402
from ProMISeLib.runtime.predictor import SlicePredictor  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats=5):
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_ceiling(device: torch.device) -> float:
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    seconds = timed(lambda: a @ b, device, 10)
    return 2 * n**3 / seconds / 1e9


def encoder_gflop(predictor: SlicePredictor) -> float:
    """GFLOP of one slice through a PyTorch encoder, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    x = predictor.scaling.to_input(np.zeros((1, predictor.scaling.size, predictor.scaling.size), np.float32))
    with FlopCounterMode(display=False) as counter:
        predictor.backend.encode(x)
    return counter.get_total_flops() / 1e9


def lesion_boxes(truth: np.ndarray) -> list[np.ndarray]:
    """One (x0, y0, x1, y1) box per slice: the lesion's box on its slices, its 3D box on the others."""
    jj, ii = np.nonzero(truth.any(axis=0))
    whole = np.array([ii.min(), jj.min(), ii.max() + 1, jj.max() + 1], np.float32)
    boxes = []
    for k in range(truth.shape[0]):
        if truth[k].any():
            rows, cols = np.nonzero(truth[k])
            boxes.append(np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32))
        else:
            boxes.append(whole)
    return boxes


def plain_path(predictor: SlicePredictor, volume: np.ndarray, truth: np.ndarray, modality: str,
               device: torch.device) -> float:
    """Seconds for the per-slice plugin way: every slice encoded whole, one box decoded per slice."""
    boxes = lesion_boxes(truth)
    sync(device)
    started = time.perf_counter()
    normalised, _ = normalize_intensities(volume, modality)
    crop = CropWindow(0, 0, max(volume.shape[1:]))
    for k in range(volume.shape[0]):
        embedding = predictor.backend.encode(predictor.scaling.to_input(crop.extract(normalised[k])[None]))
        predictor.decode(embedding, crop.side, boxes[k][None])
    sync(device)
    return time.perf_counter() - started


def load_cases(args):
    """(scan, modality) per case named: from the pack (normalised already), else the harness's labelled scans."""
    if args.pack:
        pack = np.load(args.pack)
        meta = {m["id"]: m for m in json.loads(Path(args.pack).with_name("meta.json").read_text())}
        for cid in args.cases.split(","):
            m = meta[cid]
            volume = pack[cid + "__vol"].astype(np.float32)
            k, j, i = m["shape"]
            geometry = ImageGeometry((i, j, k), tuple(m["spacing"]), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
            yield Scan(cid, volume, geometry, pack[cid + "__gt"].astype(bool)), "none"  # already normalised to 0-255
    else:
        for case in named(args.cases):
            yield load(case), "auto"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", default="STS_002_MR_T1,STS_003_MR_T1,brain1")
    parser.add_argument("--pack", default=None)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--runtime", default="torch", choices=("torch", "onnx"))
    parser.add_argument("--onnx-dir", default=None)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"),
                        help="fp16: CUDA with torch; int8: CPU with --runtime onnx")
    parser.add_argument("--encode-ahead", type=int, default=None,
                        help="slices encoded in the background ahead of the propagation (default: the engine's)")
    parser.add_argument("--plain", action="store_true",
                        help="also time the per-slice plugin way (PyTorch fp32, every slice whole, one box each)")
    parser.add_argument("--prompts", default="auto", choices=PROMPT_MODES)
    parser.add_argument("--prompter-weights", default=None)
    parser.add_argument("--settings", default=None,
                        help='walk settings by stage as JSON, over the mode\'s defaults: {"stop": {"min_score": 0.6}}')
    parser.add_argument("--out", default="benchmarks/results/speed_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    segmenter = Segmenter(device=args.device, weights=args.weights, runtime=args.runtime, onnx_dir=args.onnx_dir,
                          precision=args.precision, prompts=args.prompts, prompter_weights=args.prompter_weights)
    overrides = json.loads(args.settings) if args.settings else {}
    if args.encode_ahead is not None:
        overrides["encode_ahead"] = args.encode_ahead
    if overrides:  # the mode's defaults (the fused prompts add their own) with these fields replaced
        segmenter.encode_ahead = overrides.pop("encode_ahead", segmenter.encode_ahead)
        segmenter.settings = segmenter.run_settings().changed(**overrides)
    predictor = segmenter.load()
    device = segmenter.device
    # PyTorch fp32 on the same device: the plain path's model, and the one whose FLOPs are counted.
    same = args.runtime == "torch" and args.precision == "fp32"
    reference = predictor if same else Segmenter(device=str(device), weights=args.weights, runtime="torch").load()
    report = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(["speed.py", *sys.argv[1:]]),
              "device": str(device), "runtime": args.runtime, "precision": args.precision,
              "prompts": segmenter.resolved_prompts,
              "prompter": segmenter.learned_prompter().name if segmenter.learned_prompter() else None,
              "torch": torch.__version__, "threads": args.threads, "encode_ahead": segmenter.encode_ahead,
              "settings_overrides": overrides,
              "cases": []}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(0)
    report["matmul_gflops"] = matmul_ceiling(device)
    report["matmul_n"] = 4096 if device.type == "cuda" else 1024
    report["encoder_gflop_per_slice"] = encoder_gflop(reference)  # measured; the research note says 74.9
    rng = np.random.default_rng(0)
    crops = rng.uniform(0, 255, size=(32, 256, 256)).astype(np.float32)
    batches = {}
    for batch in ((1, 4, 8) if device.type == "cpu" else (1, 8, 16, 32)):
        x = predictor.scaling.to_input(crops[:batch])
        predictor.backend.encode(x)  # warm-up
        batches[batch] = timed(lambda x=x: predictor.backend.encode(x), device, 3) / batch * 1000
    report["encoder_ms_per_slice"] = batches
    best = min(batches.values())
    report["encoder_fraction_of_ceiling"] = report["encoder_gflop_per_slice"] / (best / 1000) / report["matmul_gflops"]
    emb = predictor.backend.encode(predictor.scaling.to_input(crops[:1]))
    box = np.array([[60, 60, 140, 150]], np.float32)
    predictor.decode(emb, 256, box)
    report["decoder_ms_per_prompt"] = timed(lambda: predictor.decode(emb, 256, box), device, 10) * 1000
    report["decoder_ms_per_prompt_batch8"] = timed(lambda: predictor.decode(emb, 256, np.repeat(box, 8, 0)),
                                                   device, 5) * 1000 / 8
    for scan, modality in load_cases(args):
        cid, volume, geometry, truth = scan.case_id, scan.volume, scan.geometry, scan.truth
        click = np.array(first_click("centre", scan))
        segmenter.cache.clear()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        ahead_before = predictor.encoded_ahead
        first = segmenter.segment(volume, geometry, [click[::-1]], space="ijk", modality=modality)
        sync(device)
        encoded_ahead = predictor.encoded_ahead - ahead_before
        # A correction: one more click where the user would put it; only its neighbourhood is redone.
        extra, positive = corrective_click(first.mask, truth, geometry.spacing[::-1]) or (tuple(click), True)
        correction = segmenter.segment(volume, geometry, [click[::-1]] + ([extra[::-1]] if positive else []),
                                       negative_points=None if positive else [extra[::-1]], space="ijk",
                                       modality=modality)
        sync(device)
        moved = click + np.array([0, 1, 1])  # a moved fiducial: a new seed, its embeddings from the cache
        refine = segmenter.segment(volume, geometry, [moved[::-1]], space="ijk", modality=modality)
        sync(device)
        row = {"case": cid, "lesion_slices": int(truth.any(axis=(1, 2)).sum()),
               "first_click_s": first.elapsed_s, "encoded": first.encoded_slices, "encoded_ahead": encoded_ahead,
               "first_decoded_prompts": first.decoded_prompts,
               "correction_click_s": correction.elapsed_s, "correction_positive": bool(positive),
               "correction_decoded_prompts": correction.decoded_prompts,
               "correction_encoded": correction.encoded_slices,
               "refine_click_s": refine.elapsed_s, "refine_encoded": refine.encoded_slices,
               **score(first.mask, scan),
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if device.type == "cuda":
            row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 1e6
        if args.plain:
            row["plain_slices"] = int(volume.shape[0])
            row["plain_s"] = plain_path(reference, volume, truth, modality, device)
            row["plain_ratio"] = row["plain_s"] / first.elapsed_s
        report["cases"].append(row)
        print(json.dumps(row), flush=True)
    out = Path(os.environ.get("OUT", "")) / Path(args.out).name if os.environ.get("OUT") else Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.plain:
        ratios = [row["plain_ratio"] for row in report["cases"]]
        report["plain_ratio_median"] = statistics.median(ratios) if ratios else None
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "cases"}, indent=1))


if __name__ == "__main__":
    main()
