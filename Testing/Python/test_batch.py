"""`promise batch` on a 2-worker LocalCluster and small real scans (5 slices of two sarcoma MRs, with their labels).

One module-scoped cluster serves every test, joined with ``--scheduler``; the first run is shared by the
tests that compare with it.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import centre_click
from ProMISeLib.batch.results import COLUMNS, file_sha256
from ProMISeLib.cli import main
from ProMISeLib.metrics import dice

distributed = pytest.importorskip("distributed")

#: (case, first slice, last slice + 1): five slices through each lesion's middle
SCANS = {"A": ("STS_008_MR_T1", 9, 14), "B": ("STS_015_MR_T1", 20, 25), "C": ("STS_002_MR_T1", 16, 21)}


@pytest.fixture(scope="module")
def scans(cases, tmp_path_factory):
    """Each scan cut to 5 slices (real voxels and geometry) with its label: paths, click (LPS) and lesion box."""
    folder = tmp_path_factory.mktemp("scans")
    found = {}
    for key, (case_id, lo, hi) in SCANS.items():
        image = sitk.ReadImage(str(cases[case_id].image))[:, :, lo:hi]
        label = sitk.ReadImage(str(cases[case_id].label))[:, :, lo:hi]
        sitk.WriteImage(image, str(folder / f"{case_id}.nrrd"))
        sitk.WriteImage(label, str(folder / f"{case_id}_label.nrrd"))
        truth = sitk.GetArrayFromImage(label) > 0
        k, j, i = centre_click(truth)
        (_, j0, i0), (_, j1, i1) = np.argwhere(truth).min(axis=0), np.argwhere(truth).max(axis=0)
        found[key] = {"image": folder / f"{case_id}.nrrd", "label": folder / f"{case_id}_label.nrrd", "truth": truth,
                      "click": image.TransformIndexToPhysicalPoint((int(i), int(j), int(k))),
                      "box_ijk": (int(i0), int(j0), 1, int(i1), int(j1), 3), "stem": case_id}
    return found


@pytest.fixture(scope="module")
def cluster():
    """The batch's own LocalCluster (2 workers, one retry after a worker dies), and a client to watch it."""
    from ProMISeLib.batch.dask_runner import local_cluster

    local = local_cluster(2)
    client = distributed.Client(local)
    yield local, client
    client.close()
    local.close()


def _text(values) -> str:
    return ",".join(f"{v:.4f}" for v in values)


