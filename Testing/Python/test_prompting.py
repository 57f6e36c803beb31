"""The learned prompter (issue 6): network shapes, training, the weights card, and the engine's choice."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import flip_byte
from ProMISeLib.errors import CheckpointError
from ProMISeLib.io.preprocess import CropWindow
from ProMISeLib.prompting.net import PromptNet, PromptNetConfig, click_map
from ProMISeLib.prompting.prompter import LearnedPrompter, load_prompt_net
from ProMISeTrain.prompter_data import (
    ExtractionSettings,
    StructureSamples,
    extract_structure,
    load_samples,
    save_samples,
)
from ProMISeTrain.prompter_pipeline import held_out_fold, save_prompt_net
from ProMISeTrain.prompter_train import SampleBank, TrainSettings, make_batch, train_prompt_net
from scipy import ndimage

SMALL = PromptNetConfig(embed_dim=16, reduced_dim=8, width=8)


def _disc(grid: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.mgrid[0:grid, 0:grid] + 0.5
    return (((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) <= radius**2).astype(np.float32)


def _synthetic_structure(seed: int, channels: int = 16) -> StructureSamples:
    """A sphere-like structure whose embedding channel 0 shows it (so it is learnable), the rest noise."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform(24, 40, 2)
    slices = np.arange(0, 9)
    radii = {k: max(0.0, 10 - 2.2 * abs(k - 4)) for k in range(-3, 12)}
    targets = {k: _disc(64, tuple(centre), r) if r > 1 else np.zeros((64, 64), np.float32) for k, r in radii.items()}
    embeddings = rng.normal(0, 1, (len(slices), channels, 64, 64)).astype(np.float16)
    for p, k in enumerate(slices):
        embeddings[p, 0] = (4 * targets[k] - 2).astype(np.float16)
    return StructureSamples(
        case_id=f"synthetic{seed}", structure="lesion", group=f"g{seed}", click_kji=(4, 0, 0), slices=slices,
        embeddings=embeddings, targets=targets, context_embedding=embeddings[4], context_target=targets[4],
        context_click=tuple(centre), roi_click=tuple(centre), extent=(1, 7),
    )


def test_network_shapes_and_size():
    net = PromptNet()
    out = net(torch.zeros(2, 256, 64, 64), torch.zeros(2, 1, 64, 64), torch.zeros(2, 1, 64, 64))
    assert out.shape == (2, 1, 64, 64)
    size_mb = sum(p.numel() * 4 for p in net.parameters()) / 1e6
    assert size_mb < 5, "the prompter must stay small (a few MB)"


def test_click_map_peaks_at_the_click():
    bump = click_map([(10.5, 20.5)], sigma=1.5)
    assert bump[10, 20] == pytest.approx(1.0) and bump.max() == pytest.approx(1.0)
    assert bump[40, 40] < 1e-6
    assert click_map([]).sum() == 0


def test_batches_mix_roles_and_match_shapes():
    bank = SampleBank([_synthetic_structure(0), _synthetic_structure(1)])
    emb, prior, click, target = make_batch(bank, np.random.default_rng(0), TrainSettings(batch_size=32), 1.5)
    assert emb.shape == (32, 16, 64, 64) and prior.shape == click.shape == target.shape == (32, 1, 64, 64)
    has_click = click.flatten(1).amax(1) > 0.5
    has_prior = prior.flatten(1).amax(1) > 0.5
    assert has_click.any() and has_prior.any()
    assert not (has_click & has_prior).any(), "a slice gets either the click or the neighbour's mask"


