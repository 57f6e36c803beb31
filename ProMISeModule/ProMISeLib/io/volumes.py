"""Reading images and writing masks: SimpleITK for I/O, slicerio for ``.seg.nrrd``.

Images come back as float32 numpy arrays in (K, J, I) order with an :class:`ImageGeometry`.
Every write goes to a temporary file in the target folder and is renamed into place, so a
failed or interrupted write never leaves a partial file, nor replaces an existing one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ProMISeLib.errors import ImageReadError, InvalidInputError, OutputError
from ProMISeLib.io.geometry import ImageGeometry
from ProMISeLib.io.image_file import itk_reason, read_image_file, read_image_header
from ProMISeLib.io.validation import validate_volume

MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd")
IMAGE_SUFFIXES = (".nii.gz", ".seg.nrrd", ".nrrd", ".nii", ".mha", ".mhd", ".nhdr")


def read_image(path: str | Path, notes: list[str] | None = None) -> tuple[np.ndarray, ImageGeometry]:
    """Read a 3D scalar image file, or a DICOM series folder, as (array_kji, geometry).

    A file is checked against its header first (:func:`~ProMISeLib.io.image_file.read_image_file`): a
    truncated file, or one that declares more voxels than memory can hold, is refused before it is read.
    ITK's warnings on the file (an sform it did not use, ...) go to ``notes`` (else stderr).
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or folder")
    try:
        image = _read_dicom_folder(path) if path.is_dir() else read_image_file(path, notes)
        return image_to_array(image, str(path))
    except RuntimeError as exc:
        raise ImageReadError(f"{path}: cannot be read as an image ({itk_reason(exc)})") from exc
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except MemoryError as exc:
        raise ImageReadError(f"{path}: too large for the memory free now ({exc})") from exc


def read_geometry(path: str | Path) -> ImageGeometry:
    """The grid of a 3D scalar image file from its header alone (a DICOM folder: its series is read)."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or folder")
    if path.is_dir():
        return read_image(path)[1]
    reader = read_image_header(path)  # a truncated file, or one too large for memory, is refused here
    if reader.GetNumberOfComponents() != 1:
        raise InvalidInputError(f"{path}: has {reader.GetNumberOfComponents()} components per voxel; "
                                "a scalar image is needed")
    size, dim = reader.GetSize(), reader.GetDimension()
    if dim == 4 and size[3] == 1:  # as image_to_array reads it: the 3D image of its one time point
        d = reader.GetDirection()
        return ImageGeometry(size[:3], reader.GetSpacing()[:3], reader.GetOrigin()[:3], d[0:3] + d[4:7] + d[8:11])
    if dim != 3:
        raise InvalidInputError(f"{path}: is {dim}D; a 3D image is needed")
    return ImageGeometry.from_sitk(reader)


def image_stem(path: str | Path) -> str:
    """File name without its image extension(s): ``case1.nii.gz`` -> ``case1``; a DICOM folder's name."""
    path = Path(path)
    for suffix in IMAGE_SUFFIXES:
        if path.name.lower().endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def _read_dicom_folder(folder: Path) -> sitk.Image:
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # GDCM's "No Series were found": the error below says it
    try:
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    if not series:
        raise ImageReadError(f"{folder}: no DICOM series found in the folder")
    # The series with the most files is the volume a user means.
    best = max(series, key=lambda s: len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s)))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), best))
    return reader.Execute()


