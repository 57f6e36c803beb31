"""The command line's training commands: they run in the training wing (``ProMISeTrain``), imported when they run."""

from __future__ import annotations

import argparse
from pathlib import Path

#: The subcommands this module adds and runs.
TRAINING_COMMANDS = ("train", "evaluate", "train-prompting", "train-token-shift")


def add_training_commands(sub: argparse._SubParsersAction) -> None:
    """``promise train`` and ``evaluate`` (ProMISe 3D on an MSD task folder), ``train-prompting`` and
    ``train-token-shift`` (the default model's prompter and decoder token shift on the labelled scans)."""
    train = sub.add_parser("train", help="train the ProMISe 3D model on an MSD task folder")
    train.add_argument("--data", required=True, help="MSD task folder (dataset.json, imagesTr/, labelsTr/)")
    train.add_argument("--task", required=True, choices=("colon", "pancreas"))
    train.add_argument("--output", required=True, help="folder for checkpoints, history, loss.png, best model")
    train.add_argument("--epochs", type=int, default=200, help="total epochs (a resumed run counts those done)")
    train.add_argument("--resume", action="store_true", help="continue the run saved in --output")
    train.add_argument("--reduced", action="store_true", help="the tiny model (CPU tests), random init")
    train.add_argument("--splits", default=None, help="split JSON (fold-0 format); else all cases train")
    train.add_argument("--init", default=None,
                       help="sam (default), random (default with --reduced), promise-colon, or a weights file")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--workers", type=int, default=0, help="data-loading processes")
    train.add_argument("--steps-per-epoch", type=int, default=None, help="crops per epoch (default: one per case)")
    evaluate = sub.add_parser("evaluate", help="one-click Dice and NSD of a ProMISe 3D model on an MSD split")
    which = evaluate.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="registered model name (promise-colon, promise-pancreas)")
    which.add_argument("--weights", help="a converted or trained ProMISe 3D checkpoint")
    evaluate.add_argument("--data", required=True, help="MSD task folder")
    evaluate.add_argument("--task", required=True, choices=("colon", "pancreas"))
    evaluate.add_argument("--split", choices=("train", "val", "test", "all"), default=None,
                          help="default: test with --splits, else all")
    evaluate.add_argument("--splits", default=None, help="split JSON (fold-0 format)")
    evaluate.add_argument("--output", required=True, help="report .json (a .csv is written beside it)")
    evaluate.add_argument("--click", choices=("centroid", "random"), default="centroid",
                          help="label voxel nearest the centroid, or a seeded random one (the paper)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    prompting = sub.add_parser("train-prompting",
                               help="train the learned prompter of the default model on the labelled scans")
    prompting.add_argument("--output", required=True, help="folder for the weights, their card and the folds")
    prompting.add_argument("--data", default=None, help="labelled scans with cases.json (default: PROMISE_DATA_DIR)")
    prompting.add_argument("--cache", default=None, help="where the frozen embeddings are cached")
    prompting.add_argument("--folds", type=int, default=19,
                           help="cross-validation folds by patient (0: none; the number of patients or more: "
                                "leave one patient out)")
    prompting.add_argument("--iterations", type=int, default=600)
    prompting.add_argument("--click-depth-power", type=float, default=None,
                           help="a training click's weight is its distance to the edge to this power (0: clicks "
                                "anywhere inside alike; the default, 2, favours the middle)")
    prompting.add_argument("--jobs", type=int, default=1, help="folds trained in parallel (one thread each)")
    prompting.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="for encoding the slices")
    prompting.add_argument("--runtime", choices=("torch", "onnx"), default="onnx", help="for encoding the slices")
    shift = sub.add_parser("train-token-shift",
                           help="train the default model's decoder token shift on the labelled scans")
    shift.add_argument("--output", required=True, help="folder for the shift, its card and the folds")
    shift.add_argument("--data", default=None, help="labelled scans with cases.json (default: PROMISE_DATA_DIR)")
    shift.add_argument("--cache", default=None, help="the frozen embeddings train-prompting cached (filled if empty)")
    shift.add_argument("--folds", type=int, default=4, help="cross-validation folds by patient (0: none)")
    shift.add_argument("--iterations", type=int, default=150)
    shift.add_argument("--jobs", type=int, default=1, help="folds trained in parallel (one thread each)")


def run_training(args: argparse.Namespace) -> int:
    """Run one of :data:`TRAINING_COMMANDS`."""
    if args.command == "train-prompting":
        return _run_train_prompting(args)
    if args.command == "train-token-shift":
        return _run_train_token_shift(args)
    from ProMISeTrain import evaluate3d, train3d

    return (train3d if args.command == "train" else evaluate3d).run_cli(args)


def _run_train_prompting(args: argparse.Namespace) -> int:
    from ProMISeTrain.prompter_pipeline import PipelineSettings, train_prompting
    from ProMISeTrain.prompter_train import TrainSettings

    clicks = {} if args.click_depth_power is None else {"click_depth_power": args.click_depth_power}
    card = train_prompting(Path(args.output), Path(args.data) if args.data else None,
                           Path(args.cache) if args.cache else None, args.device, args.runtime,
                           TrainSettings(iterations=args.iterations, **clicks),
                           settings=PipelineSettings(folds=args.folds), jobs=args.jobs)
    mean = card["validation"]["coarse_dice_mean"]
    print(f"validation on held-out patients (coarse, no decoder): mean Dice {mean}" if mean is not None
          else "no validation run")
    return 0


def _run_train_token_shift(args: argparse.Namespace) -> int:
    from ProMISeTrain.prompter_pipeline import ShiftPipelineSettings, train_token_shift_job
    from ProMISeTrain.token_shift import ShiftSettings

    train = ShiftSettings(iterations=args.iterations, threads=1 if args.jobs > 1 else 2)
    card = train_token_shift_job(Path(args.output), Path(args.data) if args.data else None,
                                 Path(args.cache) if args.cache else None, train,
                                 ShiftPipelineSettings(folds=args.folds), jobs=args.jobs)
    validation = card["validation"]
    if "shifted_picked_mean" in validation:
        print(f"validation on held-out patients (2D, neighbour-slice boxes): Dice {validation['frozen_picked_mean']} "
              f"frozen, {validation['shifted_picked_mean']} shifted")
    else:
        print("no validation run")
    return 0
