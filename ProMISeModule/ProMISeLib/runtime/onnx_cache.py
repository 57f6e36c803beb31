"""The ONNX export cache: a model is exported on first use into the cache folder, checked on every load.

The model's folder (``<cache>/onnx/<model>/``) holds export folders, each written in full (its manifest
last) before the file ``current`` is made to name it. ``current`` is replaced atomically, so a process
reads the old export or the new one, never none or half of one, and two processes that export at once
both succeed. An export whose files no longer match their manifest (a damaged disk, a half-copied folder),
or whose decoder graph is older than today's, is exported anew and the run says so; it is never silently
replaced by the slower PyTorch runtime. A cache that can't be written is one error (or, with ``auto``, a
note and PyTorch), not a traceback. An export folder that is not current and whose process has ended (one
killed during its export, one outlived by a newer export) is deleted on a later run.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

import psutil

from ProMISeLib.errors import CheckpointError, OutputError
from ProMISeLib.io.paths import cache_dir
from ProMISeLib.io.volumes import atomic_write
from ProMISeLib.runtime.choice import torch_exports_onnx
from ProMISeLib.runtime.onnx_backend import (
    add_int8_encoder,
    decoder_is_current,
    export_onnx,
    int8_is_current,
    read_manifest,
)

#: The file in the model's cache folder that names its current export folder.
CURRENT = "current"
#: An export folder of another machine (a shared cache), or an older version's staging folder, is left this
#: long: no export takes an hour, and a process reads its export's files when it starts its sessions.
STALE_AFTER_S = 3600.0
_EXPORT = re.compile(r"export-(\d+)@([\w.]+)-\w+")  # export-<pid>@<host>-<random>


def cache_folder(model: str) -> Path:
    """The model's folder in the cache: its export folders and the file naming the current one."""
    return cache_dir() / "onnx" / model


def current_export(model: str) -> Path | None:
    """The model's current export folder in the cache (not checked), or None when there is none."""
    try:
        return _named_current(cache_folder(model))
    except CheckpointError:
        return None


def cached_export(model: str, weights: str | None, int8: bool, messages: list[str]) -> Path:
    """The model's checked export folder in the cache, exported (or repaired) first where needed.

    Notes for the user (an export, a repair) are appended to ``messages``, once they are true. Raises
    :class:`OutputError` when the cache can't be written.
    """
    directory = cache_folder(model)
    sweep_stale(directory)
    damage = None
    try:
        folder = _named_current(directory)
        manifest = read_manifest(folder) if folder is not None else None
    except CheckpointError as exc:
        folder, manifest, damage = None, None, str(exc)
    try:
        if manifest is None or not decoder_is_current(manifest):
            if not torch_exports_onnx():
                raise CheckpointError("exporting to ONNX needs torch >= 2.5 (torch.onnx.export(dynamo=False))")
            folder = export_into_cache(model, directory, weights)
            manifest = read_manifest(folder)
            if damage:
                messages.append(f"the ONNX export cache was damaged ({damage}); exported it anew")
        if int8 and not int8_is_current(manifest):
            add_int8_encoder(folder)  # quantised into the cache on first use (or anew), like the fp32 export
    except (OSError, OutputError) as exc:
        reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
        was = f"was damaged ({damage}) and " if damage else ""
        raise OutputError(f"the ONNX export cache {directory} {was}cannot be written ({reason}); set "
                          "PROMISE_CACHE_DIR to a writable folder, or use the PyTorch runtime") from exc
    return folder


def export_into_cache(model: str, directory: Path, weights: str | None) -> Path:
    """Export into a new folder in ``directory`` and make it the current one; returns the folder in use.

    Another process never reads a half-written export; if one finished the same export meanwhile, its
    folder is used and this one discarded.
    """
    folder = _new_folder(directory)
    try:
        export_onnx(model, folder, weights)
        try:
            landed = _named_current(directory)
            if landed is not None and decoder_is_current(read_manifest(landed)):
                shutil.rmtree(folder, ignore_errors=True)
                return landed  # another process's identical export landed first
        except CheckpointError:
            pass  # the one this export replaces
        _make_current(directory, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def adopt_export(model: str, source: str | Path) -> Path:
    """Copy a checked export folder (``promise export --output``) into the cache as the model's current one."""
    read_manifest(source)
    directory = cache_folder(model)
    folder = _new_folder(directory)
    shutil.copytree(source, folder, dirs_exist_ok=True)
    _make_current(directory, folder)
    return folder


def sweep_stale(directory: Path) -> list[Path]:
    """Delete the export folders in ``directory`` that no process uses; returns them.

    One is stale when it is not the current one and the process that made it has ended (this machine's),
    or when it is more than :data:`STALE_AFTER_S` old (another machine's). A live export is never touched.
    Older versions' staging folders beside ``directory`` (``.<model>.*``) go once they are that old.
    """
    try:
        current = _named_current(directory)
    except CheckpointError:
        current = None
    try:
        entries = [*directory.iterdir(), *directory.parent.glob(f".{directory.name}.*")]
    except OSError:
        return []  # no cache yet (or none to read): nothing to sweep
    stale = []
    for entry in entries:
        if entry == current or not entry.is_dir():
            continue
        owner = _EXPORT.fullmatch(entry.name)
        if owner is None and not entry.name.startswith(f".{directory.name}."):
            continue  # not an export folder: not ours to delete
        if owner is not None and owner[2] == _host():
            gone = not psutil.pid_exists(int(owner[1]))  # this machine's: stale once its process has ended
        else:
            try:
                gone = time.time() - entry.stat().st_mtime > STALE_AFTER_S
            except OSError:
                continue
        if gone:
            shutil.rmtree(entry, ignore_errors=True)
            stale.append(entry)
    return stale


def _new_folder(directory: Path) -> Path:
    """A new, empty export folder in ``directory``, named after this process and machine."""
    directory.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"export-{os.getpid()}@{_host()}-", dir=directory))


def _make_current(directory: Path, folder: Path) -> None:
    """Name ``folder`` in ``current``: one atomic replace, so a reader sees the old name or the new one."""
    atomic_write(directory / CURRENT, lambda tmp: tmp.write_text(folder.name + "\n"))


def _named_current(directory: Path) -> Path | None:
    """The export folder ``current`` names (None without one); CheckpointError when it names no export folder."""
    try:
        name = (directory / CURRENT).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{directory / CURRENT}: unreadable ({exc})") from exc
    if not _EXPORT.fullmatch(name):
        raise CheckpointError(f"{directory / CURRENT}: names {name[:60]!r}, not an export folder")
    return directory / name


def _host() -> str:
    """This machine's name as it goes in an export folder's name."""
    return re.sub(r"[^\w.]", "_", socket.gethostname()) or "host"