def _write_manifest(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "image", "points", "negative", "box", "space", "label",
                                                    "label_value", "name"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _first_rows(scans) -> list[dict]:
    a, b = scans["A"], scans["B"]
    ras = lambda p: (-p[0], -p[1], p[2])  # noqa: E731
    negative = (b["click"][0] + 25.0, b["click"][1], b["click"][2])  # 25 mm beside the lesion's middle
    return [
        {"id": "a1", "image": a["image"].name, "points": _text(a["click"]), "space": "lps", "label": a["label"].name,
         "name": "tumour A"},
        {"id": "a2", "image": a["image"].name, "box": ",".join(map(str, a["box_ijk"])), "space": "ijk",
         "label": a["label"].name},
        {"id": "b1", "image": b["image"].name, "points": _text(ras(b["click"])), "negative": _text(ras(negative)),
         "space": "ras", "label": b["label"].name, "label_value": 1},
    ]


def _results(folder: Path) -> dict[str, dict]:
    with (folder / "results.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COLUMNS
        return {row["id"]: row for row in reader}


def _segments(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """id -> (name, (K, J, I) bool mask) of every segment of a .seg.nrrd."""
    import slicerio

    segmentation = slicerio.read_segmentation(str(path))
    voxels = segmentation["voxels"]
    layers = voxels if voxels.ndim == 4 else voxels[np.newaxis]
    return {s["id"]: (s["name"], (layers[s.get("layer", 0)] == s["labelValue"]).transpose(2, 1, 0))
            for s in segmentation["segments"]}


def _batch(manifest: Path, output: Path, cluster, *extra: str) -> int:
    return main(["batch", str(manifest), "--output", str(output), "--scheduler", cluster[0].scheduler_address, *extra])


@pytest.fixture(scope="module")
def first_run(scans, cluster, tmp_path_factory):
    folder = scans["A"]["image"].parent
    manifest = _write_manifest(folder / "cohort.csv", _first_rows(scans))
    output = tmp_path_factory.mktemp("first") / "out"
    assert _batch(manifest, output, cluster) == 0
    return manifest, output


@pytest.mark.slow
def test_batch_writes_what_promise_segment_writes_row_by_row(first_run, scans, tmp_path, one_torch_thread):
    manifest, output = first_run
    a, b = scans["A"], scans["B"]
    rows = {row["id"]: row for row in _first_rows(scans)}
    results = _results(output)
    assert sorted(p.name for p in output.iterdir()) == sorted(["results.csv", f"{a['stem']}.seg.nrrd",
                                                               f"{b['stem']}.seg.nrrd"])
    written = {**_segments(output / f"{a['stem']}.seg.nrrd"), **_segments(output / f"{b['stem']}.seg.nrrd")}
    assert {k: v[0] for k, v in written.items()} == {"a1": "tumour A", "a2": "a2", "b1": "b1"}
    for row_id, scan in (("a1", a), ("a2", a), ("b1", b)):
        row = rows[row_id]
        argv = ["segment", str(scan["image"]), "--space", row["space"]]
        argv += ["--point", row["points"]] if row.get("points") else ["--box", row["box"]]
        argv += ["--negative", row["negative"]] if row.get("negative") else []
        single, report = tmp_path / f"{row_id}.seg.nrrd", tmp_path / f"{row_id}.json"
        assert main([*argv, "--output", str(single), "--report", str(report)]) == 0
        expected = _segments(single)["Segment_1"][1]
        np.testing.assert_array_equal(written[row_id][1], expected)  # voxel for voxel
        facts, record = json.loads(report.read_text()), results[row_id]
        assert record["status"] == "ok" and record["error"] == ""
        assert int(record["voxels"]) == facts["voxels"] > 0
        assert float(record["volume_ml"]) == pytest.approx(facts["volume_ml"], abs=1e-4)
        assert [int(record["first_slice"]), int(record["last_slice"])] == facts["slice_range"]
        assert (record["model"], record["method"], record["runtime"], record["device"]) == (
            facts["model"], facts["method"], facts["runtime"], facts["device"])
        assert float(record["dice"]) == pytest.approx(dice(expected, scan["truth"]), abs=1e-4)
        assert 0 < float(record["hd95_mm"]) < 50 and float(record["peak_rss_mb"]) > 100
        assert record["output_sha256"] == file_sha256(output / record["output"])
    assert results["a1"]["worker"] == results["a2"]["worker"]  # the rows of one image: one task on one worker


@pytest.mark.slow
def test_a_rerun_after_a_deleted_output_redoes_that_row_only(first_run, scans, cluster, tmp_path, capsys):
    manifest, first = first_run
    output = tmp_path / "out"
    shutil.copytree(first, output)
    kept, deleted = output / f"{scans['A']['stem']}.seg.nrrd", output / f"{scans['B']['stem']}.seg.nrrd"
    before, kept_bytes, kept_mtime = _results(output), kept.read_bytes(), kept.stat().st_mtime_ns
    deleted.unlink()
    capsys.readouterr()
    assert _batch(manifest, output, cluster) == 0
    assert "2 done earlier, 1 to run" in capsys.readouterr().out
    after = _results(output)
    assert after["a1"] == before["a1"] and after["a2"] == before["a2"]  # not run again
    assert kept.read_bytes() == kept_bytes and kept.stat().st_mtime_ns == kept_mtime
    assert after["b1"]["status"] == "ok" and after["b1"]["finished"] >= before["b1"]["finished"]
    assert after["b1"]["output_sha256"] == file_sha256(deleted)
    np.testing.assert_array_equal(_segments(deleted)["b1"][1],
                                  _segments(first / f"{scans['B']['stem']}.seg.nrrd")["b1"][1])
    # nothing left to do: a third run starts no work and changes nothing
    assert _batch(manifest, output, cluster) == 0
    assert _results(output) == after


def test_every_bad_row_is_listed_before_any_model_runs(scans, tmp_path, capsys):
    a = scans["A"]
    good = {"id": "ok", "image": str(a["image"]), "points": _text(a["click"])}
    rows = [good,
            {**good, "id": "ok"},  # the same id again
            {**good, "id": "gone", "image": str(tmp_path / "missing.nrrd")},
            {**good, "id": "far", "points": _text(np.add(a["click"], (0, 0, 500)))},
            {**good, "id": "two", "points": "1,2"},
            {**good, "id": "wide", "points": "", "box": "500,500,0,600,600,3", "space": "ijk"},
            {**good, "id": "nolabel", "label": str(tmp_path / "no_label.nrrd")},
            {**good, "id": "wrong-grid", "label": str(scans["B"]["label"])},
            {**good, "id": "bare", "points": ""}]
    manifest = _write_manifest(tmp_path / "bad.csv", rows)
    output = tmp_path / "out"
    output.mkdir()
    foreign = output / f"{a['stem']}.seg.nrrd"  # a user's own file where the batch would write
    foreign.write_bytes(b"not ours")
    # an unreachable scheduler: had anything been started, the error would be that one
    code = main(["batch", str(manifest), "--output", str(output), "--scheduler", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert "problems, nothing was run" in lines[0] and "scheduler" not in err
    expected = {3: "'ok' is used again", 4: "no such file", 5: "outside the image", 6: "X,Y,Z (3 numbers)",
                7: "outside the image", 8: "no such file", 9: "label grid differs", 10: "give points or a box"}
    for line_number, words in expected.items():
        assert any(f"line {line_number}" in line and words in line for line in lines), (line_number, err)
    assert any("line 2" in line and "is not this batch's output" in line for line in lines), err
    assert len(lines) == 1 + len(expected) + 1
    assert foreign.read_bytes() == b"not ours" and sorted(p.name for p in output.iterdir()) == [foreign.name]


def _box_rows(scans, keys) -> list[dict]:
    return [{"id": f"{key.lower()}-box", "image": str(scans[key]["image"]),
             "box": ",".join(map(str, scans[key]["box_ijk"])), "space": "ijk"} for key in keys]


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_replaced_and_the_cohort_completes(scans, cluster, tmp_path):
    local, client = cluster
    manifest = _write_manifest(tmp_path / "two.csv", _box_rows(scans, "AB"))
    killed = []

    def kill_a_busy_worker() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            busy = [w for w, keys in client.processing().items() if any(str(k).startswith("promise-") for k in keys)]
            if busy:
                pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.2)

    watcher = threading.Thread(target=kill_a_busy_worker)
    watcher.start()
    code = _batch(manifest, tmp_path / "out", cluster)
    watcher.join()
    assert killed, "no worker was seen running an image"
    results = _results(tmp_path / "out")
    assert code == 0 and [r["status"] for r in results.values()] == ["ok", "ok"]
    assert all(not r["worker"].endswith(f":{killed[0]}") for r in results.values())  # redone elsewhere
    client.wait_for_workers(2, timeout=120)  # the nanny replaced the worker
    assert killed[0] not in client.run(os.getpid).values()
    for key in "AB":
        path = tmp_path / "out" / f"{scans[key]['stem']}.seg.nrrd"
        assert file_sha256(path) == results[f"{key.lower()}-box"]["output_sha256"]


@pytest.mark.slow
def test_sigterm_ends_the_run_cleanly_and_leaves_no_partial_file(scans, cluster, tmp_path):
    local, client = cluster
    manifest = _write_manifest(tmp_path / "three.csv", _box_rows(scans, "ABC"))
    output = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "ProMISeLib.cli", "batch", str(manifest), "--output", str(output),
                                "--scheduler", local.scheduler_address], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 400
    # three images on two workers: once the first file is written, the others are still running
    while time.monotonic() < deadline and not list(output.glob("*.seg.nrrd")) and process.poll() is None:
        time.sleep(0.05)
    busy = any(keys for keys in client.processing().values())
    assert process.poll() is None and busy, "the run ended before it could be stopped"
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "run the same command again" in err
    assert not [p.name for p in output.iterdir() if p.name.startswith(".")]  # no temporary or partial file
    results = _results(output)
    assert sorted(r["status"] for r in results.values()).count("ok") >= 1 and "pending" in {
        r["status"] for r in results.values()}
    for record in results.values():
        path = output / record["output"]
        if record["status"] == "ok":
            assert file_sha256(path) == record["output_sha256"]
            assert list(_segments(path)) == [record["id"]]
        else:
            assert not path.exists()
