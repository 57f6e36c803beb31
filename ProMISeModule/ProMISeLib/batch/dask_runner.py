"""Run a batch plan on Dask: local worker processes by default, or the workers of any Dask scheduler.

Each worker holds one Segmenter, loaded on its first image and kept for the next ones
(:class:`SegmenterPlugin`), and runs one image at a time: the rows of one image are one task. A task
that raises is retried once (``retries=1``); a task whose worker dies runs once more on another worker
(``allowed-failures`` 1 on the local scheduler; a cluster's scheduler keeps its own setting) while the
nanny replaces the worker. After that its rows are recorded as failed and the cohort goes on. Only
this process writes the output folder: the workers must read the images, not reach the folder.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

from distributed import Client, LocalCluster, as_completed, get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from ProMISeLib.batch.cohort import OnImage, Summary, cohort_folder, run_cohort
from ProMISeLib.batch.plan import ImageJob, Plan
from ProMISeLib.batch.work import ImageOutcome, failed_image, segment_image
from ProMISeLib.errors import InvalidInputError, ProMISeError

PLUGIN = "promise-segmenter"
WORKER_BYTES = 2.5e9  # what one worker holds: the model (about 2 GB) and an image


def cores() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers() -> int:
    """As many workers as there are cores, and as the available memory holds models."""
    import psutil

    return max(1, min(cores(), int(psutil.virtual_memory().available // WORKER_BYTES)))


def local_cluster(workers: int) -> LocalCluster:
    """``workers`` local worker processes (one Dask thread each; the cores shared among them by the plugin)."""
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                            silence_logs=logging.ERROR)


class SegmenterPlugin(WorkerPlugin):
    """One Segmenter per worker, made on its first image with the batch's options, used by one image at a time.

    ``threads``: the worker's torch (and ONNX Runtime) threads; None uses the worker's Dask threads.
    """

    def __init__(self, options: dict, threads: int | None = None) -> None:
        self.options, self.threads = dict(options), threads
        self._segmenter = None

    def setup(self, worker) -> None:
        import torch

        self.lock = threading.Lock()
        torch.set_num_threads(self.threads or worker.state.nthreads)

    def segmenter(self):
        """The worker's Segmenter, loaded once (a ProMISeError here is the model's, not an image's)."""
        if self._segmenter is None:
            from ProMISeLib.engine import Segmenter

            segmenter = Segmenter(**self.options)
            segmenter.load()
            self._segmenter = segmenter
        return self._segmenter


def segment_on_worker(job: ImageJob, modality: str) -> ImageOutcome:
    """The task: one image's rows with this worker's Segmenter."""
    plugin = get_worker().plugins[PLUGIN]
    with plugin.lock:
        return segment_image(plugin.segmenter(), job, modality)


def connect(workers: int | None, scheduler: str | None) -> tuple[Client, LocalCluster | None, int | None]:
    """A client of ``scheduler``, or of a new local cluster; the cluster (None when joined) and torch threads."""
    if scheduler:
        try:
            return Client(scheduler, timeout="30s"), None, None
        except (OSError, TimeoutError) as exc:
            raise InvalidInputError(f"cannot reach the Dask scheduler at {scheduler} ({exc})") from exc
    count = workers or default_workers()
    cluster = local_cluster(count)
    return Client(cluster), cluster, max(1, cores() // count)


def run_on_dask(plan: Plan, options: dict, modality: str = "auto", workers: int | None = None,
                scheduler: str | None = None, on_image: OnImage | None = None) -> Summary:
    """Run the plan's images on Dask and record each as it finishes (:func:`ProMISeLib.batch.cohort.run_cohort`)."""
    with cohort_folder(plan):
        if not plan.jobs:
            return run_cohort(plan, [], on_image)
        client, cluster, threads = connect(workers, scheduler)
        futures: dict = {}
        try:
            client.register_plugin(SegmenterPlugin(options, threads), name=PLUGIN)
            for job in plan.jobs:
                key = f"promise-{Path(job.output).name.removesuffix('.seg.nrrd')}-{uuid.uuid4().hex[:8]}"
                futures[client.submit(segment_on_worker, job, modality, key=key, retries=1, pure=False)] = job
            return run_cohort(plan, _finished(futures), on_image)
        finally:
            if futures:
                client.cancel(list(futures))
            client.close()
            if cluster is not None:
                cluster.close()


def _finished(futures: dict) -> Iterator[tuple[ImageJob, ImageOutcome]]:
    for future in as_completed(list(futures)):
        job = futures.pop(future)
        if future.status == "finished":
            yield job, future.result()
            continue
        if future.cancelled():
            yield job, failed_image(job, "the scheduler cancelled the task (did the cluster stop?)")
            continue
        error = future.exception()
        if isinstance(error, ProMISeError):  # the model, not an image: every other image would fail the same way
            raise error
        yield job, failed_image(job, error)
