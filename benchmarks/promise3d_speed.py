"""Speed and memory of one ProMISe 3D forward pass (one click = one 128³ crop).

    python benchmarks/promise3d_speed.py --device cuda --precision fp16 --out benchmarks/results/promise3d_cuda.json
    python benchmarks/promise3d_speed.py --reduced --device cpu     # the tiny configuration: checks the script

The full-size model uses the installed ``promise-colon`` weights when they are there (else random
weights: the cost is the same). A full-size pass on a 2-core CPU takes minutes; run it on CPU only
on purpose (``--device cpu`` without ``--reduced``). Reports the median seconds per click over
``--repeats`` passes after one warm-up, the process's peak resident memory (VmHWM) and, on CUDA,
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ProMISeModule"))

from ProMISeLib.io.process import peak_rss_mb  # noqa: E402
from ProMISeLib.models.promise3d.model import Promise3D, Promise3DConfig  # noqa: E402


def build(reduced: bool, device: torch.device) -> tuple[torch.nn.Module, str]:
    """The model on ``device`` and where its weights came from."""
    if not reduced:
        from ProMISeLib.errors import CheckpointError
        from ProMISeLib.models.promise3d.checkpoint import load_promise3d

        try:
            model, _ = load_promise3d("promise-colon", device=device)
            return model, "promise-colon (installed)"
        except CheckpointError:
            pass
    config = Promise3DConfig.reduced() if reduced else Promise3DConfig.full()
    torch.manual_seed(0)
    model = Promise3D(config).eval().to(device)
    return model, "random"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32", help="fp16: autocast, CUDA only")
    parser.add_argument("--reduced", action="store_true", help="the tiny test configuration (checks the script)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/results/promise3d_<device>...)")
    args = parser.parse_args(argv)
    if args.precision == "fp16" and args.device != "cuda":
        parser.error("fp16 runs on CUDA only")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    started = time.perf_counter()
    model, weights = build(args.reduced, device)
    load_s = time.perf_counter() - started
    side = model.config.crop_size
    image = torch.randn(1, 1, side, side, side, device=device)
    click = torch.full((1, 1, 3), float(side // 2), device=device)
    half = args.precision == "fp16"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def one_pass() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=half):
            logits = model(image, click)
        torch.softmax(logits.float(), dim=1)[0, 1].cpu()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    warmup = one_pass()
    times = [one_pass() for _ in range(args.repeats)]
    facts = {
        "benchmark": "promise3d_speed",
        "config": "reduced" if args.reduced else "full",
        "crop_size": side,
        "upsample": model.config.upsample,
        "weights": weights,
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else platform.processor() or platform.machine()),
        "precision": args.precision,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_seconds": round(load_s, 3),
        "warmup_seconds": round(warmup, 3),
        "seconds_per_click": round(statistics.median(times), 3),
        "all_seconds": [round(t, 3) for t in times],
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "cuda_max_allocated_mb": (round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
                                  if device.type == "cuda" else None),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    name = f"promise3d_{'reduced_' if args.reduced else ''}{args.device}_{args.precision}.json"
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(facts, indent=1) + "\n")
    print(json.dumps(facts, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
