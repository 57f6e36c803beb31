"""Fetch a pinned file (URL + SHA-256) into the cache, with progress, cancel and atomic writes.

Downloads go through pooch's HTTP downloader; the hash check, the archive member extraction
and the atomic rename are done here so that a partial or corrupt file never lands in the cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ProMISeLib.errors import DownloadError, SegmentationCancelled

ProgressCallback = Callable[[float, str], None]
CancelCallback = Callable[[], bool]


@dataclass(frozen=True)
class RemoteFile:
    """A file published at ``url`` with a known SHA-256.

    When ``member`` is set, ``url`` is an archive (.whl/.zip or .tar.gz) and the file is that
    member, checked against ``member_sha256``.
    """

    url: str
    sha256: str
    size: int
    filename: str
    member: str | None = None
    member_sha256: str | None = None



def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class _ProgressBridge:
    """pooch's progressbar protocol (total, update, reset, close) forwarding to a callback."""

    def __init__(self, label: str, progress: ProgressCallback | None, cancel: CancelCallback | None):
        self.label, self.progress, self.cancel = label, progress, cancel
        self.total = 0
        self.done = 0

    def update(self, n: int) -> None:
        self.done += n
        if self.cancel is not None and self.cancel():
            raise SegmentationCancelled(f"download of {self.label} cancelled")
        if self.progress is not None and self.total:
            self.progress(min(self.done / self.total, 1.0), f"downloading {self.label}")

    def reset(self) -> None:
        self.done = 0

    def close(self) -> None:
        pass


def _tqdm_bar(label: str, size: int):
    from tqdm.auto import tqdm

    # pooch tests the bar's truth value, which tqdm refuses without a total
    return tqdm(total=max(size, 1), unit="B", unit_scale=True, desc=label, leave=False)


def fetch(
    remote: RemoteFile,
    destination: Path,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> Path:
    """Download ``remote`` to ``destination`` unless a file with the right hash is already there.

    Shows a tqdm bar on a terminal when no progress callback is given. Raises DownloadError on
    network failure or hash mismatch, SegmentationCancelled when ``cancel()`` turns true.
    """
    destination = Path(destination)
    if remote.member:
        return fetch_members(remote, {remote.member: (remote.member_sha256 or "", destination)},
                             progress, cancel)[0]
    if destination.is_file() and sha256_of(destination) == remote.sha256:
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=".download-") as tmp:
        raw = _download_verified(remote, Path(tmp), progress, cancel)
        os.replace(raw, destination)
    return destination


def fetch_members(
    remote: RemoteFile,
    members: dict[str, tuple[str, Path]],
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> list[Path]:
    """Download the archive ``remote`` once and place each member ``{name: (sha256, destination)}``.

    Members already present with the right hash are not downloaded again.
    """
    wanted = {m: (sha, Path(dst)) for m, (sha, dst) in members.items()
              if not (Path(dst).is_file() and sha256_of(Path(dst)) == sha)}
    if wanted:
        workdir = next(iter(wanted.values()))[1].parent
        workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=workdir, prefix=".download-") as tmp:
            raw = _download_verified(remote, Path(tmp), progress, cancel)
            for member, (sha, dst) in wanted.items():
                payload = extract_member(raw, member, Path(tmp))
                if sha256_of(payload) != sha:
                    raise DownloadError(f"{member} in {remote.url} fails its SHA-256 check; not used")
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(payload, dst)
    return [Path(dst) for _, dst in members.values()]


def _download_verified(
    remote: RemoteFile, workdir: Path, progress: ProgressCallback | None, cancel: CancelCallback | None
) -> Path:
    """Download ``remote.url`` into ``workdir`` and check its SHA-256; return the file."""
    import pooch

    label = remote.filename
    bar = _ProgressBridge(label, progress, cancel) if (progress or cancel) else _tqdm_bar(label, remote.size)
    raw = workdir / "download"
    try:
        pooch.HTTPDownloader(progressbar=bar, timeout=60)(remote.url, str(raw), None)
    except SegmentationCancelled:
        raise
    except Exception as exc:  # requests/urllib errors differ by version
        raise DownloadError(f"could not download {remote.url}: {exc}") from exc
    finally:
        bar.close()
    got = sha256_of(raw)
    if got != remote.sha256:
        raise DownloadError(f"{remote.url} has SHA-256 {got[:12]}…, expected {remote.sha256[:12]}…; not used")
    return raw


def extract_member(archive: Path, member: str, workdir: Path) -> Path:
    """Copy one member out of a zip/wheel or tar archive."""
    target = workdir / ("member-" + hashlib.sha256(member.encode()).hexdigest()[:8])
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf, zf.open(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            with tarfile.open(archive) as tf:
                src = tf.extractfile(member)
                if src is None:
                    raise KeyError(member)
                with src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except (KeyError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise DownloadError(f"archive {archive.name} has no usable member {member}: {exc}") from exc
    return target
