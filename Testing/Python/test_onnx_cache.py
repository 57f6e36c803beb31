"""Issue 36: the ONNX export cache under faults: unwritable, damaged and replaced by two processes at once,
an export killed half-way; and `promise export` written atomically, with file names kept in its folder."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import flip_byte
from ProMISeLib.cli import main
from ProMISeLib.engine import Segmenter
from ProMISeLib.errors import CheckpointError, OutputError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

MODEL = "litemedsam"

#: A process that loads LiteMedSAM on ONNX Runtime from the cache, its export being a copy of a real one (the
#: 1-minute export is not what is tested). ``race``: it waits after its export until two processes are there;
#: ``hang``: until the file ``go`` exists (or it is killed).
LOADER = """
import json, os, shutil, sys, time
from pathlib import Path
from ProMISeLib.runtime import onnx_cache
source, gate, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
def copy_export(model, out, weights=None, *args, **kwargs):
    shutil.copytree(source, out, dirs_exist_ok=True)
    (gate / f"ready-{os.getpid()}").touch()
    deadline = time.time() + 300
    while time.time() < deadline and (len(list(gate.glob("ready-*"))) < 2 if mode == "race"
                                      else mode == "hang" and not (gate / "go").exists()):
        time.sleep(0.02)
    return Path(out) / "manifest.json"
onnx_cache.export_onnx = copy_export
from ProMISeLib.engine import Segmenter
segmenter = Segmenter(device="cpu", runtime="onnx")
segmenter.load()
print(json.dumps({"runtime": segmenter.runtime, "messages": segmenter.messages}))
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache for this test, seen by this process and the ones it starts."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("PROMISE_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def copy_export(onnx_export, monkeypatch):
    """This process's cache exports copy the session's real export."""
    from ProMISeLib.runtime import onnx_cache

    source, _ = onnx_export
    monkeypatch.setattr(onnx_cache, "export_onnx",
                        lambda model, out, weights=None: shutil.copytree(source, out, dirs_exist_ok=True))
    return source


def _start(onnx_export, gate: Path, mode: str) -> subprocess.Popen:
    gate.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", LOADER, str(onnx_export[0]), str(gate), mode], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path_glob, gate: Path, count: int = 1, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while len(list(gate.glob(path_glob))) < count:
        assert time.time() < deadline, "the process never started its export"
        time.sleep(0.05)


def _folders(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_dir())


def _damaged_cache(onnx_export) -> Path:
    from ProMISeLib.runtime.onnx_cache import adopt_export

    folder = adopt_export(MODEL, onnx_export[0])
    flip_byte(folder / "decoder.onnx")
    return folder


def _small_scan(tmp_path) -> Path:
    path = tmp_path / "scan.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(6, 40, 40)).astype(np.float32)),
                    str(path))
    return path


