"""Loader for the phantom generator's ``phantoms.csv``.

One row per image with the columns ``subject_id, study_id, dicom_id, path`` (relative to the
CSV's folder), ``ViewPosition, indication, findings, impression, report`` and the 14 CheXpert
columns (``1.0``/``0.0``/``-1.0``/blank). Rows are grouped by study; the study-level columns
must agree between the rows of one study.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from report_language.labels import CHEXPERT_LABELS
from training.data._tables import (
    FRONTAL_VIEWS,
    normalise_view,
    parse_labels,
    read_rows,
    require_value,
    view_rank,
)
from training.errors import DatasetError
from training.records import StudyRecord

logger = logging.getLogger(__name__)

#: Columns ``phantoms.csv`` must have; ``dicom_id``, ``indication`` and ``report`` are optional.
PHANTOM_COLUMNS: Final[tuple[str, ...]] = (
    "subject_id",
    "study_id",
    "path",
    "ViewPosition",
    "findings",
    "impression",
    *CHEXPERT_LABELS,
)


@dataclass
class _Study:
    row_number: int
    subject_id: str
    findings: str
    impression: str
    indication: str
    labels: dict[str, float | None]
    images: list[tuple[str, Path]] = field(default_factory=list)


def load_phantom_csv(
    csv_path: Path | str, *, keep_lateral: bool = True, check_images: bool = True
) -> list[StudyRecord]:
    """Load the phantom studies listed in a ``phantoms.csv``.

    Parameters
    ----------
    csv_path
        The CSV file; image paths in it are relative to its folder (absolute paths are kept).
    keep_lateral
        Keep non-frontal views after the frontal ones; when false, studies without a PA or AP
        image are skipped.
    check_images
        Raise when an image file is missing.

    Returns
    -------
    list of StudyRecord
        In the order studies first appear in the file; frontal views first in each study.

    Raises
    ------
    DatasetError
        For a missing file or column, a bad label value, a missing image, or rows of one
        study that disagree on subject, report text or labels (naming the row).
    """
    csv_path = Path(csv_path)
    base = csv_path.parent
    studies: dict[str, _Study] = {}
    for row_number, row in read_rows(csv_path, PHANTOM_COLUMNS):
        study_id = require_value(row, "study_id", csv_path, row_number)
        relative = require_value(row, "path", csv_path, row_number)
        image = base / relative
        if check_images and not image.is_file():
            raise DatasetError(f"{csv_path}: row {row_number}, column 'path': {image} not found")
        study = _Study(
            row_number=row_number,
            subject_id=require_value(row, "subject_id", csv_path, row_number),
            findings=row["findings"],
            impression=row["impression"],
            indication=row.get("indication", ""),
            labels=parse_labels(row, csv_path, row_number),
        )
        first = studies.setdefault(study_id, study)
        if first is not study:
            for name in ("subject_id", "findings", "impression", "indication", "labels"):
                if getattr(first, name) != getattr(study, name):
                    raise DatasetError(
                        f"{csv_path}: row {row_number}, column {name!r} disagrees with row "
                        f"{first.row_number} of the same study"
                    )
        first.images.append((normalise_view(row["ViewPosition"]), image))

    records: list[StudyRecord] = []
    skipped = {"no frontal view": 0, "no findings or impression": 0}
    for study_id, study in studies.items():
        images = sorted(study.images, key=lambda item: (view_rank(item[0]), str(item[1])))
        if not keep_lateral:
            images = [item for item in images if item[0] in FRONTAL_VIEWS]
            if not images:
                skipped["no frontal view"] += 1
                continue
        if not (study.findings or study.impression):
            skipped["no findings or impression"] += 1
            continue
        records.append(
            StudyRecord(
                subject_id=study.subject_id,
                study_id=study_id,
                images=tuple(path for _, path in images),
                views=tuple(view for view, _ in images),
                findings=study.findings,
                impression=study.impression,
                indication=study.indication or None,
                labels=study.labels,
            )
        )
    for reason, count in skipped.items():
        if count:
            logger.info("phantoms: skipped %d studies (%s)", count, reason)
    logger.info("phantoms: loaded %d studies from %s", len(records), csv_path.name)
    return records