def test_the_click_weighting_sets_how_far_inside_the_training_clicks_fall():
    """``click_depth_power`` 2 puts the seed clicks near the middle, 0 anywhere inside the structure."""
    bank = SampleBank([_synthetic_structure(0)])

    def click_depths(power: float) -> np.ndarray:
        settings = TrainSettings(batch_size=400, click_depth_power=power)
        _, _, clicks, targets = make_batch(bank, np.random.default_rng(1), settings, 1.5)
        depths = []
        for click, target in zip(clicks[:, 0].numpy(), targets[:, 0].numpy(), strict=True):
            if click.max() > 0.5:  # a seed or context sample: the click's depth, relative to its slice's deepest
                r, c = np.unravel_index(int(click.argmax()), click.shape)
                depth = ndimage.distance_transform_edt(target > 0.5)
                depths.append(depth[r, c] / depth.max())
        return np.array(depths)

    middle, anywhere = click_depths(2.0), click_depths(0.0)
    assert len(middle) > 50 and len(anywhere) > 50
    assert (middle > 0).all() and (anywhere > 0).all(), "every click is inside the structure"
    assert np.median(anywhere) < np.median(middle) - 0.15
    assert (anywhere < 1 / 3).mean() > 1.5 * (middle < 1 / 3).mean()


def test_training_lowers_the_loss_and_touches_only_the_prompter():
    structures = [_synthetic_structure(s) for s in range(3)]
    settings = TrainSettings(iterations=80, batch_size=8, lr=5e-3)
    torch.manual_seed(0)
    net, losses = train_prompt_net(structures, settings, SMALL)
    assert np.mean(losses[-10:]) < 0.85 * np.mean(losses[:10])
    frozen = {name for name, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {"reduce.weight", "reduce.bias"}  # the channel projection is fitted (PCA), not trained
    prompter = LearnedPrompter(net)
    s = structures[0]
    seed = prompter.seed(torch.from_numpy(s.embeddings[4].astype(np.float32))[None], 64,
                         (int(s.roi_click[0]), int(s.roi_click[1])))
    truth = s.targets[4] > 0.5
    assert seed.box is not None
    assert 2 * (seed.mask & truth).sum() / (seed.mask.sum() + truth.sum()) > 0.6


def test_frozen_backbone_is_not_trained():
    """Samples come from the frozen encoder under inference mode; its weights cannot change."""
    from ProMISeLib.io.weights import resolve_weights
    from ProMISeLib.models.litemedsam import build_litemedsam
    from ProMISeLib.models.registry import MODELS

    model = build_litemedsam(resolve_weights(MODELS["litemedsam"].weights))
    assert not any(p.requires_grad for p in model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items() if "image_encoder.neck" in k}
    from ProMISeLib.io.preprocess import InputScaling
    from ProMISeLib.runtime.predictor import SlicePredictor
    from ProMISeLib.runtime.torch_backend import TorchBackend

    predictor = SlicePredictor(TorchBackend(model, cpu := torch.device("cpu")), "litemedsam", InputScaling(256), cpu)
    volume = np.zeros((6, 40, 40), np.float32)
    volume[1:5, 12:28, 14:30] = 200
    mask = volume > 100
    samples = extract_structure("toy", "lesion", mask, volume, 1.0, predictor.embed,
                                ExtractionSettings(past_end=1), organ=False)
    net, _ = train_prompt_net([samples], TrainSettings(iterations=2, batch_size=2))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert samples.embeddings.shape[1:] == (256, 64, 64) and samples.embeddings.dtype == np.float16
    assert list(samples.slices) == [0, 1, 2, 3, 4, 5], "lesion slices 1-4 plus one past each end"
    assert samples.targets[0].max() == 0 and samples.targets[2].max() == 1


def test_samples_round_trip(tmp_path):
    s = _synthetic_structure(3)
    save_samples([s], tmp_path / "x.npz")
    (back,) = load_samples(tmp_path / "x.npz")
    np.testing.assert_array_equal(back.embeddings, s.embeddings)
    assert back.targets.keys() == s.targets.keys() and back.extent == s.extent


def test_the_sample_cache_is_keyed_by_the_extraction_recipe(tmp_path):
    """A second extraction with the same settings reads the cache; changed settings (here the training ROI
    ratio) encode again into their own file and never read samples made under the old recipe."""
    import SimpleITK as sitk
    from ProMISeLib.io.sample_data import Case
    from ProMISeTrain.prompter_data import extract_case

    volume = np.zeros((8, 48, 48), np.float32)
    volume[2:6, 16:32, 18:34] = 200.0
    for name, array in (("img.nii.gz", volume), ("lab.nii.gz", (volume > 100).astype(np.uint8))):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / name))
    case = Case("toy", tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", (1,), "CT", "tumour")
    calls = []

    def embed(vol, ks, crop):
        calls.append(crop.side)
        return {k: torch.zeros(1, 4, 64, 64) for k in ks}

    cache = tmp_path / "cache"
    cache.mkdir()
    first = extract_case(case, embed, ExtractionSettings(past_end=1), cache)
    encoded = len(calls)
    again = extract_case(case, embed, ExtractionSettings(past_end=1), cache)
    assert encoded > 0 and len(calls) == encoded, "the same recipe reads the cache"
    assert [s.slices.tolist() for s in again] == [s.slices.tolist() for s in first]
    extract_case(case, embed, ExtractionSettings(past_end=1, roi_to_lesion=8.0, scale_range=(1.0, 1.0)), cache)
    assert len(calls) > encoded, "a changed recipe encodes again"
    assert len(list(cache.glob("toy-*.npz"))) == 2


def _saved_net(tmp_path) -> tuple:
    net = PromptNet(SMALL)
    path = save_prompt_net(net, tmp_path / "p.safetensors", {"name": "test-prompter", "default": True})
    return net, path


def test_weights_round_trip_with_card(tmp_path):
    net, path = _saved_net(tmp_path)
    loaded, card = load_prompt_net(path)
    assert card["name"] == "test-prompter" and card["config"]["width"] == SMALL.width
    x = (torch.randn(1, 16, 64, 64), torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64))
    torch.testing.assert_close(loaded(*x), net.eval()(*x))


