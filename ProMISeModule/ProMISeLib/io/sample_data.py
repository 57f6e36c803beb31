"""Labelled scans: the cases in the data folder, and a public sample for a fresh machine."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ProMISeLib.errors import InvalidInputError
from ProMISeLib.io.download import CancelCallback, ProgressCallback, RemoteFile, fetch_members
from ProMISeLib.io.geometry import ImageGeometry
from ProMISeLib.io.paths import cache_dir, data_dir


@dataclass(frozen=True)
class Case:
    """One labelled scan."""

    id: str
    image: Path
    label: Path
    label_values: tuple[int, ...] | None  # None: every non-zero value is its own structure
    modality: str
    kind: str



def lesion_click(mask: np.ndarray) -> tuple[int, int, int]:
    """The voxel (k, j, i) of ``mask`` nearest its centroid: where a user clicks (demo, tests, benchmarks)."""
    from scipy import ndimage

    voxels = np.argwhere(mask)
    centre = np.asarray(ndimage.center_of_mass(mask))
    return tuple(int(v) for v in voxels[np.argmin(((voxels - centre) ** 2).sum(axis=1))])


def random_lesion_click(mask: np.ndarray, spacing_kji: tuple[float, float, float], rng: np.random.Generator,
                        inset_mm: float = 3.0, min_area_fraction: float = 0.5) -> tuple[int, int, int]:
    """A voxel (k, j, i) where a user might click instead of the centre (benchmarks): drawn uniformly from
    the slices whose lesion area is at least ``min_area_fraction`` of the largest, at least ``inset_mm``
    inside the lesion's edge on its slice (the deepest voxels of a slice too thin for that)."""
    from scipy import ndimage

    areas = mask.sum(axis=(1, 2))
    pool = []  # (n, 3) arrays of k, j, i, slice by slice
    for k in np.flatnonzero(areas >= min_area_fraction * areas.max()):
        depth = ndimage.distance_transform_edt(mask[k], sampling=spacing_kji[1:])
        rows_cols = np.argwhere(depth >= min(inset_mm, depth.max()))
        pool.append(np.column_stack([np.full(len(rows_cols), k), rows_cols]))
    voxels = np.concatenate(pool)
    return tuple(int(v) for v in voxels[int(rng.integers(len(voxels)))])


def corrective_click(mask: np.ndarray, truth: np.ndarray,
                     spacing_kji: tuple[float, float, float]) -> tuple[tuple[int, int, int], bool] | None:
    """Where a user corrects ``mask``: the voxel deepest inside its largest error region (benchmarks, tests).

    The error regions are the connected parts of the missed lesion (a positive click) and of the
    false positives (a negative click); the largest by voxel count is clicked at the voxel farthest
    (in mm) from its edge. Returns ((k, j, i), positive), or None when the mask is the truth.
    """
    from scipy import ndimage

    best = None
    for region, positive in ((truth & ~mask.astype(bool), True), (mask.astype(bool) & ~truth, False)):
        labels, count = ndimage.label(region)
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        if best is None or sizes.max() > best[0]:
            best = (int(sizes.max()), labels == int(np.argmax(sizes)) + 1, positive)
    if best is None:
        return None
    depth = ndimage.distance_transform_edt(np.pad(best[1], 1), sampling=spacing_kji)[1:-1, 1:-1, 1:-1]
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(depth)), depth.shape)), best[2]


