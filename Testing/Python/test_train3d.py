"""Training and evaluating the ProMISe 3D model: the reduced model on real CT scans in an MSD folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from msd_fixtures import real_ct_cases, write_msd
from PIL import Image
from ProMISeLib.cli import main
from ProMISeLib.errors import CheckpointError, InvalidInputError
from ProMISeLib.models.promise3d.config import PRESETS
from ProMISeLib.models.promise3d.model import Promise3DConfig
from ProMISeTrain.evaluate3d import evaluate
from ProMISeTrain.losses import BoundaryAwareLoss
from ProMISeTrain.msd import MSDDataset, load_case
from ProMISeTrain.train3d import (
    Augmentation,
    TrainOptions,
    build_model,
    load_state,
    sample_points,
    sample_training_crop,
    train,
)

COLON = PRESETS["promise-colon"].preprocessing
REDUCED = Promise3DConfig.reduced()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_msd(tmp_path_factory):
    root = tmp_path_factory.mktemp("Task10_Colon")
    return write_msd(root, real_ct_cases()[:2], splits={"train": [1], "val": [2], "test": [2]})


@pytest.fixture(scope="module")
def trained(tiny_msd, tmp_path_factory):
    """Three short epochs on one real case, validated on another (shared by several tests)."""
    out = tmp_path_factory.mktemp("run")
    splits = tiny_msd / "splits.json"
    options = TrainOptions(steps_per_epoch=6, positive_fraction=1.0, augmentation=None)
    result = train(MSDDataset(tiny_msd, "colon", "train", splits), REDUCED, out, epochs=3, options=options,
                   val_dataset=MSDDataset(tiny_msd, "colon", "val", splits), device="cpu", progress=False)
    return out, result, options


def _fixed_crops(tiny_msd, count=4):
    volumes = load_case(MSDDataset(tiny_msd, "colon").cases[0], 1)
    crops = []
    for seed in range(count):
        rng = np.random.default_rng(100 + seed)
        image, label = sample_training_crop(volumes, COLON, rng, None, 1.0, crop_size=REDUCED.crop_size)
        crops.append((torch.from_numpy(image)[None, None], torch.from_numpy(label.astype(np.int64))[None],
                      torch.from_numpy(sample_points(label, rng))[None]))
    return crops


def _mean_loss(model, crops) -> float:
    loss = BoundaryAwareLoss()
    model.eval()
    with torch.no_grad():
        return float(np.mean([float(loss(model(image, points), label)) for image, label, points in crops]))


def test_training_lowers_the_loss_on_a_real_case(tiny_msd, trained):
    _, result, options = trained
    torch.manual_seed(options.seed)
    initial, _ = build_model(REDUCED, "random")  # the same start as the run (same seed)
    crops = _fixed_crops(tiny_msd)
    before, after = _mean_loss(initial, crops), _mean_loss(result.model, crops)
    assert after < 0.9 * before, (before, after)
    epochs = [record["loss"] for record in result.history]
    assert epochs[-1] < epochs[0], epochs


def test_frozen_sam_weights_do_not_change(trained):
    _, result, options = trained
    torch.manual_seed(options.seed)
    initial, _ = build_model(REDUCED, "random")
    trained_state = dict(result.model.named_parameters())
    frozen = [n for n, p in initial.named_parameters() if not p.requires_grad]
    assert frozen and any(n.startswith("encoder.blocks.0.attn.qkv") for n in frozen)
    for name in frozen:
        assert torch.equal(trained_state[name].detach().cpu(), dict(initial.named_parameters())[name].detach()), name
    changed = [n for n, p in initial.named_parameters()
               if p.requires_grad and not torch.equal(trained_state[n].detach().cpu(), p.detach())]
    assert any(n.startswith("decoder.") for n in changed) and any(".adapter." in n for n in changed)


def test_run_writes_state_history_curve_and_best_model(trained):
    out, result, _ = trained
    state = load_state(out / "last.pt")  # weights_only=True
    assert state["epoch"] == 3 and len(state["history"]) == 3
    trainable = sum(p.requires_grad for p in result.model.parameters())
    assert len(state["optimizer"]["param_groups"][0]["params"]) == trainable == len(state["trainable"])
    history = json.loads((out / "history.json").read_text())
    assert all(0.0 <= r["val_dice"] <= 1.0 and 0.0 <= r["val_nsd"] <= 1.0 for r in history)
    with Image.open(out / "loss.png") as picture:
        assert picture.size == (800, 420)
    assert result.best_model == out / "best.safetensors" and result.best_model.is_file()
    sidecar = json.loads((out / "best.json").read_text())
    assert sidecar["metadata"]["epoch"] == result.best_epoch
    assert sidecar["preprocessing"]["window_hu"] == list(COLON.window)


def test_resume_continues_from_the_saved_epoch(tiny_msd, tmp_path):
    dataset = MSDDataset(tiny_msd, "colon", "train", tiny_msd / "splits.json")
    options = TrainOptions(steps_per_epoch=2, augmentation=Augmentation())
    straight = train(dataset, REDUCED, tmp_path / "straight", epochs=2, options=options, device="cpu",
                     progress=False)
    train(dataset, REDUCED, tmp_path / "resumed", epochs=1, options=options, device="cpu", progress=False)
    assert load_state(tmp_path / "resumed" / "last.pt")["epoch"] == 1
    with pytest.raises(InvalidInputError, match="--resume"):
        train(dataset, REDUCED, tmp_path / "resumed", epochs=2, options=options, device="cpu", progress=False)
    resumed = train(dataset, REDUCED, tmp_path / "resumed", epochs=2, options=options, resume=True, device="cpu",
                    progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert resumed.history[1]["loss"] == pytest.approx(straight.history[1]["loss"], rel=1e-4)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name
    with pytest.raises(InvalidInputError, match="no last.pt"):
        train(dataset, REDUCED, tmp_path / "empty", epochs=1, options=options, resume=True, device="cpu")
    with pytest.raises(CheckpointError, match="another model configuration"):
        train(dataset, Promise3DConfig.reduced(decoder_dim=8), tmp_path / "resumed", epochs=3, options=options,
              resume=True, device="cpu", progress=False)


def test_cli_train_and_evaluate_write_a_report(tiny_msd, tmp_path, capsys):
    out = tmp_path / "cli-run"
    code = main(["train", "--data", str(tiny_msd), "--task", "colon", "--output", str(out), "--epochs", "1",
                 "--reduced", "--steps-per-epoch", "2", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    report_path = tmp_path / "report.json"
    code = main(["evaluate", "--weights", str(out / "best.safetensors"), "--data", str(tiny_msd), "--task", "colon",
                 "--split", "all", "--output", str(report_path), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0
    report = json.loads(report_path.read_text())
    assert [row["id"] for row in report["per_case"]] == ["colon_001", "colon_002"]
    for row in report["per_case"]:
        assert 0.0 <= row["dice"] <= 1.0 and 0.0 <= row["nsd"] <= 1.0 and row["truth_voxels"] > 0
    assert report["cases"] == 2 and report["tolerance_mm"] == 5.0 and "mean Dice" in printed
    csv_rows = (tmp_path / "report.csv").read_text().splitlines()
    assert csv_rows[0].startswith("id,dice,nsd") and len(csv_rows) == 3


def test_evaluate_a_perfect_predictor_scores_one(tiny_msd):
    """The scoring path alone: a predictor that returns the label gives Dice 1 and NSD 1."""

    def oracle(volumes, click):
        assert volumes.label_array()[click]
        return volumes.label_array().astype(np.float32)

    report = evaluate(oracle, tiny_msd, "test", task="colon", splits_file=tiny_msd / "splits.json", click="random")
    assert report["cases"] == 1 and report["mean_dice"] == 1.0 and report["mean_nsd"] == 1.0


@pytest.mark.parametrize("command", [
    ["train", "--task", "colon", "--output", "{tmp}/run", "--reduced"],
    ["evaluate", "--weights", "{tmp}/w.safetensors", "--task", "colon", "--output", "{tmp}/r.json"],
])
def test_cli_missing_dataset_is_one_line_exit_2(tmp_path, capsys, command):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in command] + ["--data", str(tmp_path / "absent")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such dataset folder" in err, err
    assert not (tmp_path / "run").exists()


def test_evaluate_an_in_memory_model_with_the_component_step(tiny_msd, trained):
    _, result, _ = trained
    report = evaluate(result.model, tiny_msd, "all", task="colon", keep_component=True)
    assert report["cases"] == 2 and report["postprocessing"].startswith("connected")
    assert all(0.0 <= row["dice"] <= 1.0 for row in report["per_case"])


def test_cases_without_lesion_are_skipped_and_named(tmp_path):
    import SimpleITK as sitk

    root = write_msd(tmp_path / "Task10_Colon", real_ct_cases()[:1])
    path = root / "labelsTr" / "colon_001.nii.gz"
    label = sitk.ReadImage(str(path))
    sitk.WriteImage(label * 0, str(path))
    report = evaluate(lambda volumes, click: volumes.label_array(), root, "all", task="colon")
    assert report["cases"] == 0 and report["mean_dice"] is None and report["skipped_empty_label"] == ["colon_001"]
