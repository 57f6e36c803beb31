"""The benchmarks' one harness: the cases, the first prompts and corrective clicks, the interactive protocol,
the metrics, the worker processes and the per-scan JSON. Every benchmark script builds on it.

    from harness import load, make_segmenter, protocol, run_cases, select
    rows = run_cases(my_job, select("", "0/1"), Path("RUN"), jobs=2)   # my_job(case, **params) -> dict

**The embedding store.** Segmenters made here keep every crop's embedding on disk
(``ProMISeLib.runtime.embedding_store``; ``PROMISE_BENCH_STORE``, default ``<cache>/embedding-store``,
``none`` to turn it off): a rerun after a change to a decision costs the decoder only, and the masks are the
same as the cold run's (float16 embeddings in both). A run without a store (float32 embeddings, as the CLI and
Slicer run) differs by a few voxels: up to 0.0026 Dice on 19 of 39 protocol steps of STS_006_CT, STS_016_MR_T1
and brain1 (2026-12-08).

**The decode memo.** They also replay the decoder (``DecodeMemo``, a plug-in through the walk's extension
point ``adapt_backend``; ``PROMISE_BENCH_MEMO``, default ``<store>/decoded-f32``): the logits of a decode call are
kept on disk by the hash of its embedding and prompts, as float32, so a replay gives the very logits the decoder
gave and a rerun decodes only the prompts a change made new; the masks are those of a run without it (float16
logits, kept in ``<store>/decoded`` until 2026-12-08, moved a few boundary voxels: up to 0.0005 Dice on 53 of 384
protocol steps; nothing reads that folder now, so it can be deleted).

**Held out by patient.** ``prompter_for(case, folds)`` is the learned prompter's fold that never saw the
case's patient (``promise train-prompting --folds 19``); without folds the shipped prompter runs. Build the
segmenter with ``resolved_prompts(prompts, folds)``: a fold's card names no default mode.

**Timings.** The speed and memory scripts take their scans from ``named`` and ``load`` but build their own
``Segmenter`` (no store, no memo), so a first click is timed cold; ``PROMISE_BENCH_STORE=none`` does the same for
the scripts here.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import cache, cached_property
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from ProMISeLib.engine import Segmenter
from ProMISeLib.errors import ProMISeError
from ProMISeLib.io.geometry import ImageGeometry
from ProMISeLib.io.paths import cache_dir
from ProMISeLib.io.sample_data import (
    Case,
    corrective_click,
    lesion_click,
    random_lesion_click,
    read_case,
    select_cases,
)
from ProMISeLib.metrics import dice, hd95
from ProMISeLib.walk import WalkPlugin

STORE_ENV = "PROMISE_BENCH_STORE"
MEMO_ENV = "PROMISE_BENCH_MEMO"
#: The protocol's first prompts: the centre click, random clicks inside (draw N), the label's box.
PROTOCOL_MODES = ("centre", "random:1", "random:2", "box")


@dataclass
class Scan:
    """One labelled scan in memory."""

    case_id: str
    volume: np.ndarray
    geometry: ImageGeometry
    truth: np.ndarray  # bool (K, J, I)

    @property
    def spacing_kji(self) -> tuple[float, float, float]:
        return tuple(self.geometry.spacing[::-1])

    @cached_property
    def volume_ml(self) -> float:
        return float(self.truth.sum() * self.geometry.voxel_volume_ml)


def select(ids: str = "", shard: str = "0/1") -> list[Case]:
    """The tumour cases named (all when empty), shard "I/N" of them."""
    return select_cases(ids, shard)


def named(ids: str) -> list[Case]:
    """The tumour cases named in ``ids`` (comma-separated), in that order; an unknown id is an error."""
    found = {c.id: c for c in select(ids)}
    missing = [i for i in filter(None, ids.split(",")) if i not in found]
    if missing:
        raise SystemExit(f"no labelled tumour case {', '.join(missing)} in the data folder (PROMISE_DATA_DIR)")
    return [found[i] for i in filter(None, ids.split(","))]


def load(case: Case) -> Scan:
    volume, geometry, truth = read_case(case)
    return Scan(case.id, volume, geometry, truth)


def store_folder() -> Path | None:
    """The benchmarks' embedding store (``PROMISE_BENCH_STORE``; ``none``: no store)."""
    configured = os.environ.get(STORE_ENV, "")
    if configured.lower() == "none":
        return None
    return Path(configured).expanduser() if configured else cache_dir() / "embedding-store"


