"""The batch's bookkeeping, whoever runs the images: each image's file written, ``results.csv`` kept current.

A runner hands over (job, outcome) pairs as images finish (:func:`run_cohort`); the in-process runner
here serves the Slicer console, :mod:`ProMISeLib.batch.dask_runner` a Dask cluster. Only this process
writes files, each atomically, so a stopped run leaves whole files and a true ``results.csv``.
"""

from __future__ import annotations

import colorsys
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ProMISeLib.batch.plan import ImageJob, Plan
from ProMISeLib.batch.results import FAILED, OK, PENDING, Record, file_sha256, write_results
from ProMISeLib.batch.work import ImageOutcome, failed_image, segment_image
from ProMISeLib.errors import OutputError
from ProMISeLib.io.volumes import write_segments

OnImage = Callable[[ImageJob, list[Record]], None]


@dataclass
class Summary:
    """How the rows of a run ended."""

    ok: int = 0
    failed: int = 0
    kept: int = 0  # finished by an earlier run
    pending: int = 0  # not run (the run was stopped)

    def line(self) -> str:
        parts = [f"{self.ok} ok", f"{self.failed} failed", f"{self.kept} done earlier"]
        return ", ".join(parts + ([f"{self.pending} not run"] if self.pending else []))


@contextmanager
def cohort_folder(plan: Plan) -> Iterator[None]:
    """The output folder made, and locked against a second batch writing there at once (an error if it cannot be
    written)."""
    try:
        plan.folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{plan.folder}: could not create the folder ({exc.strerror or exc})") from exc
    lock = plan.folder / ".promise-batch.lock"
    try:
        handle = lock.open("a+")
    except OSError as exc:
        raise OutputError(f"{plan.folder}: cannot be written ({exc.strerror or exc})") from exc
    with handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # Windows: no advisory locks; run one batch per folder
            pass
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise OutputError(f"{plan.folder}: another promise batch is writing there (process {holder}); "
                              "wait for it or choose another --output") from None
        except OSError:  # a file system without locks
            pass
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)


class WriteGuard:
    """Holds a stop (the exception a SIGINT or SIGTERM handler would raise) while an image's file and its rows in
    ``results.csv`` are written, and raises it once both are: a stopped run never leaves a file that
    ``results.csv`` does not record (which a rerun would refuse to overwrite)."""

    def __init__(self) -> None:
        self.busy, self.held = False, None

    def stop(self, exc: BaseException) -> None:
        """Raise ``exc`` now, or once the write under way is done."""
        if not self.busy:
            raise exc
        self.held = exc

    @contextmanager
    def writing(self) -> Iterator[None]:
        self.busy = True
        try:
            yield
        finally:
            self.busy = False
            held, self.held = self.held, None
        if held is not None:
            raise held


#: The process's guard: ``promise batch``'s signal handler stops through it.
GUARD = WriteGuard()


def segment_colour(n: int) -> list[float]:
    """Distinct colours for the segments of one file (golden-angle hues)."""
    return [round(c, 3) for c in colorsys.hsv_to_rgb((0.03 + 0.618034 * n) % 1.0, 0.75, 0.95)]


def save_outcome(plan: Plan, job: ImageJob, outcome: ImageOutcome) -> list[Record]:
    """Write the image's ``.seg.nrrd`` (its rows that succeeded) and return its rows' records."""
    path = plan.folder / job.output
    done = [r for r in outcome.rows if r.error is None]
    sha = ""
    if done:
        path.parent.mkdir(parents=True, exist_ok=True)  # an output column may name a subfolder
        segments = [({"id": r.id, "name": row.name, "color": segment_colour(n)}, r.mask(outcome.geometry.shape_kji))
                    for n, (row, r) in enumerate(zip(job.rows, outcome.rows, strict=True)) if r.error is None]
        sha = file_sha256(write_segments(path, segments, outcome.geometry))
    else:
        path.unlink(missing_ok=True)  # the plan checked that a file there is this batch's own: now out of date
    records, finished = [], time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for row, result in zip(job.rows, outcome.rows, strict=True):
        record = _record(plan, row.id)
        record.update({k: str(v) for k, v in result.facts.items()})
        record.update(worker=outcome.worker, peak_rss_mb=f"{outcome.peak_rss_mb:.0f}", finished=finished)
        if result.error is None:
            record.update(status=OK, output_sha256=sha)
        else:
            record.update(status=FAILED, error=result.error)
        records.append(record)
    return records


def _record(plan: Plan, row_id: str) -> Record:
    row = plan.row(row_id)
    return {"id": row.id, "status": PENDING, "image": str(row.image), "output": plan.outputs[row.id],
            "segment": row.name, "fingerprint": plan.fingerprints[row.id]}


def run_cohort(plan: Plan, finished: Iterable[tuple[ImageJob, ImageOutcome]], on_image: OnImage | None = None
               ) -> Summary:
    """Record each image as it finishes; ``results.csv`` is rewritten after each, every row in manifest order.

    Run it inside :func:`cohort_folder`."""
    records = dict(plan.kept)

    def write() -> None:
        write_results(plan.results_path, [records.get(row.id) or _record(plan, row.id) for row in plan.rows])

    write()
    for job, outcome in finished:
        with GUARD.writing():  # the image's file and its record, both or neither
            new = save_outcome(plan, job, outcome)
            records.update({record["id"]: record for record in new})
            write()
        if on_image is not None:
            on_image(job, new)
    summary = Summary(kept=len(plan.kept))
    for row in plan.rows:
        status = records[row.id]["status"] if row.id in records else PENDING
        if row.id not in plan.kept:
            summary.ok += status == OK
            summary.failed += status == FAILED
            summary.pending += status == PENDING
    return summary


def in_process(plan: Plan, segmenter, modality: str = "auto") -> Iterator[tuple[ImageJob, ImageOutcome]]:
    """Run the plan's images one after another with one Segmenter (no Dask): the Slicer console's runner."""
    for job in plan.jobs:
        try:
            outcome = segment_image(segmenter, job, modality)
        except Exception as exc:  # an unexpected failure fails this image's rows; the cohort goes on
            outcome = failed_image(job, exc)
        yield job, outcome
