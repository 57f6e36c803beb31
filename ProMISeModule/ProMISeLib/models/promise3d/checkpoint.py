"""ProMISe 3D weights: read a released checkpoint, convert it to our format, load our format.

Released checkpoints (``colon_pretrain_promise.pth`` ...) are ``torch.save`` dicts with
``encoder_dict``, ``feature_dict`` (four prompt encoders) and ``decoder_dict`` (whose ``head`` is
called ``cls_hao``). They are read with ``weights_only=True``: a file that needs arbitrary Python
objects is refused, never executed.

Our format is one safetensors file (keys ``encoder.*``, ``prompt.0-3.*``, ``decoder.*``; without the
shifted-window ``attn_mask`` buffers, which the model rebuilds) and a JSON sidecar ``NAME.json``
beside it: model name, architecture (:class:`Promise3DConfig`), preprocessing, the source file's
SHA-256 and the safetensors file's SHA-256. Files are written atomically.

    convert_released_checkpoint("colon_pretrain_promise.pth", "promise-colon")  # -> cache path
    model, preprocessing = load_promise3d("promise-colon", device="cpu")
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from ProMISeLib.errors import CheckpointError
from ProMISeLib.io.download import sha256_of
from ProMISeLib.io.weights import cached_path, read_sidecar, sidecar_path
from ProMISeLib.models.promise3d.config import PRESETS, WEIGHTS, Promise3DConfig, Promise3DPreprocessing

if TYPE_CHECKING:
    from ProMISeLib.models.promise3d.model import Promise3D

FORMAT = "promise3d-safetensors/1"
ARCHITECTURE = "ProMISe 3D (Li et al., ISBI 2024)"
RELEASED_PARTS = ("encoder_dict", "feature_dict", "decoder_dict")
_SHOWN = 4  # keys named in an error before "and N more"


class LoadedPromise3D(NamedTuple):
    """A model ready for inference and the preprocessing its weights were trained with."""

    model: torch.nn.Module
    preprocessing: Promise3DPreprocessing


# --- helpers ----------------------------------------------------------------------------------
def _some(keys: Sequence[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


def _released_name(key: str) -> str:
    """Our key as it is called in a released file (for messages)."""
    part, _, rest = key.partition(".")
    if part == "encoder":
        return f"encoder_dict:{rest}"
    if part == "decoder":
        return f"decoder_dict:{rest}"
    if part == "prompt":
        index, _, name = rest.partition(".")
        return f"feature_dict[{index}]:{name}"
    return key


def default_config(name: str) -> Promise3DConfig:
    """The architecture of a released checkpoint (all are full size)."""
    return Promise3DConfig.full()


def build_model(config: Promise3DConfig, device: torch.device | str = "cpu") -> Promise3D:
    """A Promise3D with uninitialised weights on ``device`` (built on meta, so nothing is initialised twice)."""
    from ProMISeLib.models.promise3d.model import Promise3D

    with torch.device("meta"):
        model = Promise3D(config)
    model.to_empty(device=device)
    model.rebuild_buffers(device)
    return model


def expected_shapes(config: Promise3DConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of a model of ``config`` and its shape (built on meta: allocates nothing)."""
    from ProMISeLib.models.promise3d.model import Promise3D

    with torch.device("meta"):
        model = Promise3D(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_state(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], source: str,
                released: bool = False) -> None:
    """CheckpointError naming missing, unexpected or mis-shaped keys (rebuildable buffers may be absent)."""
    from ProMISeLib.models.promise3d.model import is_rebuildable

    name = _released_name if released else (lambda k: k)
    missing = [k for k in expected if k not in state and not is_rebuildable(k)]
    extra = [k for k in state if k not in expected]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_some([name(k) for k in missing])}")
    if extra:
        problems.append(f"{len(extra)} unexpected key(s): {_some([name(k) for k in extra])}")
    if problems:
        raise CheckpointError(f"{source}: not a ProMISe 3D checkpoint of this architecture ({'; '.join(problems)})")
    wrong = [f"{name(k)} {tuple(v.shape)} != {expected[k]}" for k, v in state.items() if tuple(v.shape) != expected[k]]
    if wrong:
        raise CheckpointError(f"{source}: {len(wrong)} tensor(s) of the wrong shape: {_some(wrong)}")


def _atomic_write(path: Path, writer) -> Path:
    from ProMISeLib.io.volumes import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, writer)


# --- released checkpoints ---------------------------------------------------------------------
def _torch_load(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch 2.13 words it "Unsupported global: GLOBAL x.Y" (a class it does not allow), or
        # "unsupported GLOBAL posix.system whose module posix is blocked" (a blocked module: os, sys, ...)
        found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(exc), re.IGNORECASE)
        if found is None:  # not a pickle PyTorch knows (corrupt, or not a checkpoint at all)
            raise CheckpointError(f"{path}: unreadable or not a PyTorch checkpoint (its pickle stream is not one "
                                  "PyTorch's safe loader can read)") from exc
        detail = f" (it needs {found.group(1)})"
        raise CheckpointError(
            f"{path}: refused by PyTorch's safe loader (weights_only=True): the file holds Python objects other "
            f"than tensors and plain containers{detail}, so it is not a released ProMISe checkpoint; nothing in it "
            "was run"
        ) from exc
    except Exception as exc:  # a truncated zip, not a PyTorch file, ...
        raise CheckpointError(f"{path}: unreadable or not a PyTorch checkpoint ({type(exc).__name__}: "
                              f"{str(exc).strip()[:160]})") from exc