def pad_field_of_view(volume: np.ndarray, geometry: ImageGeometry, truth: np.ndarray,
                      field_mm: tuple[float, float, float], mode: str = "mirror",
                      ) -> tuple[np.ndarray, ImageGeometry, np.ndarray]:
    """A case padded out to at least ``field_mm`` (the i, j, k extents in mm), for benchmarks.

    The sarcoma scans are cropped 5 cm around the tumour; real scans show far more around it.
    Each axis is padded evenly on both sides. ``"mirror"`` fills the new voxels with mirrored
    tissue (and mirrored copies of the lesion, at least two margins away), as SimpleITK's
    MirrorPad does; ``"constant"`` fills them with the volume's lowest value. The label is padded
    with background, and the geometry keeps every original voxel at the same physical point.
    """
    if mode not in ("mirror", "constant"):
        raise InvalidInputError(f"unknown padding mode {mode!r}; use mirror or constant")
    need = [max(0, int(np.ceil(f / s)) - n) for f, s, n in zip(field_mm, geometry.spacing, geometry.size, strict=True)]
    before = [n // 2 for n in need]
    pad_kji = [(before[a], need[a] - before[a]) for a in (2, 1, 0)]
    if mode == "constant":
        padded = np.pad(volume, pad_kji, mode="constant", constant_values=volume.min())
    else:
        padded = np.pad(volume, pad_kji, mode="symmetric")
    size = tuple(n + p for n, p in zip(geometry.size, need, strict=True))
    return padded, geometry.with_size(size, [-b for b in before]), np.pad(truth, pad_kji)


def read_case(case: Case) -> tuple[np.ndarray, ImageGeometry, np.ndarray]:
    """A labelled case as (volume, geometry, boolean mask of its structures), both (K, J, I)."""
    from ProMISeLib.io.volumes import read_image, read_label

    volume, geometry = read_image(case.image)
    return volume, geometry, np.isin(read_label(case.label, geometry), case.label_values or (1,))


def patient_group(case_id: str) -> str:
    """Scans of one patient (STS_001_CT and STS_001_MR_T1) share a group: held out together in validation."""
    parts = case_id.split("_")
    return "_".join(parts[:2]) if case_id.startswith("STS_") and len(parts) >= 2 else case_id


def load_cases(folder: Path | None = None) -> list[Case]:
    """Cases listed in ``folder/cases.json`` whose image and label files exist."""
    folder = folder or data_dir()
    if folder is None or not (folder / "cases.json").is_file():
        return []
    cases = []
    for item in json.loads((folder / "cases.json").read_text()):
        image, label = folder / item["image"], folder / item["label"]
        if not (image.is_file() and label.is_file()):
            continue
        values = item.get("label_values")
        cases.append(
            Case(
                id=item["id"],
                image=image,
                label=label,
                label_values=tuple(values) if isinstance(values, list) else None,
                modality=item.get("modality", ""),
                kind=item.get("kind", ""),
            )
        )
    return cases


def select_cases(ids: str = "", shard: str = "0/1", folder: Path | None = None) -> list[Case]:
    """The labelled cases named in ``ids`` (comma-separated; all when empty), and of those shard "I/N":
    every N-th from the I-th (the benchmarks' way of splitting a run over processes)."""
    index, count = (int(v) for v in shard.split("/"))
    wanted = set(filter(None, ids.split(",")))
    return [c for c in load_cases(folder) if c.label_values and (not wanted or c.id in wanted)][index::count]


def get_case(case_id: str, folder: Path | None = None) -> Case:
    for case in load_cases(folder):
        if case.id == case_id:
            return case
    raise InvalidInputError(f"case {case_id!r} not found in the data folder (set PROMISE_DATA_DIR)")


#: brain1 (T1 post-contrast glioma, TCGA via TCIA) as shipped in pyradiomics' source release on PyPI.
SAMPLE_ARCHIVE = RemoteFile(
    url=(
        "https://files.pythonhosted.org/packages/03/c1/20fc2c50ab1e3304da36d866042a1905a2b05a1431ece35448ab6b4578f2/"
        "pyradiomics-3.1.0.tar.gz"
    ),
    sha256="24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4",
    size=34_461_233,
    filename="pyradiomics-3.1.0.tar.gz",
)
SAMPLE_MEMBERS = {
    "pyradiomics-3.1.0/data/brain1_image.nrrd": "fffdb111ee8b428ede7256707393c927a7d5be912f0604cf3c6f1bd5fc9644cf",
    "pyradiomics-3.1.0/data/brain1_label.nrrd": "ae6d8e6b84f7e99d68c210ee2fa6aaaefa0b2df0a84f55efca4feebe2b216059",
}


def download_sample(
    progress: ProgressCallback | None = None, cancel: CancelCallback | None = None, remote: RemoteFile = SAMPLE_ARCHIVE
) -> Case:
    """Fetch the public brain1 sample into the cache (pinned URL and SHA-256s)."""
    folder = cache_dir() / "samples" / "brain1"
    members = {m: (sha, folder / Path(m).name) for m, sha in SAMPLE_MEMBERS.items()}
    image, label = fetch_members(remote, members, progress, cancel)
    return Case("brain1", image, label, (1,), "MR (T1 post-contrast)", "brain tumour (glioma)")


def demo_case(progress: ProgressCallback | None = None, cancel: CancelCallback | None = None) -> Case:
    """The scan ``promise demo`` uses: brain1 from the data folder, else the downloaded sample."""
    for case in load_cases():
        if case.id == "brain1":
            return case
    return download_sample(progress, cancel)
