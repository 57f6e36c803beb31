"""``promise train-prompting``: extract, cross-validate by patient, train, and write the weights card.

Validation is by patient: the tumour patients are dealt into K held-out sets (a sarcoma patient's
CT and MR are held out together, so no fold has seen the other scan of the same tumour); each fold
trains on everything else, the organ scans included. With K at least the number of patients this
is leave-one-patient-out. The coarse closed-loop Dice of each held-out scan is recorded here; the
end-to-end Dice through the frozen decoder comes from ``benchmarks/run_benchmark.py
--prompter-folds``, which runs the CLI on each scan with the fold that held it out.

The shipped weights are the fold that holds out ``reference_group``, so the card can state a true
validation figure of the very file that ships.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from ProMISeLib.io.download import sha256_of
from ProMISeLib.io.sample_data import Case, load_cases
from ProMISeLib.io.volumes import atomic_write
from ProMISeLib.prompting.net import PromptNet, PromptNetConfig
from ProMISeLib.prompting.prompter import card_path

from ProMISeTrain.prompter_data import ExtractionSettings, StructureSamples, cache_file, extract_case
from ProMISeTrain.prompter_train import TrainSettings, rollout_dice, train_prompt_net

MessageFn = Callable[[str], None]


@dataclass(frozen=True)
class PipelineSettings:
    """What to train and validate."""

    folds: int = 19  # patients dealt into this many held-out sets (0: no validation; >= patients: leave one out)
    reference_group: str = "STS_019"
    backbone: str = "litemedsam"
    name: str = "litemedsam-prompter"


def save_prompt_net(net: PromptNet, path: Path, card: dict) -> Path:
    """Write weights (safetensors) and the card with their SHA-256, both atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))
    card = dict(card, config=net.config.to_dict(), sha256=sha256_of(path), size_bytes=path.stat().st_size)
    atomic_write(card_path(path), lambda tmp: tmp.write_text(json.dumps(card, indent=1) + "\n"))
    return path


def extract_all(cases: list[Case], embed, cache: Path, settings: ExtractionSettings,
                say: MessageFn = print) -> dict[str, list[StructureSamples]]:
    """Every case's structures (cached in ``cache``)."""
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    for case in cases:
        started = time.perf_counter()
        out[case.id] = extract_case(case, embed, settings, cache)
        say(f"{case.id}: {len(out[case.id])} structures ({time.perf_counter() - started:.0f} s)")
    return out


_FOLD_STATE: dict = {}


def assign_folds(groups: list[str], folds: int) -> list[list[str]]:
    """Patients dealt round-robin (sorted) into ``folds`` held-out sets; ``folds >= len(groups)``: one each."""
    ordered = sorted(groups)
    count = min(folds, len(ordered))
    return [ordered[index::count] for index in range(count)] if count else []


def held_out_fold(folds_dir: Path, case_id: str) -> Path:
    """The prompter of ``folds_dir`` (written by :func:`run`) that was trained without the case's patient."""
    from ProMISeLib.io.sample_data import patient_group

    index = json.loads((Path(folds_dir) / "index.json").read_text())
    return Path(folds_dir) / index[patient_group(case_id)]


def _run_fold(job: tuple[int, list[str]]) -> tuple[int, list[str], dict[str, dict], float]:
    """Train without the ``held`` patients, score their scans, save the fold's weights (a worker process)."""
    index, held_groups = job
    state = _FOLD_STATE
    started = time.perf_counter()
    train_set = [s for s in state["structures"] if s.group not in held_groups]
    held = [s for s in state["structures"] if s.group in held_groups and s.structure == "lesion"]
    net, losses = train_prompt_net(train_set, state["train"], state["config"])
    scores = {s.case_id: {"group": s.group, "fold": index, "coarse_dice": round(rollout_dice(net, s), 4)}
              for s in held}
    card = _card(state["settings"], state["train"], state["data"], held_out=held_groups, losses=losses)
    save_prompt_net(net, state["folds_dir"] / f"fold{index}.safetensors", card)
    return index, held_groups, scores, time.perf_counter() - started


