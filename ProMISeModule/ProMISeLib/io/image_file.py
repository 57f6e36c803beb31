"""An image file checked from its header alone, before a voxel is read or a byte allocated for it.

SimpleITK reads a truncated NIfTI without a word (the voxels it could not read are zeros), and allocates
the volume its header declares before it reads the payload. So the header is read first: the voxels it
declares must fit in the payload the file holds and in the memory free now, else the file is refused in
one line. ITK's own errors are reduced to their reason (not its source file and line).
"""

from __future__ import annotations

import gzip
import math
import os
import re
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np
import psutil
import SimpleITK as sitk
from tqdm import tqdm

from ProMISeLib.errors import ImageReadError

#: zlib's limit: a deflate stream never expands its input more than this (gzip NRRD, compressed MetaImage).
MAX_DEFLATE_RATIO = 1032
#: The engine reads a scalar volume as float32: 4 bytes a voxel beside the file's own type.
FLOAT_COPY_BYTES = 4
_TEXT_HEADER_BYTES = 1 << 16  # an NRRD or MetaImage text header ends well within this
T = TypeVar("T")


def itk_reason(exc: RuntimeError) -> str:
    """The reason in a SimpleITK error, without ITK's source path, class address or teem's call chain."""
    reasons = [_plain(line) for line in str(exc).splitlines()
               if not line.strip().startswith(("Exception thrown in SimpleITK", "Reason:"))]
    # (ITK's source file and line; MetaIO's errno, left over from an unrelated call)
    reasons = [line for line in reasons if line]
    return reasons[-1] if reasons else str(exc).strip()[:200]


def _plain(line: str) -> str:
    """An ITK message line without its class and address (``NrrdImageIO(0x5555): ``) or teem's function."""
    return re.sub(r"^(ITK ERROR: )?(\w+ ?\(0x[0-9a-fA-F]+\)|sitk::ERROR|\[\w+\] \w+):\s*", "", line.strip())


def read_image_header(path: Path, notes: list[str] | None = None) -> sitk.ImageFileReader:
    """A reader that has read ``path``'s header (not its voxels), once the file is checked against it.

    Raises :class:`ImageReadError` for a file whose header can't be read, whose payload is shorter than the
    voxels it declares (truncated), or whose voxels can't fit in the memory free now. ITK's warnings go to
    ``notes`` (else stderr).
    """
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: is an empty file")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    _run_itk(reader.ReadImageInformation, path, notes)
    size = tuple(int(n) for n in reader.GetSize())
    shown = " x ".join(map(str, size))
    if 0 in size:
        raise ImageReadError(f"{path}: is empty: its header declares {shown} voxels")
    voxels = math.prod(size)
    item = np.dtype(sitk.GetArrayViewFromImage(sitk.Image([1, 1], reader.GetPixelID(),
                                                           reader.GetNumberOfComponents())).dtype).itemsize
    declared = voxels * reader.GetNumberOfComponents() * item
    _check_payload(path, reader, declared, shown)
    needed = declared + (voxels * FLOAT_COPY_BYTES if reader.GetNumberOfComponents() == 1 else 0)
    free = psutil.virtual_memory().available
    if needed > free:
        raise ImageReadError(f"{path}: its header declares {shown} voxels, {_size(needed)} to read, more than the "
                             f"{_size(free)} of memory free (a wrong header, or a scan for a bigger machine)")
    return reader


def read_image_file(path: Path, notes: list[str] | None = None) -> sitk.Image:
    """The image in ``path``, read once its header is checked (:func:`read_image_header`)."""
    return _run_itk(read_image_header(path, notes).Execute, path, notes)


def _run_itk(call: Callable[[], T], path: Path, notes: list[str] | None) -> T:
    """``call()``, refused with the reason when ITK's reader fails or complains; its warnings go to ``notes``.

    ITK's C++ readers print on the process's stderr: its warnings (``WARNING: In ...`` blocks) and the
    complaints of MetaIO and niftilib, which can come with a read that "works" (``Uncompress failed``). Such
    a complaint refuses the file, as an exception does.
    """
    with _stderr_caught() as printed:
        try:
            result = call()
            failure = None
        except RuntimeError as exc:
            result, failure = None, exc
        warned, complaints = _itk_messages(printed())
    if failure is not None or complaints:
        reason = complaints[0] if complaints else itk_reason(failure)
        raise ImageReadError(f"{path}: cannot be read as an image ({reason})") from failure
    if notes is None:
        sys.stderr.writelines(f"{line}\n" for line in warned)
    else:
        notes.extend(line for line in warned if line not in notes)
    return result


