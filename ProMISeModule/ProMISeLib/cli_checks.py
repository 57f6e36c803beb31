"""The command line's checks on what it is asked to write, made before an image is read or a model built."""

from __future__ import annotations

import os
from pathlib import Path

from ProMISeLib.errors import InvalidInputError, OutputError
from ProMISeLib.io.volumes import check_writable, check_writable_file
from ProMISeLib.io.weights import WeightsFile


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same path once resolved (symbolic links), or a hard link."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def check_segment_outputs(image: str, output: str, report: str | None) -> tuple[Path, Path | None]:
    """The mask and report paths of ``promise segment``, each writable and neither the input image nor the other.

    Writing the mask over the scan would lose the scan; writing the report over the mask, the mask.
    """
    mask = check_writable(output)
    if _same_file(Path(image), mask):
        raise OutputError(f"{output}: is the input image; the mask would replace the scan (choose another --output)")
    if report is None:
        return mask, None
    report_path = check_writable_file(report)
    if _same_file(Path(image), report_path) or _same_file(mask, report_path):
        raise OutputError(f"{report}: --report names the input image or the output mask; choose another file")
    return mask, report_path


def weights_to_remove(models: list[str], remove_all: bool) -> list[WeightsFile]:
    """The weights files ``promise weights remove`` deletes: those of ``models``, or with ``--all`` every model's.

    Neither names nor ``--all`` is refused: a bare ``remove`` would delete every model's weights unasked.
    """
    from ProMISeLib.models.registry import MODELS, get_model_spec

    if models and remove_all:
        raise InvalidInputError("give model names or --all, not both")
    if not models and not remove_all:
        raise InvalidInputError("name the models whose weights to remove (see `promise models`), or give --all "
                                "to remove every downloaded model's weights")
    return [get_model_spec(name).weights for name in models] if models else [m.weights for m in MODELS.values()]