def read_released_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A released checkpoint as one flat state dict in our names (``cls_hao.`` renamed ``head.``)."""
    path = Path(path).expanduser()
    raw = _torch_load(path)
    if not isinstance(raw, Mapping) or not all(part in raw for part in RELEASED_PARTS):
        found = ", ".join(sorted(map(str, raw))[:6]) if isinstance(raw, Mapping) else type(raw).__name__
        raise CheckpointError(f"{path}: not a released ProMISe checkpoint (expected {', '.join(RELEASED_PARTS)}; "
                              f"found {found})")
    encoder, features, decoder = (raw[part] for part in RELEASED_PARTS)
    if not isinstance(encoder, Mapping) or not isinstance(decoder, Mapping):
        raise CheckpointError(f"{path}: encoder_dict and decoder_dict must be state dicts")
    if not isinstance(features, (list, tuple)) or not all(isinstance(f, Mapping) for f in features):
        raise CheckpointError(f"{path}: feature_dict must be a list of prompt-encoder state dicts")
    flat: dict[str, torch.Tensor] = {}
    for key, value in encoder.items():
        flat[f"encoder.{key}"] = value
    for index, feature in enumerate(features):
        for key, value in feature.items():
            flat[f"prompt.{index}.{key}"] = value
    for key, value in decoder.items():
        key = "head." + key.removeprefix("cls_hao.") if key.startswith("cls_hao.") else key
        flat[f"decoder.{key}"] = value
    bad = [k for k, v in flat.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {_some([_released_name(k) for k in bad])}")
    return flat


def _check_masks(state: Mapping[str, torch.Tensor], config: Promise3DConfig, source: str) -> None:
    """The released masks must be the ones the model rebuilds (else dropping them would change the model)."""
    from ProMISeLib.models.promise3d.encoder import shifted_window_mask
    from ProMISeLib.models.promise3d.model import is_rebuildable

    rebuilt = None
    for key, value in state.items():
        if is_rebuildable(key):
            if rebuilt is None:
                rebuilt = shifted_window_mask(config.grid, config.window_size, config.window_size // 2)
            if not torch.equal(value.float(), rebuilt):
                raise CheckpointError(f"{source}: {_released_name(key)} is not the shifted-window mask this "
                                      "implementation builds; the checkpoint does not match the architecture")


def convert_released_checkpoint(source: str | Path, name: str, output: str | Path | None = None,
                                config: Promise3DConfig | None = None) -> Path:
    """Convert a released checkpoint into our format; returns the safetensors path (sidecar beside it).

    ``name`` is the registered model (``promise-colon``, ``promise-pancreas``): it fixes the
    preprocessing recorded in the sidecar. ``output`` defaults to the weights cache.
    """
    if name not in PRESETS:
        raise CheckpointError(f"{name!r} is not a ProMISe 3D model; choose one of {', '.join(PRESETS)}")
    source = Path(source).expanduser()
    config = config or default_config(name)
    state = read_released_checkpoint(source)
    check_state(state, expected_shapes(config), str(source), released=True)
    _check_masks(state, config, str(source))
    from ProMISeLib.models.promise3d.model import is_rebuildable

    tensors = {k: v for k, v in state.items() if not is_rebuildable(k)}
    target = Path(output).expanduser() if output is not None else cached_path(WEIGHTS[name])
    source_facts = {"file": source.name, "sha256": sha256_of(source), "size": source.stat().st_size}
    return _write(tensors, target, name, config, PRESETS[name].preprocessing, source=source_facts,
                  title=PRESETS[name].title)


# --- our format -------------------------------------------------------------------------------
def _preprocessing_dict(preprocessing: Any, config: Promise3DConfig) -> dict[str, Any]:
    if isinstance(preprocessing, Promise3DPreprocessing):
        return preprocessing.to_dict(config)
    as_object = Promise3DPreprocessing(window=tuple(float(v) for v in preprocessing.window),
                                       mean=float(preprocessing.mean), std=float(preprocessing.std),
                                       spacing_mm=float(preprocessing.spacing_mm))
    return as_object.to_dict(config)


def _write(tensors: Mapping[str, torch.Tensor], target: Path, name: str, config: Promise3DConfig,
           preprocessing: Any, source: dict | None = None, title: str | None = None,
           metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    seen: set[int] = set()
    ready = {}
    for key in sorted(tensors):
        value = tensors[key].detach().to("cpu")
        value = value.float() if value.is_floating_point() else value
        value = value.contiguous()
        if value.untyped_storage().data_ptr() in seen:  # safetensors refuses shared storage
            value = value.clone()
        seen.add(value.untyped_storage().data_ptr())
        ready[key] = value
    _atomic_write(target, lambda tmp: save_file(ready, str(tmp), metadata={"format": "pt", "promise3d": FORMAT,
                                                                           "model": name}))
    sidecar = {
        "format": FORMAT,
        "model": name,
        "title": title or name,
        "architecture": ARCHITECTURE,
        "config": config.to_dict(),
        "preprocessing": _preprocessing_dict(preprocessing, config),
        "source": source,
        "safetensors": target.name,
        "safetensors_sha256": sha256_of(target),
        "rebuilt_buffers": "encoder.blocks.*.attn_mask (shifted-window masks, recomputed at load)",
        "metadata": metadata or {},
    }
    _atomic_write(sidecar_path(target), lambda tmp: tmp.write_text(json.dumps(sidecar, indent=1)))
    return target


def save_promise3d(model: Promise3D, path: str | Path, *, preprocessing: Any, name: str = "promise3d",
                   metadata: dict | None = None) -> Path:
    """Write ``model`` (a Promise3D) in our format: ``path`` (.safetensors) and its JSON sidecar.

    ``preprocessing`` is a :class:`Promise3DPreprocessing` or anything with ``window``, ``mean``,
    ``std`` and ``spacing_mm``; ``metadata`` (JSON-able) is stored in the sidecar as is.
    """
    from ProMISeLib.models.promise3d.model import is_rebuildable

    path = Path(path).expanduser()
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: our ProMISe 3D weights files end in .safetensors")
    tensors = {k: v for k, v in model.state_dict().items() if not is_rebuildable(k)}
    return _write(tensors, path, name, model.config, preprocessing, metadata=metadata)


def verify_converted(path: str | Path) -> dict:
    """Read the sidecar of ``path`` and check format and SHA-256; returns the sidecar."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    meta = read_sidecar(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{sidecar_path(path)}: not a ProMISe 3D weights description (format "
                              f"{meta.get('format')!r}, expected {FORMAT})")
    got = sha256_of(path)
    if got != meta.get("safetensors_sha256"):
        raise CheckpointError(f"{path}: SHA-256 {got[:12]}… differs from its sidecar's; the file is corrupt or "
                              "was modified")
    return meta


