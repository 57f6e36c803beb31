"""One persistent worker thread for the engine, and the queue and busy state around it (no Qt).

A :class:`Job` has three parts: ``prepare`` reads the scene on the main thread when the job starts,
``compute`` runs the engine on the worker thread, and ``apply`` writes the result into the scene on the
main thread. The GUI calls :meth:`BackgroundRunner.poll` from a timer (``qt.QTimer``); ``poll`` applies
finished results and starts the queued job. Torch and ONNX Runtime release the GIL while they compute,
so a Python thread keeps Slicer responsive.

Rules:

- While a job runs the runner is busy (set before any listener is told), from ``submit`` until its result
  is applied or dropped.
- A job submitted while busy is queued; a later one replaces it (only the latest edit runs next). Its
  ``prepare`` runs when it starts, so it reads the points as they are then.
- :meth:`BackgroundRunner.cancel` asks the running job to stop and drops the queued one; a result that
  arrives after a cancel is not applied.
- A ``background`` job is work ahead of the user (the next candidate of a click): the runner is not busy
  for it, a job submitted while it runs cancels it and runs next, and it never replaces a queued job.
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ProMISeLib.errors import SegmentationCancelled

ProgressCallback = Callable[[float, str], None]

DONE, CANCELLED, FAILED = "done", "cancelled", "failed"


@dataclass
class Job:
    """A unit of work: prepare (main thread) -> compute (worker) -> apply (main thread)."""

    prepare: Callable[[], Any]
    compute: Callable[[Any, ProgressCallback, Callable[[], bool]], Any]
    apply: Callable[[Any], Any]
    finished: Callable[[Outcome], None] | None = None  # told on the main thread, after apply
    description: str = ""
    background: bool = False  # ahead-of-time work: yields to the next job submitted


@dataclass
class Outcome:
    """How a job ended: ``status`` is "done" (``value`` is what ``apply`` returned), "cancelled" or "failed"."""

    job: Job
    status: str
    value: Any = None
    error: BaseException | None = None
    details: str = ""  # the traceback of an unexpected failure


class BackgroundRunner:
    """A worker thread, one running job, at most one queued job (the latest), and the busy flag."""

    def __init__(self, name: str = "ProMISe worker"):
        self.name = name
        self._inbox: queue.Queue = queue.Queue()
        self._outbox: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._busy = False
        self._running: Job | None = None
        self._pending: Job | None = None
        self._cancel = threading.Event()
        self._resultReady = threading.Event()
        self._lock = threading.Lock()
        self._progress: tuple[float, str] = (0.0, "")
        #: Called (main thread) whenever busy, the queued job or the progress shown should be refreshed.
        self.listeners: list[Callable[[], None]] = []

    # --- state --------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """A job the user waits for is running (a background job does not count)."""
        return self._busy and not (self._running is not None and self._running.background)

    @property
    def queued(self) -> Job | None:
        """The job that runs next (the latest one submitted while busy), or None."""
        return self._pending

    @property
    def progress(self) -> tuple[float, str]:
        """The running job's latest (fraction, message)."""
        with self._lock:
            return self._progress

    def _notify(self) -> None:
        for listener in list(self.listeners):
            try:
                listener()
            except Exception:  # a broken listener must not stop the runner
                logging.exception("ProMISe: a runner listener failed")

    # --- main thread --------------------------------------------------------------------------
    def submit(self, job: Job) -> str:
        """Start ``job`` now ("started"), or queue it when busy ("queued", replacing a queued one); a background
        job running is cancelled for it ("started"), and a background job is dropped behind a queued one."""
        if self._busy:
            if job.background and self._pending is not None:
                return "dropped"
            self._pending = job
            preempts = self._running is not None and self._running.background and not job.background
            if preempts:
                self._cancel.set()
            self._notify()
            return "started" if preempts else "queued"
        started = self._start(job)
        self._notify()
        return "started" if started else "failed"

    def _start(self, job: Job) -> bool:
        try:
            work = job.prepare()
        except Exception as error:  # bad input: nothing runs, the job is told why
            self._finish(Outcome(job, CANCELLED if isinstance(error, SegmentationCancelled) else FAILED, None,
                                 error))
            return False
        self._busy = True  # before any listener refreshes the buttons
        self._running = job
        self._cancel.clear()
        with self._lock:
            self._progress = (0.0, job.description or "starting")
        self._ensureThread()
        self._inbox.put((job, work))
        return True

    def cancel(self) -> None:
        """Stop the running job (its result is not applied) and drop the queued one."""
        self._pending = None
        if self._busy:
            self._cancel.set()
        self._notify()

    def poll(self) -> list[Outcome]:
        """Apply finished results and start the queued job; call it from the main thread (a timer)."""
        outcomes = []
        self._resultReady.clear()  # before draining: a result put after this sets it again
        while True:
            try:
                job, work, (status, value, error, details) = self._outbox.get_nowait()
            except queue.Empty:
                break
            if status == DONE and self._cancel.is_set():
                status, error = CANCELLED, SegmentationCancelled("cancelled; nothing was changed")
            outcome = Outcome(job, status, None, error, details)
            if status == DONE:
                try:
                    outcome.value = job.apply(value)
                except Exception as applyError:
                    outcome = Outcome(job, FAILED, None, applyError, traceback.format_exc())
            self._busy, self._running = False, None
            outcomes.append(outcome)
            self._finish(outcome)
            pending, self._pending = self._pending, None
            if pending is not None:
                self._start(pending)  # busy again before the listeners hear of it
        if outcomes:
            self._notify()
        elif self._busy:
            self._notify()  # progress
        return outcomes

    def _finish(self, outcome: Outcome) -> None:
        if outcome.job.finished is not None:
            try:
                outcome.job.finished(outcome)
            except Exception:
                logging.exception("ProMISe: a job's finished callback failed")

    def waitForResult(self, timeout: float | None = None) -> bool:
        """Block until a result is ready for :meth:`poll` (console and tests); False on timeout."""
        return self._resultReady.wait(timeout)

    def runUntilIdle(self, timeout: float = 60.0) -> list[Outcome]:
        """Poll until nothing runs or is queued (console and tests; the GUI uses a timer instead)."""
        outcomes = []
        while self._busy:
            if not self.waitForResult(timeout):
                raise TimeoutError(f"the ProMISe worker did not finish within {timeout} s")
            outcomes.extend(self.poll())
        return outcomes

    def settle(self, timeout: float = 60.0) -> None:
        """Cancel a running background job and wait for it, before the engine is used off the worker."""
        if self._busy and not self.busy:
            self.cancel()
            self.runUntilIdle(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker thread (after the running job); the runner can start a new one later."""
        self.cancel()
        thread, self._thread = self._thread, None
        if thread is not None:
            self._inbox.put(None)
            thread.join(timeout)

    # --- worker thread ------------------------------------------------------------------------
    def _ensureThread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def _setProgress(self, fraction: float, message: str) -> None:
        with self._lock:
            self._progress = (float(fraction), str(message))

    def _loop(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                return
            job, work = item
            try:
                value = job.compute(work, self._setProgress, self._cancel.is_set)
                result = (DONE, value, None, "")
            except SegmentationCancelled as error:
                result = (CANCELLED, None, error, "")
            except BaseException as error:  # reported on the main thread
                result = (FAILED, None, error, traceback.format_exc())
            self._outbox.put((job, work, result))
            self._resultReady.set()
