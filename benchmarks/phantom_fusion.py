"""The fused ranking's network weight on the synthetic sphere of ``memory_big_ct.py``.

    python benchmarks/phantom_fusion.py --weights 1.0 0.5 0.25

One click at the sphere's centre, the shipped prompter, fused prompts with ``FUSED_DEFAULTS`` and each
``fusion_weight``; prints the Dice against the sphere and the slices covered.
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
from ProMISeLib.propagation import FUSED_DEFAULTS, PropagationSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    parser.add_argument("--runtime", default="onnx", choices=("torch", "onnx"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    volume, sphere, centre = synthetic_ct()
    geometry = ImageGeometry(size=volume.shape[::-1], spacing=SPACING_IJK, origin=(0.0, 0.0, 0.0),
                             direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    for weight in args.weights:
        settings = PropagationSettings(encode_ahead=0, **FUSED_DEFAULTS, fusion_weight=weight)
        segmenter = Segmenter(device="cpu", runtime=args.runtime, prompts="fused", settings=settings)
        started = time.perf_counter()
        mask = segmenter.segment(volume.astype(np.float32), geometry, [centre[::-1]], space="ijk").mask.astype(bool)
        print(json.dumps({"fusion_weight": weight, "dice_vs_sphere": round(dice(mask, sphere), 3),
                          "slices": int(mask.any(axis=(1, 2)).sum()),
                          "sphere_slices": int(sphere.any(axis=(1, 2)).sum()),
                          "seconds": round(time.perf_counter() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()
