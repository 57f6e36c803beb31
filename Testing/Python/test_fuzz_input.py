"""Issue 36: malformed image files through ``promise segment``, at random (seeded, bounded in count and time).

Real voxels (a crop of brain1) are written as NIfTI, NRRD or MetaImage with a random size, voxel type,
dimension, component count and NaNs, then damaged at random: cut at a random byte, the header's sizes
rewritten, bytes of the header flipped, garbage appended. ``main()`` runs in-process with the stand-in
engine (reading, checking and writing are what is tested) and stderr is captured at the file descriptor,
so ITK's own printing counts too. Only two outcomes are allowed: a mask on the image's grid, or one line
and exit 2 with nothing written; an exception fails the test.
"""

from __future__ import annotations

import gzip
import re
import time

import numpy as np
import pytest
import SimpleITK as sitk
from ProMISeLib.cli import main
from ProMISeLib.io.volumes import read_image

CASES = 80
BUDGET_S = 40.0  # cases stop here (well under a minute on 2 cores); at least MIN_CASES must have run
MIN_CASES = 25
FORMATS = (".nii.gz", ".nii", ".nrrd", "_raw.nrrd", ".mha", "_raw.mha")
TYPES = (np.int16, np.uint8, np.int32, np.float32, np.float64)


@pytest.fixture(scope="module")
def voxels(cases) -> np.ndarray:
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(cases["brain1"].image)))
    return image[9:20, 70:170, 150:222].astype(np.float64)  # the lesion's slices and neighbourhood


def _image(voxels: np.ndarray, rng: np.random.Generator) -> sitk.Image:
    """A random image of real voxels: a random block, voxel type, dimension, component count, maybe a NaN."""
    shape = [int(rng.integers(2, n + 1)) for n in voxels.shape]
    start = [int(rng.integers(0, n - s + 1)) for n, s in zip(voxels.shape, shape, strict=True)]
    block = voxels[tuple(slice(a, a + s) for a, s in zip(start, shape, strict=True))]
    dtype = TYPES[rng.integers(len(TYPES))]
    block = (np.clip(block, 0, 255) if dtype == np.uint8 else block).astype(dtype)
    if np.issubdtype(dtype, np.floating) and rng.random() < 0.2:
        block.flat[rng.integers(block.size)] = rng.choice([np.nan, np.inf])
    shape_kind = rng.choice(["3d", "3d", "3d", "2d", "one-slice", "4d-of-1", "4d", "vector"])
    if shape_kind == "2d":
        image = sitk.GetImageFromArray(block[0])
    elif shape_kind == "one-slice":
        image = sitk.GetImageFromArray(block[:1])
    elif shape_kind in ("4d-of-1", "4d"):
        image = sitk.JoinSeries([sitk.GetImageFromArray(block)] * (1 if shape_kind == "4d-of-1" else 2))
    elif shape_kind == "vector":
        image = sitk.GetImageFromArray(np.stack([block] * int(rng.integers(2, 4)), axis=-1), isVector=True)
    else:
        image = sitk.GetImageFromArray(block)
    image.SetSpacing([float(rng.uniform(0.3, 3.0)) for _ in range(image.GetDimension())])
    return image


def _usable(image: sitk.Image) -> bool:
    """Whether the engine must take this image (as SimpleITK reads it): 3D, scalar, finite, 2+ voxels an axis."""
    size = list(image.GetSize())
    if image.GetDimension() == 4 and size[3] == 1:
        size = size[:3]
    return (len(size) == 3 and min(size) >= 2 and image.GetNumberOfComponentsPerPixel() == 1
            and bool(np.isfinite(sitk.GetArrayViewFromImage(image)).all()))


