"""Command line: ``promise segment``, ``demo``, ``models``, ``weights``, and ``train``/``evaluate`` (ProMISe 3D)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ProMISeLib.batch.command import add_batch_parser, run_batch_command
from ProMISeLib.cli_training import TRAINING_COMMANDS, add_training_commands, run_training
from ProMISeLib.errors import InvalidInputError, OutputError, ProMISeError
from ProMISeLib.io.geometry import SPACES, parse_numbers
from ProMISeLib.io.process import peak_rss_mb
from ProMISeLib.models.registry import DEFAULT_MODEL
from ProMISeLib.prompting import PROMPT_MODES
from ProMISeLib.runtime.choice import RUNTIMES

EXIT_BAD_INPUT = 2


def _numbers(text: str, count: int, form: str) -> tuple[float, ...]:
    try:
        return parse_numbers(text, count, form)
    except InvalidInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _point(text: str) -> tuple[float, float, float]:
    return _numbers(text, 3, "X,Y,Z")  # type: ignore[return-value]


def _box(text: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    values = _numbers(text, 6, "X1,Y1,Z1,X2,Y2,Z2")
    return values[:3], values[3:]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promise", description="One-click 3D lesion segmentation with a frozen SAM.")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment the lesion at one or more clicks")
    seg.add_argument("image", help="image file (NRRD, NIfTI, ...) or DICOM folder")
    seg.add_argument("--point", action="append", type=_point, default=[], metavar="X,Y,Z",
                     help="positive click (repeatable; not needed with --box)")
    seg.add_argument("--box", type=_box, default=None, metavar="X1,Y1,Z1,X2,Y2,Z2",
                     help="box prompt: two opposite corners in --space (inclusive voxel indices with ijk); "
                          "bounds the result, and combines with --point and --negative")
    seg.add_argument("--negative", action="append", type=_point, default=[], metavar="X,Y,Z",
                     help="negative click (repeatable)")
    seg.add_argument("--space", choices=SPACES, default="lps",
                     help="coordinates of the clicks: lps (ITK/file headers, default), ras (Slicer), ijk (voxels)")
    _add_model_options(seg)
    seg.add_argument("--modality", choices=("auto", "ct", "mr"), default="auto",
                     help="intensity normalisation (auto: CT when values look like Hounsfield units)")
    seg.add_argument("--alternative", type=int, default=0, metavar="N",
                     help="follow the first click's N-th distinct hypothesis (0: the best; the notes say how many)")
    seg.add_argument("--name", default="lesion", help="segment name in a .seg.nrrd output")
    seg.add_argument("--output", "-o", required=True, help="output mask: .nii.gz, .nrrd or .seg.nrrd")
    seg.add_argument("--report", default=None, help="also write the run's facts (timings, memory) as JSON here")

    demo = sub.add_parser("demo", help="segment a real tumour scan end to end and write an overlay PNG")
    _add_model_options(demo)
    demo.add_argument("--output-dir", default="promise-demo", help="folder for the mask and the PNG")

    sub.add_parser("models", help="list the models and whether their weights are installed")

    export = sub.add_parser("export", help="export a model's encoder and box decoder to ONNX with a manifest")
    export.add_argument("--model", default=DEFAULT_MODEL)
    export.add_argument("--weights", default=None)
    export.add_argument("--opset", type=int, default=17)
    export.add_argument("--output", required=True, help="directory for encoder.onnx, decoder.onnx, manifest.json")
    export.add_argument("--int8", action="store_true",
                        help="also write encoder.int8.onnx, int8 dynamically quantised (ONNX Runtime on a CPU)")

    weights = sub.add_parser("weights", help="download, add or remove model weights")
    wsub = weights.add_subparsers(dest="action", required=True)
    download = wsub.add_parser("download", help="download a model's weights (pinned URL, SHA-256 checked)")
    download.add_argument("model")
    add = wsub.add_parser("add", help="convert a checkpoint you downloaded by hand (ProMISe 3D) into the cache")
    add.add_argument("model", help="promise-colon or promise-pancreas")
    add.add_argument("path", help="the released checkpoint, e.g. colon_pretrain_promise.pth")
    remove = wsub.add_parser("remove", help="delete downloaded weights from the cache")
    remove.add_argument("model", nargs="*")
    remove.add_argument("--all", action="store_true", help="remove every downloaded model's weights")
    add_training_commands(sub)
    add_batch_parser(sub, _add_model_options)
    return parser


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name (see `promise models`)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto",
                        help="auto: ONNX Runtime on a CPU where it is installed (exported into the cache on first "
                             "use; same masks, faster), else PyTorch; or ask for torch or onnx")
    parser.add_argument("--onnx-dir", default=None, help="an export directory from `promise export`")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                        help="fp16 runs the encoder in half precision (CUDA, torch runtime); int8 its int8 "
                             "quantised export (CPU, --runtime onnx)")
    parser.add_argument("--weights", default=None, help="path to the model's weights file (else the registry's)")
    parser.add_argument("--prompts", choices=PROMPT_MODES, default="auto",
                        help="how a click becomes per-slice boxes: the rule-based search ranked by the trained "
                             "prompter (fused), the trained prompter alone (learned), the rule-based search alone "
                             "(heuristic), or auto (the mode the shipped prompter's card names as validated best)")
    parser.add_argument("--prompter-weights", default=None,
                        help="a learned prompter (.safetensors with its .json card) instead of the shipped one")


class _Progress:
    """tqdm bar on a terminal, silent otherwise."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=100, unit="%", leave=False, disable=not sys.stderr.isatty(),
                        bar_format="{l_bar}{bar}| {elapsed}")

    def __call__(self, fraction: float, message: str) -> None:
        self.bar.set_description_str(message[:40], refresh=False)
        self.bar.update(max(0, int(fraction * 100) - self.bar.n))
        self.bar.refresh()  # the step and its message shown together (update alone waits out tqdm's mininterval)

    def close(self) -> None:
        self.bar.close()


