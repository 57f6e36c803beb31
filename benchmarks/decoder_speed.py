"""Decoder milliseconds per prompt: segment-anything's MaskDecoder against the engine's PromptBatchDecoder.

Both run the same frozen LiteMedSAM weights on the same real embedding (the centre click's slice of brain1,
``--case``, read through the harness), in PyTorch and in ONNX Runtime (each exported here from the same
module), at the prompt batches the engine decodes: 1 (a learned prompt), 6 (a propagated slice's candidates)
and 12 (a seed search). The script also records the largest logit difference between the two, and the matmul
rate of the machine in the same run. Median of repeated runs.

    python benchmarks/decoder_speed.py --threads 2 --out benchmarks/results/decoder_speed_cpu.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from harness import first_click, load, named
from ProMISeLib.io.preprocess import CropWindow, normalize_intensities
from ProMISeLib.io.weights import resolve_weights
from ProMISeLib.models.registry import get_model_spec
from ProMISeLib.runtime.onnx_backend import BoxDecoder
from speed import matmul_ceiling, timed
from torch import nn


class SamBoxDecoder(nn.Module):
    """Box prompts through segment-anything's own MaskDecoder (the reference)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder, self.mask_decoder = model.prompt_encoder, model.mask_decoder

    def forward(self, embedding: torch.Tensor, boxes: torch.Tensor):
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes, masks=None)
        return self.mask_decoder(image_embeddings=embedding, image_pe=self.prompt_encoder.get_dense_pe(),
                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                 multimask_output=False)


def median_seconds(fn, repeats: int) -> float:
    """Median of ``repeats`` timed calls after one warm-up call."""
    fn()
    return timed(fn, torch.device("cpu"), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--case", default="brain1", help="the scan whose centre-click slice gives the embedding")
    parser.add_argument("--out", default="benchmarks/results/decoder_speed_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    spec = get_model_spec("litemedsam")
    model = spec.build(resolve_weights(spec.weights, None)).eval()
    scan = load(named(args.case)[0])
    k, j, i = first_click("centre", scan)
    normalised, _ = normalize_intensities(scan.volume)
    crop = CropWindow.around((j, i), 120)
    decoders = {"sam": SamBoxDecoder(model), "prompt_batch": BoxDecoder(model)}
    with torch.inference_mode():
        embedding = model.image_encoder(spec.scaling.to_input(crop.extract(normalised[k])[None]))
    rng = np.random.default_rng(0)
    report = {"date": time.strftime("%Y-%m-%d"), "threads": args.threads, "case": scan.case_id,
              "matmul_gflops_start": matmul_ceiling(torch.device("cpu")),
              "rows": []}
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, module in decoders.items():
            path = Path(tmp) / f"{name}.onnx"
            torch.onnx.export(module, (embedding, torch.tensor([[20.0, 30, 120, 140], [60, 50, 200, 190]])), path,
                              input_names=["image_embeddings", "boxes"], output_names=["logits", "iou"],
                              dynamic_axes={"boxes": {0: "n"}, "logits": {0: "n"}, "iou": {0: "n"}},
                              opset_version=17, dynamo=False)
            sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed_embedding = embedding.numpy()
    for batch in (1, 6, 12):
        centre = rng.uniform(90, 160, (batch, 2))
        half = rng.uniform(15, 60, (batch, 2))
        boxes = np.concatenate([centre - half, centre + half], axis=1).astype(np.float32)
        box_t = torch.from_numpy(boxes)
        row = {"prompts": batch}
        with torch.inference_mode():
            outputs = {name: module(embedding, box_t) for name, module in decoders.items()}
            for name, module in decoders.items():
                seconds = median_seconds(lambda m=module, b=box_t: m(embedding, b), args.repeats)
                row[f"torch_{name}_ms"] = seconds * 1000 / batch
        for name, session in sessions.items():
            feed = {"image_embeddings": feed_embedding, "boxes": boxes}
            seconds = median_seconds(lambda s=session, f=feed: s.run(None, f), args.repeats)
            row[f"onnx_{name}_ms"] = seconds * 1000 / batch
        row["max_logit_difference"] = float((outputs["sam"][0] - outputs["prompt_batch"][0]).abs().max())
        row["masks_differing_pixels"] = int(((outputs["sam"][0] > 0) != (outputs["prompt_batch"][0] > 0)).sum())
        row["torch_ratio"] = row["torch_prompt_batch_ms"] / row["torch_sam_ms"]
        row["onnx_ratio"] = row["onnx_prompt_batch_ms"] / row["onnx_sam_ms"]
        report["rows"].append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    report["matmul_gflops_end"] = matmul_ceiling(torch.device("cpu"))
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