def test_corrupted_weights_are_refused(tmp_path):
    _, path = _saved_net(tmp_path)
    bad = tmp_path / "bad.safetensors"
    shutil.copy(path, bad)
    flip_byte(bad, -10)
    shutil.copy(path.with_suffix(".json"), bad.with_suffix(".json"))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_prompt_net(bad)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    card = json.loads(path.with_suffix(".json").read_text())
    from ProMISeLib.io.download import sha256_of

    card["sha256"] = sha256_of(garbage)
    garbage.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="safetensors"):
        load_prompt_net(garbage)
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_prompt_net(path)


def test_wrong_configuration_is_refused(tmp_path):
    _, path = _saved_net(tmp_path)
    card = json.loads(path.with_suffix(".json").read_text())
    card["config"]["width"] = 16
    path.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError):
        load_prompt_net(path)


def test_prompter_box_covers_its_mask():
    net = PromptNet(SMALL)
    prompter = LearnedPrompter(net)
    coarse = prompter._coarse(np.full((64, 64), 0.9), _disc(64, (32, 20), 6) > 0, side=128)
    x0, y0, x1, y1 = coarse.box
    assert (x0, y0) == (28, 52) and (x1, y1) == (52, 76)  # grid cells 14..25, 26..37 at 2 px per cell
    crop = coarse.in_crop(128)
    assert crop.shape == (128, 128) and crop[64, 40] and not crop[10, 10]
    assert CropWindow.around((64, 64), 128).side == 128


def test_engine_choice_of_prompts(tmp_path):
    from ProMISeLib.engine import Segmenter
    from ProMISeLib.errors import InvalidInputError

    assert Segmenter(device="cpu", prompts="heuristic").learned_prompter() is None
    with pytest.raises(InvalidInputError):
        Segmenter(device="cpu", prompts="magic")
    with pytest.raises(CheckpointError):
        missing = str(tmp_path / "none.safetensors")
        Segmenter(device="cpu", prompts="learned", prompter_weights=missing).learned_prompter()
    _, path = _saved_net(tmp_path)
    chosen = Segmenter(device="cpu", prompts="learned", prompter_weights=str(path)).learned_prompter()
    assert chosen is not None and chosen.name == "test-prompter"


def _shipped_card() -> dict:
    from ProMISeLib.models.registry import get_model_spec
    from ProMISeLib.prompting.prompter import card_path

    path = get_model_spec("litemedsam").prompter_path
    assert path is not None and path.is_file(), "the learned prompter ships with the engine"
    return json.loads(card_path(path).read_text())