def _itk_messages(text: str) -> tuple[list[str], list[str]]:
    """(warnings, complaints) in what ITK printed: the lines of its WARNING blocks, and every other line."""
    warned, complaints = [], []
    block = None
    for line in text.splitlines():
        if not line.strip():
            block = None
        elif line.startswith("WARNING: In "):
            block = warned  # the next lines, to a blank one: the warning, after ITK's source file and line
        elif (plain := _plain(line)) and plain not in (block if block is not None else complaints):
            (block if block is not None else complaints).append(plain)
    return warned, complaints


@contextmanager
def _stderr_caught() -> Iterator[Callable[[], str]]:
    """The process's stderr (file descriptor 2) into a file while inside; yields what it holds so far."""
    with tempfile.TemporaryFile() as sink:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no stderr to catch (a GUI process)
            yield lambda: ""
            return

        def caught() -> str:
            sink.seek(0)
            return sink.read().decode(errors="replace")

        os.dup2(sink.fileno(), 2)
        try:
            yield caught
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _check_payload(path: Path, reader: sitk.ImageFileReader, declared: int, shown: str) -> None:
    """Refuse a file whose payload can't hold the ``declared`` bytes of voxels (NIfTI, NRRD, MetaImage)."""
    name = path.name.lower()
    held = path.stat().st_size
    if name.endswith((".nii", ".nii.gz")):
        expected = int(float(reader.GetMetaData("vox_offset"))) + declared if reader.HasMetaDataKey(
            "vox_offset") else declared
        with path.open("rb") as file:
            gzipped = file.read(2) == b"\x1f\x8b"
        if gzipped:
            _check_gzip_stream(path, expected)
        elif held < expected:
            raise ImageReadError(f"{path}: is truncated: its header declares {expected} bytes, the file holds {held}")
        return
    if not name.endswith((".nrrd", ".mha")):
        return  # a detached payload (.nhdr, .mhd) or a format without a text header: ITK checks it as it reads
    fields, header_bytes = _text_header(path)
    if name.endswith(".nrrd"):
        encoding = fields.get("encoding", "").lower()
        if "data file" in fields or "datafile" in fields or encoding not in ("raw", "gzip", "gz"):
            return  # a payload elsewhere, or text (whose length says little of the voxels')
        compressed = encoding != "raw"
    else:
        if fields.get("elementdatafile", "").lower() != "local":
            return
        compressed = fields.get("compresseddata", "false").lower() == "true"
        stored = fields.get("compresseddatasize", "")
        if compressed and stored.isdigit() and held - header_bytes < int(stored):
            raise ImageReadError(f"{path}: is truncated: its header records {stored} bytes of compressed voxels, "
                                 f"the file holds {held - header_bytes}")
    capacity = held * MAX_DEFLATE_RATIO if compressed else held
    if capacity < declared:
        how = "even compressed " if compressed else ""
        raise ImageReadError(f"{path}: is truncated or its header is wrong: it declares {shown} voxels "
                             f"({declared} bytes), more than its {held} bytes can hold {how}".rstrip())


def _check_gzip_stream(path: Path, expected: int) -> None:
    """Refuse a gzip file that ends early or holds fewer than ``expected`` bytes.

    gzip's trailer records the stream's length: when it is the header's, the file is whole (a truncated
    file ends in compressed data, not a trailer). Otherwise the stream is read through to count its bytes.
    """
    with path.open("rb") as file:
        file.seek(-4, 2)
        if int.from_bytes(file.read(4), "little") == expected % (1 << 32):
            return
    count = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 24):
                count += len(chunk)
    except EOFError as exc:
        raise ImageReadError(f"{path}: is truncated: its gzip stream ends early (unexpected end of file)") from exc
    except (OSError, zlib.error) as exc:
        raise ImageReadError(f"{path}: its gzip stream is damaged ({exc})") from exc
    if count < expected:
        raise ImageReadError(f"{path}: is truncated: its header declares {expected} bytes, the file holds {count}")


def _text_header(path: Path) -> tuple[dict[str, str], int]:
    """The fields of an NRRD (``key: value``) or MetaImage (``Key = Value``) text header, keys in lower case,
    and the header's length in bytes."""
    with path.open("rb") as file:
        text = file.read(_TEXT_HEADER_BYTES).decode("latin-1")
    fields: dict[str, str] = {}
    length = 0
    for line in text.splitlines(keepends=True):
        length += len(line)
        if not line.strip():
            break  # NRRD: the blank line before the payload
        key, sep, value = line.partition(":=" if ":=" in line else (": " if ": " in line else "="))
        key = key.strip().lower()
        if sep and not key.startswith("#"):
            fields[key] = value.strip()
        if key == "elementdatafile":
            break  # MetaImage: the last field, the payload follows
    return fields, length


def _size(count: int) -> str:
    return tqdm.format_sizeof(count, "B", 1024)
