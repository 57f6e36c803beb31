"""Access to segment-anything's model modules without importing its top-level package.

``segment_anything/__init__.py`` imports the automatic mask generator, which imports
torchvision. torchvision is not needed for the model modules, and PyPI's torchvision does not
import beside a CPU-only torch build, so the modeling subpackage is loaded on its own.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from functools import cache


@cache
def sam_modeling() -> types.ModuleType:
    """Return ``segment_anything.modeling`` (Sam, ImageEncoderViT, PromptEncoder, MaskDecoder...)."""
    try:
        return importlib.import_module("segment_anything.modeling")
    except ImportError:
        pass
    spec = importlib.util.find_spec("segment_anything")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("segment-anything is not installed: pip install segment-anything")
    # A bare package object lets Python resolve the subpackage without running __init__.py.
    sys.modules.pop("segment_anything", None)
    package = types.ModuleType("segment_anything")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["segment_anything"] = package
    return importlib.import_module("segment_anything.modeling")
