"""The fused ranking's network weight on the synthetic sphere of ``memory_big_ct.py``.

    python benchmarks/phantom_fusion.py --weights 1.0 0.5 0.25

One click at the sphere's centre, the shipped prompter, the fused prompts' default settings with each
``fusion_weight``; prints the Dice against the sphere and the slices covered. One engine runs every
weight, so the later weights reuse the cached slice embeddings (their times are decoder-bound).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from memory_big_ct import SPACING_IJK, synthetic_ct
from ProMISeLib.engine import Segmenter
from ProMISeLib.geometry import ImageGeometry
from ProMISeLib.metrics import dice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    parser.add_argument("--runtime", default="onnx", choices=("torch", "onnx"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    volume, sphere, centre = synthetic_ct()
    volume = volume.astype(np.float32)
    sphere_slices = int(sphere.any(axis=(1, 2)).sum())
    geometry = ImageGeometry(size=volume.shape[::-1], spacing=SPACING_IJK, origin=(0.0, 0.0, 0.0),
                             direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    segmenter = Segmenter(device="cpu", runtime=args.runtime, prompts="fused")
    for weight in args.weights:
        segmenter.replace_settings(fusion_weight=weight, encode_ahead=0)  # the fused mode's own defaults kept
        started = time.perf_counter()
        mask = segmenter.segment(volume, geometry, [centre[::-1]], space="ijk").mask.astype(bool)
        print(json.dumps({"fusion_weight": weight, "dice_vs_sphere": round(dice(mask, sphere), 3),
                          "slices": int(mask.any(axis=(1, 2)).sum()), "sphere_slices": sphere_slices,
                          "seconds": round(time.perf_counter() - started, 1)}), flush=True)

if __name__ == "__main__":
    main()
