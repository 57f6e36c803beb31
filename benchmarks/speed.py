"""Speed of the engine in-process: first click, refinement click, encoder and decoder costs.

    python benchmarks/speed.py --device cpu --cases STS_002_MR_T1,brain1 --out benchmarks/results/speed_cpu.json
    python benchmarks/speed.py --device cuda --pack PACK.npz ...   # pre-normalised volumes (no SimpleITK needed)

For each case: the first click (one-click 3D, model already loaded), a refinement click one voxel
away (embeddings from the cache), the slices encoded, and peak memory. Once per run: encoder
milliseconds per slice at batch 1 and at the best batch, decoder milliseconds per box prompt, and
a large matmul as the machine's compute ceiling, with the encoder's FLOPs per slice.
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

from ProMISeLib.engine import Segmenter  # noqa: E402
from ProMISeLib.geometry import ImageGeometry  # noqa: E402
from ProMISeLib.sample_data import lesion_click  # noqa: E402

ENCODER_GFLOP = 74.9  # LiteMedSAM TinyViT per 256x256 slice (shared/research/litemedsam.md)


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


def load_cases(args):
    if args.pack:
        pack = np.load(args.pack)
        meta = {m["id"]: m for m in json.loads(Path(args.pack).with_name("meta.json").read_text())}
        for cid in args.cases.split(","):
            m = meta[cid]
            volume = pack[cid + "__vol"].astype(np.float32)
            k, j, i = m["shape"]
            geometry = ImageGeometry((i, j, k), tuple(m["spacing"]), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
            yield cid, volume, geometry, pack[cid + "__gt"], "none"  # already normalised to 0-255
    else:
        from ProMISeLib.sample_data import get_case
        from ProMISeLib.volume_io import read_image, read_label

        for cid in args.cases.split(","):
            case = get_case(cid)
            volume, geometry = read_image(case.image)
            yield cid, volume, geometry, np.isin(read_label(case.label, geometry), case.label_values), "auto"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", default="STS_002_MR_T1,STS_003_MR_T1,brain1")
    parser.add_argument("--pack", default=None)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--runtime", default="torch", choices=("torch", "onnx"))
    parser.add_argument("--onnx-dir", default=None)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    parser.add_argument("--out", default="benchmarks/results/speed_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    segmenter = Segmenter(device=args.device, weights=args.weights, runtime=args.runtime, onnx_dir=args.onnx_dir,
                          precision=args.precision)
    predictor = segmenter.load()
    device = segmenter.device
    report = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(["speed.py", *sys.argv[1:]]),
              "device": str(device), "runtime": args.runtime, "precision": args.precision,
              "torch": torch.__version__, "threads": args.threads,
              "cases": []}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(0)
    report["matmul_gflops"] = matmul_ceiling(device)
    report["encoder_gflop_per_slice"] = ENCODER_GFLOP
    rng = np.random.default_rng(0)
    crops = rng.uniform(0, 255, size=(32, 256, 256)).astype(np.float32)
    batches = {}
    for batch in ((1, 4, 8) if device.type == "cpu" else (1, 8, 16, 32)):
        x = predictor.scaling.to_input(crops[:batch])
        predictor.backend.encode(x)  # warm-up
        batches[batch] = timed(lambda x=x: predictor.backend.encode(x), device, 3) / batch * 1000
    report["encoder_ms_per_slice"] = batches
    best = min(batches.values())
    report["encoder_fraction_of_ceiling"] = ENCODER_GFLOP / (best / 1000) / report["matmul_gflops"]
    emb = predictor.backend.encode(predictor.scaling.to_input(crops[:1]))
    box = np.array([[60, 60, 140, 150]], np.float32)
    predictor.decode(emb, 256, box)
    report["decoder_ms_per_prompt"] = timed(lambda: predictor.decode(emb, 256, box), device, 10) * 1000
    report["decoder_ms_per_prompt_batch8"] = timed(lambda: predictor.decode(emb, 256, np.repeat(box, 8, 0)),
                                                   device, 5) * 1000 / 8
    for cid, volume, geometry, truth, modality in load_cases(args):
        click = np.array(lesion_click(truth))
        segmenter.cache.clear()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        first = segmenter.segment(volume, geometry, [click[::-1]], space="ijk", modality=modality)
        sync(device)
        moved = click + np.array([0, 1, 1])
        refine = segmenter.segment(volume, geometry, [moved[::-1]], space="ijk", modality=modality)
        sync(device)
        row = {"case": cid, "lesion_slices": int(truth.any(axis=(1, 2)).sum()),
               "first_click_s": first.elapsed_s, "encoded": first.encoded_slices,
               "refine_click_s": refine.elapsed_s, "refine_encoded": refine.encoded_slices,
               "dice": float(2 * (first.mask.astype(bool) & truth).sum() / (first.mask.sum() + truth.sum())),
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if device.type == "cuda":
            row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 1e6
        report["cases"].append(row)
        print(json.dumps(row), flush=True)
    out = Path(os.environ.get("OUT", "")) / Path(args.out).name if os.environ.get("OUT") else Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "cases"}, indent=1))


if __name__ == "__main__":
    main()
