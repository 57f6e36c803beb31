"""Slice predictor: encodes square slice crops (with an LRU embedding cache) and decodes prompts.

Like segment-anything's ``SamPredictor`` it separates the costly image encoding from the cheap
prompt decoding, but for many slices of one volume: embeddings are cached by the content of
the crop and the model, so a second click on the same lesion runs only the decoder.

``prefetch`` encodes slices ahead in one background thread while the caller decodes: its
embeddings go into the same cache, and ``embed`` waits for an encode already in flight rather
than running it twice.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ProMISeLib.io.preprocess import CropWindow, InputScaling
from ProMISeLib.runtime.backend import Backend
from ProMISeLib.runtime.embedding_store import EmbeddingStore


class EmbeddingCache:
    """Least-recently-used store of image embeddings, bounded in megabytes.

    With a ``store`` (:class:`~ProMISeLib.runtime.embedding_store.EmbeddingStore`) a miss in memory is
    looked up on disk, and every new embedding is written there too, as the store keeps it (so a cold and a
    warm store give the same values).
    """

    def __init__(self, max_mb: float = 1024.0, store: EmbeddingStore | None = None) -> None:
        self.max_bytes = int(max_mb * 1e6)
        self.store = store
        self._items: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> torch.Tensor | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return value
        stored = self.store.get(key) if self.store is not None else None
        with self._lock:
            if stored is None:
                self.misses += 1
                return None
            self.hits += 1
        self._remember(key, stored)
        return stored

    def put(self, key: tuple, value: torch.Tensor) -> torch.Tensor:
        """Keep ``value`` for ``key``; returns the value as kept (rounded as the store keeps it, with a store)."""
        if self.store is not None:
            value = self.store.round(value)
            self.store.put(key, value)
        return self._remember(key, value)

    def _remember(self, key: tuple, value: torch.Tensor) -> torch.Tensor:
        size = value.element_size() * value.nelement()
        with self._lock:
            if key in self._items:
                return self._items[key]
            self._items[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.element_size() * old.nelement()
        return value

    def peek(self, key: tuple) -> torch.Tensor | None:
        """The cached value without counting a hit or a miss, nor refreshing its age."""
        with self._lock:
            return self._items.get(key)

    def __contains__(self, key: tuple) -> bool:
        """Whether ``key`` is kept, in memory or in the store."""
        with self._lock:
            if key in self._items:
                return True
        return self.store is not None and self.store.has(key)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def megabytes(self) -> float:
        return self._bytes / 1e6

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class Decoded:
    """Masks and scores for N prompts on one crop."""

    logits: np.ndarray  # (N, side, side) float32 at crop resolution
    iou: np.ndarray  # (N,) the model's predicted IoU

    @property
    def masks(self) -> np.ndarray:
        return self.logits > 0


class SlicePredictor:
    """Encode and decode square crops of a normalised (0-255) volume with one frozen model.

    ``backend`` is a :class:`~ProMISeLib.runtime.backend.Backend` (PyTorch or ONNX Runtime).

    ``encoded`` counts the slices whose embedding was computed for a caller of :meth:`embed`,
    including those encoded ahead by :meth:`prefetch` (counted when first used);
    ``encoded_ahead`` counts every background encode, used or not.
    """

    def __init__(self, backend: Backend, model_name: str, scaling: InputScaling, device: torch.device,
                 cache: EmbeddingCache | None = None, batch_size: int = 4) -> None:
        self.backend = backend
        self.model_name = model_name
        self.scaling = scaling
        self.device = device
        self.cache = cache if cache is not None else EmbeddingCache()
        self.batch_size = batch_size
        self.encoded = 0
        self.decoded_prompts = 0  # box prompts decoded (the decoder's work, whatever the machine)
        self.encoded_ahead = 0
        self.prefetch_errors: list[BaseException] = []  # failures of background encodes, oldest first
        self._lock = threading.Lock()
        self._inflight: dict[tuple, Future] = {}  # key -> the encode running or queued for it
        self._ahead: OrderedDict[tuple, None] = OrderedDict()  # encoded ahead, not yet used by embed()
        self._pending: list[Future] = []  # background encodes not yet finished, for cancel_prefetch()
        self._executor: ThreadPoolExecutor | None = None

    def _key(self, crop_pixels: np.ndarray) -> tuple:
        digest = hashlib.blake2b(np.ascontiguousarray(crop_pixels).tobytes(), digest_size=16).hexdigest()
        return (self.model_name, self.backend.runtime, crop_pixels.shape, digest)

    def _encode(self, crops: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """One backend call on a batch of crops; one (1, C, h, w) embedding per crop."""
        features = self.backend.encode(self.scaling.to_input(np.stack(crops)))
        return [features[index : index + 1].contiguous() for index in range(len(crops))]

    def _count_ahead_used(self, key: tuple) -> bool:
        """True (and counted as encoded) the first time an embedding encoded ahead is used."""
        if key in self._ahead:
            del self._ahead[key]
            self.encoded += 1
            return True
        return False

    @torch.inference_mode()
    def embed(self, volume: np.ndarray, slices: Sequence[int], crop: CropWindow) -> dict[int, torch.Tensor]:
        """Embeddings (1, C, h, w) of the crop on each slice; encodes only what is not cached or in flight."""
        crops = {k: crop.extract(volume[k]) for k in slices}
        keys = {k: self._key(pixels) for k, pixels in crops.items()}
        result: dict[int, torch.Tensor] = {}
        waits: dict[int, Future] = {}
        own: dict[tuple, Future] = {}  # encodes this call runs, visible to prefetch() and other callers
        todo: list[int] = []
        with self._lock:
            for k in slices:
                key = keys[k]
                future = self._inflight.get(key)  # a background encode, another caller's, or this call's own
                if future is not None:
                    waits[k] = future
                    continue
                cached = self.cache.peek(key) if key in self._ahead else self.cache.get(key)
                if cached is not None:
                    self._count_ahead_used(key)
                    result[k] = cached
                    continue
                self._ahead.pop(key, None)  # evicted before use
                own[key] = self._inflight[key] = Future()
                todo.append(k)
        try:
            for start in range(0, len(todo), self.batch_size):
                batch = todo[start : start + self.batch_size]
                for k, encoded in zip(batch, self._encode([crops[k] for k in batch]), strict=True):
                    embedding = result[k] = self.cache.put(keys[k], encoded)
                    with self._lock:
                        self.encoded += 1
                        self._inflight.pop(keys[k], None)
                    own[keys[k]].set_result(embedding)
        except BaseException as exc:
            with self._lock:
                for key, future in own.items():
                    if not future.done():
                        self._inflight.pop(key, None)
                        future.set_exception(exc)
            raise
        for k, future in waits.items():
            result[k] = self._wait(future, keys[k], crops[k])
        return result

    def _wait(self, future: Future, key: tuple, pixels: np.ndarray) -> torch.Tensor:
        """The result of an encode in flight; encodes here when that one failed or was cancelled."""
        try:
            embedding = future.result()
        except Exception:  # recorded in prefetch_errors by the worker; a real fault recurs below
            embedding = None
        with self._lock:
            if embedding is not None:
                self._count_ahead_used(key)
                return embedding
        embedding = self.cache.put(key, self._encode([pixels])[0])
        with self._lock:
            self.encoded += 1
        return embedding

    def prefetch(self, volume: np.ndarray, slices: Sequence[int], crop: CropWindow) -> int:
        """Queue background encodes of the crop on ``slices`` not cached nor in flight; returns how many.

        One worker thread runs them in order; their embeddings go into the cache. A failure is kept
        in ``prefetch_errors`` and the slice is encoded again when :meth:`embed` asks for it.
        """
        queued = 0
        for k in slices:
            pixels = crop.extract(volume[k])
            key = self._key(pixels)
            with self._lock:
                if key in self._inflight or key in self.cache:
                    continue
                future: Future = Future()
                self._inflight[key] = future
                self._pending.append(future)
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="promise-encode-ahead")
                executor = self._executor
            executor.submit(self._run_ahead, key, pixels, future)
            queued += 1
        return queued

    def _run_ahead(self, key: tuple, pixels: np.ndarray, future: Future) -> None:
        """Worker: encode one crop into the cache, unless cancelled meanwhile; never raises."""
        if not future.set_running_or_notify_cancel():
            self._finish(key, future)
            return
        try:
            with torch.inference_mode():  # thread-local: the caller's mode does not reach this thread
                embedding = self.cache.put(key, self._encode([pixels])[0])
            with self._lock:
                self.encoded_ahead += 1
                self._ahead[key] = None
                while len(self._ahead) > 4096:
                    self._ahead.popitem(last=False)
        except BaseException as exc:  # kept, never lost with the thread; a waiting embed() encodes again
            with self._lock:
                self.prefetch_errors.append(exc)
            future.set_exception(exc)
        else:
            future.set_result(embedding)
        finally:
            self._finish(key, future)

    def _finish(self, key: tuple, future: Future) -> None:
        with self._lock:
            if self._inflight.get(key) is future:
                del self._inflight[key]
            if future in self._pending:
                self._pending.remove(future)

    def wait_prefetch(self, timeout: float | None = None) -> bool:
        """Wait for the queued background encodes; False when ``timeout`` seconds passed first."""
        with self._lock:
            pending = list(self._pending)
        return not wait(pending, timeout=timeout).not_done

    def cancel_prefetch(self) -> int:
        """Drop the queued background encodes (one already running finishes); returns how many."""
        with self._lock:
            pending = list(self._pending)
        cancelled = 0
        for future in pending:
            if future.cancel():
                cancelled += 1
                with self._lock:
                    for key, inflight in list(self._inflight.items()):
                        if inflight is future:
                            del self._inflight[key]
                    if future in self._pending:
                        self._pending.remove(future)
        return cancelled

    def close(self) -> None:
        """Cancel queued background encodes, wait for a running one and stop the worker thread."""
        self.cancel_prefetch()
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    @torch.inference_mode()
    def decode(self, embedding: torch.Tensor, side: int, boxes: np.ndarray,
               points: np.ndarray | None = None, labels: np.ndarray | None = None) -> Decoded:
        """Decode N box prompts (x0, y0, x1, y1 in crop pixels), each with the same optional points.

        ``points`` is (P, 2) as (x, y) crop pixels with ``labels`` (P,) 1 positive / 0 negative.
        """
        scale = self.scaling.size / side
        scaled_points = None if points is None else np.asarray(points, dtype=np.float32) * scale
        self.decoded_prompts += len(np.asarray(boxes).reshape(-1, 4))
        low_res, iou = self.backend.decode(embedding, np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * scale,
                                           scaled_points, labels)
        size = self.scaling.size
        logits = low_res
        if low_res.shape[-2:] != (size, size):  # SAM's 4x-the-embedding masks (LiteMedSAM's are already 256)
            logits = F.interpolate(low_res, size=(size, size), mode="bilinear", align_corners=False)
        if side != size:
            logits = F.interpolate(logits, size=(side, side), mode="bilinear", align_corners=False)
        return Decoded(logits[:, 0].float().cpu().numpy(), iou[:, 0].float().cpu().numpy())
