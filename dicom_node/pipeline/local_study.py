"""Reading the DICOM files of one study from local files or folders (``dicom_node infer``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_node.errors import StudyInputError

logger = logging.getLogger(__name__)

#: View positions treated as frontal; they are put first so their tokens enter the prompt.
FRONTAL_VIEWS = ("PA", "AP")


def _expand(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise StudyInputError(f"{path}: no such file or directory")
    return files


def read_study(paths: Iterable[Path]) -> list[Dataset]:
    """Read the image instances of one study, frontal views first.

    Files given explicitly must be DICOM; in folders, non-DICOM files are skipped. Instances
    without pixel data (e.g. SR documents) are skipped too.

    Raises
    ------
    StudyInputError
        For a missing path, an explicit file that is not DICOM, no image at all, or files
        from more than one study.
    """
    explicit = {p for p in paths if p.is_file()}
    images: list[Dataset] = []
    for file in _expand(paths):
        try:
            ds = pydicom.dcmread(file)
        except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
            if file in explicit:
                raise StudyInputError(f"{file}: not a readable DICOM file ({exc})") from exc
            logger.info("skipping non-DICOM file %s", file.name)
            continue
        if "PixelData" not in ds:
            logger.info(
                "skipping %s: no pixel data (modality %s)", file.name, ds.get("Modality", "?")
            )
            continue
        images.append(ds)
    if not images:
        raise StudyInputError("no DICOM image found in the given paths")
    studies = {str(ds.get("StudyInstanceUID", "")) for ds in images}
    if len(studies) > 1:
        raise StudyInputError(
            f"the files belong to {len(studies)} different studies; give one study"
        )
    return sorted(
        images, key=lambda ds: str(ds.get("ViewPosition", "")).upper() not in FRONTAL_VIEWS
    )


def sample_study() -> Path:
    """Path of the embedded sample: ``RG1_UNCR.dcm``, a real PA chest CR from pydicom-data."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm")
    if path is None:
        raise StudyInputError(
            "the sample study RG1_UNCR.dcm (package pydicom-data) is not installed"
        )
    return Path(str(path))


__all__ = ["FRONTAL_VIEWS", "read_study", "sample_study"]
