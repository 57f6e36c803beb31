"""ProMISe 3D model: released key layout (full size, on meta), training of the right parts, axis conventions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ProMISeLib.io.paths import REPO_ROOT, data_dir
from ProMISeLib.models.promise3d.encoder import shifted_window_mask, window_partition, window_unpartition
from ProMISeLib.models.promise3d.model import Promise3D, Promise3DConfig
from ProMISeLib.models.promise3d.prompt import click_grid

KEYS_FILE = "promise-li-checkpoint-keys.txt"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def released_keys() -> dict[str, tuple[int, ...]]:
    """Every key and shape of the released checkpoint, in our names (shared/research/...keys.txt)."""
    folders = [REPO_ROOT.parent / "shared" / "research"]
    if data_dir() is not None:
        folders.insert(0, data_dir().parent / "research")
    path = next((f / KEYS_FILE for f in folders if (f / KEYS_FILE).is_file()), None)
    if path is None:
        pytest.skip(f"{KEYS_FILE} not found in {', '.join(map(str, folders))} (set PROMISE_DATA_DIR)")
    keys = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        part, key, rest = line.split(" ", 2)
        shape = tuple(ast.literal_eval(rest.rsplit(" ", 1)[0]))
        if part == "encoder_dict":
            keys[f"encoder.{key}"] = shape
        elif part == "decoder_dict":
            keys[f"decoder.{key}"] = shape
        else:
            assert part == "feature_dict[i]", line
            for index in range(4):
                keys[f"prompt.{index}.{key}"] = shape
    return keys


@pytest.fixture(scope="module")
def full_model() -> Promise3D:
    with torch.device("meta"):
        return Promise3D(Promise3DConfig.full())


def test_full_size_state_dict_is_the_released_one(full_model):
    expected = released_keys()
    got = {k: tuple(v.shape) for k, v in full_model.state_dict().items()}
    assert sorted(set(expected) - set(got)) == [] and sorted(set(got) - set(expected)) == []
    assert {k: v for k, v in got.items() if expected[k] != v} == {}
    assert len([k for k in got if k.startswith("encoder.")]) == 372 and len(got) == 372 + 4 * 75 + 20
    assert all(t.device.type == "meta" for t in full_model.state_dict().values())


def test_full_size_parameter_counts_match_the_paper(full_model):
    full_model.freeze_sam()
    count = lambda prefix, trainable=False: sum(  # noqa: E731
        p.numel() for n, p in full_model.named_parameters() if n.startswith(prefix) and (p.requires_grad or not
                                                                                         trainable))
    assert round(count("encoder.") / 1e6, 1) == 111.3
    assert round(count("encoder.", trainable=True) / 1e6, 1) == 22.4
    assert round(count("decoder.") / 1e6, 1) == 8.5
    cfg = full_model.config
    assert (cfg.crop_size, cfg.upsample, cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.window_size, cfg.grid) == (
        128, 4, 768, 12, 12, 8, 32)


def test_full_size_forward_traces_on_meta(full_model):
    """The released-size forward (128³ -> 512³ slices, 32³ tokens, 64 windows) runs shape-wise, allocating nothing."""
    with torch.device("meta"), torch.no_grad():
        logits = full_model(torch.zeros(1, 1, 128, 128, 128), torch.full((1, 2, 3), 64.0))
    assert logits.shape == (1, 2, 128, 128, 128) and logits.device.type == "meta"


def test_reduced_model_trains_only_promise_parts():
    torch.manual_seed(0)
    model = Promise3D(Promise3DConfig.reduced()).freeze_sam()
    side = model.config.crop_size
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if model.is_trainable(n)}
    assert {n for n, _ in model.named_parameters()} == set(frozen) | trainable
    for sam_part in ("encoder.patch_embed.", "encoder.pos_embed", ".attn.qkv.", ".attn.proj.", "encoder.blocks.0.mlp.",
                     ".attn.rel_pos_h", ".attn.rel_pos_w", ".attn.lr", "prompt.0.", "cross_attn_token_to_image"):
        assert any(sam_part in n for n in frozen) and not any(sam_part in n for n in trainable), sam_part
    for own_part in ("depth_embed", "slice_embed.weight", "norm1.weight", "norm2.bias", "adapter.conv.weight",
                     "adapter_back.linear2.bias", "attn.rel_pos_d", "neck_3d.3.2.weight", "prompt.3.transformer",
                     "decoder.head.3.weight", "decoder.image_feature_extractor.0.weight"):
        assert any(own_part in n for n in trainable), own_part
    assert len(list(model.trainable_parameters())) == len(trainable)

    image = torch.randn(2, 1, side, side, side)
    points = torch.tensor([[[16.0, 16, 16], [3, 20, 9]], [[1, 2, 3], [30, 31, 0]]])
    logits = model(image, points)
    assert logits.shape == (2, 2, side, side, side)
    target = (torch.rand(2, side, side, side) > 0.7).long()
    F.cross_entropy(logits, target).backward()
    for name, param in model.named_parameters():
        if name in trainable:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
        else:
            assert param.grad is None, name
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n in trainable}
    optimiser.step()
    for name, param in model.named_parameters():
        if name in frozen:
            assert not param.requires_grad and torch.equal(param, frozen[name]), name
    changed = [n for n, p in model.named_parameters() if n in trainable and not torch.equal(p, before[n])]
    assert len(changed) == len(trainable)


def _coordinate_features(side: int, grid: int) -> torch.Tensor:
    """(1, 3, G, G, G) features in the encoder's (H, W, D) layout holding each cell's mean (d, h, w) crop voxel."""
    d, h, w = torch.meshgrid(*(torch.arange(side, dtype=torch.float32),) * 3, indexing="ij")
    image = torch.stack([d, h, w])[None]  # (1, 3, D, H, W)
    return F.avg_pool3d(image.permute(0, 1, 3, 4, 2), side // grid)  # as the model lays the image out


@pytest.mark.parametrize("permuted", [False, True])
def test_clicks_in_image_axis_order_sample_their_own_voxel(permuted):
    """A (d, h, w) click samples its own voxel; the official tester's click (h and w swapped) samples the
    swapped voxel."""
    side, grid = 128, 32
    features = _coordinate_features(side, grid)
    points = torch.tensor([[[40.0, 70.0, 90.0], [17.5, 100.0, 33.0]]])  # (d, h, w)
    given = points[..., [0, 2, 1]] if permuted else points
    sampled = F.grid_sample(features, click_grid(given, side).reshape(1, 1, 1, -1, 3), align_corners=False)
    sampled = sampled.reshape(3, -1).t()
    torch.testing.assert_close(sampled, given[0], atol=1e-4, rtol=0)


def test_encoder_tokens_are_laid_out_h_w_d():
    model = Promise3D(Promise3DConfig.reduced())
    cfg = model.config
    enc = model.encoder
    with torch.no_grad():
        enc.patch_embed.proj.weight.fill_(1.0 / (3 * cfg.patch_size**2))  # each token: mean of its patch
        enc.patch_embed.proj.bias.zero_()
        enc.slice_embed.weight.fill_(1.0 / cfg.slice_merge)
        enc.slice_embed.bias.zero_()
        enc.pos_embed.zero_()
        enc.depth_embed.zero_()
        cell = cfg.crop_size // cfg.grid  # crop voxels per token
        image = torch.zeros(1, 1, cfg.crop_size, cfg.crop_size, cfg.crop_size)
        d, h, w = 5, 1, 3  # token indices
        image[0, 0, d * cell:(d + 1) * cell, h * cell:(h + 1) * cell, w * cell:(w + 1) * cell] = 1.0
        tokens = enc.embed(image)[0, ..., 0]
    assert tokens.shape == (cfg.grid,) * 3
    assert tuple(int(v) for v in torch.nonzero(tokens == tokens.max())[0]) == (h, w, d)


def test_the_official_testers_permuted_click_differs_only_off_centre():
    """The official tester passes the click as (d, h, w) where the model was trained on (d, w, h): the same as
    our click with H and W swapped, which changes the logits only off the crop's diagonal."""
    torch.manual_seed(1)
    model = Promise3D(Promise3DConfig.reduced()).eval()
    side = model.config.crop_size
    image = torch.randn(1, 1, side, side, side)
    centre = torch.full((1, 1, 3), side // 2, dtype=torch.float32)
    off = torch.tensor([[[16.0, 4.0, 27.0]]])
    with torch.no_grad():
        assert torch.equal(model(image, centre), model(image, centre[..., [0, 2, 1]]))
        assert not torch.allclose(model(image, off), model(image, off[..., [0, 2, 1]]))


def test_shifted_windows_mask_and_partition():
    x = torch.randn(2, 8, 8, 8, 5)
    windows = window_partition(x, 4)
    assert windows.shape == (16, 4, 4, 4, 5)
    assert torch.equal(window_unpartition(windows, 4, (8, 8, 8)), x)
    mask = shifted_window_mask(8, 4, 2)
    assert mask.shape == (8, 64, 64) and torch.equal(mask, mask.transpose(1, 2))
    assert set(mask.unique().tolist()) == {-100.0, 0.0}
    assert (mask[0] == 0).all() and (mask[-1] == -100).any()  # only windows across the roll's seam are masked


def test_sam_weights_go_into_the_frozen_parts():
    model = Promise3D(Promise3DConfig.reduced())
    donor = Promise3D(Promise3DConfig.reduced()).encoder.state_dict()
    sam = {f"image_encoder.{k}": v for k, v in donor.items()
           if k.startswith(("patch_embed", "pos_embed")) or any(p in k for p in (".attn.qkv", ".attn.proj",
                                                                                  ".mlp.", ".rel_pos_h",
                                                                                  ".rel_pos_w", ".norm"))}
    sam["image_encoder.neck.0.weight"] = torch.zeros(1)  # SAM's 2D neck: not part of this model
    own = model.load_sam_weights(sam)
    state = model.encoder.state_dict()
    assert torch.equal(state["blocks.1.attn.qkv.weight"], donor["blocks.1.attn.qkv.weight"])
    block = model.encoder.blocks[0].attn
    assert torch.equal(block.rel_pos_d, 0.5 * (block.rel_pos_h + block.rel_pos_w))
    assert "depth_embed" in own and "blocks.0.adapter.linear1.weight" in own and "pos_embed" not in own
