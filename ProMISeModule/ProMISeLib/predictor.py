"""Slice predictor: encodes square slice crops (with an LRU embedding cache) and decodes prompts.

Like segment-anything's ``SamPredictor`` it separates the costly image encoding from the cheap
prompt decoding, but for many slices of one volume: embeddings are cached by the content of
the crop and the model, so a second click on the same lesion runs only the decoder.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .backends import TorchBackend
from .preprocess import CropWindow, InputScaling


class EmbeddingCache:
    """Least-recently-used store of image embeddings, bounded in megabytes."""

    def __init__(self, max_mb: float = 1024.0) -> None:
        self.max_bytes = int(max_mb * 1e6)
        self._items: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> torch.Tensor | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: tuple, value: torch.Tensor) -> None:
        size = value.element_size() * value.nelement()
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.element_size() * old.nelement()

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

    ``model`` is a PyTorch module (wrapped in a :class:`TorchBackend`) or any backend with
    ``encode``/``decode`` (e.g. :class:`ProMISeLib.onnx_backend.OnnxBackend`).
    """

    def __init__(self, model, model_name: str, scaling: InputScaling, device: torch.device,
                 cache: EmbeddingCache | None = None, batch_size: int = 4) -> None:
        self.backend = model if hasattr(model, "encode") and hasattr(model, "decode") else TorchBackend(model, device)
        self.model = getattr(self.backend, "model", None)
        self.model_name = model_name
        self.scaling = scaling
        self.device = device
        self.cache = cache if cache is not None else EmbeddingCache()
        self.batch_size = batch_size
        self.encoded = 0

    def _key(self, crop_pixels: np.ndarray) -> tuple:
        digest = hashlib.blake2b(np.ascontiguousarray(crop_pixels).tobytes(), digest_size=16).hexdigest()
        return (self.model_name, self.backend.runtime, crop_pixels.shape, digest)

    @torch.inference_mode()
    def embed(self, volume: np.ndarray, slices: Sequence[int], crop: CropWindow) -> dict[int, torch.Tensor]:
        """Embeddings (1, C, h, w) of the crop on each slice; encodes only what is not cached."""
        crops = {k: crop.extract(volume[k]) for k in slices}
        keys = {k: self._key(pixels) for k, pixels in crops.items()}
        result: dict[int, torch.Tensor] = {}
        todo = []
        for k in slices:
            cached = self.cache.get(keys[k])
            if cached is None:
                todo.append(k)
            else:
                result[k] = cached
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            features = self.backend.encode(self.scaling.to_input(np.stack([crops[k] for k in batch])))
            self.encoded += len(batch)
            for index, k in enumerate(batch):
                embedding = features[index : index + 1].contiguous()
                self.cache.put(keys[k], embedding)
                result[k] = embedding
        return result

    @torch.inference_mode()
    def decode(self, embedding: torch.Tensor, side: int, boxes: np.ndarray,
               points: np.ndarray | None = None, labels: np.ndarray | None = None) -> Decoded:
        """Decode N box prompts (x0, y0, x1, y1 in crop pixels), each with the same optional points.

        ``points`` is (P, 2) as (x, y) crop pixels with ``labels`` (P,) 1 positive / 0 negative.
        """
        scale = self.scaling.size / side
        scaled_points = None if points is None else np.asarray(points, dtype=np.float32) * scale
        low_res, iou = self.backend.decode(embedding, np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * scale,
                                           scaled_points, labels)
        size = self.scaling.size
        logits = F.interpolate(low_res, size=(size, size), mode="bilinear", align_corners=False)
        if side != size:
            logits = F.interpolate(logits, size=(side, side), mode="bilinear", align_corners=False)
        return Decoded(logits[:, 0].float().cpu().numpy(), iou[:, 0].float().cpu().numpy())
