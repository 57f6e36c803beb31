"""``results.csv``: one line per manifest row, rewritten atomically after every image.

Columns: ``id``; ``status``: ok, failed, or pending (not run yet); ``error``: one line; ``image``; ``output``
(the .seg.nrrd under the output folder); ``segment`` (its name there); ``voxels``, ``volume_ml``,
``first_slice``, ``last_slice``; ``seconds`` (the engine's, per lesion); ``model``, ``method``, ``runtime``,
``device``; ``dice`` and ``hd95_mm`` (with a label); ``notes`` (the engine's); ``worker`` and
``peak_rss_mb`` (the worker process's peak memory so far); ``finished`` (UTC); ``fingerprint`` (of the row
and the settings it ran with) and ``output_sha256`` (of the file as written), by which a rerun knows its
own finished rows and files.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from ProMISeLib.errors import InvalidInputError
from ProMISeLib.io.volumes import atomic_write

RESULTS_NAME = "results.csv"
COLUMNS = ("id", "status", "error", "image", "output", "segment", "voxels", "volume_ml", "first_slice", "last_slice",
           "seconds", "model", "method", "runtime", "device", "dice", "hd95_mm", "notes", "worker", "peak_rss_mb",
           "finished", "fingerprint", "output_sha256")
OK, FAILED, PENDING = "ok", "failed", "pending"

Record = dict[str, str]


def read_results(path: str | Path) -> dict[str, Record]:
    """The records of an earlier run by row id ({} where there is no file)."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not set(COLUMNS) <= set(reader.fieldnames):
                raise InvalidInputError(f"{path}: exists and is not a promise batch results table; "
                                        "choose another --output")
            return {record["id"]: {key: record.get(key) or "" for key in COLUMNS} for record in reader}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInputError(f"{path}: cannot be read ({exc})") from exc


def write_results(path: str | Path, records: list[Record]) -> Path:
    """Write the records as ``results.csv``, atomically (a reader never sees half a table)."""

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(records)

    return atomic_write(path, write)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def one_line(error: BaseException | str) -> str:
    """An error as one line of a CSV cell: its first line, with its type where the message is empty."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text or type(error).__name__
