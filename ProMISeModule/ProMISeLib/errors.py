"""Errors the engine raises. Each carries a one-line message fit for a user."""

from __future__ import annotations


class ProMISeError(Exception):
    """Base class: every error the engine raises on purpose."""

    exit_code = 2


class InvalidInputError(ProMISeError):
    """The image, the points or an option cannot be used as given."""


class PointOutsideImageError(InvalidInputError):
    """A prompt point lies outside the image."""


class ImageReadError(InvalidInputError):
    """An image file or DICOM folder cannot be read."""


class CheckpointError(ProMISeError):
    """A weights file is missing, corrupt, of the wrong model, or fails its hash."""


class DeviceUnavailableError(ProMISeError):
    """The requested compute device (e.g. CUDA) is not available."""


class OutputError(ProMISeError):
    """The result cannot be written where asked."""


class DownloadError(ProMISeError):
    """A file could not be downloaded or failed its SHA-256 check."""


class SegmentationCancelled(ProMISeError):
    """The user cancelled a running segmentation; nothing was written."""

    exit_code = 130


class EmptySegmentationError(ProMISeError):
    """The model found nothing at the prompt; the caller is told instead of getting an empty mask."""

    exit_code = 3
