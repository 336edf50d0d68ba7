"""Loader for a folder of DICOM studies with a CSV of their reports.

The folder is searched recursively; every readable DICOM image (a dataset with ``Rows``:
structured reports, presentation states and non-DICOM files are passed over) is grouped by
``StudyInstanceUID``. The reports CSV has a key column (``StudyInstanceUID`` or
``AccessionNumber``), ``findings`` and ``impression``, optionally ``indication`` and the 14
CheXpert columns. Without label columns, labels come from the rule-based labeler
(:func:`report_language.labeler.label_report`) run on the report text.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import pydicom
from pydicom.errors import InvalidDicomError

from report_language.labels import CHEXPERT_LABELS
from training.data._tables import (
    FRONTAL_VIEWS,
    normalise_view,
    parse_labels,
    read_rows,
    require_value,
    table_columns,
    view_rank,
)
from training.errors import DatasetError
from training.records import StudyRecord

logger = logging.getLogger(__name__)

KeyColumn = Literal["StudyInstanceUID", "AccessionNumber"]

#: Key columns tried, in order, when none is given.
KEY_COLUMNS: Final[tuple[KeyColumn, ...]] = ("StudyInstanceUID", "AccessionNumber")

#: A labeler: report text -> CheXpert label per observation.
Labeler = Callable[[str], Mapping[str, float | None]]

#: Errors pydicom raises on a damaged file that does start like DICOM.
_READ_ERRORS: Final = (OSError, EOFError, ValueError, TypeError, KeyError, AttributeError)


@dataclass(frozen=True)
class _Instance:
    path: Path
    study_uid: str
    accession: str
    patient_id: str
    view: str


@dataclass(frozen=True)
class _ReportRow:
    row_number: int
    findings: str
    impression: str
    indication: str
    labels: dict[str, float | None] | None


def _read_instance(path: Path) -> _Instance | None:
    """Header of one file; ``None`` for non-DICOM files and non-image objects."""
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return None
    except _READ_ERRORS as error:
        raise DatasetError(f"{path}: cannot read the DICOM header ({error})") from error
    if "Rows" not in dataset:
        return None
    study_uid = str(dataset.get("StudyInstanceUID", "") or "").strip()
    if not study_uid:
        raise DatasetError(f"{path}: DICOM image without StudyInstanceUID")
    patient_id = str(dataset.get("PatientID", "") or "").strip()
    if not patient_id:
        raise DatasetError(f"{path}: DICOM image without PatientID (needed to split by patient)")
    return _Instance(
        path=path,
        study_uid=study_uid,
        accession=str(dataset.get("AccessionNumber", "") or "").strip(),
        patient_id=patient_id,
        view=normalise_view(str(dataset.get("ViewPosition", "") or "")),
    )


def _default_labeler() -> Labeler:
    try:
        from report_language.labeler import label_report
    except ImportError as error:
        raise DatasetError(
            "the reports CSV has no CheXpert label columns and the rule-based labeler "
            f"(report_language.labeler) cannot be imported: {error}"
        ) from error
    return label_report


def _read_reports(
    reports_csv: Path, key: KeyColumn | None
) -> tuple[KeyColumn, dict[str, _ReportRow]]:
    columns = table_columns(reports_csv)
    if key is None:
        found = [name for name in KEY_COLUMNS if name in columns]
        if not found:
            raise DatasetError(f"{reports_csv}: missing key column, one of {list(KEY_COLUMNS)}")
        key = found[0]
    elif key not in KEY_COLUMNS:
        raise ValueError(f"key must be one of {list(KEY_COLUMNS)}, got {key!r}")
    present = [name for name in CHEXPERT_LABELS if name in columns]
    if present and len(present) < len(CHEXPERT_LABELS):
        missing = [name for name in CHEXPERT_LABELS if name not in columns]
        raise DatasetError(
            f"{reports_csv}: has some CheXpert columns but lacks {missing}; give all 14 or none"
        )
    rows: dict[str, _ReportRow] = {}
    for row_number, row in read_rows(reports_csv, (key, "findings", "impression")):
        value = require_value(row, key, reports_csv, row_number)
        if value in rows:
            raise DatasetError(
                f"{reports_csv}: row {row_number}, column {key!r} repeats row "
                f"{rows[value].row_number}"
            )
        rows[value] = _ReportRow(
            row_number=row_number,
            findings=row["findings"],
            impression=row["impression"],
            indication=row.get("indication", ""),
            labels=parse_labels(row, reports_csv, row_number) if present else None,
        )
    return key, rows


def load_dicom_folder(
    folder: Path | str,
    reports_csv: Path | str,
    *,
    key: KeyColumn | None = None,
    keep_lateral: bool = True,
    labeler: Labeler | None = None,
) -> list[StudyRecord]:
    """Load DICOM studies from a folder tree and match them to a reports CSV.

    Parameters
    ----------
    folder
        Folder searched recursively for DICOM files (any file name).
    reports_csv
        CSV with a key column, ``findings``, ``impression``, optional ``indication`` and
        optional 14 CheXpert columns (all or none).
    key
        Key column matching studies to rows; the first of ``StudyInstanceUID`` and
        ``AccessionNumber`` present in the CSV when ``None``.
    keep_lateral
        Keep non-frontal views after the frontal ones; when false, studies without a PA or
        AP image are skipped.
    labeler
        Report text -> labels, used when the CSV has no label columns; defaults to
        :func:`report_language.labeler.label_report` (imported only then).

    Returns
    -------
    list of StudyRecord
        One per study with a report row, sorted by StudyInstanceUID; ``subject_id`` is the
        PatientID. Studies without a report row, or whose row has neither findings nor
        impression, are skipped and counted in the log.

    Raises
    ------
    DatasetError
        For a missing folder or CSV, a missing column, a bad label value, a damaged DICOM
        file, an image without StudyInstanceUID or PatientID, or a study whose images name
        different patients.
    """
    folder = Path(folder)
    reports_csv = Path(reports_csv)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: DICOM folder not found")
    key, reports = _read_reports(reports_csv, key)

    studies: dict[str, list[_Instance]] = defaultdict(list)
    not_images = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        instance = _read_instance(path)
        if instance is None:
            not_images += 1
            continue
        studies[instance.study_uid].append(instance)
    if not_images:
        logger.info("DICOM folder: passed over %d files that are not DICOM images", not_images)

    label_fn = labeler
    records: list[StudyRecord] = []
    skipped = {"no report row": 0, "no findings or impression": 0, "no frontal view": 0}
    for study_uid, instances in sorted(studies.items()):
        patients = {instance.patient_id for instance in instances}
        if len(patients) > 1:
            raise DatasetError(
                f"{instances[0].path}: study has images of {len(patients)} different PatientIDs"
            )
        lookup = study_uid if key == "StudyInstanceUID" else instances[0].accession
        row = reports.get(lookup) if lookup else None
        if row is None:
            skipped["no report row"] += 1
            continue
        if not (row.findings or row.impression):
            skipped["no findings or impression"] += 1
            continue
        kept = sorted(instances, key=lambda item: (view_rank(item.view), str(item.path)))
        if not keep_lateral:
            kept = [item for item in kept if item.view in FRONTAL_VIEWS]
            if not kept:
                skipped["no frontal view"] += 1
                continue
        labels = row.labels
        if labels is None:
            if label_fn is None:
                label_fn = _default_labeler()
            text = f"FINDINGS: {row.findings}\nIMPRESSION: {row.impression}"
            found = label_fn(text)
            labels = {name: found.get(name) for name in CHEXPERT_LABELS}
        records.append(
            StudyRecord(
                subject_id=patients.pop(),
                study_id=study_uid,
                images=tuple(item.path for item in kept),
                views=tuple(item.view for item in kept),
                findings=row.findings,
                impression=row.impression,
                indication=row.indication or None,
                labels=labels,
            )
        )
    for reason, count in skipped.items():
        if count:
            logger.info("DICOM folder: skipped %d studies (%s)", count, reason)
    logger.info("DICOM folder: loaded %d studies", len(records))
    return records
