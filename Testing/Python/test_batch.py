"""`promise batch` on a 2-worker LocalCluster and small real scans (5 slices of two sarcoma MRs, with their labels).

One module-scoped cluster serves every test, joined with ``--scheduler``; the first run is shared by the
tests that compare with it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
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


def test_a_json_manifest_is_the_same_manifest_as_its_csv(scans, tmp_path):
    from ProMISeLib.batch.plan import batch_settings, prepare

    rows = _first_rows(scans)
    folder = scans["A"]["image"].parent
    from_csv = prepare(_write_manifest(folder / "same.csv", rows), tmp_path / "out", batch_settings("litemedsam"))
    as_json = [dict(row) for row in rows]
    as_json[0]["points"] = [list(scans["A"]["click"])]  # JSON may give numbers instead of text
    as_json[1]["box"] = [list(scans["A"]["box_ijk"][:3]), list(scans["A"]["box_ijk"][3:])]
    (folder / "same.json").write_text(json.dumps(as_json))
    from_json = prepare(folder / "same.json", tmp_path / "out", batch_settings("litemedsam"))
    assert [job.image for job in from_json.jobs] == [scans["A"]["image"], scans["B"]["image"]]
    assert [len(job.rows) for job in from_json.jobs] == [2, 1]  # rows of one image: one task
    np.testing.assert_allclose(from_json.rows[0].points, from_csv.rows[0].points, atol=1e-4)
    assert [r.box for r in from_json.rows] == [r.box for r in from_csv.rows]
    assert from_json.outputs == from_csv.outputs and set(from_json.fingerprints) == {"a1", "a2", "b1"}


def test_a_second_batch_on_a_folder_in_use_is_refused(scans, tmp_path, capsys):
    from ProMISeLib.batch.cohort import cohort_folder
    from ProMISeLib.batch.plan import batch_settings, prepare

    manifest = _write_manifest(tmp_path / "one.csv", _box_rows(scans, "A"))
    output = tmp_path / "out"
    with cohort_folder(prepare(manifest, output, batch_settings("litemedsam"))):  # a first batch is writing there
        code = main(["batch", str(manifest), "--output", str(output), "--scheduler", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and "another promise batch is writing there" in err and len(err.strip().splitlines()) == 1
    assert list(output.iterdir()) == []  # the first one's lock is gone with it; the second wrote nothing


@pytest.mark.slow
def test_a_case_that_fails_is_recorded_and_the_cohort_goes_on_then_a_rerun_redoes_it(scans, cluster, tmp_path,
                                                                                     capsys):
    image = sitk.ReadImage(str(scans["C"]["image"]))
    broken = tmp_path / "broken.nrrd"
    sitk.WriteImage(image, str(broken), True)  # gzip: the header cannot tell a short stream, the read can
    whole = broken.read_bytes()
    payload = whole.index(b"\n\n") + 2
    broken.write_bytes(whole[: payload + (len(whole) - payload) // 2])  # passes the manifest check, fails the read
    rows = _box_rows(scans, "A") + [{**_box_rows(scans, "C")[0], "id": "broken", "image": str(broken)}]
    manifest, output = _write_manifest(tmp_path / "cohort.csv", rows), tmp_path / "out"
    capsys.readouterr()
    assert _batch(manifest, output, cluster) == 1  # some row failed
    printed = capsys.readouterr()
    results = _results(output)
    assert results["a-box"]["status"] == "ok" and results["a-box"]["error"] == ""
    failed = results["broken"]
    assert failed["status"] == "failed" and "broken.nrrd" in failed["error"] and "cannot be read" in failed["error"]
    assert "\n" not in failed["error"] and failed["output_sha256"] == ""
    assert "promise batch: broken (broken.nrrd) failed: " in printed.err  # said as it happens, bar or not
    assert "1 ok, 1 failed, 0 done earlier" in printed.out
    assert {p.name for p in output.iterdir()} == {"results.csv", f"{scans['A']['stem']}.seg.nrrd"}
    # the scan repaired, the same command redoes the failed row only
    broken.write_bytes(whole)
    assert _batch(manifest, output, cluster) == 0
    assert "1 done earlier, 1 to run" in capsys.readouterr().out
    again = _results(output)
    assert again["a-box"] == results["a-box"] and again["broken"]["status"] == "ok"
    assert list(_segments(output / "broken.seg.nrrd")) == ["broken"]


@pytest.mark.slow
def test_workers_n_runs_on_its_own_local_cluster_and_closes_it(scans, tmp_path, capsys):
    import psutil

    manifest = _write_manifest(tmp_path / "one.csv", _box_rows(scans, "B"))
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    assert main(["batch", str(manifest), "--output", str(tmp_path / "out"), "--workers", "1"]) == 0
    assert "1 to run on 1 local worker(s)" in capsys.readouterr().out
    record = _results(tmp_path / "out")["b-box"]
    assert record["status"] == "ok" and file_sha256(tmp_path / "out" / record["output"]) == record["output_sha256"]
    worker_pid = int(record["worker"].rsplit(":", 1)[1])
    assert worker_pid not in children  # a worker of its own, not the module's cluster
    time.sleep(1)
    assert not psutil.pid_exists(worker_pid) or psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= children  # its cluster is gone


def test_workers_and_scheduler_are_checked_before_anything_starts(scans, tmp_path, capsys):
    manifest = _write_manifest(tmp_path / "one.csv", _box_rows(scans, "A"))
    output = tmp_path / "out"
    assert main(["batch", str(manifest), "--output", str(output), "--workers", "0"]) == 2
    assert "--workers must be 1 or more, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["batch", str(manifest), "--output", str(output), "--workers", "2", "--scheduler", "tcp://h:8786"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert not output.exists()


def test_the_default_worker_count_comes_from_the_cores_and_the_memory(monkeypatch):
    from types import SimpleNamespace

    import psutil
    from ProMISeLib.batch import dask_runner

    def machine(cores: int, gb: float) -> int:
        monkeypatch.setattr(dask_runner, "cores", lambda: cores)
        monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=gb * 1e9))
        return dask_runner.default_workers()

    assert machine(16, 128) == 16  # as many as the cores
    assert machine(16, 6) == 2  # as many models as the memory holds (about 2.5 GB a worker)
    assert machine(2, 1) == 1  # at least one


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_cohort_bar_shows_rows_failures_rate_and_eta_on_a_terminal_only(monkeypatch):
    from types import SimpleNamespace

    from ProMISeLib.batch.command import CohortBar

    job = SimpleNamespace(image=Path("p1.nii.gz"))
    rows = [{"id": "l1", "status": "ok"}, {"id": "l2", "status": "failed", "error": "nothing found at the click"}]
    for stream in (_Terminal(), io.StringIO()):
        monkeypatch.setattr(sys, "stderr", stream)
        bar = CohortBar(4)
        time.sleep(0.05)
        bar(job, rows)
        time.sleep(0.05)
        bar(job, [{"id": "l3", "status": "ok"}])
        bar.close()
        shown = stream.getvalue()
        assert "promise batch: l2 (p1.nii.gz) failed: nothing found at the click" in shown  # always said
        if stream.isatty():
            final = shown.replace("\r", "\n").strip().splitlines()[-1]
            assert "3/4" in final and "failed=1" in final and "row/s" in final
            assert re.search(r"\d\d:\d\d<\d\d:\d\d", final), final  # elapsed<remaining
        else:
            assert shown.strip().splitlines() == ["promise batch: l2 (p1.nii.gz) failed: nothing found at the click"]


def test_a_stop_while_an_image_is_written_waits_for_its_record(scans, tmp_path, monkeypatch):
    """SIGTERM between an image's file and its row of results.csv: the stop waits for the row (the file is then
    the batch's own, and a rerun keeps it), instead of leaving a file results.csv does not know."""
    from ProMISeLib.batch import cohort
    from ProMISeLib.batch.command import Stopped, stop_on_signals
    from ProMISeLib.batch.plan import batch_settings, prepare
    from ProMISeLib.batch.work import ImageOutcome, RowOutcome
    from ProMISeLib.io.volumes import read_geometry

    manifest = _write_manifest(tmp_path / "one.csv", _box_rows(scans, "A"))
    plan = prepare(manifest, tmp_path / "out", batch_settings("litemedsam"))
    geometry = read_geometry(scans["A"]["image"])
    outcome = ImageOutcome(geometry, [RowOutcome("a-box", None, {"voxels": 8}, np.ones((2, 2, 2), bool), (1, 1, 1))])
    written = cohort.write_segments

    def write_then_signal(*args, **kwargs):
        path = written(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # the file is in place, its record not yet
        return path

    monkeypatch.setattr(cohort, "write_segments", write_then_signal)
    with pytest.raises(Stopped, match="SIGTERM"), stop_on_signals(), cohort.cohort_folder(plan):
        cohort.run_cohort(plan, iter([(plan.jobs[0], outcome)]))
    record = _results(tmp_path / "out")["a-box"]
    path = tmp_path / "out" / record["output"]
    assert record["status"] == "ok" and record["output_sha256"] == file_sha256(path)
    assert prepare(manifest, tmp_path / "out", batch_settings("litemedsam")).jobs == []  # a rerun: nothing to do
    assert cohort.GUARD.busy is False and cohort.GUARD.held is None
