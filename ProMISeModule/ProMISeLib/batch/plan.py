"""What a batch run will do: the manifest checked, its rows grouped by image, and what an earlier run left.

:func:`prepare` reads and checks the whole manifest before any model runs and raises one
:class:`~ProMISeLib.batch.manifest.ManifestError` listing every problem. A row is run again unless an
earlier run in the same output folder finished it with the same prompts and settings and its image's
file is still there. A ``.seg.nrrd`` already in the folder is replaced only when ``results.csv`` records
it, byte for byte, as this batch's output; any other file is refused, never overwritten.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ProMISeLib.batch.manifest import ManifestError, Row, check_rows, in_row_order, read_manifest
from ProMISeLib.batch.results import OK, RESULTS_NAME, Record, file_sha256, read_results
from ProMISeLib.errors import InvalidInputError
from ProMISeLib.io.volumes import image_stem


@dataclass(frozen=True)
class ImageJob:
    """The rows of one image, run by one worker as one task, written to one ``.seg.nrrd``."""

    image: Path
    output: str  # relative to the output folder
    rows: tuple[Row, ...]


@dataclass
class Plan:
    """The checked manifest and the work left to do."""

    manifest: Path
    folder: Path
    rows: list[Row]
    outputs: dict[str, str]  # row id -> its image's output file (relative)
    fingerprints: dict[str, str]  # row id -> fingerprint of the row and the settings
    jobs: list[ImageJob]
    kept: dict[str, Record]  # rows an earlier run finished, by id
    notes: list[str] = field(default_factory=list)
    _by_id: dict[str, Row] = field(default_factory=dict, repr=False)

    @property
    def results_path(self) -> Path:
        return self.folder / RESULTS_NAME

    def row(self, row_id: str) -> Row:
        """The manifest row with this id."""
        if len(self._by_id) != len(self.rows):
            self._by_id = {row.id: row for row in self.rows}
        return self._by_id[row_id]

    @property
    def rows_to_run(self) -> int:
        return sum(len(job.rows) for job in self.jobs)


def batch_settings(model: str, prompts: str = "auto", modality: str = "auto", weights: str | None = None,
                   precision: str = "fp32", prompter_weights: str | None = None) -> dict:
    """The settings that change a mask: part of each row's fingerprint (the CLI and Slicer make the same)."""
    return {"model": model, "prompts": prompts, "modality": modality, "weights": weights, "precision": precision,
            "prompter_weights": prompter_weights}


def prepare(manifest: str | Path, folder: str | Path, settings: dict) -> Plan:
    """Check the manifest and the output folder; the plan, or a ManifestError listing every problem."""
    manifest, folder = Path(manifest).expanduser(), Path(folder).expanduser()
    rows, problems = read_manifest(manifest)
    problems += check_rows(rows)
    if folder.exists() and not folder.is_dir():
        raise InvalidInputError(f"{folder}: is not a folder")
    try:
        previous = read_results(folder / RESULTS_NAME)
    except InvalidInputError as exc:
        problems.append(str(exc))
        previous = {}
    groups: dict[Path, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.image, []).append(row)
    plan = Plan(manifest, folder, rows, {}, {}, [], {})
    claimed: dict[str, Path] = {}  # output name (lower case) -> the image writing it
    for image, group in groups.items():
        names = {row.output for row in group if row.output is not None}
        output = names.pop() if len(names) == 1 else f"{image_stem(image)}.seg.nrrd"
        if names:
            problems.append(f"{group[0].where}: the rows of {image} name different outputs")
        other = claimed.setdefault(output.lower(), image)
        if other != image:
            problems.append(f"{group[0].where}: {image} and {other} would both write {output}; "
                            "give one an output column")
            continue
        for row in group:
            plan.outputs[row.id] = output
            plan.fingerprints[row.id] = fingerprint(row, output, settings)
        problem = _resume(plan, ImageJob(image, output, tuple(group)), previous)
        if problem:
            problems.append(f"{group[0].where}: {problem}")
    if problems:
        raise ManifestError(manifest, in_row_order(problems))
    return plan


def _resume(plan: Plan, job: ImageJob, previous: dict[str, Record]) -> str | None:
    """Keep the job's rows if an earlier run finished them, else queue it; a problem if its file is not ours."""
    path = plan.folder / job.output
    if path.is_dir():
        return f"{path} is a folder"
    finished = {i: r for i, r in previous.items() if r["output"] == job.output and r["status"] == OK}
    done = set(finished) == {row.id for row in job.rows} and all(
        finished[row.id]["fingerprint"] == plan.fingerprints[row.id] for row in job.rows)
    if not path.exists():
        plan.jobs.append(job)
        return None
    ours = file_sha256(path) in {r["output_sha256"] for r in finished.values()}
    if done:
        plan.kept.update({row.id: finished[row.id] for row in job.rows})
        if not ours:
            plan.notes.append(f"{path} changed since this batch wrote it; kept as it is")
        return None
    if not ours:
        return (f"{path} already exists and is not this batch's output (edited since, or from another run); "
                "move it away or choose another --output")
    plan.jobs.append(job)
    return None


def fingerprint(row: Row, output: str, settings: dict) -> str:
    """A short hash of what makes a row's result: its image, prompts, label, names and the settings."""
    facts = {"image": str(row.image), "points": row.points, "negative": row.negative, "box": row.box,
             "space": row.space, "label": str(row.label) if row.label else None, "label_value": row.label_value,
             "name": row.name, "output": output, **settings}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
