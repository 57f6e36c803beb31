"""The prompts choice and the hand-added ProMISe 3D models, through the module's logic (slicer-core).

The engine is the stand-in from conftest_slicer where running a model is not the point; adding a
checkpoint runs the engine's real conversion on a small synthetic checkpoint in the released layout.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")
pytest.register_assert_rewrite("conftest_slicer")
pytest_plugins = ["conftest_slicer"]

from conftest_slicer import FakeSegmenter, add_points, add_volume, fake_factory, scene_state  # noqa: E402
from ProMISeLib.errors import CheckpointError, InvalidInputError  # noqa: E402

HEURISTIC = "heuristic box prompts"


def make_logic(**fake_options):
    from ProMISeSlicer.logic import ProMISeModuleLogic

    return ProMISeModuleLogic(segmenterFactory=fake_factory(**fake_options))


def small_scene():
    volume = add_volume(np.zeros((8, 12, 10), np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), "small")
    points = add_points([("lesion", (4.0, 5.0, 6.0))])
    return volume, points


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """Weights go to a cache of the test's own; no PROMISE_WEIGHTS_* override leaks in."""
    monkeypatch.setenv("PROMISE_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("PROMISE_WEIGHTS_PROMISE_COLON", "PROMISE_WEIGHTS_PROMISE_PANCREAS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "cache"


@pytest.fixture
def one_thread():
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


# --- prompts ----------------------------------------------------------------------------------
def test_logic_offers_the_engines_prompt_modes_and_the_fake_speaks_like_the_engine():
    from ProMISeLib import prompting
    from ProMISeSlicer import options
    from ProMISeSlicer.logic import PROMPT_MODES

    assert PROMPT_MODES is prompting.PROMPT_MODES and options.check_prompts is prompting.check_prompts  # one place
    pytest.importorskip("torch")
    from ProMISeLib import engine

    assert FakeSegmenter.METHODS["heuristic"] == engine.HEURISTIC_METHOD == HEURISTIC


def test_prompts_reach_the_engine_and_the_run_names_the_method_that_ran(slicer_env):
    logic = make_logic()
    volume, points = small_scene()

    run = logic.segment(volume, points, model="fake-model", device="cpu")  # the console default
    auto_engine = FakeSegmenter.instances[-1]
    assert auto_engine.prompts == "auto" and run.prompts == "auto"
    assert run.method == "learned prompts (fake-prompter)"
    assert run.method in run.summary() and "lesion" in run.summary()

    progress = []
    run = logic.segment(volume, points, model="fake-model", device="cpu", prompts="heuristic",
                        progressCallback=lambda fraction, message: progress.append(message))
    heuristic_engine = FakeSegmenter.instances[-1]
    assert heuristic_engine is not auto_engine and heuristic_engine.prompts == "heuristic"
    assert len(heuristic_engine.calls) == 1 and len(auto_engine.calls) == 1
    assert run.prompts == "heuristic" and run.method == HEURISTIC
    assert run.summary().endswith(f"[fake-model, cpu, {HEURISTIC}]"), run.summary()
    assert HEURISTIC in progress[-1]  # the last progress message is the summary the panel shows

    # the same choice again reuses the engine (and its embedding cache); prompts are part of its key
    logic.segment(volume, points, model="fake-model", device="cpu", prompts="heuristic")
    assert FakeSegmenter.instances[-1] is heuristic_engine and len(heuristic_engine.calls) == 2
    assert logic.getSegmenter("fake-model", "cpu", "torch", "learned").prompts == "learned"
    assert logic.getSegmenter("fake-model", "cpu").prompts == "auto"


def test_unknown_prompts_are_refused_before_any_work(slicer_env, tmp_path):
    logic = make_logic()
    volume, points = small_scene()
    count = len(FakeSegmenter.instances)
    before = scene_state(slicer_env.scene)
    with pytest.raises(InvalidInputError, match="unknown prompts 'box'; use one of auto, fused, learned, heuristic"):
        logic.segment(volume, points, prompts="box")
    with pytest.raises(InvalidInputError, match="unknown prompts"):
        logic.segmentFiles([(tmp_path / "never-read.nrrd", {"a": [0, 0, 0]})], prompts="Learned")
    with pytest.raises(InvalidInputError, match="unknown prompts"):
        logic.getSegmenter("fake-model", "cpu", "torch", "none")
    assert scene_state(slicer_env.scene) == before
    assert len(FakeSegmenter.instances) == count and not logic.busy and not logic.canUndo()


def test_segment_files_passes_the_prompts_and_reports_the_method(slicer_env, tmp_path):
    scene = slicer_env.scene
    volume, _ = small_scene()
    storage = slicer_env.slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    image = tmp_path / "small.nrrd"
    storage.SetFileName(str(image))
    assert storage.WriteData(volume)

    logic = make_logic(radius_mm=2.0)
    reports = logic.segmentFiles([(image, {"a": [4.0, 5.0, 6.0]}), (image, {"b": [5.0, 6.0, 8.0]})],
                                 outputFolder=tmp_path / "out", model="fake-model", device="cpu",
                                 prompts="heuristic")
    assert [r["error"] for r in reports] == [None, None]
    assert [r["method"] for r in reports] == [HEURISTIC, HEURISTIC]
    assert all(HEURISTIC in r["summary"] for r in reports)
    engine = FakeSegmenter.instances[-1]
    assert engine.prompts == "heuristic" and len(engine.calls) == 2  # one engine for every case
    logic.segmentFiles([(image, {"c": [4.0, 5.0, 6.0]})], outputFolder=tmp_path / "out", model="fake-model",
                       device="cpu")
    assert FakeSegmenter.instances[-1].prompts == "auto"  # the default


def test_default_factory_hands_the_prompts_to_the_real_segmenter(slicer_env):
    pytest.importorskip("torch")
    from ProMISeLib.engine import Segmenter
    from ProMISeSlicer.logic import ProMISeModuleLogic

    logic = ProMISeModuleLogic()  # the engine itself; constructing it loads no weights
    heuristic = logic.getSegmenter(None, "cpu", "torch", "heuristic")
    assert isinstance(heuristic, Segmenter) and heuristic.prompts == "heuristic"
    assert heuristic.learned_prompter() is None  # the rule-based search: no prompter is loaded
    assert logic.getSegmenter(None, "cpu", "torch", "heuristic") is heuristic
    default = logic.getSegmenter(None, "cpu")
    assert default is not heuristic and default.prompts == "auto"


# --- ProMISe 3D models, added by hand ---------------------------------------------------------
def released_checkpoint(torch, path):
    """A reduced ProMISe 3D model saved as the public code saves it (``cls_hao`` for ``head``)."""
    from ProMISeLib.models.promise3d.model import Promise3D, Promise3DConfig

    torch.manual_seed(0)
    model = Promise3D(Promise3DConfig.reduced()).eval()
    decoder = {k.replace("head.", "cls_hao.", 1) if k.startswith("head.") else k: v
               for k, v in model.decoder.state_dict().items()}
    torch.save({"encoder_dict": model.encoder.state_dict(), "feature_dict": [p.state_dict() for p in model.prompt],
                "decoder_dict": decoder}, path)
    return model


def test_model_notes_tell_the_panel_which_models_are_3d_and_added_by_hand(private_cache):
    from ProMISeLib.models.promise3d.config import DOWNLOAD_PAGE, PRESETS
    from ProMISeSlicer.logic import ProMISeModuleLogic

    for name in ("promise-colon", "promise-pancreas"):
        notes = ProMISeModuleLogic.modelNotes(name)
        assert notes.volume3d and notes.addedByHand
        assert notes.page == DOWNLOAD_PAGE and notes.sourceHint == PRESETS[name].source_hint
    for name in (None, "litemedsam", "sam_vit_b"):
        notes = ProMISeModuleLogic.modelNotes(name)
        assert not notes.volume3d and not notes.addedByHand and notes.page == ""
    with pytest.raises(InvalidInputError, match="unknown model"):
        ProMISeModuleLogic.modelNotes("promise-liver")


def test_adding_a_checkpoint_calls_the_engine_function_the_cli_uses(private_cache, monkeypatch, tmp_path):
    from ProMISeLib.cli import main
    from ProMISeLib.models import registry
    from ProMISeSlicer.logic import ProMISeModuleLogic

    calls = []
    monkeypatch.setattr(registry, "add_model_weights", lambda name, path: calls.append((name, str(path))) or path)
    source = tmp_path / "colon_pretrain_promise.pth"
    assert main(["weights", "add", "promise-colon", str(source)]) == 0
    assert ProMISeModuleLogic().addModelCheckpoint("promise-colon", str(source)) == source
    assert calls == [("promise-colon", str(source))] * 2


def test_adding_a_released_checkpoint_installs_the_3d_model(slicer_env, private_cache, one_thread, monkeypatch,
                                                            tmp_path):
    torch = one_thread
    from ProMISeLib.io.weights import cached_path, resolve_weights, sidecar_path
    from ProMISeLib.models.promise3d import checkpoint as ckpt
    from ProMISeLib.models.promise3d.model import Promise3DConfig
    from ProMISeLib.models.registry import MODELS

    monkeypatch.setattr(ckpt, "default_config", lambda name: Promise3DConfig.reduced())  # full size is 0.5 GB
    source = tmp_path / "colon_pretrain_promise.pth"
    model = released_checkpoint(torch, source)
    logic = make_logic()
    installed = {m.name: m for m in logic.models()}
    assert not installed["promise-colon"].installed and not installed["promise-colon"].downloadable
    engine = logic.getSegmenter("promise-colon", "cpu")  # an engine that holds the model before it is added

    path = logic.addModelCheckpoint("promise-colon", source)
    entry = MODELS["promise-colon"].weights
    assert path == cached_path(entry) == resolve_weights(entry)  # checked against its sidecar
    assert sidecar_path(path).is_file() and str(private_cache) in str(path)
    assert {m.name: m for m in logic.models()}["promise-colon"].installed
    assert logic._segmenter is None  # dropped: the next run loads the added weights
    assert logic.getSegmenter("promise-colon", "cpu") is not engine
    loaded, _ = ckpt.load_promise3d("promise-colon")
    key = "decoder.head.0.weight"
    assert torch.equal(loaded.state_dict()[key], model.state_dict()[key])

    # another model's local file is checked against its pinned SHA-256; a wrong one is refused, nothing installed
    with pytest.raises(CheckpointError, match="not the sam_vit_b weights"):
        logic.addModelCheckpoint("sam_vit_b", source)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        logic.addModelCheckpoint("promise-pancreas", junk)
    assert not {m.name: m for m in logic.models()}["promise-pancreas"].installed
