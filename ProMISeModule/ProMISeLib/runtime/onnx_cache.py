"""The ONNX export cache: a model is exported on first use into the cache folder, checked on every load.

A cached export whose files no longer match their manifest (a damaged disk, a half-copied folder) or whose
decoder graph is older than today's is exported anew, atomically, and the run says so; it is never silently
replaced by the slower PyTorch runtime.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ProMISeLib.errors import CheckpointError
from ProMISeLib.io.paths import cache_dir
from ProMISeLib.runtime.choice import torch_exports_onnx
from ProMISeLib.runtime.onnx_backend import (
    MANIFEST,
    add_int8_encoder,
    decoder_is_current,
    export_onnx,
    int8_is_current,
    read_manifest,
)


def cache_folder(model: str) -> Path:
    """Where the model's export lives in the cache."""
    return cache_dir() / "onnx" / model


def cached_export(model: str, weights: str | None, int8: bool, messages: list[str]) -> Path:
    """The model's checked export folder in the cache, exported (or repaired) first where needed.

    Notes for the user (an export, a repair) are appended to ``messages``.
    """
    directory = cache_folder(model)
    manifest = None
    if (directory / MANIFEST).is_file():
        try:
            manifest = read_manifest(directory)
        except CheckpointError as exc:
            messages.append(f"the ONNX export cache was damaged ({exc}); exported it anew")
    if manifest is None or not decoder_is_current(manifest):
        if not torch_exports_onnx():
            raise CheckpointError("exporting to ONNX needs torch >= 2.5 (torch.onnx.export(dynamo=False))")
        export_into_cache(model, directory, weights)
        manifest = read_manifest(directory)
    if int8 and not int8_is_current(manifest):
        add_int8_encoder(directory)  # quantised into the cache on first use (or anew), like the fp32 export
    return directory


def export_into_cache(model: str, directory: Path, weights: str | None) -> None:
    """Export into a staging folder beside ``directory`` and rename it into place.

    Another process (a second Slicer, a benchmark shard) never reads a half-written export; if one
    finished the same export meanwhile, its folder is kept and this one discarded.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        export_onnx(model, staging, weights)
        try:
            landed = read_manifest(directory)
        except CheckpointError:
            landed = None
        if landed is not None and decoder_is_current(landed):
            return  # another process's identical export landed first
        if directory.exists():
            shutil.rmtree(directory)  # an outdated or damaged export
        staging.rename(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
