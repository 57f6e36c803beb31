"""The learned step ranker (``prompting/step_ranker.py``), trained and measured leaving one patient out.

``collect``: one click per tumour scan (the voxel nearest the centroid), rule-based prompts with the fused
prompts' wider orthogonal search. Each scan is walked twice, once keeping the engine's own choice and once
the candidate the label prefers, both on to ``--margin`` slices past the true lesion's ends. Every step's
candidates are saved with their features and their Dice against the label (``OUT/CASE.npz``).

``evaluate``: for every scan a ranker is trained on the other patients' steps (``train_ranker``, seconds)
and the engine segments the scan with it (``Segmenter.step_ranker``): the ranker picks every propagated
slice's mask and ends the walk. No label is read during the walk.

``steps``: the per-step choice and stop, held out by patient, without walking (seconds per fold).

``summary``: the table, paired with a reference run (``run_benchmark.py`` JSON, e.g. the fused default).

    python benchmarks/step_ranker_study.py collect --out RANK --shard 0/2        # and 1/2 beside it
    python benchmarks/step_ranker_study.py evaluate --out RANK --variant ranker --shard 0/2
    python benchmarks/step_ranker_study.py steps --out RANK          # per step: rule score vs ranker vs best
    python benchmarks/step_ranker_study.py summary --out RANK --variant ranker \\
        --reference benchmarks/results/cpu_fused.json --save benchmarks/results/step_ranker.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from oracle_walk import OraclePropagator, shard_cases
from ProMISeLib import engine
from ProMISeLib.engine import Segmenter
from ProMISeLib.errors import ProMISeError
from ProMISeLib.metrics import dice, hd95
from ProMISeLib.prompting.step_ranker import FEATURES, step_features, train_ranker
from ProMISeLib.propagation import FUSED_DEFAULTS
from ProMISeLib.sample_data import lesion_click, patient_group, read_case

#: The walk's settings: the rules' candidates, the fused prompts' orthogonal search, no slice cap from the planes.
WALK = {**FUSED_DEFAULTS, "encode_ahead": 0, "orthogonal_tolerance": 100}


class CollectingPropagator(OraclePropagator):
    """Records each step's candidate features and true Dice; with ``oracle = {"choice"}`` keeps the candidate
    the label prefers; walks on to ``margin`` slices past the label's ends."""

    margin = 4
    truth_slices: np.ndarray | None = None  # the slices the label has the lesion on
    rows: list[tuple[np.ndarray, list[float]]] = []  # per step: the candidates' features and true Dice

    def _step(self, k, crop, previous, *args, **kwargs):
        mask, score = super()._step(k, crop, previous, *args, **kwargs)
        step = self.last_step
        if step is not None and self.walk is not None:
            target = self._target(k, crop)
            features = step_features(k, crop.extract(self.volume[k]), (crop.j0, crop.i0), previous, step.candidates,
                                     step.predicted, step.scores, self.walk)
            type(self).rows.append((features, [dice(c, target) for c in step.candidates]))
        return mask, score

    def _stop_reason(self, k, crop, mask, score, previous, largest, reference):
        if mask is None:
            return "mask vanished"
        direction = 1 if k > self.walk.start_k else -1
        end = self.truth_slices.max() if direction > 0 else self.truth_slices.min()
        return "past the label's end" if (k - end) * direction > self.margin else None


def _segmenter(args: argparse.Namespace) -> Segmenter:
    torch.set_num_threads(args.threads)
    segmenter = Segmenter(device="cpu", runtime=args.runtime, prompts="heuristic", cache_mb=1200)
    segmenter.replace_settings(**WALK)
    return segmenter


