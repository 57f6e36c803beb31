"""User-adjustable locations: the labelled scans, and the cache for weights and samples.

Each has one environment variable, so a user can point it elsewhere:

* ``PROMISE_DATA_DIR``: the folder of labelled scans (a ``cases.json`` beside the images). By
  default the repository's ``../shared/data`` when it exists.
* ``PROMISE_CACHE_DIR``: where downloaded weights and samples go. By default the platform's
  user cache folder (``~/.cache/promise`` on Linux).
"""

from __future__ import annotations

import os
from pathlib import Path

#: The repository root when the engine runs from a checkout (ProMISeModule/ProMISeLib/io/..).
REPO_ROOT = Path(__file__).resolve().parents[3]


def data_dir() -> Path | None:
    """The labelled-scans folder, or None when neither the setting nor the default exists."""
    configured = os.environ.get("PROMISE_DATA_DIR")
    if configured:
        return Path(configured).expanduser()
    default = REPO_ROOT.parent / "shared" / "data"
    return default if default.is_dir() else None


def cache_dir() -> Path:
    """The folder for downloaded files (created on demand by the downloader)."""
    configured = os.environ.get("PROMISE_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    import pooch

    return Path(pooch.os_cache("promise"))