def image_to_array(image: sitk.Image, name: str = "image") -> tuple[np.ndarray, ImageGeometry]:
    """Validate a SimpleITK image and return its float32 (K, J, I) array and geometry."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidInputError(
            f"{name}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; a scalar image is needed"
        )
    dim = image.GetDimension()
    if dim == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
        dim = 3
    if dim != 3:
        raise InvalidInputError(f"{name}: is {dim}D; a 3D image is needed")
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    return validate_volume(array, name), ImageGeometry.from_sitk(image)


def mask_suffix(path: str | Path) -> str:
    """The recognised mask suffix of ``path`` or an OutputError."""
    name = str(path).lower()
    for suffix in sorted(MASK_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    raise OutputError(f"{path}: output must end in .nii.gz, .nrrd or .seg.nrrd")


def check_writable(path: str | Path) -> Path:
    """Fail early (before any compute) if the mask file ``path`` cannot be written."""
    mask_suffix(path)
    return check_writable_file(path)


def check_writable_file(path: str | Path) -> Path:
    """Fail early (before any compute) if a file can't be written at ``path`` (any suffix)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{path}: folder {folder} does not exist")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputError(f"{path}: not writable")
    try:  # the permission bits don't tell everything (root, read-only or special file systems): try it
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".promise-check-"):
            pass
    except OSError as exc:
        raise OutputError(f"{path}: folder {folder} is not writable ({exc.strerror or exc})") from exc
    return path


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    path = Path(path)
    name = path.name.lower()  # the temporary file's suffix tells the writer the format: in the case it knows
    suffix = next((s for s in MASK_SUFFIXES if s.count(".") > 1 and name.endswith(s)), path.suffix.lower())
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=".promise-",
                                        suffix=suffix)
    except OSError as exc:
        raise OutputError(f"{path}: could not be written ({exc.strerror or exc})") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"{path}: could not be written ({exc.strerror or exc})") from exc
    except RuntimeError as exc:  # SimpleITK reports write errors as RuntimeError
        raise OutputError(f"{path}: could not be written ({str(exc).strip().splitlines()[-1]})") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def mask_to_sitk(mask_kji: np.ndarray, geometry: ImageGeometry) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask_kji, dtype=np.uint8))
    geometry.apply_to_sitk(image)
    return image


def write_mask(
    path: str | Path,
    mask_kji: np.ndarray,
    geometry: ImageGeometry,
    segment_name: str = "lesion",
    color: tuple[float, float, float] = (0.95, 0.35, 0.2),
) -> Path:
    """Write a uint8 mask with ``geometry`` to .nii.gz/.nrrd, or as a Slicer .seg.nrrd segment."""
    path = check_writable(path)
    if mask_kji.shape != geometry.shape_kji:
        raise OutputError(f"mask shape {mask_kji.shape} does not match the image {geometry.shape_kji}")
    if mask_suffix(path) == ".seg.nrrd":
        return write_segments(path, [({"id": "Segment_1", "name": segment_name, "color": list(color)}, mask_kji)],
                              geometry)
    image = mask_to_sitk(mask_kji, geometry)
    return atomic_write(path, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True))


def write_segments(path: str | Path, segments: Sequence[tuple[dict, np.ndarray]], geometry: ImageGeometry) -> Path:
    """Write (K, J, I) masks as the segments of one Slicer ``.seg.nrrd``, atomically.

    Each item is ``({"id": ..., "name": ..., "color": [r, g, b]}, mask)``; a segment that overlaps an
    earlier one goes to a further layer, as Slicer stores them.
    """
    import slicerio

    path = check_writable(path)
    if mask_suffix(path) != ".seg.nrrd":
        raise OutputError(f"{path}: segments are written as a .seg.nrrd")
    segmentation = slicerio.create_segmentation(geometry.size, geometry.index_to_lps_matrix())
    for fields, mask in segments:
        if mask.shape != geometry.shape_kji:
            raise OutputError(f"mask shape {mask.shape} does not match the image {geometry.shape_kji}")
        slicerio.add_segment(segmentation, np.asarray(mask, dtype=bool).transpose(2, 1, 0), dict(fields))
    return atomic_write(path, lambda tmp: slicerio.write_segmentation(str(tmp), segmentation))


def read_label(path: str | Path, geometry: ImageGeometry | None = None) -> np.ndarray:
    """Read a label image as an int array (K, J, I); check its grid against ``geometry``."""
    image = sitk.ReadImage(str(path))
    labels = sitk.GetArrayFromImage(image)
    if geometry is not None:
        check_same_grid(path, ImageGeometry.from_sitk(image), geometry)
    return labels


def check_same_grid(path: str | Path, label: ImageGeometry, image: ImageGeometry) -> None:
    """InvalidInputError unless the label file at ``path`` lies on the image's grid (1 micrometre)."""
    if label.size != image.size or not np.allclose(label.index_to_lps_matrix(), image.index_to_lps_matrix(),
                                                   atol=1e-3):
        raise InvalidInputError(f"{path}: label grid differs from the image grid")
