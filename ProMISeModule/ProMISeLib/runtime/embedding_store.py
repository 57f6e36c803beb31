"""A persistent embedding store: the encoder's output for a crop, kept on disk between runs and processes.

The in-memory :class:`~ProMISeLib.runtime.predictor.EmbeddingCache` forgets everything when the process
ends. With a store beside it, an embedding computed once (keyed, like the cache, by the crop's content,
the model and the runtime) is written to disk and read back, memory-mapped, by any later run: a rerun of a
benchmark after a change to a decision costs decoder time only, and a scan segmented yesterday is not
encoded again today.

One ``.npy`` file per crop, named by the key's hash and the data's own hash. A file that is truncated,
of the wrong shape or whose data no longer matches its hash is deleted and encoded again (a corrupt store
repairs itself). Embeddings are kept as float16 by default (half the disk); the segmenter then uses the
rounded values on the first run too, so the same clicks give the same mask whether the store was cold or
warm.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ProMISeLib.errors import OutputError
from ProMISeLib.io.volumes import atomic_write

STORE_DTYPES = ("float16", "float32")


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


class EmbeddingStore:
    """Embeddings on disk under ``folder``, as ``dtype`` (float16 or float32)."""

    def __init__(self, folder: str | Path, dtype: str = "float16") -> None:
        if dtype not in STORE_DTYPES:
            raise ValueError(f"unknown embedding store dtype {dtype!r}; use one of {', '.join(STORE_DTYPES)}")
        self.folder = Path(folder).expanduser()
        self.dtype = np.dtype(dtype)
        self.reads = 0  # embeddings read back
        self.writes = 0  # embeddings written
        self.repaired = 0  # damaged files deleted (their crops are encoded again)
        self.messages: list[str] = []
        self.writable = True

    def _stem(self, key: tuple) -> tuple[Path, str]:
        name = hashlib.blake2b(repr((key, self.dtype.str)).encode(), digest_size=16).hexdigest()
        return self.folder / name[:2], name

    def _find(self, key: tuple) -> Path | None:
        folder, name = self._stem(key)
        found = sorted(folder.glob(f"{name}_*.npy")) if folder.is_dir() else []
        return found[0] if found else None

    def has(self, key: tuple) -> bool:
        """Whether a file for ``key`` is stored (it is checked when read)."""
        return self._find(key) is not None

    def round(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` as the store keeps it (float32 again, after a round trip through the store's dtype)."""
        if self.dtype == np.float32:
            return value
        return value.to(torch.float16).to(value.dtype)

    def get(self, key: tuple) -> torch.Tensor | None:
        """The stored embedding of ``key`` (float32), or None when there is none or its file was damaged."""
        path = self._find(key)
        if path is None:
            return None
        try:
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)
            if mapped.dtype != self.dtype or mapped.ndim != 4:
                raise ValueError(f"dtype {mapped.dtype}, {mapped.ndim} dimensions")
            data = np.array(mapped)  # copied out of the memory map
            if _digest(data.tobytes()) != path.stem.rsplit("_", 1)[1]:
                raise ValueError("its data no longer matches its hash")
        except (OSError, ValueError, EOFError) as exc:
            self._repair(path, exc)
            return None
        self.reads += 1
        return torch.from_numpy(data.astype(np.float32))

    def put(self, key: tuple, value: torch.Tensor) -> None:
        """Write ``value`` for ``key`` (atomically; an unwritable store is noted once and then skipped)."""
        if not self.writable or self._find(key) is not None:
            return
        data = np.ascontiguousarray(value.detach().cpu().numpy().astype(self.dtype))
        folder, name = self._stem(key)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(folder / f"{name}_{_digest(data.tobytes())}.npy", lambda tmp: np.save(tmp, data))
        except (OSError, OutputError) as exc:
            self.writable = False
            self.messages.append(f"the embedding store {self.folder} cannot be written ({exc}); "
                                 "embeddings are kept in memory only")
            return
        self.writes += 1

    def _repair(self, path: Path, exc: BaseException) -> None:
        self.repaired += 1
        self.messages.append(f"the embedding store's file {path.name} was damaged ({exc}); encoded it again")
        try:
            path.unlink()
        except OSError:
            pass

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("*/*.npy")) if self.folder.is_dir() else 0
