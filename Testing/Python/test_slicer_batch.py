"""The documented batch helper: image files + point lists -> .seg.nrrd files (slicer-core)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")
pytest.register_assert_rewrite("conftest_slicer")
pytest_plugins = ["conftest_slicer"]

from conftest_slicer import (  # noqa: E402
    FakeSegmenter,
    add_points,
    add_volume,
    dice,
    fake_factory,
    load_case_arrays,
)

LPS = np.diag([-1.0, -1.0, 1.0])


def test_segment_files_saves_seg_nrrd_on_the_image_grid(slicer_env, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    slicerio = pytest.importorskip("slicerio")
    from ProMISeLib.io.sample_data import get_case
    from ProMISeSlicer.logic import ProMISeModuleLogic

    image, label, source, label_image = load_case_arrays("brain1", with_label_image=True)
    case = get_case("brain1")
    kk, jj, ii = np.nonzero(label)
    click_ijk = (int(np.median(ii)), int(np.median(jj)), int(np.median(kk)))
    click_lps = np.array(source.TransformIndexToPhysicalPoint(click_ijk))

    # the same click as a Slicer markups file (RAS inside Slicer, LPS in the file)
    scene = slicer_env.scene
    markups = add_points([("tumour", LPS @ click_lps)], "saved clicks")
    storage = slicer_env.slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    points_file = tmp_path / "clicks.mrk.json"
    storage.SetFileName(str(points_file))
    assert storage.WriteData(markups)
    scene.RemoveNode(markups)
    scene.RemoveNode(storage)
    nodes_before = scene.GetNumberOfNodes()

    logic = ProMISeModuleLogic(segmenterFactory=fake_factory(label=label_image))
    progress = []
    reports = logic.segmentFiles(
        [
            {"image": case.image, "points": {"tumour": click_lps}, "space": "lps"},
            (case.image, points_file),
            {"image": tmp_path / "missing.nrrd", "points": [[0, 0, 0]]},
            {"image": case.image, "points": [[0.0, 0.0, 5000.0]], "output": tmp_path / "never.seg.nrrd"},
        ],
        outputFolder=tmp_path / "out",
        progressCallback=lambda f, m: progress.append(f),
    )
    assert [r["error"] is None for r in reports] == [True, True, False, False]
    assert "does not exist" in reports[2]["error"] and "outside the image" in reports[3]["error"]
    assert reports[0]["output"] == tmp_path / "out" / "brain1_image.seg.nrrd"
    assert not (tmp_path / "never.seg.nrrd").exists()
    assert progress and max(progress) <= 1.0
    assert scene.GetNumberOfNodes() == nodes_before  # every loaded node was removed again
    assert not logic.canUndo()

    for report in reports[:2]:
        written = sitk.ReadImage(str(report["output"]))
        # the same grid as the image, physically (Slicer's reader may order the slices differently)
        assert written.GetSize() == source.GetSize()
        np.testing.assert_allclose(written.GetSpacing(), source.GetSpacing(), rtol=1e-6)
        corners = [tuple(c * (s - 1) for c, s in zip(corner, source.GetSize(), strict=True))
                   for corner in np.ndindex(2, 2, 2)]
        written_corners = sorted(np.round(written.TransformIndexToPhysicalPoint(c), 3).tolist() for c in corners)
        source_corners = sorted(np.round(source.TransformIndexToPhysicalPoint(c), 3).tolist() for c in corners)
        np.testing.assert_allclose(written_corners, source_corners, atol=1e-3)
        on_label_grid = sitk.Resample(written, source, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        assert dice(sitk.GetArrayFromImage(on_label_grid), label) > 0.99
        segmentation = slicerio.read_segmentation(str(report["output"]), skip_voxels=True)
        assert slicerio.segment_names(segmentation) == ["tumour"]
        assert report["segments"][0][0] == "tumour" and report["segments"][0][1] > 0


def test_segment_files_stop_on_error_raises(slicer_env, tmp_path):
    from ProMISeLib.errors import ImageReadError
    from ProMISeSlicer.logic import ProMISeModuleLogic

    logic = ProMISeModuleLogic(segmenterFactory=fake_factory())
    with pytest.raises(ImageReadError):
        logic.segmentFiles([(tmp_path / "missing.nii.gz", [[0, 0, 0]])], stopOnError=True)
    with pytest.raises(Exception, match="each case"):
        logic.segmentFiles(["just-a-path.nrrd"], stopOnError=True)


def test_segment_files_passes_the_runtime_to_one_engine(slicer_env, tmp_path):
    from ProMISeLib.errors import InvalidInputError
    from ProMISeSlicer.logic import ProMISeModuleLogic

    # a small image file written by Slicer's own storage node
    scene = slicer_env.scene
    volume = add_volume(np.zeros((8, 12, 10), np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), "small")
    storage = slicer_env.slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    image = tmp_path / "small.nrrd"
    storage.SetFileName(str(image))
    assert storage.WriteData(volume)
    scene.RemoveNode(volume)
    scene.RemoveNode(storage)

    logic = ProMISeModuleLogic(segmenterFactory=fake_factory(radius_mm=2.0))
    count = len(FakeSegmenter.instances)
    reports = logic.segmentFiles([(image, {"a": [4.0, 5.0, 6.0]}), (image, {"b": [5.0, 6.0, 8.0]})],
                                 outputFolder=tmp_path / "out", model="fake-model", device="cpu", runtime="onnx")
    assert [r["error"] for r in reports] == [None, None]
    assert all(r["output"].is_file() for r in reports)
    made = FakeSegmenter.instances[count:]
    assert len(made) == 1  # one engine for every case
    assert (made[0].model, made[0].device, made[0].runtime) == ("fake-model", "cpu", "onnx")
    assert len(made[0].calls) == 2

    # the default lets the engine choose
    logic.segmentFiles([(image, {"c": [4.0, 5.0, 6.0]})], outputFolder=tmp_path / "out", model="fake-model",
                       device="cpu")
    assert FakeSegmenter.instances[-1].runtime == "auto" and FakeSegmenter.instances[-1] is not made[0]

    # an unknown runtime is refused once, before any case is loaded
    nodes_before = scene.GetNumberOfNodes()
    count = len(FakeSegmenter.instances)
    with pytest.raises(InvalidInputError, match="unknown runtime"):
        logic.segmentFiles([(image, {"d": [4.0, 5.0, 6.0]})], runtime="trt")
    assert scene.GetNumberOfNodes() == nodes_before and len(FakeSegmenter.instances) == count


def test_segment_batch_reads_the_manifest_and_writes_the_results_of_promise_batch(slicer_env, tmp_path):
    import csv

    from ProMISeLib.batch.manifest import ManifestError
    from ProMISeLib.batch.plan import batch_settings, prepare
    from ProMISeLib.batch.results import COLUMNS
    from ProMISeLib.io.sample_data import get_case
    from ProMISeSlicer.logic import ProMISeModuleLogic

    _, label, source, label_image = load_case_arrays("brain1", with_label_image=True)
    case = get_case("brain1")
    kk, jj, ii = np.nonzero(label)
    click_ijk = (int(np.median(ii)), int(np.median(jj)), int(np.median(kk)))
    click_lps = np.array(source.TransformIndexToPhysicalPoint(click_ijk))
    manifest = tmp_path / "cohort.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "points", "space", "label", "name"])
        writer.writerow(["t1", case.image, ",".join(map(str, click_lps)), "lps", case.label, "tumour"])
        writer.writerow(["t2", case.image, ",".join(map(str, LPS @ click_lps)), "ras", case.label, ""])
    logic = ProMISeModuleLogic(segmenterFactory=fake_factory(label=label_image))
    progress = []
    summary = logic.segmentBatch(manifest, tmp_path / "out", progressCallback=lambda f, m: progress.append(f))
    assert (summary["ok"], summary["failed"], summary["kept"]) == (2, 0, 0) and progress[-1] == 1.0
    engine = FakeSegmenter.instances[-1]
    assert [tuple(c["voxels"][0]) for c in engine.calls] == [click_ijk[::-1]] * 2  # LPS and RAS: the same voxel
    assert engine.memory.cleared == 2 and engine.cache.cleared == 1  # each row afresh; one image, one cache
    with summary["results"].open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COLUMNS
        records = list(reader)
    assert [(r["id"], r["status"], r["segment"], r["dice"]) for r in records] == [
        ("t1", "ok", "tumour", "1.0000"), ("t2", "ok", "t2", "1.0000")]
    assert int(records[0]["voxels"]) == int(np.count_nonzero(label))
    import slicerio

    segmentation = slicerio.read_segmentation(str(tmp_path / "out" / "brain1_image.seg.nrrd"))
    assert slicerio.segment_names(segmentation) == ["tumour", "t2"]
    # the same folder, seen by `promise batch` with the same settings: nothing left to run
    assert prepare(manifest, tmp_path / "out", batch_settings("litemedsam")).jobs == []
    again = logic.segmentBatch(manifest, tmp_path / "out")
    assert (again["ok"], again["kept"]) == (0, 2) and len(engine.calls) == 2
    manifest.write_text(manifest.read_text() + f"t3,{tmp_path / 'missing.nrrd'},\"1,2,3\",lps,,\n")
    with pytest.raises(ManifestError, match="line 4 .*no such file"):
        logic.segmentBatch(manifest, tmp_path / "out")
    assert len(engine.calls) == 2


def test_a_truncated_or_oversized_file_is_one_line_and_leaves_the_scene_as_it_was(slicer_env, tmp_path, monkeypatch):
    """Slicer's reader, like SimpleITK's, reads a cut .nii.gz as zeros and allocates what a header declares:
    the file is checked first, the report says why in one line, and no node is added."""
    import SimpleITK as sitk
    from conftest_slicer import scene_state
    from ProMISeLib.io.sample_data import get_case
    from ProMISeSlicer.logic import ProMISeModuleLogic

    truncated = tmp_path / "cut.nii.gz"
    truncated.write_bytes(get_case("STS_002_MR_T1").image.read_bytes()[:300_000])
    oversized = tmp_path / "huge.nrrd"
    oversized.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 2000 2000 2000\nencoding: raw\n"
                          b"endian: little\n\n0123456789")  # 16 GB declared, 10 bytes held

    def allocates(*args, **kwargs):
        raise AssertionError("the voxels were read before the header was checked")

    monkeypatch.setattr(sitk.ImageFileReader, "Execute", allocates)  # (VTK's classes can't be patched)
    scene = slicer_env.scene
    before = scene_state(scene)
    engines = len(FakeSegmenter.instances)
    logic = ProMISeModuleLogic(segmenterFactory=fake_factory())
    reports = logic.segmentFiles([(truncated, [[0.0, 0.0, 0.0]]), (oversized, [[0.0, 0.0, 0.0]])],
                                 outputFolder=tmp_path / "out")
    errors = [report["error"] for report in reports]
    assert "is truncated" in errors[0] and "2000 x 2000 x 2000 voxels" in errors[1], errors
    assert all(len(error.splitlines()) == 1 for error in errors)
    assert scene_state(scene) == before
    assert not (tmp_path / "out").exists()
    assert all(not made.calls for made in FakeSegmenter.instances[engines:]), "the engine ran on a damaged file"