def _run_segment(args: argparse.Namespace) -> int:
    from ProMISeLib.cli_checks import check_segment_outputs
    from ProMISeLib.engine import Segmenter
    from ProMISeLib.io.volumes import read_image, write_mask

    output, report = check_segment_outputs(args.image, args.output, args.report)
    if not args.point and args.box is None:
        raise InvalidInputError("give at least one --point or a --box")
    if args.alternative < 0 or (args.alternative and (args.box is not None or not args.point)):
        raise InvalidInputError("--alternative N (from 0) picks a hypothesis of the first --point, without --box")
    notes: list[str] = []  # ITK's warnings on the file, said with the engine's once the mask is written
    volume, geometry = read_image(args.image, notes)
    # Validate every prompt before any model work, so bad input fails fast.
    if args.point:
        geometry.to_voxel_kji(np.asarray(args.point), args.space)
    if args.negative:
        geometry.to_voxel_kji(np.asarray(args.negative), args.space)
    if args.box is not None:
        geometry.box_to_voxels_kji(np.asarray(args.box), args.space)
    segmenter = Segmenter(model=args.model, device=args.device, weights=args.weights, runtime=args.runtime,
                          onnx_dir=args.onnx_dir, precision=args.precision, prompts=args.prompts,
                          prompter_weights=args.prompter_weights)
    progress = _Progress()
    try:
        result = segmenter.segment(volume, geometry, args.point or None, args.negative, space=args.space,
                                   modality=args.modality, progress=progress, box=args.box,
                                   alternative=args.alternative)
    finally:
        progress.close()
    write_mask(output, result.mask, geometry, segment_name=args.name)
    for message in [*notes, *result.messages]:
        print(f"note: {message}", file=sys.stderr)
    if result.alternatives > 1:
        print(f"note: the click has {result.alternatives} distinct hypotheses; this is --alternative "
              f"{result.alternative} (0 to {result.alternatives - 1})", file=sys.stderr)
    print(f"{output}: {result.summary()}")
    if report:
        _write_report(report, result)
    return 0


def _write_report(path: Path, result) -> None:
    import json

    from ProMISeLib.io.volumes import atomic_write

    facts = {
        "voxels": result.voxel_count, "volume_ml": result.volume_ml, "slice_range": result.slice_range,
        "engine_seconds": result.elapsed_s, "encoded_slices": result.encoded_slices, "model": result.model,
        "device": result.device, "runtime": result.runtime, "method": result.method, "messages": result.messages,
        "alternative": result.alternative, "alternatives": result.alternatives, "peak_rss_mb": peak_rss_mb(),
    }
    atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(facts, indent=1)))