class _MemoBackend:
    """A backend whose ``decode`` is replayed from disk where the same embedding and prompts were decoded."""

    def __init__(self, backend, folder: Path) -> None:
        self._backend = backend
        self.folder = folder
        self.replayed = 0
        self.decoded = 0

    def __getattr__(self, name: str):
        return getattr(self._backend, name)

    def decode(self, embedding, boxes, points=None, labels=None):
        import torch

        digest = hashlib.blake2b(digest_size=16)
        for part in (embedding.detach().cpu().float().numpy(), np.asarray(boxes, np.float32), points, labels):
            digest.update(b"-" if part is None else np.ascontiguousarray(part).tobytes())
        digest.update(self._backend.runtime.encode())
        name = digest.hexdigest()
        path = self.folder / name[:2] / f"{name}.npz"
        try:
            with np.load(path) as kept:
                logits, iou = kept["logits"], kept["iou"]
            self.replayed += 1
            return torch.from_numpy(logits), torch.from_numpy(iou)
        except (OSError, ValueError, KeyError, EOFError):
            pass  # not decoded yet, or a damaged file: decoded again (and rewritten)
        low_res, iou = self._backend.decode(embedding, boxes, points, labels)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.{os.getpid()}.npz")
        np.savez(tmp, logits=low_res.detach().cpu().numpy().astype(np.float32),
                 iou=iou.detach().cpu().numpy().astype(np.float32))
        os.replace(tmp, path)
        self.decoded += 1
        return low_res, iou


class DecodeMemo(WalkPlugin):
    """Replays the decoder from disk (see the module's docstring); changes no result."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def adapt_backend(self, backend):
        return _MemoBackend(backend, self.folder)


def memo_folder() -> Path | None:
    """The decode memo's folder (``PROMISE_BENCH_MEMO``; ``none``, or no embedding store: no memo)."""
    configured = os.environ.get(MEMO_ENV, "")
    store = store_folder()
    if configured.lower() == "none" or (store is None and not configured):
        return None
    return Path(configured).expanduser() if configured else store / "decoded-f32"


_SEGMENTERS: dict[tuple, Segmenter] = {}
_MEMOS: dict[Path, DecodeMemo] = {}


def make_segmenter(runtime: str = "onnx", prompts: str = "auto", plugins: tuple = (), **kwargs) -> Segmenter:
    """A CPU segmenter with the benchmarks' embedding store and decode memo, made once per process for the same
    arguments."""
    key = (runtime, prompts, plugins, tuple(sorted(kwargs.items())))
    if key not in _SEGMENTERS:
        memo = memo_folder()
        if memo is not None:
            plugins = (*plugins, _MEMOS.setdefault(memo, DecodeMemo(memo)))
        _SEGMENTERS[key] = Segmenter(device="cpu", runtime=runtime, prompts=prompts, cache_mb=600, plugins=plugins,
                                     embedding_store=store_folder(), **kwargs)
    return _SEGMENTERS[key]