def _train_folds(worker: Callable, jobs_list: list[tuple[int, list[str]]], jobs: int, report: Callable,
                 folds_dir: Path) -> None:
    """Run ``worker`` on each (fold index, held-out patients), in ``jobs`` forked processes (they share the
    loaded embeddings, copy-on-write); ``report`` gets each result; write the folds' index."""
    if jobs > 1 and len(jobs_list) > 1:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            for done, result in enumerate(pool.imap_unordered(worker, jobs_list), 1):
                report(done, *result)
    else:
        for done, job in enumerate(jobs_list, 1):
            report(done, *worker(job))
    index_file = {group: f"fold{index}.safetensors" for index, held in jobs_list for group in held}
    atomic_write(folds_dir / "index.json", lambda tmp: tmp.write_text(json.dumps(index_file, indent=1) + "\n"))


def run(data: dict[str, list[StructureSamples]], output: Path, train: TrainSettings, config: PromptNetConfig,
        settings: PipelineSettings, say: MessageFn = print, jobs: int = 1) -> dict:
    """Cross-validate by patient, keep each fold's weights, ship the reference fold; returns the card."""
    output.mkdir(parents=True, exist_ok=True)
    structures = [s for items in data.values() for s in items]
    tumour_groups = sorted({s.group for s in structures if s.structure == "lesion"})
    folds = assign_folds(tumour_groups, settings.folds)
    per_scan: dict[str, dict] = {}
    folds_dir = output / "folds"
    folds_dir.mkdir(parents=True, exist_ok=True)
    _FOLD_STATE.update(structures=structures, train=train, config=config, settings=settings, data=data,
                       folds_dir=folds_dir)
    jobs_list = list(enumerate(folds))

    def report(done: int, index: int, held: list[str], scores: dict, seconds: float) -> None:
        per_scan.update(scores)
        say(f"fold {done}/{len(folds)} (fold{index}, held out {', '.join(held)}): "
            + ", ".join(f"{k} {v['coarse_dice']:.3f}" for k, v in scores.items()) + f" ({seconds:.0f} s)")

    _train_folds(_run_fold, jobs_list, jobs, report, folds_dir)
    reference = next(((i, held) for i, held in jobs_list if settings.reference_group in held), None)
    if reference is not None:  # ship the fold that held out the reference patient: its validation is real
        from ProMISeLib.prompting.prompter import load_prompt_net

        shipped, _ = load_prompt_net(folds_dir / f"fold{reference[0]}.safetensors")
        held_out, losses = reference[1], None
    else:
        held_out = [settings.reference_group]
        shipped, losses = train_prompt_net([s for s in structures if s.group not in held_out], train, config)
    card = _card(settings, train, data, held_out=held_out, losses=losses)
    card["validation"] = {
        "scheme": f"{len(folds)}-fold cross-validation by patient (a patient's CT and MR held out together; "
                  "organ scans always in training)" if folds else "none",
        "folds": {f"fold{i}": held for i, held in jobs_list},
        "coarse_dice_per_scan": per_scan,
        "coarse_dice_mean": round(float(np.mean([v["coarse_dice"] for v in per_scan.values()])), 4)
        if per_scan else None,
    }
    target = output / f"{settings.name}.safetensors"
    save_prompt_net(shipped, target, card)
    say(f"wrote {target}")
    return json.loads(card_path(target).read_text())


def _card(settings, train, data: dict[str, list[StructureSamples]], held_out: list[str],
          losses: list[float] | None, fmt: str = "safetensors; PromptNet (ProMISeLib.prompting.net)",
          last: int = 50) -> dict:
    """The weights card's common part: names, data, recipe (``train``, a dataclass), final loss, date."""
    return {
        "name": settings.name,
        "backbone": settings.backbone,
        "format": fmt,
        "data": {"scans": sorted(data), "structures": sum(len(v) for v in data.values()),
                 "held_out_patients": held_out},
        "recipe": asdict(train),
        "final_loss": round(float(np.mean(losses[-last:])), 4) if losses else None,
        "created": time.strftime("%Y-%m-%d"),
    }