def _run_demo(args: argparse.Namespace) -> int:
    from ProMISeLib.engine import Segmenter
    from ProMISeLib.io.overlay import write_overlay
    from ProMISeLib.io.sample_data import demo_case, lesion_click, read_case
    from ProMISeLib.io.volumes import check_writable, write_mask
    from ProMISeLib.metrics import dice

    case = demo_case()
    print(f"demo case {case.id}: {case.image}")
    volume, geometry, truth = read_case(case)
    click = lesion_click(truth)  # where a user would click: the lesion voxel nearest its centroid
    point_lps = geometry.index_to_lps(np.array(click[::-1], dtype=float))
    print("click (LPS mm): " + ",".join(f"{v:.1f}" for v in point_lps))
    out_dir = Path(args.output_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out_dir}: could not create the folder ({exc.strerror or exc})") from exc
    check_writable(out_dir / f"{case.id}_promise.seg.nrrd")
    segmenter = Segmenter(model=args.model, device=args.device, weights=args.weights, runtime=args.runtime,
                          onnx_dir=args.onnx_dir, precision=args.precision, prompts=args.prompts,
                          prompter_weights=args.prompter_weights)
    progress = _Progress()
    try:
        result = segmenter.segment(volume, geometry, [point_lps], space="lps", progress=progress)
    finally:
        progress.close()
    mask_path = write_mask(out_dir / f"{case.id}_promise.seg.nrrd", result.mask, geometry, segment_name="tumour")
    png = write_overlay(out_dir / f"{case.id}_overlay.png", volume, result.mask, geometry, click)
    for message in result.messages:
        print(f"note: {message}", file=sys.stderr)
    print(f"{mask_path}: {result.summary()}")
    print(f"{png}: overlay of three planes through the click")
    print(f"Dice against the expert label: {dice(result.mask, truth):.3f}")
    return 0


def _run_models() -> int:
    from ProMISeLib.models.registry import list_models

    infos = list_models()
    width = max((len(info.name) for info in infos), default=0)
    for info in infos:
        state = "installed" if info.installed else "not installed"
        print(f"{info.name:{width}s} {info.size_mb:8.1f} MB  {state:13s}  {info.title}  {info.location or ''}")
    return 0


def _run_weights(args: argparse.Namespace) -> int:
    from ProMISeLib.cli_checks import weights_to_remove
    from ProMISeLib.io.weights import download_weights, remove_downloaded_weights
    from ProMISeLib.models.registry import get_model_spec

    if args.action == "download":
        path = download_weights(get_model_spec(args.model).weights)
        print(f"{args.model}: {path}")
        return 0
    if args.action == "add":
        from ProMISeLib.io.weights import sidecar_path
        from ProMISeLib.models.registry import add_model_weights

        path = add_model_weights(args.model, args.path)
        print(f"{args.model}: converted {args.path} -> {path} (description: {sidecar_path(path)})")
        return 0
    for path in remove_downloaded_weights(weights_to_remove(args.model, args.all)):
        print(f"removed {path}")
    return 0


def _attach_negative_values(argv: Sequence[str]) -> list[str]:
    """``--point -12.5,3,4`` -> ``--point=-12.5,3,4``: argparse reads a leading '-' as an option."""
    out: list[str] = []
    tokens = list(argv)
    index = 0
    while index < len(tokens):
        token = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else ""
        if token in ("--point", "--negative", "--box") and following[:1] == "-" and (following[1:2].isdigit()
                                                                             or following[1:2] == "."):
            out.append(f"{token}={following}")
            index += 2
            continue
        out.append(token)
        index += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(_attach_negative_values(argv))
    try:
        if args.command == "segment":
            return _run_segment(args)
        if args.command == "batch":
            return run_batch_command(args)
        if args.command == "demo":
            return _run_demo(args)
        if args.command == "models":
            return _run_models()
        if args.command == "export":
            from ProMISeLib.runtime.onnx_backend import export_onnx

            manifest = export_onnx(args.model, args.output, args.weights, args.opset, int8=args.int8)
            print(f"wrote {manifest}")
            return 0
        if args.command == "weights":
            return _run_weights(args)
        if args.command in TRAINING_COMMANDS:
            return run_training(args)
        raise InvalidInputError(f"unknown command {args.command}")
    except ProMISeError as exc:
        print(f"promise: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("promise: cancelled; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