def test_shipped_prompter_card_records_its_validation():
    card = _shipped_card()
    assert card["backbone"] == "litemedsam" and card["config"]["embed_dim"] == 256
    validation = card["validation"]
    assert "by patient" in validation["scheme"]
    end_to_end = validation["end_to_end"]
    assert set(end_to_end["modes"]) == {"learned", "fused"}
    for mode, entry in end_to_end["modes"].items():
        per_scan = entry["per_scan"]
        assert len(per_scan) >= 30 and all(r["fold"] for r in per_scan.values()), mode
        assert entry["mean_dice"] == pytest.approx(np.mean([r["dice"] for r in per_scan.values()]), abs=1e-3)
        # every scan was scored by a fold that had not seen its patient
        for case_id, row in per_scan.items():
            held = validation["folds"][row["fold"].removesuffix(".safetensors")]
            assert any(case_id == g or case_id.startswith(g + "_") for g in held), case_id
    heuristic = end_to_end["heuristic_mean_dice"]
    means = {mode: e["mean_dice"] for mode, e in end_to_end["modes"].items()}
    best = max(means, key=means.get)
    assert card["default"] == (best if means[best] > heuristic else False)


def test_default_mode_reads_old_and_new_cards():
    from ProMISeLib.prompting.prompter import default_mode

    assert default_mode({"default": True}) == "learned"
    assert default_mode({"default": "fused"}) == "fused"
    assert default_mode({"default": False}) is None
    assert default_mode({"default": "magic"}) is None and default_mode({}) is None


def test_auto_runs_the_mode_the_card_names(tmp_path):
    from ProMISeLib.engine import Segmenter
    from ProMISeLib.prompting.prompter import default_mode

    segmenter = Segmenter(device="cpu")
    assert segmenter.resolved_prompts == (default_mode(_shipped_card()) or "heuristic")
    assert (segmenter.learned_prompter() is not None) == bool(_shipped_card()["default"])
    net, _ = _saved_net(tmp_path)
    for written, expected in (("fused", "fused"), (False, "learned")):  # named weights run even unvalidated
        path = save_prompt_net(net, tmp_path / f"{written}.safetensors", {"name": "p", "default": written})
        assert Segmenter(device="cpu", prompter_weights=str(path)).resolved_prompts == expected
    assert Segmenter(device="cpu", prompts="heuristic", prompter_weights=str(path)).resolved_prompts == "heuristic"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fused", "learned"])
def test_shipped_prompter_reproduces_its_validation_dice(cases, mode):
    """The shipped file never saw these patients; re-running it must give the Dice its card records."""
    from ProMISeLib.engine import Segmenter
    from ProMISeLib.io.sample_data import lesion_click, read_case
    from ProMISeLib.metrics import dice

    recorded = _shipped_card()["validation"]["shipped_file_validation"][mode]
    case_id = "STS_019_MR_T1" if "STS_019_MR_T1" in recorded else min(recorded)
    volume, geometry, truth = read_case(cases[case_id])
    result = Segmenter(device="cpu", prompts=mode).segment(
        volume, geometry, [lesion_click(truth)[::-1]], space="ijk")
    assert result.method.startswith(f"{mode} prompts")
    assert dice(result.mask, truth) == pytest.approx(recorded[case_id], abs=0.01)


def test_fused_ranking_follows_the_network_between_equally_confident_candidates():
    """Nested structures at a click (a lesion inside a limb) both look self-consistent to the rules;
    the learned mask decides (the fused chooser), while the rules alone keep the higher rule score."""
    from ProMISeLib.walk.choose import Chooser, FusedChooser, chooser_for

    lesion = _disc(64, (32, 32), 8).astype(bool)
    limb = _disc(64, (32, 30), 24).astype(bool)
    fused = FusedChooser(prompter=None)
    assert fused.pick([limb, lesion], [0.9, 0.85], _disc(64, (32, 33), 9).astype(bool)) == 1
    assert fused.pick([limb, lesion], [0.9, 0.85], _disc(64, (32, 30), 22).astype(bool)) == 0
    assert Chooser().pick([limb, lesion], [0.9, 0.85], _disc(64, (32, 33), 9).astype(bool)) == 0
    assert type(chooser_for("fused", None)) is Chooser  # no prompter: the rules choose


