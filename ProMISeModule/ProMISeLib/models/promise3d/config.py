"""Sizes of the ProMISe 3D model and the preprocessing of its released checkpoints (no torch import).

This module is the one place for these facts. ``Promise3DConfig.full()`` is the released
architecture (Li et al., ISBI 2024, as its public code builds it); ``PRESETS`` holds the intensity
window and statistics each released checkpoint was trained with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ProMISeLib.io.weights import WeightsFile

#: Where the released checkpoints are published (a Google Drive folder: no direct download).
DOWNLOAD_PAGE = "https://drive.google.com/drive/folders/1Yol2tIaNYVve6JQ3osg2pjDRgwVeS-IF"
HOMEPAGE = "https://github.com/MedICL-VU/ProMISe"


@dataclass(frozen=True)
class Promise3DConfig:
    """Architecture of a :class:`~ProMISeLib.models.promise3d.model.Promise3D`.

    The crop (``crop_size``³ voxels at 1 mm) is upsampled ``upsample`` times; every one of the
    resulting slices goes through SAM's patch embedding, and ``slice_merge`` slices are merged into
    one token, so the token grid is cubic: ``grid = crop_size * upsample / patch_size``.
    """

    crop_size: int = 128
    upsample: int = 4
    patch_size: int = 16
    slice_merge: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    window_size: int = 8  # cubic attention window, in tokens; even blocks shift it by half
    sam_grid: int = 64  # SAM's positional-embedding grid (1024 px / 16)
    sam_window: int = 14  # SAM's window size: rel-pos tables of 2 * 14 - 1 in its windowed blocks
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)  # SAM's global blocks: rel-pos tables of 2 * 64 - 1
    neck_dim: int = 256
    prompt_depth: int = 2
    prompt_heads: int = 8
    prompt_mlp_dim: int = 2048
    global_tokens: int = 10
    num_prompt_encoders: int = 4  # the checkpoint holds four; only the last one is used
    decoder_dim: int = 128
    num_classes: int = 2
    attention_chunk: int = 16  # windows per attention call (bounds memory); 0: all at once

    def __post_init__(self) -> None:
        side = self.crop_size * self.upsample
        if side % self.patch_size or side % self.slice_merge:
            raise ValueError("crop_size * upsample must be a multiple of patch_size and slice_merge")
        if side // self.patch_size != side // self.slice_merge:
            raise ValueError("patch_size and slice_merge must be equal so that the token grid is cubic")
        if self.grid % self.window_size:
            raise ValueError(f"the token grid {self.grid} is not a multiple of the window {self.window_size}")
        if self.sam_grid % self.grid:
            raise ValueError(f"SAM's position grid {self.sam_grid} is not a multiple of the token grid {self.grid}")
        if self.crop_size % (2 * self.grid):
            raise ValueError("crop_size must be a multiple of twice the token grid (the decoder's output)")
        if self.depth % 4:
            raise ValueError("depth must be a multiple of 4 (four feature taps)")
        if self.embed_dim % self.num_heads or self.embed_dim % 2:
            raise ValueError("embed_dim must be even and a multiple of num_heads")
        if (self.neck_dim // 2) % self.prompt_heads:
            raise ValueError("neck_dim / 2 must be a multiple of prompt_heads")

    # --- derived sizes ------------------------------------------------------------------
    @property
    def grid(self) -> int:
        """Tokens per axis (32 in the released model)."""
        return self.crop_size * self.upsample // self.patch_size

    @property
    def feature_taps(self) -> tuple[int, ...]:
        """1-based block numbers whose output feeds the four ``neck_3d`` heads (3, 6, 9, 12)."""
        step = self.depth // 4
        return tuple(step * i for i in range(1, 5))

    # --- presets ------------------------------------------------------------------------
    @classmethod
    def full(cls, **changes: Any) -> Promise3DConfig:
        """The released sizes: 128³ crop, x4 to 512³, SAM ViT-B (768, 12 blocks, 12 heads), window 8."""
        return cls(**changes)

    @classmethod
    def reduced(cls, **changes: Any) -> Promise3DConfig:
        """A tiny model of the same structure that runs forward and backward on a CPU in well under a second."""
        values: dict[str, Any] = dict(
            crop_size=32, upsample=2, patch_size=8, slice_merge=8, embed_dim=96, depth=4, num_heads=2,
            window_size=4, sam_grid=16, sam_window=3, global_attn_indexes=(1, 3), neck_dim=32, prompt_heads=2,
            prompt_mlp_dim=64, decoder_dim=16,
        )
        values.update(changes)
        return cls(**values)

    # --- serialisation ------------------------------------------------------------------
    RUNTIME_FIELDS = ("attention_chunk",)  # how it runs, not what the weights fit
    #: Run-time options that no longer exist; weights files written with them still load.
    RETIRED_FIELDS = ("parity_permuted_click",)

    def architecture(self) -> dict[str, Any]:
        """:meth:`to_dict` without the run-time options: what a weights file must match."""
        return {k: v for k, v in self.to_dict().items() if k not in self.RUNTIME_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["global_attn_indexes"] = list(self.global_attn_indexes)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Promise3DConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in values.items() if k not in cls.RETIRED_FIELDS}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown Promise3DConfig fields: {', '.join(sorted(unknown))}")
        values = dict(values)
        if "global_attn_indexes" in values:
            values["global_attn_indexes"] = tuple(int(v) for v in values["global_attn_indexes"])
        return cls(**values)


@dataclass(frozen=True)
class Promise3DPreprocessing:
    """How a checkpoint wants its crop: clip to a CT window (HU), then z-normalise with fixed statistics."""

    window: tuple[float, float]
    mean: float
    std: float
    spacing_mm: float = 1.0

    def to_dict(self, config: Promise3DConfig | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"window_hu": list(self.window), "mean": self.mean, "std": self.std,
                               "spacing_mm": [self.spacing_mm] * 3}
        if config is not None:
            out["crop_size"] = config.crop_size
            out["upsample"] = config.upsample
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Promise3DPreprocessing:
        spacing = values.get("spacing_mm", 1.0)
        if isinstance(spacing, (list, tuple)):
            if len(set(spacing)) != 1:
                raise ValueError(f"ProMISe 3D needs isotropic spacing, got {spacing}")
            spacing = spacing[0]
        low, high = values["window_hu"]
        return cls(window=(float(low), float(high)), mean=float(values["mean"]), std=float(values["std"]),
                   spacing_mm=float(spacing))

    @property
    def pad_value(self) -> float:
        """The intensity (HU) that normalises to 0: the value of the zero padding past the image edge."""
        return self.mean


@dataclass(frozen=True)
class Promise3DPreset:
    """A released checkpoint: its model name, preprocessing and where to get it."""

    name: str
    title: str
    task: str
    preprocessing: Promise3DPreprocessing
    source_hint: str  # the file to fetch from DOWNLOAD_PAGE


PRESETS: dict[str, Promise3DPreset] = {
    p.name: p
    for p in (
        Promise3DPreset("promise-colon", "ProMISe 3D, colon tumour (CT)", "MSD Task10 colon, label 1",
                        Promise3DPreprocessing(window=(-57.0, 175.0), mean=65.175, std=32.651),
                        "colon_pretrain_promise.pth"),
        Promise3DPreset("promise-pancreas", "ProMISe 3D, pancreas tumour (CT)", "MSD Task07 pancreas, label 2",
                        Promise3DPreprocessing(window=(-39.0, 204.0), mean=68.452, std=63.423),
                        "the pancreas *_promise.pth file"),
    )
}

#: Each released checkpoint's weights file: our conversion in the cache, checked against its sidecar (the models'
#: registry entries hold these).
WEIGHTS: dict[str, WeightsFile] = {
    name: WeightsFile(
        name=name, filename=f"{name}.safetensors",
        sha256="",  # our conversion: checked against the SHA-256 in its sidecar
        size=529_746_992,  # 132.4 M float32 values (no attention-mask buffers)
        remote=None, homepage=HOMEPAGE, page=DOWNLOAD_PAGE, added=True, source_hint=preset.source_hint,
        siblings=tuple(other for other in PRESETS if other != name))
    for name, preset in PRESETS.items()
}
