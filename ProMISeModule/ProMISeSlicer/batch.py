"""Batch: segment image files with their point lists and save ``.seg.nrrd`` files.

Files are read and written with MRML storage nodes, so this runs the same in the Slicer GUI, in
``Slicer --no-main-window --python-script`` and under ``slicer-core``. It takes the logic as an argument
and never imports :mod:`.logic` (which imports this module).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import slicer
import vtk
from ProMISeLib.errors import ImageReadError, InvalidInputError, OutputError, ProMISeError
from ProMISeLib.io.image_file import read_image_header
from ProMISeLib.io.volumes import image_stem

from .options import check_prompts, check_runtime, default_model


def _parse_case(case) -> dict:
    if isinstance(case, Mapping):
        parsed = dict(case)
    elif isinstance(case, (tuple, list)) and 2 <= len(case) <= 3:
        parsed = {"image": case[0], "points": case[1], "negative": case[2] if len(case) == 3 else None}
    else:
        raise InvalidInputError(
            "each case must be a dict with 'image' and 'points' (and optional 'negative', 'output', "
            "'space') or a tuple (image, points[, negative])"
        )
    if "image" not in parsed or parsed.get("points") is None:
        raise InvalidInputError("each case needs an 'image' file and its 'points'")
    parsed["image"] = Path(parsed["image"]).expanduser()
    parsed.setdefault("negative", None)
    parsed.setdefault("output", None)
    parsed["space"] = str(parsed.get("space", "ras")).lower()
    if parsed["space"] not in ("ras", "lps"):
        raise InvalidInputError(f"'space' must be 'ras' or 'lps', got {parsed['space']!r}")
    return parsed


def _add(scene, node, added: list):
    scene.AddNode(node)
    added.append(node)
    return node


def load_volume(scene, path: Path, added: list):
    """Read a scalar volume file into ``scene`` (the new nodes are appended to ``added``)."""
    if not path.is_file():
        raise ImageReadError(f"image file {path} does not exist")
    read_image_header(path)  # a truncated file, or one too large for memory, is refused before a node is made
    storage = _add(scene, slicer.vtkMRMLVolumeArchetypeStorageNode(), added)
    storage.SetFileName(str(path))
    volume = slicer.vtkMRMLScalarVolumeNode()
    volume.SetName(image_stem(path))
    _add(scene, volume, added)
    volume.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(volume) or volume.GetImageData() is None:
        raise ImageReadError(f"could not read {path} as a scalar volume")
    return volume


def load_points(scene, points, name: str, space: str, added: list):
    """A point list from a markups file (.mrk.json, .fcsv), an N x 3 array, or a {label: xyz} mapping."""
    node = slicer.vtkMRMLMarkupsFiducialNode()
    node.SetName(name)
    _add(scene, node, added)
    if isinstance(points, (str, Path)):
        path = Path(points).expanduser()
        if not path.is_file():
            raise InvalidInputError(f"points file {path} does not exist")
        if path.suffix.lower() == ".fcsv":
            storage = slicer.vtkMRMLMarkupsFiducialStorageNode()
        else:
            storage = slicer.vtkMRMLMarkupsJsonStorageNode()
        _add(scene, storage, added)
        storage.SetFileName(str(path))
        if not storage.ReadData(node):
            raise InvalidInputError(f"could not read points from {path}")
        return node
    if isinstance(points, Mapping):
        items = [(str(label), xyz) for label, xyz in points.items()]
    else:
        array = np.atleast_2d(np.asarray(points, dtype=float))
        items = [(f"{name}-{n + 1}", xyz) for n, xyz in enumerate(array)]
    flip = np.array([-1.0, -1.0, 1.0]) if space == "lps" else np.ones(3)
    for label, xyz in items:
        for point in np.atleast_2d(np.asarray(xyz, dtype=float)):
            if point.shape != (3,):
                raise InvalidInputError(f"point {label!r} must have 3 coordinates, got {point.tolist()}")
            node.AddControlPoint(vtk.vtkVector3d(*(point * flip)), label)
    return node


def save_segmentation(scene, segmentationNode, path: Path, added: list) -> Path:
    """Write ``segmentationNode`` as a .seg.nrrd on the reference volume's grid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = _add(scene, slicer.vtkMRMLSegmentationStorageNode(), added)
    storage.SetFileName(str(path))
    if not storage.WriteData(segmentationNode):
        raise OutputError(f"could not write {path}")
    return path