def test_a_segmenter_switches_prompter_files_and_keeps_its_cache(tmp_path):
    from ProMISeLib.engine import Segmenter

    net, _ = _saved_net(tmp_path)
    first = save_prompt_net(net, tmp_path / "a.safetensors", {"name": "first", "default": "fused"})
    second = save_prompt_net(net, tmp_path / "b.safetensors", {"name": "second", "default": False})
    segmenter = Segmenter(device="cpu", prompter_weights=str(first))
    cache = segmenter.cache
    assert segmenter.learned_prompter().name == "first" and segmenter.resolved_prompts == "fused"
    segmenter.set_prompter_weights(str(second))
    assert segmenter.learned_prompter().name == "second" and segmenter.resolved_prompts == "learned"
    assert segmenter.cache is cache


def test_each_scan_gets_the_fold_that_never_saw_its_patient(tmp_path):
    (tmp_path / "index.json").write_text(json.dumps({"STS_001": "fold0.safetensors", "brain1": "fold1.safetensors"}))
    assert held_out_fold(tmp_path, "STS_001_MR_T1") == tmp_path / "fold0.safetensors"
    assert held_out_fold(tmp_path, "STS_001_CT") == tmp_path / "fold0.safetensors"  # one patient, one fold
    assert held_out_fold(tmp_path, "brain1") == tmp_path / "fold1.safetensors"
    with pytest.raises(KeyError):
        held_out_fold(tmp_path, "STS_002_CT")


@pytest.mark.slow
def test_training_encodes_a_cold_cache_in_a_process_of_its_own_and_never_loads_the_encoder_for_a_warm_one(
        cases, tmp_path):
    """``train-prompting --jobs N`` forks its fold workers; a process forked after the encoder ran can
    deadlock, so the cache is filled apart (``_fill_cache``) and the parent only reads it."""
    from ProMISeTrain.prompter_data import ExtractionSettings, cache_file
    from ProMISeTrain.prompter_pipeline import _fill_cache, _LazyEncoder, extract_all

    case = cases["brain1"]
    _fill_cache([case], tmp_path, ("litemedsam", "cpu", "onnx"))
    assert cache_file(tmp_path, "brain1", ExtractionSettings()).is_file()
    encoder = _LazyEncoder("litemedsam", "cpu", "onnx")
    data = extract_all([case], encoder, tmp_path, ExtractionSettings(), say=lambda message: None)
    assert encoder._embed is None  # every slice came from the cache
    (structure,) = data["brain1"]
    assert structure.structure == "lesion" and structure.embeddings.shape[1] == 256


class _RecordingPredictor:
    """Decodes every box to the same disc and records the boxes it was given."""

    def __init__(self, disc: np.ndarray) -> None:
        self.disc = disc
        self.boxes: list[np.ndarray] = []

    def embed(self, volume, ks, crop):
        return dict.fromkeys(ks)

    def decode(self, embedding, side, boxes, points=None, labels=None):
        from ProMISeLib.runtime.predictor import Decoded

        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        self.boxes.append(boxes)
        n = len(boxes)
        return Decoded(np.where(self.disc, 1.0, -1.0)[None].repeat(n, 0).astype(np.float32),
                       np.full(n, 0.8, np.float32))


def _context(predictor, volume, settings=None, **kwargs):
    from ProMISeLib.walk import WalkSettings
    from ProMISeLib.walk.context import WalkContext

    return WalkContext(predictor, volume, (1.0, 1.0), 1.0, settings or WalkSettings(), **kwargs)


