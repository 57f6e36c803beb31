"""A tiny MSD-format task folder built from real labelled CT scans (the data folder's sarcoma cases)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from ProMISeLib.io.sample_data import Case, load_cases

#: Small CT cases with lesions of different sizes (STS_019: ~17 mL, STS_008: ~28 mL, STS_002: ~53 mL).
TINY_CASES = ("STS_019_CT", "STS_008_CT", "STS_002_CT")


def real_ct_cases(ids: tuple[str, ...] = TINY_CASES) -> list[Case]:
    """The named cases from the data folder, or a pytest skip when they are absent."""
    found = {case.id: case for case in load_cases()}
    missing = [i for i in ids if i not in found]
    if missing:
        pytest.skip(f"labelled scans not found ({', '.join(missing)}): set PROMISE_DATA_DIR")
    return [found[i] for i in ids]


def write_msd(root: Path, cases: list[Case], task: str = "colon", label_value: int = 1,
              splits: dict[str, list[int]] | None = None) -> Path:
    """Write ``cases`` as ``{task}_00N`` into an MSD folder; lesion voxels get ``label_value``.

    With ``label_value`` 2 the other voxels of the scan's body (> -500 HU) get 1, like MSD's
    pancreas (1) and tumour (2). ``splits`` maps a split to case numbers; written as splits.json.
    """
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    training = []
    for number, case in enumerate(cases, start=1):
        name = f"{task}_{number:03d}.nii.gz"
        image = sitk.ReadImage(str(case.image))
        label = sitk.ReadImage(str(case.label))
        values = sitk.GetArrayFromImage(label) > 0
        out = np.where(values, label_value, 0).astype(np.uint8)
        if label_value == 2:
            out[(sitk.GetArrayFromImage(image) > -500) & ~values] = 1
        written = sitk.GetImageFromArray(out)
        written.CopyInformation(label)
        sitk.WriteImage(image, str(root / "imagesTr" / name))
        sitk.WriteImage(written, str(root / "labelsTr" / name))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    manifest = {"name": task, "labels": {"0": "background", str(label_value): "tumour"}, "numTraining": len(training),
                "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(manifest, indent=1))
    if splits:
        payload = {task: {s: [f"{task}_{n:03d}" for n in numbers] for s, numbers in splits.items()}}
        (root / "splits.json").write_text(json.dumps(payload))
    return root
