"""Encode-ahead: background encodes fill the cache, never run twice, never lose an error, and change no mask."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from ProMISeLib.io.preprocess import CropWindow, InputScaling
from ProMISeLib.runtime.predictor import SlicePredictor

SIDE = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class CountingBackend:
    """A fake encoder: counts calls, can be held on a gate, can fail its first ``fail`` calls."""

    runtime = "fake"

    def __init__(self, gate: threading.Event | None = None, fail: int = 0) -> None:
        self.calls = 0
        self.images = 0
        self.gate = gate
        self.fail = fail
        self.started = threading.Event()
        self._lock = threading.Lock()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        with self._lock:
            self.calls += 1
            self.images += images.shape[0]
            failing = self.calls <= self.fail
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10), "the test never opened the gate"
        if failing:
            raise RuntimeError("encoder failed")
        return images.mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1).expand(-1, 2, 4, 4).clone()

    def decode(self, embedding, boxes, points=None, labels=None):
        raise NotImplementedError


def make(backend: CountingBackend) -> tuple[SlicePredictor, np.ndarray, CropWindow]:
    volume = np.random.default_rng(0).uniform(0, 255, size=(6, 40, 40)).astype(np.float32)
    predictor = SlicePredictor(backend, "fake", InputScaling(SIDE), torch.device("cpu"))
    return predictor, volume, CropWindow(2, 3, SIDE)


def test_prefetch_fills_the_cache_and_embed_encodes_nothing():
    backend = CountingBackend()
    predictor, volume, crop = make(backend)
    assert predictor.prefetch(volume, [1, 2], crop) == 2
    assert predictor.wait_prefetch(10)
    assert backend.images == 2 and len(predictor.cache) == 2 and predictor.encoded_ahead == 2
    assert predictor.prefetch(volume, [1, 2], crop) == 0  # cached: nothing queued again
    got = predictor.embed(volume, [1, 2], crop)
    assert backend.images == 2  # the embeddings came from the background encodes
    assert predictor.encoded == 2  # counted as encoded once, when first used
    reference = SlicePredictor(CountingBackend(), "fake", InputScaling(SIDE), torch.device("cpu"))
    expected = reference.embed(volume, [1, 2], crop)
    for k in (1, 2):
        torch.testing.assert_close(got[k], expected[k])
    predictor.embed(volume, [1], crop)
    assert predictor.encoded == 2 and predictor.cache.hits >= 1  # a second use is a plain cache hit
    predictor.close()


def test_embed_waits_for_a_prefetch_in_flight_instead_of_encoding_twice():
    gate = threading.Event()
    backend = CountingBackend(gate)
    predictor, volume, crop = make(backend)
    predictor.prefetch(volume, [3], crop)
    assert backend.started.wait(10)  # the worker is inside encode, held on the gate
    out: dict = {}
    racer = threading.Thread(target=lambda: out.update(predictor.embed(volume, [3, 4], crop)))
    racer.start()
    time.sleep(0.2)
    assert racer.is_alive()  # slice 4 is encoded by embed itself, slice 3 is awaited
    gate.set()
    racer.join(10)
    assert not racer.is_alive()
    assert backend.images == 2  # 3 once (background) and 4 once (embed), never 3 twice
    assert set(out) == {3, 4} and predictor.encoded == 2
    predictor.close()


def test_prefetch_skips_a_slice_that_embed_is_encoding():
    gate = threading.Event()
    backend = CountingBackend(gate)
    predictor, volume, crop = make(backend)
    racer = threading.Thread(target=predictor.embed, args=(volume, [2], crop))
    racer.start()
    assert backend.started.wait(10)
    assert predictor.prefetch(volume, [2, 3], crop) == 1  # 2 is in flight in embed(); only 3 queued
    gate.set()
    racer.join(10)
    assert predictor.wait_prefetch(10)
    assert backend.images == 2
    predictor.close()


def test_a_failing_background_encode_is_kept_and_embed_recovers():
    backend = CountingBackend(fail=1)
    predictor, volume, crop = make(backend)
    predictor.prefetch(volume, [1], crop)
    predictor.wait_prefetch(10)
    assert len(predictor.prefetch_errors) == 1 and "encoder failed" in str(predictor.prefetch_errors[0])
    got = predictor.embed(volume, [1], crop)  # encodes again, successfully
    assert 1 in got and backend.calls == 2 and predictor.encoded == 1
    predictor.close()


def test_embed_raises_when_the_encoder_keeps_failing_after_a_failed_prefetch():
    gate = threading.Event()
    backend = CountingBackend(gate, fail=5)
    predictor, volume, crop = make(backend)
    predictor.prefetch(volume, [1], crop)
    assert backend.started.wait(10)
    errors: list = []

    def call() -> None:
        try:
            predictor.embed(volume, [1], crop)
        except RuntimeError as exc:
            errors.append(exc)

    racer = threading.Thread(target=call)
    racer.start()
    gate.set()
    racer.join(10)
    assert len(errors) == 1 and len(predictor.prefetch_errors) == 1  # neither failure is lost
    assert not predictor._inflight  # nothing left waiting for a result that never comes
    predictor.close()


def test_cancel_drops_queued_encodes_and_close_stops_the_worker():
    gate = threading.Event()
    backend = CountingBackend(gate)
    predictor, volume, crop = make(backend)
    assert predictor.prefetch(volume, [1, 2, 3], crop) == 3
    assert backend.started.wait(10)
    assert predictor.cancel_prefetch() == 2  # 2 and 3 were queued behind the running 1
    gate.set()
    predictor.close()
    assert backend.images == 1 and predictor._executor is None and not predictor._inflight
    predictor.embed(volume, [2], crop)  # a cancelled slice is simply encoded when needed
    assert backend.images == 2
    assert predictor.prefetch(volume, [4], crop) == 1  # a closed predictor starts a new worker on demand
    assert predictor.wait_prefetch(10) and backend.images == 3
    predictor.close()


@pytest.mark.slow
def test_masks_are_identical_with_and_without_encode_ahead(cases):
    from conftest import centre_click
    from ProMISeLib.engine import Segmenter
    from ProMISeLib.io.sample_data import read_case

    pytest.importorskip("onnxruntime")
    volume, geometry, truth = read_case(cases["STS_019_MR_T1"])
    click = centre_click(truth)[::-1]
    results = {}
    for ahead in (0, 2):
        segmenter = Segmenter(device="cpu", runtime="onnx", prompts="heuristic")
        segmenter.encode_ahead = ahead  # the runtime's knob (2 on CUDA, 0 on a CPU)
        results[ahead] = segmenter.segment(volume, geometry, [click], space="ijk")
        predictor = segmenter.load()
        assert (predictor.encoded_ahead > 0) == (ahead > 0)
        assert not predictor.prefetch_errors
        predictor.close()
    np.testing.assert_array_equal(results[2].mask, results[0].mask)
    assert results[2].encoded_slices == results[0].encoded_slices
