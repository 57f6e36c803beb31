"""The batch manifest: one row per lesion, as CSV or JSON, read and checked before any model runs.

A CSV has a header line with these columns (a JSON file is a list of objects with the same keys):

    id           the lesion's unique name (required)
    image        image file or DICOM folder, relative to the manifest's folder (required)
    points       positive clicks: "x,y,z", or several as "x,y,z; x,y,z"
    negative     negative clicks, the same way
    box          two opposite corners: "x1,y1,z1,x2,y2,z2" (inclusive voxel indices in ijk)
    space        lps (default, as file headers), ras (Slicer's world) or ijk (voxel indices)
    label        a label image on the image's grid: the row gets a Dice and HD95 against it
    label_value  the lesion's value in the label (default: every non-zero voxel)
    name         the segment's name (default: the id)
    output       the image's .seg.nrrd under the output folder (default: <image name>.seg.nrrd)

A row needs points or a box. Rows may share an image: its lesions become the segments of one file.
In JSON, points may also be given as [[x, y, z], ...] and a box as [[x1, y1, z1], [x2, y2, z2]].
Lines of a CSV whose first cell starts with ``#`` are comments.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ProMISeLib.errors import InvalidInputError, ProMISeError
from ProMISeLib.io.geometry import SPACES, ImageGeometry, parse_numbers
from ProMISeLib.io.volumes import check_same_grid, read_geometry

COLUMNS = ("id", "image", "points", "negative", "box", "space", "label", "label_value", "name", "output")

Point = tuple[float, float, float]


@dataclass(frozen=True)
class Row:
    """One lesion of the manifest, its paths made absolute."""

    id: str
    image: Path
    points: tuple[Point, ...] = ()
    negative: tuple[Point, ...] = ()
    box: tuple[Point, Point] | None = None
    space: str = "lps"
    label: Path | None = None
    label_value: int | None = None
    name: str = ""
    output: str | None = None  # as given; the plan fills in the default
    where: str = ""  # "line 4" (CSV) or "entry 3" (JSON), for messages


class ManifestError(InvalidInputError):
    """Every problem of a manifest at once, one per line, before anything runs."""

    def __init__(self, source: str | Path, problems: list[str]) -> None:
        self.problems = list(problems)
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        super().__init__(f"{source}: {count}, nothing was run:\n" + "\n".join(f"  {p}" for p in problems))


def read_manifest(path: str | Path) -> tuple[list[Row], list[str]]:
    """The rows that parse, and a message for each that does not (and for unknown columns)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such manifest file")
    try:
        entries, columns = _json_entries(path) if path.suffix.lower() == ".json" else _csv_entries(path)
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
        raise InvalidInputError(f"{path}: cannot be read as a manifest ({exc})") from exc
    problems: list[str] = []
    unknown = sorted(columns - set(COLUMNS))
    if unknown:
        problems.append(f"unknown column(s) {', '.join(unknown)}; the columns are {', '.join(COLUMNS)}")
    if not entries:
        problems.append("the manifest has no rows")
    rows = []
    for where, entry in entries:
        try:
            rows.append(_row(entry, where, path.absolute().parent))
        except InvalidInputError as exc:
            problems.append(f"{where}: {exc}")
    return rows, problems


def in_row_order(problems: list[str]) -> list[str]:
    """Problems sorted by their row ("line 4: ..."), those of the whole manifest first."""

    def key(problem: str) -> int:
        words = problem.split(maxsplit=2)
        return int(words[1].rstrip(":")) if len(words) > 1 and words[1].rstrip(":").isdigit() else -1

    return sorted(problems, key=key)


def check_rows(rows: list[Row]) -> list[str]:
    """A message for each row whose files, prompts or id cannot be used; reads image headers only."""
    problems, seen = [], {}
    headers: dict[Path, ImageGeometry | ProMISeError] = {}
    for row in rows:
        if row.id in seen:
            problems.append(f"{row.where}: id {row.id!r} is used again (first on {seen[row.id]})")
            continue
        seen[row.id] = row.where
        try:
            geometry = _header(row.image, headers)
            for group in (row.points, row.negative):
                if group:
                    geometry.to_voxel_kji(np.asarray(group, dtype=float), row.space)  # names a point outside
            if row.box is not None:
                geometry.box_to_voxels_kji(np.asarray(row.box, dtype=float), row.space)
            if row.label is not None:
                check_same_grid(row.label, _header(row.label, headers), geometry)
        except ProMISeError as exc:
            problems.append(f"{row.where} ({row.id}): {exc}")
    return problems