@pytest.mark.parametrize("verify", [True, False])
def test_a_step_without_verify_scores_by_the_predicted_iou_and_decodes_once(verify):
    """A correction's step skips the own-box re-decode, which is what doubles a step's cost."""
    from ProMISeLib.walk.settings import StepSettings
    from ProMISeLib.walk.step import step

    disc = _disc(32, (16, 16), 6).astype(bool)
    predictor = _RecordingPredictor(disc)
    ctx = _context(predictor, np.full((3, 32, 32), 100.0, np.float32))
    mask, score = step(ctx, 1, CropWindow.around((16, 16), 32), disc, [], [], verify=verify)
    assert (mask == disc).all()
    scales = len(StepSettings().scales)
    assert [len(b) for b in predictor.boxes] == ([scales, scales] if verify else [scales])
    assert score == pytest.approx(0.8)  # the decoder reproduces the mask from its own box: agreement 1


def test_a_plugin_chooses_each_steps_candidate_and_ends_the_walk():
    """The walk's extension point: a plug-in written here sees every weighed step, picks its candidate
    (the smallest box's mask instead of the rules' choice) and ends the walk two slices from the start."""
    from ProMISeLib.walk import WalkPlugin, WalkSettings
    from ProMISeLib.walk.propagate import propagate

    seen = []

    class Smallest(WalkPlugin):
        def choose(self, step):
            seen.append((step.k, step.chosen, len(step.candidates)))
            return int(np.argmin([c.sum() for c in step.candidates]))

        def stop(self, k, mask, reason):
            return "the plug-in ends it" if abs(k - 5) > 2 else reason

    volume = np.full((11, 64, 64), 100.0, np.float32)
    start = _disc(64, (32, 32), 10).astype(bool)
    crop = CropWindow(0, 0, 64)
    lenient = WalkSettings().changed(stop={"min_score": 0.0, "min_area_fraction": 0.0})  # the rules never stop
    plain = propagate(_context(_BoxPredictor(), volume, lenient), 5, crop, start, [], [])
    lesion = propagate(_context(_BoxPredictor(), volume, lenient, plugins=[Smallest()]), 5, crop, start, [], [])
    assert sorted(plain.masks) == list(range(11))
    assert sorted(lesion.masks) == [3, 4, 5, 6, 7]
    assert lesion.stops == ["stopped at slice 8: the plug-in ends it", "stopped at slice 2: the plug-in ends it"]
    assert [k for k, _, _ in seen] == [6, 7, 8, 4, 3, 2]
    assert all(n == 5 for _, _, n in seen)  # one candidate per box size around the previous mask
    assert lesion.masks[6].sum() < plain.masks[6].sum()  # the plug-in's choice, not the rules'


class _BoxPredictor:
    """Decodes every box to its own rectangle (clipped to the crop), with a fixed predicted IoU."""

    def embed(self, volume, ks, crop):
        return dict.fromkeys(ks)

    def decode(self, embedding, side, boxes, points=None, labels=None):
        from ProMISeLib.runtime.predictor import Decoded

        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        rows, cols = np.mgrid[0:side, 0:side] + 0.5
        inside = [(cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1) for x0, y0, x1, y1 in boxes]
        return Decoded(np.where(np.stack(inside), 1.0, -1.0).astype(np.float32), np.full(len(boxes), 0.8, np.float32))


def test_a_crop_window_holds_the_pixels_it_extracts():
    crop = CropWindow(30, 5, 32)  # rows 30..61, columns 5..36
    assert crop.contains((30, 5)) and crop.contains((61, 36))
    assert not crop.contains((62, 20)) and not crop.contains((40, 4)) and not crop.contains((29, 10))


@pytest.mark.parametrize(("argv", "power"),
                         [([], TrainSettings().click_depth_power), (["--click-depth-power", "1"], 1.0)])
def test_train_prompting_passes_the_click_weighting_to_the_recipe(tmp_path, monkeypatch, argv, power):
    """``promise train-prompting --click-depth-power`` reaches the recipe; without it the default stays."""
    from ProMISeLib import cli
    from ProMISeTrain import prompter_pipeline as pipeline

    seen = {}

    def fake_train(output, data, cache, device, runtime, train, settings=None, jobs=1):
        seen["train"] = train
        return {"validation": {"coarse_dice_mean": None}}

    monkeypatch.setattr(pipeline, "train_prompting", fake_train)
    assert cli.main(["train-prompting", "--output", str(tmp_path), *argv]) == 0
    assert seen["train"].click_depth_power == power