def train_prompting(output: Path, data_dir: Path | None = None, cache: Path | None = None, device: str = "cpu",
                    runtime: str = "onnx", train: TrainSettings | None = None, config: PromptNetConfig | None = None,
                    settings: PipelineSettings | None = None, jobs: int = 1, say: MessageFn = print) -> dict:
    """The whole job behind ``promise train-prompting``; returns the shipped weights' card."""
    from ProMISeLib.io.paths import cache_dir

    settings = settings or PipelineSettings()
    cases = sorted(load_cases(data_dir), key=lambda c: (c.label_values is not None, c.id))
    if not cases:
        from ProMISeLib.errors import InvalidInputError

        raise InvalidInputError(f"no labelled scans in {data_dir or 'the data folder'} (set PROMISE_DATA_DIR)")
    cache = cache or cache_dir() / "prompting" / settings.backbone
    encoder = (settings.backbone, device, runtime)
    if jobs > 1 and any(not cache_file(cache, c.id, ExtractionSettings()).is_file() for c in cases):
        # The folds train in processes forked from this one, and a process forked after the encoder has run
        # torch's and ONNX Runtime's thread pools can deadlock; so the encoding runs in a process of its own.
        worker = multiprocessing.get_context("spawn").Process(target=_fill_cache,
                                                              args=(cases, cache, encoder))
        worker.start()
        worker.join()
        if worker.exitcode != 0:
            raise RuntimeError(f"encoding the training slices failed (exit code {worker.exitcode})")
    data = extract_all(cases, _LazyEncoder(*encoder), cache, ExtractionSettings(), say)
    return run(data, Path(output), train or TrainSettings(), config or PromptNetConfig(), settings, say, jobs)


class _LazyEncoder:
    """The frozen encoder's ``embed``, loaded on the first slice that the cache does not hold."""

    def __init__(self, backbone: str, device: str, runtime: str) -> None:
        self.args = backbone, device, runtime
        self._embed = None

    def __call__(self, *args, **kwargs):
        if self._embed is None:
            from ProMISeLib.runtime.loader import encoder_for

            self._embed = encoder_for(*self.args).embed
        return self._embed(*args, **kwargs)


def _fill_cache(cases: list[Case], cache: Path, encoder: tuple[str, str, str]) -> None:
    """Encode every case the cache lacks (the target of a spawned process)."""
    extract_all(cases, _LazyEncoder(*encoder), cache, ExtractionSettings())


# --- token shift (``promise train-token-shift``) -----------------------------------------------------


@dataclass(frozen=True)
class ShiftPipelineSettings:
    """Folds and names of a token-shift run."""

    folds: int = 4  # patients dealt into this many held-out sets (0: no validation)
    reference_group: str = "STS_019"
    backbone: str = "litemedsam"
    name: str = "litemedsam-token-shift"


def _backbone_model(backbone: str):
    from ProMISeLib.io.weights import resolve_weights
    from ProMISeLib.models.registry import get_model_spec

    spec = get_model_spec(backbone)
    return spec.build(resolve_weights(spec.weights))


def _run_shift_fold(job: tuple[int, list[str]]) -> tuple[int, list[str], dict[str, dict], float]:
    """Train a token shift without the ``held`` patients and score their scans (a worker process)."""
    from ProMISeTrain.token_shift import neighbour_box_dice, save_token_shift, train_token_shift

    index, held_groups = job
    state = _FOLD_STATE
    started = time.perf_counter()
    model = _backbone_model(state["settings"].backbone)
    train_set = [s for s in state["structures"] if s.group not in held_groups]
    shift, losses = train_token_shift(model, train_set, state["train"])
    scores = {s.case_id: {"group": s.group, "fold": index, "frozen": neighbour_box_dice(model, s, None),
                          "shifted": neighbour_box_dice(model, s, shift)}
              for s in state["structures"] if s.group in held_groups and s.structure == "lesion"}
    card = _shift_card(state["settings"], state["train"], state["data"], held_groups, losses)
    save_token_shift(shift, state["folds_dir"] / f"fold{index}.safetensors", card)
    return index, held_groups, scores, time.perf_counter() - started


def _shift_card(settings: ShiftPipelineSettings, train, data: dict[str, list[StructureSamples]],
                held_out: list[str], losses: list[float]) -> dict:
    return _card(settings, train, data, held_out, losses, last=25,
                 fmt="safetensors; shifts added to the mask decoder's output tokens (ProMISeTrain.token_shift)")