def apply_settings(segmenter: Segmenter, settings: str | None) -> None:
    """The mode's default walk settings, then ``settings`` (JSON ``{stage: {field: value}}``) over them."""
    segmenter.settings = None
    if settings:
        stages = {stage: {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
                  for stage, fields in json.loads(settings).items()}
        segmenter.settings = segmenter.run_settings().changed(**stages)


def prompter_for(case_id: str, folds: str | None) -> str | None:
    """The prompter fold that never saw the case's patient (None: the shipped prompter)."""
    if not folds:
        return None
    from ProMISeTrain.prompter_pipeline import held_out_fold

    return str(held_out_fold(Path(folds), case_id))


@cache
def resolved_prompts(prompts: str, folds: str | None) -> str:
    """The prompts mode to build a segmenter with: ``prompts``, but with ``folds`` an ``auto`` becomes the mode the
    shipped prompter's card names (a fold's card names none, and ``auto`` would then run ``learned``)."""
    if prompts != "auto" or not folds:
        return prompts
    return Segmenter(device="cpu", prompts=prompts).resolved_prompts


def label_box(truth: np.ndarray) -> list[list[int]]:
    """The label's bounding box, one voxel larger on each side, as (i, j, k) corners."""
    found = np.argwhere(truth)
    lo = np.maximum(found.min(axis=0) - 1, 0)
    hi = np.minimum(found.max(axis=0) + 1, np.array(truth.shape) - 1)
    return [lo[::-1].tolist(), hi[::-1].tolist()]


def first_click(mode: str, scan: Scan) -> tuple[int, int, int]:
    """The (k, j, i) first click of ``centre`` or ``random:N`` (the same draw for every run)."""
    if mode == "centre":
        return lesion_click(scan.truth)
    seed = int(mode.removeprefix("random:"))
    rng = np.random.default_rng([seed, zlib.crc32(scan.case_id.encode())])
    return random_lesion_click(scan.truth, scan.spacing_kji, rng)


def first_prompt(mode: str, scan: Scan) -> dict:
    """The first prompt of a mode: {"points": [(i, j, k)], "box": corners or None}."""
    if mode.startswith("box"):
        return {"points": [], "box": label_box(scan.truth)}
    return {"points": [first_click(mode, scan)[::-1]], "box": None}


def score(mask: np.ndarray, scan: Scan) -> dict:
    """Dice and HD95 (mm; None for an empty mask) against the label."""
    mask = mask.astype(bool)
    return {"dice": dice(mask, scan.truth), "hd95_mm": hd95(mask, scan.truth, scan.spacing_kji) if mask.any() else None}


def protocol(segmenter: Segmenter, scan: Scan, mode: str, clicks: int,
             record: Callable[[int, np.ndarray], None] | None = None, encode_ahead: bool = True,
             **segment_kwargs) -> dict:
    """The interactive protocol on one scan: the first prompt of ``mode``, then up to ``clicks`` corrective
    clicks at the deepest voxel of the largest error (positive on a miss, negative on a false part). Every click
    is a new ``Segmenter.segment`` call with all the prompts so far, as the Slicer panel and the CLI make it.
    ``record(n, mask)`` sees the mask after each prompt (n = 0 for the first).

    With ``encode_ahead``, between two clicks the segmenter encodes ahead for the next correction
    (``encode_for_corrections``), as the Slicer panel's worker does while the user looks at the result: that
    time is the step's ``ahead_seconds``, not its ``seconds``."""
    prompt = first_prompt(mode, scan)
    positives, negatives, box = [tuple(p) for p in prompt["points"]], [], prompt["box"]
    steps, result = [], None
    segmenter.memory.clear()
    corrections = clicks if mode != "box" else 0
    try:
        for n in range(corrections + 1):
            positive = None
            if n:
                found = corrective_click(result.mask, scan.truth, scan.spacing_kji)
                if found is None:
                    break
                click, positive = found
                (positives if positive else negatives).append(tuple(click[::-1]))
            kwargs = dict(segment_kwargs, **({"box": box} if box is not None else {}))
            started = time.perf_counter()
            result = segmenter.segment(scan.volume, scan.geometry, positives or None,
                                       negative_points=negatives or None, space="ijk", **kwargs)
            seconds = time.perf_counter() - started
            if record is not None:
                record(n, result.mask)
            step = {**score(result.mask, scan), "seconds": seconds, "positive": positive,
                    "decoded_prompts": result.decoded_prompts, "encoded_slices": result.encoded_slices}
            if encode_ahead and n < corrections:  # the user looks at the result; the worker encodes ahead
                started = time.perf_counter()
                step["ahead_slices"] = segmenter.encode_for_corrections(
                    scan.volume, scan.geometry, positives or None, negative_points=negatives or None, space="ijk",
                    **kwargs)
                step["ahead_seconds"] = time.perf_counter() - started
            steps.append(step)
    except ProMISeError as exc:
        return {"steps": steps, "error": str(exc).splitlines()[0]}
    return {"steps": steps, "method": result.method if result is not None else None}


def alternatives(segmenter: Segmenter, scan: Scan, mode: str) -> list[dict]:
    """The first click's distinct hypotheses (``segment(alternative=n)``), each walked alone and scored, best
    first as the engine ranks them; [] for a box prompt."""
    prompt = first_prompt(mode, scan)
    if prompt["box"] is not None:
        return []
    scored, count, n = [], 1, 0
    while n < count:
        started = time.perf_counter()
        try:
            result = segmenter.segment(scan.volume, scan.geometry, prompt["points"], space="ijk", alternative=n)
        except ProMISeError as exc:
            scored.append({"error": str(exc).splitlines()[0]})
            break
        count = result.alternatives
        scored.append({**score(result.mask, scan), "seconds": time.perf_counter() - started})
        n += 1
    return scored


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _size(case: Case) -> int:
    return case.image.stat().st_size


def run_cases(job: Callable[..., dict], cases: Iterable[Case], out: Path, jobs: int = 2, threads: int = 1,
              **params) -> list[dict]:
    """``job(case, **params)`` on every case without a result in ``out`` (``<case id>.json``), in ``jobs`` worker
    processes (largest scans first), each row written as it ends; returns every row of ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    todo = sorted((c for c in cases if not (out / f"{c.id}.json").exists()), key=_size, reverse=True)
    if todo and jobs <= 1:
        _worker_init(threads)
        for case in todo:
            _save(out, case, job(case, **params))
    elif todo:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=_worker_init,
                                 initargs=(threads,)) as pool:
            futures = {pool.submit(job, case, **params): case for case in todo}
            for future in as_completed(futures):
                _save(out, futures[future], future.result())
    return read_rows(out)


def _save(out: Path, case: Case, row: dict) -> None:
    (out / f"{case.id}.json").write_text(json.dumps(row, indent=1))
    print(json.dumps({"case": case.id, **{k: v for k, v in row.items() if isinstance(v, (int, float, str))}}),
          flush=True)


def read_rows(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(out).glob("*.json"))]


def quantiles(values: list[float]) -> dict:
    """Median, 90th percentile and worst of ``values`` (latencies), and how many."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {"n": len(ordered), "median": statistics.median(ordered),
            "p90": float(np.percentile(ordered, 90)), "max": ordered[-1]}