# --- a cache that can't be written ----------------------------------------------------------
def test_a_cache_path_that_is_a_file_is_one_line_with_onnx_and_a_true_note_with_auto(tmp_path, capsys,
                                                                                   monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache should be")
    monkeypatch.setenv("PROMISE_CACHE_DIR", str(blocker))
    scan = _small_scan(tmp_path)
    code = main(["segment", str(scan), "--point", "20,20,3", "--space", "ijk", "--runtime", "onnx", "--device", "cpu",
                 "-o", str(tmp_path / "m.nii.gz")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "cannot be written (Not a directory)" in err, err
    assert not (tmp_path / "m.nii.gz").exists() and blocker.read_text().startswith("a file")
    auto = Segmenter(device="cpu", runtime="auto", prompts="heuristic")
    auto.load()
    assert auto.runtime == "torch"
    assert len(auto.messages) == 1 and "cannot be written" in auto.messages[0], auto.messages
    assert "PyTorch runs instead" in auto.messages[0] and "exported it anew" not in auto.messages[0]


def test_a_read_only_cache_is_one_line_with_onnx_and_a_true_note_with_auto(cache, tmp_path, capsys, monkeypatch):
    """An empty cache on a read-only file system (errno 30): no export is tried, none is said to be made."""
    cache.mkdir()
    make_folder = os.mkdir

    def read_only(path, *args, **kwargs):
        if Path(path).resolve().is_relative_to(cache.resolve()):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return make_folder(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only)  # as root a chmod'ed folder is still writable: the refusal itself
    code = main(["segment", str(_small_scan(tmp_path)), "--point", "20,20,3", "--space", "ijk", "--runtime", "onnx",
                 "--device", "cpu", "-o", str(tmp_path / "m.nii.gz")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "cannot be written (Read-only file system)" in err, err
    assert "Traceback" not in err and not (tmp_path / "m.nii.gz").exists()
    auto = Segmenter(device="cpu", runtime="auto", prompts="heuristic")
    auto.load()
    (note,) = auto.messages
    assert auto.runtime == "torch" and "cannot be written (Read-only file system)" in note, note
    assert "PyTorch runs instead" in note and "exported it anew" not in note
    assert list(cache.iterdir()) == []


def test_a_damaged_cache_that_cannot_be_rewritten_says_so_and_never_that_it_was_exported(
        onnx_export, cache, tmp_path, capsys, monkeypatch):
    _damaged_cache(onnx_export)
    if os.geteuid() == 0:  # root writes into a read-only folder: the file system's refusal, as it comes
        def refused(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(tempfile, "mkdtemp", refused)
    else:
        (cache / "onnx" / MODEL).chmod(0o500)
    auto = Segmenter(device="cpu", runtime="auto", prompts="heuristic")
    auto.load()
    (note,) = auto.messages
    assert auto.runtime == "torch" and "was damaged" in note and "cannot be written (Permission denied)" in note
    assert "exported it anew" not in note
    with pytest.raises(OutputError, match="was damaged .* cannot be written"):
        Segmenter(device="cpu", runtime="onnx").load()
    code = main(["segment", str(_small_scan(tmp_path)), "--point", "20,20,3", "--space", "ijk", "--runtime", "onnx",
                 "--device", "cpu", "-o", str(tmp_path / "m.nii.gz")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "cannot be written" in err, err


# --- replacing the cache --------------------------------------------------------------------
def test_two_processes_replacing_a_damaged_cache_at_once_both_succeed(onnx_export, cache, tmp_path):
    from ProMISeLib.runtime.onnx_backend import read_manifest
    from ProMISeLib.runtime.onnx_cache import current_export

    damaged = _damaged_cache(onnx_export)
    gate = tmp_path / "gate"
    loaders = [_start(onnx_export, gate, "race") for _ in range(2)]
    for loader in loaders:
        out, err = loader.communicate(timeout=300)
        assert loader.returncode == 0, err[-2000:]
        result = json.loads(out.strip().splitlines()[-1])
        assert result["runtime"] == "onnx"
        assert [m for m in result["messages"] if "exported it anew" in m and "damaged" in m], result
    read_manifest(current_export(MODEL))  # the cache holds a whole export
    assert current_export(MODEL) != damaged


def test_an_export_killed_half_way_is_swept_by_the_next_run_and_a_live_one_is_kept(
        onnx_export, cache, tmp_path, copy_export):
    from ProMISeLib.runtime.onnx_cache import cache_folder, current_export

    killed = _start(onnx_export, tmp_path / "gate", "hang")
    _wait_for("ready-*", tmp_path / "gate")
    killed.send_signal(signal.SIGTERM)
    killed.wait(timeout=60)
    assert [p for p in _folders(cache) if p.name.startswith(("export-", f".{MODEL}."))], "no staging folder to sweep"

    live = _start(onnx_export, tmp_path / "gate2", "hang")  # another export, still running
    try:
        _wait_for("ready-*", tmp_path / "gate2")
        (staging,) = [p for p in cache_folder(MODEL).glob(f"export-{live.pid}@*")]
        Segmenter(device="cpu", runtime="onnx").load()  # exports, and sweeps what is stale
        current = current_export(MODEL)
        assert _folders(cache) == sorted([cache / "onnx", cache_folder(MODEL), current, staging])
        (tmp_path / "gate2" / "go").touch()
        out, err = live.communicate(timeout=300)
        assert live.returncode == 0, err[-2000:]  # it found this export landed first and uses it
    finally:
        live.kill()
    assert _folders(cache) == sorted([cache / "onnx", cache_folder(MODEL), current])
    assert current_export(MODEL) == current


# --- `promise export` -----------------------------------------------------------------------
def test_the_export_prints_no_tracer_warnings(onnx_export):
    import torch

    _, raised = onnx_export
    assert not [w for w in raised if issubclass(w.category, torch.jit.TracerWarning)], [str(w.message) for w in raised]


def test_an_export_that_fails_leaves_the_files_it_was_replacing(tmp_path, capsys, monkeypatch):
    import torch

    out = tmp_path / "exp"
    out.mkdir()
    for name in ("encoder.onnx", "decoder.onnx", "manifest.json"):
        (out / name).write_text(f"the user's {name}")

    def disk_full(model, args, path, **kwargs):
        Path(path).write_bytes(b"half an ONNX file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", disk_full)
    assert main(["export", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["decoder.onnx", "encoder.onnx", "manifest.json"]
    assert all((out / n).read_text() == f"the user's {n}" for n in ("encoder.onnx", "decoder.onnx", "manifest.json"))


def test_manifest_file_names_stay_in_the_export_folder(onnx_export, tmp_path):
    from ProMISeLib.runtime.onnx_backend import read_manifest

    folder = tmp_path / "exp"
    shutil.copytree(onnx_export[0], folder)
    shutil.move(folder / "encoder.onnx", tmp_path / "encoder.onnx")  # the file, with its hash, outside
    manifest = json.loads((folder / "manifest.json").read_text())
    for name in ("../encoder.onnx", str(tmp_path / "encoder.onnx")):
        manifest["files"]["encoder"]["name"] = name
        (folder / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(CheckpointError, match="not a file in the export folder"):
            read_manifest(folder)