def run_token_shift(data: dict[str, list[StructureSamples]], output: Path, train, settings: ShiftPipelineSettings,
                    say: MessageFn = print, jobs: int = 1) -> dict:
    """Train a token shift per fold (by patient), score the held-out scans, ship the reference fold."""
    from ProMISeTrain.token_shift import load_token_shift, save_token_shift, train_token_shift

    output.mkdir(parents=True, exist_ok=True)
    structures = [s for items in data.values() for s in items]
    folds = assign_folds(sorted({s.group for s in structures if s.structure == "lesion"}), settings.folds)
    folds_dir = output / "folds"
    folds_dir.mkdir(parents=True, exist_ok=True)
    _FOLD_STATE.update(structures=structures, train=train, settings=settings, data=data, folds_dir=folds_dir)
    jobs_list = list(enumerate(folds))
    per_scan: dict[str, dict] = {}

    def report(done: int, index: int, held: list[str], scores: dict, seconds: float) -> None:
        per_scan.update(scores)
        say(f"fold {done}/{len(folds)} (fold{index}, held out {', '.join(held)}): " + ", ".join(
            f"{k} {v['frozen'].get('picked', 0):.3f}->{v['shifted'].get('picked', 0):.3f}" for k, v in scores.items())
            + f" ({seconds:.0f} s)")

    _train_folds(_run_shift_fold, jobs_list, jobs, report, folds_dir)  # each worker builds its own model
    reference = next(((i, held) for i, held in jobs_list if settings.reference_group in held), None)
    if reference is not None:  # ship the fold that held out the reference patient: its validation is real
        shift, card = load_token_shift(folds_dir / f"fold{reference[0]}.safetensors")
    else:
        held = [settings.reference_group]
        shift, losses = train_token_shift(_backbone_model(settings.backbone),
                                          [s for s in structures if s.group not in held], train)
        card = _shift_card(settings, train, data, held, losses)
    card = {k: v for k, v in card.items() if k not in ("sha256", "size_bytes")}
    card["validation"] = {
        "scheme": f"{len(folds)}-fold cross-validation by patient (a patient's CT and MR held out together; organ "
                  "scans always in training); 2D Dice of the decoder's mask from boxes drawn from the neighbouring "
                  "slice's label (scales 0.85, 1.0, 1.1), the highest predicted IoU picked" if folds else "none",
        "folds": {f"fold{i}": held for i, held in jobs_list},
        "per_scan": per_scan,
    }
    if per_scan:
        for key in ("frozen", "shifted"):
            card["validation"][f"{key}_picked_mean"] = round(float(np.mean(
                [v[key]["picked"] for v in per_scan.values() if v[key]])), 4)
    target = output / f"{settings.name}.safetensors"
    save_token_shift(shift, target, card)
    say(f"wrote {target}")
    return json.loads(card_path(target).read_text())


def train_token_shift_job(output: Path, data_dir: Path | None = None, cache: Path | None = None,
                          train=None, settings: ShiftPipelineSettings | None = None, jobs: int = 1,
                          say: MessageFn = print) -> dict:
    """The whole job behind ``promise train-token-shift``, on the embeddings ``train-prompting`` cached."""
    from ProMISeLib.io.paths import cache_dir

    from ProMISeTrain.token_shift import ShiftSettings

    settings = settings or ShiftPipelineSettings()
    cases = sorted(load_cases(data_dir), key=lambda c: (c.label_values is not None, c.id))
    if not cases:
        from ProMISeLib.errors import InvalidInputError

        raise InvalidInputError(f"no labelled scans in {data_dir or 'the data folder'} (set PROMISE_DATA_DIR)")
    cache = cache or cache_dir() / "prompting" / settings.backbone
    missing = [c.id for c in cases if not cache_file(cache, c.id, ExtractionSettings()).is_file()]
    if missing:
        encoder = (settings.backbone, "cpu", "onnx")
        worker = multiprocessing.get_context("spawn").Process(target=_fill_cache, args=(cases, cache, encoder))
        worker.start()
        worker.join()
        if worker.exitcode != 0:
            raise RuntimeError(f"encoding the training slices failed (exit code {worker.exitcode})")
    data = extract_all(cases, None, cache, ExtractionSettings(), say)
    return run_token_shift(data, Path(output), train or ShiftSettings(), settings, say, jobs)
