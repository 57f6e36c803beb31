"""``promise batch MANIFEST --output DIR``: the command, its options, its progress bar and its signals."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ProMISeLib.batch.plan import batch_settings, prepare
from ProMISeLib.batch.results import FAILED, RESULTS_NAME, Record
from ProMISeLib.errors import InvalidInputError

EXIT_FAILED_ROWS = 1


def add_batch_parser(sub: argparse._SubParsersAction, add_model_options: Callable[[argparse.ArgumentParser], None]
                     ) -> None:
    """Register ``promise batch`` (the model options are the CLI's own, as for ``promise segment``)."""
    batch = sub.add_parser("batch", help="segment every lesion of a manifest (CSV or JSON) on Dask; resumable",
                           description="Segment every row of a manifest; rerun it to finish what is not done. "
                                       "See ProMISeLib/batch/manifest.py for the columns.")
    batch.add_argument("manifest", help="CSV or JSON: id, image, points, negative, box, space, label, label_value, "
                                        "name, output")
    batch.add_argument("--output", "-o", required=True, help="folder for one .seg.nrrd per image and results.csv")
    where = batch.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=None,
                       help="local worker processes, one model each (default: from the cores and the memory, "
                            "about 2.5 GB a worker)")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="run on the workers of a running Dask scheduler (tcp://host:8786) instead")
    add_model_options(batch)
    batch.add_argument("--modality", choices=("auto", "ct", "mr"), default="auto",
                       help="intensity normalisation (auto: CT when values look like Hounsfield units)")


class Stopped(Exception):
    """SIGINT or SIGTERM asked the run to stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Stopped` in the main thread (once; a second is ignored while stopping),
    after the image being written, if one is, and its record (:data:`ProMISeLib.batch.cohort.GUARD`)."""
    from ProMISeLib.batch.cohort import GUARD

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = []

    def handler(signum, frame) -> None:
        if not fired:
            fired.append(signum)
            GUARD.stop(Stopped(signum))

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


class CohortBar:
    """tqdm over the rows to run (done, failed, rate, ETA) on a terminal; silent otherwise. Failures are printed."""

    def __init__(self, rows: int) -> None:
        from tqdm import tqdm

        self.failed = 0
        self.bar = tqdm(total=rows, unit="row", desc="promise batch", disable=not sys.stderr.isatty(),
                        dynamic_ncols=True)

    def __call__(self, job, records: list[Record]) -> None:
        for record in records:
            if record["status"] == FAILED:
                self.failed += 1
                self.bar.write(f"promise batch: {record['id']} ({job.image.name}) failed: {record['error']}",
                               file=sys.stderr)
        self.bar.update(len(records))
        self.bar.set_postfix(failed=self.failed)

    def close(self) -> None:
        self.bar.close()


def run_batch_command(args: argparse.Namespace) -> int:
    """Check the whole manifest, then run what is left; 0 when every row is ok, 1 when some failed."""
    from ProMISeLib.batch.dask_runner import default_workers, run_on_dask
    from ProMISeLib.engine import Segmenter

    if args.workers is not None and args.workers < 1:
        raise InvalidInputError(f"--workers must be 1 or more, got {args.workers}")
    options = {"model": args.model, "device": args.device, "weights": args.weights, "runtime": args.runtime,
               "onnx_dir": args.onnx_dir, "precision": args.precision, "prompts": args.prompts,
               "prompter_weights": args.prompter_weights}
    Segmenter(**options)  # refuses bad options here, before any worker starts (it loads nothing)
    settings = batch_settings(args.model, args.prompts, args.modality, args.weights, args.precision,
                              args.prompter_weights)
    workers = None if args.scheduler else args.workers or default_workers()
    started, bar = time.monotonic(), None
    try:
        with stop_on_signals():
            plan = prepare(args.manifest, args.output, settings)
            for note in plan.notes:
                print(f"note: {note}")
            where = f"the workers of {args.scheduler}" if args.scheduler else f"{workers} local worker(s)"
            print(f"promise batch: {len(plan.rows)} rows on {len({r.image for r in plan.rows})} images; "
                  f"{len(plan.kept)} done earlier, {plan.rows_to_run} to run on {where}")
            bar = CohortBar(plan.rows_to_run)
            summary = run_on_dask(plan, options, args.modality, workers, args.scheduler, bar)
    except Stopped as stop:
        print(f"promise batch: stopped by {stop}; the finished rows are kept in {Path(args.output) / RESULTS_NAME}; "
              "run the same command again to finish", file=sys.stderr)
        return 128 + stop.signum
    finally:
        if bar is not None:
            bar.close()
    print(f"promise batch: {summary.line()} in {(time.monotonic() - started) / 60:.1f} min; {plan.results_path}")
    return EXIT_FAILED_ROWS if summary.failed else 0