def _header(path: Path, cache: dict) -> ImageGeometry:
    if path not in cache:
        try:
            cache[path] = read_geometry(path)
        except ProMISeError as exc:
            cache[path] = exc
    if isinstance(cache[path], ProMISeError):
        raise cache[path]
    return cache[path]


def _csv_entries(path: Path) -> tuple[list[tuple[str, dict]], set[str]]:
    entries = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, skipinitialspace=True)
        columns = {name.strip() for name in reader.fieldnames or ()}
        for entry in reader:
            if None in entry:
                raise ValueError(f"line {reader.line_num} has more cells than the header has columns")
            cells = {key.strip(): (value or "").strip() for key, value in entry.items() if key is not None}
            first = next(iter(cells.values()), "")
            if any(cells.values()) and not first.startswith("#"):
                entries.append((f"line {reader.line_num}", {k: v for k, v in cells.items() if v != ""}))
    return entries, columns


def _json_entries(path: Path) -> tuple[list[tuple[str, dict]], set[str]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list) or not all(isinstance(entry, dict) for entry in data):
        raise ValueError("a JSON manifest is a list of objects, one per row")
    entries = [(f"entry {n + 1}", {k: v for k, v in e.items() if v not in (None, "")}) for n, e in enumerate(data)]
    return entries, {str(key) for entry in data for key in entry}


def _row(entry: dict, where: str, base: Path) -> Row:
    missing = [key for key in ("id", "image") if key not in entry]
    if missing:
        raise InvalidInputError(f"no {' and no '.join(missing)}")
    row_id = str(entry["id"]).strip()
    if not row_id.isprintable() or len(row_id) > 200:
        raise InvalidInputError(f"id {row_id!r} must be printable text of at most 200 characters")
    points, negative = _points(entry.get("points"), "points"), _points(entry.get("negative"), "negative")
    box = _box(entry.get("box"))
    if not points and box is None:
        raise InvalidInputError("give points or a box")
    space = str(entry.get("space", "lps")).strip().lower()
    if space not in SPACES:
        raise InvalidInputError(f"space {space!r} is not one of {', '.join(SPACES)}")
    label_value = entry.get("label_value")
    if label_value is not None:
        if "label" not in entry:
            raise InvalidInputError("label_value needs a label")
        try:
            label_value = int(str(label_value))
        except ValueError:
            raise InvalidInputError(f"label_value {label_value!r} is not a whole number") from None
    output = entry.get("output")
    if output is not None:
        output = str(output).strip()
        parts = Path(output).parts
        if not output.lower().endswith(".seg.nrrd") or Path(output).is_absolute() or ".." in parts:
            raise InvalidInputError(f"output {output!r} must be a .seg.nrrd path inside the output folder")
    label = _path(entry["label"], base) if "label" in entry else None
    return Row(row_id, _path(entry["image"], base), points, negative, box, space, label, label_value,
               str(entry.get("name", row_id)).strip() or row_id, output, where)


def _path(value, base: Path) -> Path:
    return Path(os.path.normpath(base / Path(str(value).strip()).expanduser()))


def _points(value, column: str) -> tuple[Point, ...]:
    """ "x,y,z; x,y,z" or [[x, y, z], ...] (or one [x, y, z]) -> points."""
    if value is None:
        return ()
    if isinstance(value, str):
        parts = [p for p in value.split(";") if p.strip()]
    elif isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value):
        parts = [value]
    elif isinstance(value, list):
        parts = value
    else:
        raise InvalidInputError(f"{column}: expected X,Y,Z points, got {value!r}")
    return tuple(_numbers(part, 3, f"{column} as X,Y,Z") for part in parts)  # type: ignore[misc]


def _box(value) -> tuple[Point, Point] | None:
    if value is None:
        return None
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, list) for v in value):
        value = [*value[0], *value[1]]
    corners = _numbers(value, 6, "box as X1,Y1,Z1,X2,Y2,Z2")
    return corners[:3], corners[3:]  # type: ignore[return-value]


def _numbers(value, count: int, form: str) -> tuple[float, ...]:
    if isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        value = ",".join(str(v) for v in value)
    if not isinstance(value, str):
        raise InvalidInputError(f"expected {form} ({count} numbers), got {value!r}")
    return parse_numbers(value, count, form)