def collect(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    engine.LesionPropagator = CollectingPropagator  # the Segmenter builds its propagator from this name
    CollectingPropagator.margin = args.margin
    segmenter = _segmenter(args)
    for case in shard_cases(args.shard):
        target = out / f"{case.id}.npz"
        if target.exists():
            continue
        volume, geometry, truth = read_case(case)
        CollectingPropagator.truth = truth
        CollectingPropagator.truth_slices = np.flatnonzero(truth.any(axis=(1, 2)))
        click = lesion_click(truth)
        arrays = {}
        for name, oracle in (("engine", frozenset()), ("oracle", frozenset({"choice"}))):
            CollectingPropagator.oracle = oracle
            CollectingPropagator.rows = []
            segmenter.memory.clear()
            try:
                segmenter.segment(volume, geometry, [click[::-1]], space="ijk")
            except ProMISeError:
                pass
            rows = CollectingPropagator.rows
            arrays[f"{name}_features"] = np.concatenate([f for f, _ in rows]) if rows \
                else np.zeros((0, len(FEATURES)), np.float32)
            arrays[f"{name}_dice"] = np.array([d for _, dices in rows for d in dices], dtype=float)
            arrays[f"{name}_step"] = np.array([n for n, (_, dices) in enumerate(rows) for _ in dices], dtype=int)
        np.savez_compressed(target, **arrays)
        print(case.id, {k: v.shape for k, v in arrays.items() if k.endswith("_dice")}, flush=True)


def training_set(root: Path, exclude_group: str) -> tuple[np.ndarray, np.ndarray]:
    """Every collected candidate of the scans outside ``exclude_group`` (features, true Dice)."""
    features, targets = [], []
    for path in sorted(root.glob("*.npz")):
        if patient_group(path.stem) == exclude_group:
            continue
        data = np.load(path)
        for name in ("engine", "oracle"):
            features.append(data[f"{name}_features"])
            targets.append(data[f"{name}_dice"])
    return np.concatenate(features), np.concatenate(targets)


def evaluate(args: argparse.Namespace) -> None:
    out = Path(args.out) / args.variant
    out.mkdir(parents=True, exist_ok=True)
    segmenter = _segmenter(args)
    if args.settings:
        segmenter.replace_settings(**json.loads(args.settings))
    for case in shard_cases(args.shard):
        target = out / f"{case.id}.json"
        if target.exists():
            continue
        features, targets = training_set(Path(args.out), patient_group(case.id))
        ranker, losses = train_ranker(features, targets, epochs=args.epochs)
        ranker.eval()
        segmenter.step_ranker = ranker
        volume, geometry, truth = read_case(case)
        click = lesion_click(truth)
        started = time.perf_counter()
        try:
            result = segmenter.segment(volume, geometry, [click[::-1]], space="ijk")
            mask, messages = result.mask.astype(bool), result.messages
        except ProMISeError as error:
            mask, messages = np.zeros_like(truth), [str(error)]
        row = {"case": case.id, "dice": dice(mask, truth), "hd95": hd95(mask, truth, geometry.spacing[::-1]),
               "seconds": time.perf_counter() - started, "training_candidates": len(targets),
               "final_loss": losses[-1], "slices": int(mask.any(axis=(1, 2)).sum()),
               "lesion_slices": int(truth.any(axis=(1, 2)).sum()), "messages": messages}
        target.write_text(json.dumps(row, indent=1))
        print(case.id, round(row["dice"], 3), row["messages"][-2:], flush=True)


def steps(args: argparse.Namespace) -> None:
    """Per step, held out by patient: the 2D Dice of the candidate the rule score keeps, the ranker's and the best;
    and how often the ranker's stop (best predicted Dice under ``ranker_stop``) agrees with the label."""
    root = Path(args.out)
    paths = sorted(root.glob("*.npz"))
    kept: dict[str, list[float]] = {"rule score": [], "ranker": [], "best candidate": []}
    stops: list[tuple[float, bool]] = []
    for group in sorted({patient_group(p.stem) for p in paths}):
        features, targets = training_set(root, group)
        ranker, _ = train_ranker(features, targets, epochs=args.epochs)
        for path in [p for p in paths if patient_group(p.stem) == group]:
            data = np.load(path)
            for name in ("engine", "oracle"):
                values, dices, ids = data[f"{name}_features"], data[f"{name}_dice"], data[f"{name}_step"]
                if not len(dices):
                    continue
                predicted = ranker.predict(values)
                rule = values[:, FEATURES.index("rule_score")]
                for step in np.unique(ids):
                    at = ids == step
                    stops.append((float(predicted[at].max()), bool(dices[at].max() > 0)))
                    if dices[at].max() > 0:
                        kept["rule score"].append(dices[at][rule[at].argmax()])
                        kept["ranker"].append(dices[at][predicted[at].argmax()])
                        kept["best candidate"].append(dices[at].max())
    print("| kept on the steps whose candidates reach the lesion | 2D Dice |\n|---|---|")
    for name, values in kept.items():
        print(f"| {name} | {statistics.mean(values):.3f} |")
    predicted, lesion = np.array([s for s, _ in stops]), np.array([h for _, h in stops])
    for threshold in (0.3, 0.4, 0.5, 0.6):
        go_on = predicted >= threshold
        print(f"stop at {threshold}: agrees with the label on {np.mean(go_on == lesion):.3f} of {len(lesion)} steps, "
              f"walks on past the lesion {np.mean(go_on & ~lesion):.3f}, stops on it {np.mean(~go_on & lesion):.3f}")


def summary(args: argparse.Namespace) -> None:
    rows = [json.loads(p.read_text()) for p in sorted((Path(args.out) / args.variant).glob("*.json"))]
    reference = {}
    if args.reference:
        reference = {c["case"]: c["promise"]["dice"] for c in json.loads(Path(args.reference).read_text())["cases"]}
    paired = [(r["dice"], reference[r["case"]]) for r in rows if r["case"] in reference]
    print("| variant | scans | mean Dice | median Dice | reference mean | paired change | better / worse (> 0.01) |")
    print("|---|---|---|---|---|---|---|")
    mean = statistics.mean(r["dice"] for r in rows)
    median = statistics.median(r["dice"] for r in rows)
    ref = statistics.mean(b for _, b in paired) if paired else float("nan")
    change = statistics.mean(a - b for a, b in paired) if paired else float("nan")
    better = sum(a - b > 0.01 for a, b in paired)
    worse = sum(b - a > 0.01 for a, b in paired)
    print(f"| {args.variant} | {len(rows)} | {mean:.3f} | {median:.3f} | {ref:.3f} | {change:+.3f} "
          f"| {better} / {worse} |")
    if args.save:
        Path(args.save).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "variant": args.variant,
                                               "reference": args.reference, "rows": rows}, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("collect", "evaluate", "steps", "summary"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--variant", default="ranker")
    parser.add_argument("--settings", default=None, help="JSON of PropagationSettings fields (evaluate)")
    parser.add_argument("--margin", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--runtime", default="onnx", choices=("torch", "onnx"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shard", default="0/1", help="I/N: run every N-th scan from the I-th")
    parser.add_argument("--reference", default=None)
    parser.add_argument("--save", default=None)
    args = parser.parse_args()
    {"collect": collect, "evaluate": evaluate, "steps": steps, "summary": summary}[args.action](args)


if __name__ == "__main__":
    main()