def _damage(data: bytes, suffix: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """``data`` damaged at random, and how (``none`` when left whole)."""
    how = str(rng.choice(["none", "none", "cut", "sizes", "header-bytes", "garbage"]))
    if how == "none":
        return data, how
    if how == "cut":
        return data[: int(rng.integers(0, len(data)))], how
    if how == "garbage":
        return data + rng.bytes(int(rng.integers(1, 2000))), how
    gzipped = suffix == ".nii.gz"
    raw = gzip.decompress(data) if gzipped else data
    if how == "sizes":
        sizes = [int(rng.choice([0, 1, 3, 60, 5000, 2**20, 2**31 - 1])) for _ in range(3)]
        if ".nii" in suffix:
            raw = raw[:42] + b"".join(min(s, 32767).to_bytes(2, "little") for s in sizes) + raw[48:]
        elif ".nrrd" in suffix:
            raw = re.sub(rb"sizes: [^\n]*", b"sizes: " + " ".join(map(str, sizes)).encode(), raw, count=1)
        else:
            raw = re.sub(rb"DimSize = [^\n]*", b"DimSize = " + " ".join(map(str, sizes)).encode(), raw, count=1)
    else:  # header-bytes: a few bytes of the header inverted
        raw = bytearray(raw)
        for index in rng.integers(0, min(len(raw), 348), size=int(rng.integers(1, 4))):
            raw[index] ^= 0xFF
        raw = bytes(raw)
    return (gzip.compress(raw) if gzipped else raw), how


def test_malformed_files_give_a_mask_or_one_line_and_exit_2(voxels, tmp_path, capfd, stand_in_engine):
    rng = np.random.default_rng(36)
    started = time.perf_counter()
    ran = 0
    outcomes: dict[str, int] = {}
    for case in range(CASES):
        if time.perf_counter() - started > BUDGET_S:
            break
        image = _image(voxels, rng)
        suffix = FORMATS[rng.integers(len(FORMATS))]
        folder = tmp_path / f"case{case}"
        folder.mkdir()
        source = folder / f"scan{suffix.replace('_raw', '')}"
        sitk.WriteImage(image, str(source), useCompression="_raw" not in suffix and suffix != ".nii")
        as_written = sitk.ReadImage(str(source))  # as written (NIfTI may rescale a float64, or lose a NaN)
        usable, whole = _usable(as_written), _expected(as_written)
        data, how = _damage(source.read_bytes(), suffix, rng)
        source.write_bytes(data)
        out = folder / "out" / rng.choice(["mask.nii.gz", "MASK.NRRD", "mask.seg.nrrd"])
        out.parent.mkdir()
        size = image.GetSize()
        point = ",".join(str(n // 2) for n in (list(size) + [0, 0])[:3])
        described = f"case {case}: {source.name} {size} {image.GetPixelIDTypeAsString()} damage={how}"
        capfd.readouterr()
        code = main(["segment", str(source), "--point", point, "--space", "ijk", "-o", str(out)])
        printed = capfd.readouterr()
        lines = printed.err.strip().splitlines()
        written = sorted(p.name for p in out.parent.iterdir())
        if code == 0:
            assert written == [out.name], described
            assert all(line.startswith("note: ") for line in lines), f"{described}\n{printed.err}"
            if how in ("none", "cut", "garbage"):  # the voxels the engine took must be the scan's: none lost
                assert usable, f"{described}: segmented, yet not a 3D scalar finite image"
                np.testing.assert_array_equal(read_image(source)[0], whole, err_msg=described)
        else:
            assert code == 2, f"{described}: exit {code}\n{printed.err}"
            assert len(lines) == 1 and lines[0].startswith("promise: error: "), f"{described}\n{printed.err}"
            assert written == [], f"{described}: {written} left behind"
            assert not (how == "none" and usable), f"{described}: a whole, usable scan was refused: {printed.err}"
        outcomes[f"{how}:{code}"] = outcomes.get(f"{how}:{code}", 0) + 1
        ran += 1
    assert ran >= MIN_CASES, f"only {ran} cases in {BUDGET_S} s"
    assert any(k.endswith(":0") for k in outcomes) and any(k.endswith(":2") for k in outcomes), outcomes



def _expected(image: sitk.Image) -> np.ndarray:
    """The (K, J, I) float32 voxels of an image written whole (a 4D image of one volume: that volume)."""
    array = sitk.GetArrayFromImage(image)
    return (array[0] if image.GetDimension() == 4 else array).astype(np.float32)
