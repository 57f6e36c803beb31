"""Model registry: names a user types (``--model``) mapped to a builder, weights and input scaling."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ProMISeLib.errors import InvalidInputError
from ProMISeLib.io.preprocess import InputScaling
from ProMISeLib.io.weights import weights_file, weights_status
from ProMISeLib.models.promise3d.config import PRESETS, Promise3DPreprocessing

if TYPE_CHECKING:  # torch is imported only when a model is built
    from torch import nn

DEFAULT_MODEL = "litemedsam"


SLICE = "slice"
VOLUME3D = "volume3d"


@dataclass(frozen=True)
class ModelSpec:
    """A segmentation backbone the engine can run.

    ``kind`` tells the engine how: ``"slice"`` models segment slice by slice (box prompts propagated
    through the lesion, scaled by ``scaling``); ``"volume3d"`` models (ProMISe 3D) segment a whole
    crop around the click in one pass, with their ``preprocessing``.
    """

    name: str
    title: str
    weights: str
    scaling: InputScaling | None
    build: Callable[[Path], nn.Module]
    bundled: bool = False  # weights ship with a package the engine installs
    point_prompts: bool = True  # False for box-trained models, where a click as a point prompt misleads
    kind: str = SLICE
    preprocessing: Promise3DPreprocessing | None = None  # volume3d models only
    prompter: str | None = None  # learned prompter shipped for this backbone (ProMISeLib/assets/<name>.safetensors)

    @property
    def prompter_path(self) -> Path | None:
        """The shipped learned-prompter weights, if this backbone has them."""
        return _asset(self.prompter)

    @property
    def size_mb(self) -> float:
        return weights_file(self.weights).size_mb


def _asset(name: str | None) -> Path | None:
    return None if name is None else Path(__file__).resolve().parent.parent / "assets" / f"{name}.safetensors"


@dataclass(frozen=True)
class ModelInfo:
    """What a UI shows about a model."""

    name: str
    title: str
    size_mb: float
    installed: bool
    location: str | None
    downloadable: bool
    bundled: bool


def _build_litemedsam(path: Path) -> nn.Module:
    from ProMISeLib.models.litemedsam import build_litemedsam

    return build_litemedsam(path)


def _sam_builder(kind: str) -> Callable[[Path], nn.Module]:
    def build(path: Path) -> nn.Module:
        from ProMISeLib.models.sam import build_sam

        return build_sam(kind, path)

    return build


def _build_promise3d(path: Path) -> nn.Module:
    from ProMISeLib.models.promise3d.checkpoint import load_promise3d

    return load_promise3d(path).model


def _promise3d_spec(name: str) -> ModelSpec:
    preset = PRESETS[name]
    return ModelSpec(name, f"{preset.title}; Li et al.; added by hand", name, None, _build_promise3d,
                     kind=VOLUME3D, preprocessing=preset.preprocessing)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("litemedsam", "LiteMedSAM (TinyViT, 256 px; bundled)", "lite_medsam",
                  InputScaling(256, "minmax"), _build_litemedsam, bundled=True,
                  point_prompts=False, prompter="litemedsam-prompter"),
        ModelSpec("sam_vit_b", "SAM ViT-B (1024 px; 375 MB download)", "sam_vit_b",
                  InputScaling(1024, "meanstd"), _sam_builder("vit_b")),
        ModelSpec("sam_vit_l", "SAM ViT-L (1024 px; 1.2 GB download)", "sam_vit_l",
                  InputScaling(1024, "meanstd"), _sam_builder("vit_l")),
        ModelSpec("sam_vit_h", "SAM ViT-H (1024 px; 2.6 GB download)", "sam_vit_h",
                  InputScaling(1024, "meanstd"), _sam_builder("vit_h")),
        _promise3d_spec("promise-colon"),
        _promise3d_spec("promise-pancreas"),
    )
}


def get_model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise InvalidInputError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None


def list_models() -> list[ModelInfo]:
    """Every registered model with its install state; the default first."""
    infos = []
    for spec in sorted(MODELS.values(), key=lambda s: (s.name != DEFAULT_MODEL, s.name)):
        installed, location = weights_status(spec.weights)
        entry = weights_file(spec.weights)
        infos.append(ModelInfo(spec.name, spec.title, spec.size_mb, installed,
                               str(location) if location else None, entry.remote is not None, spec.bundled))
    return infos


def add_model_weights(name: str, path: str | Path) -> Path:
    """Install weights downloaded by hand (``promise weights add``) into the cache; returns the file.

    ProMISe 3D checkpoints are converted; any other model's file (or the archive it ships in) is checked
    against its pinned SHA-256 and copied, the offline route for a machine without the network.
    """
    spec = get_model_spec(name)
    if spec.kind != VOLUME3D:
        from ProMISeLib.io.weights import install_local_weights

        return install_local_weights(spec.weights, path)
    from ProMISeLib.models.promise3d.checkpoint import convert_released_checkpoint

    return convert_released_checkpoint(path, spec.weights)