def _config(meta: dict, path: Path) -> Promise3DConfig:
    try:
        return Promise3DConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{sidecar_path(path)}: unusable architecture description ({exc})") from exc


def load_state_into(model: Promise3D, path: str | Path, verify: bool = True) -> dict:
    """Strictly load our format into ``model`` (its masks rebuilt); returns the sidecar."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ProMISeLib.models.promise3d.model import is_rebuildable

    path = Path(path).expanduser()
    meta = verify_converted(path) if verify else read_sidecar(path)
    saved = _config(meta, path) if "config" in meta else None
    if saved is not None and saved.architecture() != model.config.architecture():
        changed = [k for k, v in saved.architecture().items() if model.config.architecture().get(k) != v]
        raise CheckpointError(f"{path}: saved for another architecture (differs in {_some(changed)})")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from exc
    own = model.state_dict()
    check_state(state, {k: tuple(v.shape) for k, v in own.items()}, str(path))
    device = next(model.parameters()).device
    if device.type == "meta":
        model.to_empty(device="cpu")
        device = torch.device("cpu")
    model.rebuild_buffers(device)
    rebuilt = {k: v for k, v in model.state_dict().items() if is_rebuildable(k)}
    model.load_state_dict({**state, **rebuilt}, strict=True)
    return meta


def load_promise3d(source: str | Path, *, task: str | None = None, device: torch.device | str = "cpu",
                   verify: bool = True) -> LoadedPromise3D:
    """Load a registered model (``promise-colon``) or one of our weights files, in eval mode on ``device``.

    The preprocessing comes from the sidecar (``task``'s released preset when the sidecar lacks it).
    ``verify=False`` skips the SHA-256 check of a path the caller has just checked (resolve_weights).
    """
    name = str(source)
    if name in WEIGHTS:
        from ProMISeLib.io.weights import resolve_weights

        path = resolve_weights(WEIGHTS[name])  # checked against its sidecar
        meta = read_sidecar(path)
    else:
        path = Path(source).expanduser()
        meta = verify_converted(path) if verify else read_sidecar(path)
    if "config" not in meta:
        raise CheckpointError(f"{sidecar_path(path)}: no architecture (config) recorded")
    config = _config(meta, path)
    if "preprocessing" in meta:
        try:
            preprocessing = Promise3DPreprocessing.from_dict(meta["preprocessing"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{sidecar_path(path)}: unusable preprocessing ({exc})") from exc
    elif task is not None and f"promise-{task}" in PRESETS:
        preprocessing = PRESETS[f"promise-{task}"].preprocessing
    else:
        raise CheckpointError(f"{sidecar_path(path)}: no preprocessing recorded; give the task")
    model = build_model(config, "cpu")
    load_state_into(model, path, verify=False)
    model.eval()
    return LoadedPromise3D(model.to(device), preprocessing)
