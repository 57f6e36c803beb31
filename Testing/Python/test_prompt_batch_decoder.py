"""The regrouped mask decoder equals segment-anything's own MaskDecoder, and the engine uses it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import centre_click
from ProMISeLib.io.preprocess import CropWindow, normalize_intensities
from ProMISeLib.models.prompt_batch_decoder import PromptBatchDecoder
from ProMISeLib.models.sam_modules import sam_modeling


def _reference(prompt_encoder, mask_decoder, embedding, sparse, dense):
    """segment-anything's MaskDecoder, single-mask output, as SamPredictor calls it."""
    return mask_decoder(image_embeddings=embedding, image_pe=prompt_encoder.get_dense_pe(),
                        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)


def _box_and_point_prompts(prompt_encoder, size: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    xs, ys = np.sort(rng.uniform(0, size, (n, 2)), axis=1), np.sort(rng.uniform(0, size, (n, 2)), axis=1)
    boxes = torch.as_tensor(np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1), dtype=torch.float32)
    boxes_only = prompt_encoder(points=None, boxes=boxes, masks=None)
    coords = torch.as_tensor(rng.uniform(0, size, (n, 3, 2)), dtype=torch.float32)
    labels = torch.tensor([[1, 0, 1]] * n)
    with_points = prompt_encoder(points=(coords, labels), boxes=boxes, masks=None)
    return boxes_only, with_points


def test_litemedsam_decoder_matches_segment_anything_on_a_real_slice(brain):
    """The shipped weights, a real embedding: boxes, and boxes with positive and negative points."""
    from ProMISeLib.io.weights import resolve_weights
    from ProMISeLib.models.registry import get_model_spec

    volume, _, truth = brain
    spec = get_model_spec("litemedsam")
    model = spec.build(resolve_weights(spec.weights, None)).eval()
    normalised, _ = normalize_intensities(volume)
    k, j, i = centre_click(truth)
    crop = CropWindow.around((j, i), 120)
    scaling = spec.scaling
    with torch.inference_mode():
        embedding = model.image_encoder(scaling.to_input(crop.extract(normalised[k])[None]))
        fast = PromptBatchDecoder(model.prompt_encoder, model.mask_decoder)
        for sparse, dense in _box_and_point_prompts(model.prompt_encoder, 256, 9):
            ref_logits, ref_iou = _reference(model.prompt_encoder, model.mask_decoder, embedding, sparse, dense)
            logits, iou = fast(embedding, sparse)
            assert logits.shape == ref_logits.shape == (9, 1, 256, 256) and iou.shape == ref_iou.shape == (9, 1)
            assert float((logits - ref_logits).abs().max()) < 1e-3 * float(ref_logits.abs().max())
            assert float((iou - ref_iou).abs().max()) < 1e-5
            assert float(((logits > 0) != (ref_logits > 0)).float().mean()) < 1e-4  # the masks agree


def test_decoder_matches_on_a_non_square_embedding_with_random_weights():
    """SAM's ViT-B decoder layout, random weights and biases, a 24 x 40 embedding grid, one and many prompts."""
    modeling = sam_modeling()
    torch.manual_seed(3)
    grid = (24, 40)
    prompt_encoder = modeling.PromptEncoder(embed_dim=256, image_embedding_size=grid, input_image_size=(384, 640),
                                            mask_in_chans=16)
    mask_decoder = modeling.MaskDecoder(num_multimask_outputs=3, transformer_dim=256, iou_head_depth=3,
                                        iou_head_hidden_dim=256,
                                        transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=256,
                                                                               mlp_dim=2048, num_heads=8))
    with torch.no_grad():  # nonzero biases everywhere, so a dropped bias term shows
        for parameter in list(prompt_encoder.parameters()) + list(mask_decoder.parameters()):
            parameter.add_(0.05 * torch.randn_like(parameter))
    fast = PromptBatchDecoder(prompt_encoder, mask_decoder).eval()
    embedding = torch.randn(1, 256, *grid)
    with torch.inference_mode():
        for n in (1, 5):
            for sparse, dense in _box_and_point_prompts(prompt_encoder, 384, n, seed=n):
                ref_logits, ref_iou = _reference(prompt_encoder, mask_decoder.eval(), embedding, sparse, dense)
                logits, iou = fast(embedding, sparse)
                assert logits.shape == (n, 1, 4 * grid[0], 4 * grid[1])
                assert float((logits - ref_logits).abs().max()) < 1e-4 * max(1.0, float(ref_logits.abs().max()))
                assert float((iou - ref_iou).abs().max()) < 1e-4


def test_a_cached_onnx_export_of_the_old_decoder_graph_is_exported_anew(tmp_path, monkeypatch):
    """A cache written before the regrouped decoder would decode slower: the engine exports it again."""
    pytest.importorskip("onnxruntime")
    from ProMISeLib.engine import Segmenter
    from ProMISeLib.runtime.onnx_backend import DECODER_GRAPH, MANIFEST
    from ProMISeLib.runtime.onnx_cache import current_export

    monkeypatch.setenv("PROMISE_CACHE_DIR", str(tmp_path))
    Segmenter(device="cpu", runtime="onnx").load()
    manifest_path = current_export("litemedsam") / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    assert manifest["decoder_graph"] == DECODER_GRAPH
    del manifest["decoder_graph"]  # what an export from before this graph looks like
    manifest_path.write_text(json.dumps(manifest))
    Segmenter(device="cpu", runtime="onnx").load()
    assert current_export("litemedsam") != manifest_path.parent  # a new export folder, made current
    manifest_path = current_export("litemedsam") / MANIFEST
    assert json.loads(manifest_path.read_text())["decoder_graph"] == DECODER_GRAPH
    # A user's own export directory is never rewritten: it runs, and the user is told how to speed it up.
    manifest = json.loads(manifest_path.read_text())
    del manifest["decoder_graph"]
    manifest_path.write_text(json.dumps(manifest))
    own = Segmenter(device="cpu", runtime="onnx", onnx_dir=str(manifest_path.parent))
    own.load()
    assert "decoder_graph" not in json.loads(manifest_path.read_text())
    assert any("older decoder graph" in m for m in own.messages)


def test_an_upscaling_other_than_sams_is_refused():
    """The per-pixel upscaling holds only for 2 x 2, stride-2 transposed convolutions; anything else is an error."""
    from ProMISeLib.models.prompt_batch_decoder import _upscaled_masks

    modeling = sam_modeling()
    odd = torch.nn.Sequential(torch.nn.ConvTranspose2d(16, 4, kernel_size=3, stride=2), modeling.common.LayerNorm2d(4),
                              torch.nn.GELU(), torch.nn.ConvTranspose2d(4, 2, kernel_size=2, stride=2), torch.nn.GELU())
    with pytest.raises(ValueError, match="2x2 stride-2"):
        _upscaled_masks(odd, torch.zeros(1, 6, 16), 2, 3, torch.zeros(1, 2))