def segment_files(
    logic,
    cases: Iterable,
    outputFolder: str | Path | None = None,
    model: str | None = None,
    device: str = "auto",
    progressCallback: Callable[[float, str], None] | None = None,
    stopOnError: bool = False,
    scene=None,
    runtime: str = "auto",
    prompts: str = "auto",
) -> list[dict]:
    """Segment each case and save ``<output folder>/<image name>.seg.nrrd``.

    A case is ``{"image": path, "points": P, "negative": P or None, "output": path or None,
    "space": "ras" | "lps"}`` or a tuple ``(image, points[, negative])``, where ``P`` is a Slicer
    markups file (``.mrk.json`` or ``.fcsv``), an N x 3 array of world coordinates (mm, RAS unless
    ``space`` says "lps") or a ``{label: xyz or [xyz, ...]}`` mapping. Points sharing a label make one
    segment named after it. Without ``outputFolder`` each file is saved beside its image.
    ``model``, ``device``, ``runtime`` ("auto", "torch" or "onnx") and ``prompts`` ("auto", "fused",
    "learned" or "heuristic") are passed to ``logic.segment``; one engine serves every case.

    Every node a case loads is removed from the scene afterwards. Returns one dict per case:
    ``image``, ``output`` (Path or None), ``segments`` ([(label, mL)]), ``summary``, ``method`` (how
    the engine prompted the model), ``error`` (None, or the message; with ``stopOnError`` the error is
    raised instead).
    """
    check_runtime(runtime)  # a bad runtime or prompts is refused once, not reported for every case
    check_prompts(prompts)
    scene = scene if scene is not None else getattr(slicer, "mrmlScene", None)
    if scene is None:
        raise InvalidInputError("no MRML scene: run inside Slicer or pass scene=")
    cases = list(cases)
    reports = []
    for n, case in enumerate(cases):
        added: list = []
        report = {"image": None, "output": None, "segments": [], "summary": "", "method": "", "error": None}
        try:
            parsed = _parse_case(case)
            image = parsed["image"]
            report["image"] = image
            stem = image_stem(image)
            if parsed["output"] is not None:
                output = Path(parsed["output"]).expanduser()
            else:
                folder = Path(outputFolder).expanduser() if outputFolder is not None else image.parent
                output = folder / f"{stem}.seg.nrrd"
            volume = load_volume(scene, image, added)
            positives = load_points(scene, parsed["points"], "P", parsed["space"], added)
            negatives = None
            if parsed["negative"] is not None:
                negatives = load_points(scene, parsed["negative"], "N", parsed["space"], added)

            def progress(fraction: float, message: str, n=n, stem=stem) -> None:
                if progressCallback is not None:
                    progressCallback((n + fraction) / len(cases), f"{stem} ({n + 1}/{len(cases)}): {message}")

            run = logic.segment(volume, positives, None, negatives, model=model, device=device,
                                progressCallback=progress, runtime=runtime, prompts=prompts)
            added.append(run.segmentationNode)
            save_segmentation(scene, run.segmentationNode, output, added)
            report.update(output=output, summary=run.summary(), method=run.method,
                          segments=[(o.label, o.volume_ml) for o in run.objects])
        except ProMISeError as error:
            if stopOnError:
                raise
            report["error"] = str(error)
            logging.warning(f"ProMISe batch: {report['image']}: {error}")
        finally:
            for node in added:
                logic.undoStack.discard(node)
                if node.GetScene() is scene:
                    scene.RemoveNode(node)
        reports.append(report)
    return reports


def segment_batch(logic, manifest: str | Path, outputFolder: str | Path, model: str | None = None,
                  device: str = "auto", runtime: str = "auto", prompts: str = "auto", modality: str = "auto",
                  progressCallback: Callable[[float, str], None] | None = None) -> dict:
    """``promise batch`` in-process, with the logic's engine: the same manifest, the same files and results.csv.

    The whole manifest is checked first (a ``ManifestError`` lists every bad row; nothing runs). Rows an
    earlier run (from the console or ``promise batch``) finished are kept; one image's failure is recorded
    and the others go on. Returns the counts ``ok``, ``failed``, ``kept`` and the ``results`` path.
    """
    from ProMISeLib.batch.cohort import cohort_folder, in_process, run_cohort
    from ProMISeLib.batch.plan import batch_settings, prepare

    model = model or default_model()
    plan = prepare(manifest, outputFolder, batch_settings(model, check_prompts(prompts), modality))
    segmenter = logic.getSegmenter(model, device, check_runtime(runtime), prompts)
    done = []

    def progress(job, records) -> None:
        done.extend(records)
        if progressCallback is not None:
            progressCallback(len(done) / max(plan.rows_to_run, 1), f"{job.image.name}: {len(done)}/{plan.rows_to_run}")

    with cohort_folder(plan):
        summary = run_cohort(plan, in_process(plan, segmenter, modality), progress)
    for note in plan.notes:
        logging.warning(f"ProMISe batch: {note}")
    return {"ok": summary.ok, "failed": summary.failed, "kept": summary.kept, "results": plan.results_path}
