"""Peak memory of ``promise segment`` on a big CT: a synthetic 512x512x300 int16 volume.

    python benchmarks/memory_big_ct.py --out benchmarks/results/memory_big_ct.json [--extra="--runtime onnx"]

The volume is CT-like: air (-1000 HU) around a body-like ellipse of soft tissue (~40 HU, noise
SD 12 HU) holding a brighter sphere of 3 cm diameter (~120 HU), on a 0.8 x 0.8 x 1.5 mm grid.
It is written to a temporary NRRD and segmented by the CLI in its own process with one click at the
sphere's centre; the CLI's ``--report`` gives that process's peak resident memory (Linux VmHWM).
The target is under 3 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SHAPE_KJI = (300, 512, 512)
SPACING_IJK = (0.8, 0.8, 1.5)  # mm
LESION_DIAMETER_MM = 30.0
TARGET_MB = 3000.0


def lesion_mask(shape_kji: tuple[int, int, int] = SHAPE_KJI, spacing_ijk: tuple[float, float, float] = SPACING_IJK,
                centre_kji: tuple[int, int, int] | None = None) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The sphere (bool, K x J x I) and its centre voxel: 3 cm across, right of the body's centre."""
    k, j, i = shape_kji
    centre = centre_kji or (k // 2, j // 2 + 20, i // 2 + 70)
    radius = LESION_DIAMETER_MM / 2
    reach = [int(np.ceil(radius / s)) + 1 for s in spacing_ijk[::-1]]  # voxels along k, j, i
    box = tuple(slice(max(c - r, 0), min(c + r + 1, n)) for c, r, n in zip(centre, reach, shape_kji, strict=True))
    kk, jj, ii = np.ogrid[box]
    inside = np.zeros(shape_kji, dtype=bool)
    inside[box] = (((ii - centre[2]) * spacing_ijk[0]) ** 2 + ((jj - centre[1]) * spacing_ijk[1]) ** 2
                   + ((kk - centre[0]) * spacing_ijk[2]) ** 2) <= radius**2
    return inside, centre


def synthetic_ct(seed: int = 0) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """(int16 volume in HU, lesion mask, lesion centre (k, j, i)), built slice by slice to keep memory low."""
    k, j, i = SHAPE_KJI
    rng = np.random.default_rng(seed)
    jj, ii = np.ogrid[:j, :i]
    body = ((ii - i / 2) / 220) ** 2 + ((jj - j / 2) / 165) ** 2 <= 1.0
    lesion, centre = lesion_mask()
    volume = np.empty(SHAPE_KJI, np.int16)
    for z in range(k):
        hu = np.full((j, i), -1000.0, np.float32)
        hu[body] = 40.0
        hu[lesion[z]] = 120.0
        hu += rng.normal(0.0, 12.0, size=(j, i)).astype(np.float32)
        volume[z] = np.clip(np.round(hu), -1024, 3071).astype(np.int16)
    return volume, lesion, centre


def run(extra: list[str]) -> dict:
    volume, lesion, centre = synthetic_ct()
    with tempfile.TemporaryDirectory() as tmp:
        image_path, mask_path, report_path = Path(tmp) / "big_ct.nrrd", Path(tmp) / "mask.nii.gz", Path(tmp) / "r.json"
        image = sitk.GetImageFromArray(volume)
        image.SetSpacing(SPACING_IJK)
        sitk.WriteImage(image, str(image_path))
        del image
        click_ijk = centre[::-1]
        cmd = [sys.executable, "-m", "ProMISeLib.cli", "segment", str(image_path),
               "--point=" + ",".join(str(v) for v in click_ijk), "--space", "ijk", "--device", "cpu",
               "--output", str(mask_path), "--report", str(report_path), *extra]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"promise segment failed ({proc.returncode}):\n{proc.stderr}")
        cli = " ".join(["promise", *cmd[3:]]).replace(tmp, "$TMPDIR")
        facts = json.loads(report_path.read_text())
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path))).astype(bool)
    overlap = 2 * np.count_nonzero(mask & lesion) / (np.count_nonzero(mask) + np.count_nonzero(lesion))
    peak = facts["peak_rss_mb"]
    return {
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["memory_big_ct.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "volume": {"shape_ijk": list(SHAPE_KJI[::-1]), "spacing_mm": list(SPACING_IJK), "dtype": "int16",
                   "file_mb": round(volume.nbytes / 1e6, 1), "float32_copy_mb": round(volume.size * 4 / 1e6, 1),
                   "lesion_diameter_mm": LESION_DIAMETER_MM, "lesion_voxels": int(lesion.sum())},
        "cli": cli,
        "peak_rss_mb": peak, "target_mb": TARGET_MB, "met": peak < TARGET_MB,
        "wall_s": wall, "engine_seconds": facts["engine_seconds"], "encoded_slices": facts["encoded_slices"],
        "runtime": facts["runtime"], "dice_vs_sphere": overlap, "slice_range": facts["slice_range"],
        "messages": facts["messages"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/memory_big_ct.json")
    parser.add_argument("--extra", default="", help='extra `promise segment` arguments, e.g. --extra="--runtime onnx"')
    args = parser.parse_args()
    result = run(args.extra.split())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
