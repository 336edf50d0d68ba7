"""Loader for the MIMIC-CXR-JPG 2.0.0 layout with the MIMIC-CXR free-text reports.

The root holds ``mimic-cxr-2.0.0-metadata.csv(.gz)`` (one row per image: ``dicom_id``,
``subject_id``, ``study_id``, ``ViewPosition``, ...), ``mimic-cxr-2.0.0-chexpert.csv(.gz)``
(one row per study: ``subject_id``, ``study_id`` and the 14 CheXpert columns), optionally
``mimic-cxr-2.0.0-split.csv(.gz)`` (``dicom_id``, ``study_id``, ``subject_id``, ``split``) and
the images at ``files/p<first two digits of subject>/p<subject>/s<study>/<dicom_id>.jpg``.
Reports (from the separate mimic-cxr-reports archive) live at
``<reports_dir>/files/p<NN>/p<subject>/s<study>.txt``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from report_language.labels import CHEXPERT_LABELS
from report_language.sections import parse_report
from training.data._tables import (
    FRONTAL_VIEWS,
    find_optional_table,
    find_table,
    normalise_view,
    parse_labels,
    read_rows,
    require_value,
    view_rank,
)
from training.data.splits import SplitName, normalise_split_name
from training.errors import DatasetError
from training.records import StudyRecord

logger = logging.getLogger(__name__)

METADATA_STEM: Final[str] = "mimic-cxr-2.0.0-metadata"
CHEXPERT_STEM: Final[str] = "mimic-cxr-2.0.0-chexpert"
SPLIT_STEM: Final[str] = "mimic-cxr-2.0.0-split"


@dataclass(frozen=True)
class _Image:
    dicom_id: str
    view: str


def _subject_folder(root: Path, subject_id: str) -> Path:
    return root / "files" / f"p{subject_id[:2]}" / f"p{subject_id}"


def mimic_image_path(root: Path, subject_id: str, study_id: str, dicom_id: str) -> Path:
    """Path of one MIMIC-CXR-JPG image under ``root``."""
    return _subject_folder(root, subject_id) / f"s{study_id}" / f"{dicom_id}.jpg"


def mimic_report_path(reports_dir: Path, subject_id: str, study_id: str) -> Path:
    """Path of one MIMIC-CXR report under ``reports_dir``."""
    return _subject_folder(reports_dir, subject_id) / f"s{study_id}.txt"


def load_mimic_split(root: Path | str) -> dict[str, SplitName]:
    """The official MIMIC-CXR-JPG split, study id -> ``"train"``/``"val"``/``"test"``.

    Pass it to :func:`~training.data.split_records` as ``official``.

    Parameters
    ----------
    root
        The MIMIC-CXR-JPG root.

    Returns
    -------
    dict
        Empty when the root has no ``mimic-cxr-2.0.0-split.csv(.gz)``.

    Raises
    ------
    DatasetError
        For a malformed split file (missing column, unknown split name, a study in two splits).
    """
    root = Path(root)
    path = find_optional_table(root, SPLIT_STEM)
    if path is None:
        return {}
    result: dict[str, SplitName] = {}
    for row_number, row in read_rows(path, ("study_id", "split")):
        study_id = require_value(row, "study_id", path, row_number)
        raw = require_value(row, "split", path, row_number)
        try:
            name = normalise_split_name(raw)
        except ValueError as error:
            raise DatasetError(f"{path}: row {row_number}, column 'split': {error}") from None
        if result.setdefault(study_id, name) != name:
            raise DatasetError(
                f"{path}: row {row_number}: study in both {result[study_id]!r} and {name!r}"
            )
    return result


def load_mimic_cxr(
    root: Path | str,
    reports_dir: Path | str | None = None,
    *,
    keep_lateral: bool = True,
    check_images: bool = True,
) -> list[StudyRecord]:
    """Load MIMIC-CXR-JPG studies with their reports and CheXpert labels.

    Parameters
    ----------
    root
        The MIMIC-CXR-JPG root (metadata and CheXpert tables, ``files/``).
    reports_dir
        The folder holding the reports' ``files/`` tree; the root itself when ``None``
        (both archives can be unpacked into one folder).
    keep_lateral
        Keep lateral and other non-frontal views after the frontal ones; when false, only PA
        and AP images are kept and studies without one are skipped.
    check_images
        Raise when an image file listed in the metadata is missing.

    Returns
    -------
    list of StudyRecord
        Sorted by subject and study id. Studies whose report is missing or has neither
        findings nor impression are skipped (counts are logged); studies absent from the
        CheXpert table get no labels.

    Raises
    ------
    DatasetError
        For a missing table, a missing column, a bad label value or a missing image, naming
        the file (and the row and column); or when no study is left.
    """
    root = Path(root)
    reports_root = root if reports_dir is None else Path(reports_dir)
    metadata_path = find_table(root, METADATA_STEM)
    chexpert_path = find_table(root, CHEXPERT_STEM)

    images: dict[tuple[str, str], list[_Image]] = defaultdict(list)
    for row_number, row in read_rows(metadata_path, ("dicom_id", "subject_id", "study_id")):
        key = (
            require_value(row, "subject_id", metadata_path, row_number),
            require_value(row, "study_id", metadata_path, row_number),
        )
        dicom_id = require_value(row, "dicom_id", metadata_path, row_number)
        images[key].append(_Image(dicom_id, normalise_view(row.get("ViewPosition"))))

    labels: dict[str, dict[str, float | None]] = {}
    label_columns = ("subject_id", "study_id", *CHEXPERT_LABELS)
    for row_number, row in read_rows(chexpert_path, label_columns):
        study_id = require_value(row, "study_id", chexpert_path, row_number)
        labels[study_id] = parse_labels(row, chexpert_path, row_number)

    records: list[StudyRecord] = []
    skipped = {"no report file": 0, "no findings or impression": 0, "no frontal view": 0}
    unlabelled = 0
    for (subject_id, study_id), study_images in sorted(images.items()):
        kept = sorted(study_images, key=lambda image: (view_rank(image.view), image.dicom_id))
        if not keep_lateral:
            kept = [image for image in kept if image.view in FRONTAL_VIEWS]
            if not kept:
                skipped["no frontal view"] += 1
                continue
        report_path = mimic_report_path(reports_root, subject_id, study_id)
        if not report_path.is_file():
            skipped["no report file"] += 1
            continue
        try:
            sections = parse_report(report_path.read_text(encoding="utf-8", errors="replace"))
        except OSError as error:
            raise DatasetError(f"{report_path}: cannot read the report ({error})") from error
        if not sections.has_text:
            skipped["no findings or impression"] += 1
            continue
        paths = tuple(
            mimic_image_path(root, subject_id, study_id, image.dicom_id) for image in kept
        )
        if check_images:
            for path in paths:
                if not path.is_file():
                    raise DatasetError(f"{path}: image listed in {metadata_path} not found")
        if study_id not in labels:
            unlabelled += 1
        records.append(
            StudyRecord(
                subject_id=subject_id,
                study_id=study_id,
                images=paths,
                views=tuple(image.view for image in kept),
                findings=sections.findings,
                impression=sections.impression,
                indication=sections.indication or None,
                labels=labels.get(study_id, {}),
            )
        )
    for reason, count in skipped.items():
        if count:
            logger.info("MIMIC-CXR: skipped %d studies (%s)", count, reason)
    if unlabelled:
        logger.info("MIMIC-CXR: %d studies have no row in %s", unlabelled, chexpert_path.name)
    if not records:
        raise DatasetError(
            f"{root}: no usable study (reports looked up under {reports_root / 'files'})"
        )
    logger.info("MIMIC-CXR: loaded %d studies", len(records))
    return records
