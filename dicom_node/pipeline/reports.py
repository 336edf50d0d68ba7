"""Report versions: every SR the node writes for a study, kept on disk and in the database.

A study's reports form a chain. Version 1 is the model's draft; each accepted amendment,
direct edit or sign-off adds the next version, and its SR names its predecessors (see
:func:`sr_templates.build_amended_sr`). The SR files live in the reports folder as
``<sha256 of the SOP Instance UID>.dcm`` (the outbox copy is deleted once the PACS has it,
but the next amendment is built from this one).

:func:`store_report_version` writes the file atomically, then inserts the row. Versions are
numbered per study under a unique constraint, so two readers accepting changes to the same
version at once cannot both succeed: the second gets :class:`~dicom_node.errors.StaleVersionError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from dicom_node._privacy import uid_digest
from dicom_node.dicom.files import encode_dicom_file
from dicom_node.errors import ReportStoreError, SpoolError, StaleVersionError
from dicom_node.pipeline.delivery import enqueue_sr
from dicom_node.store import Database, ReportKind, ReportVersion, Study
from dicom_node.store.spool import Spool

logger = logging.getLogger(__name__)

#: File name suffix of stored SR versions.
REPORT_SUFFIX = ".dcm"


class FindingSource(StrEnum):
    """Where a version's code for a finding comes from.

    See :mod:`dicom_node.pipeline.finding_codes`.
    """

    #: The version's text, read by the labeler.
    TEXT = "text"
    #: The reader's explicit choice.
    READER = "reader"
    #: The classifier's threshold: only versions stored before codes followed the text.
    MODEL = "model"


@dataclass(frozen=True)
class FindingRecord:
    """One coded finding of a report version, as stored with it."""

    label: str
    #: ``present``, ``absent``, ``uncertain`` or ``not_assessed``.
    presence: str
    #: The model's probability (never the reader's); None when the model gave none.
    probability: float | None = None
    #: The bundle's decision threshold for the label, when known.
    threshold: float | None = None
    #: Who decided the presence.
    source: FindingSource = FindingSource.TEXT
    #: What the labeler reads in the version's text; None when the text does not mention it.
    text_presence: str | None = None
    #: The reader confirmed this code against a text that reads otherwise.
    confirmed: bool = False
    #: Who chose the presence (the reader's display name, a DICOM PN) when source is reader.
    chosen_by: str | None = None


def report_path(sop_instance_uid: str) -> Path:
    """Path of an SR version, relative to the reports folder (no UID in the file name)."""
    digest = hashlib.sha256(sop_instance_uid.encode("ascii", "replace")).hexdigest()
    return Path(digest[:2]) / f"{digest}{REPORT_SUFFIX}"


def findings_to_json(findings: Sequence[FindingRecord]) -> str:
    """Serialise findings for :attr:`ReportVersion.findings_json`."""
    return json.dumps(
        [
            {
                "label": f.label,
                "presence": f.presence,
                "probability": f.probability,
                "threshold": f.threshold,
                "source": f.source.value,
                "text_presence": f.text_presence,
                "confirmed": f.confirmed,
                "chosen_by": f.chosen_by,
            }
            for f in findings
        ]
    )


def findings_from_json(text: str) -> list[FindingRecord]:
    """Read findings back from :attr:`ReportVersion.findings_json`."""
    return [
        FindingRecord(
            label=str(item["label"]),
            presence=str(item["presence"]),
            probability=None if item.get("probability") is None else float(item["probability"]),
            threshold=None if item.get("threshold") is None else float(item["threshold"]),
            # Rows stored before codes followed the text carry the classifier's codes.
            source=FindingSource(item.get("source", FindingSource.MODEL.value)),
            text_presence=None if item.get("text_presence") is None else str(item["text_presence"]),
            confirmed=bool(item.get("confirmed", False)),
            chosen_by=None if item.get("chosen_by") is None else str(item["chosen_by"]),
        )
        for item in json.loads(text)
    ]


def latest_version(db: Database, study_id: int) -> ReportVersion | None:
    """The newest report version of a study (detached), or None when it has none."""
    with db.session() as session:
        row = session.scalars(
            select(ReportVersion)
            .where(ReportVersion.study_id == study_id)
            .order_by(ReportVersion.version.desc())
            .limit(1)
        ).first()
        if row is not None:
            session.expunge(row)
        return row


def version_history(db: Database, study_id: int) -> list[ReportVersion]:
    """All report versions of a study, oldest first (detached)."""
    with db.session() as session:
        rows = list(
            session.scalars(
                select(ReportVersion)
                .where(ReportVersion.study_id == study_id)
                .order_by(ReportVersion.version)
            )
        )
        for row in rows:
            session.expunge(row)
        return rows


def read_report_sr(reports_dir: Path, version: ReportVersion) -> Dataset:
    """Read the SR file of a report version.

    Raises
    ------
    ReportStoreError
        When the file is missing or not DICOM.
    """
    path = reports_dir / version.sr_path
    try:
        return pydicom.dcmread(path)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise ReportStoreError(
            f"the SR of report version {version.version} cannot be read: {type(exc).__name__}"
        ) from exc


def store_report_version(
    db: Database,
    reports_dir: Path,
    sr: Dataset,
    *,
    kind: ReportKind,
    findings_text: str,
    impression_text: str,
    findings: Sequence[FindingRecord],
    based_on: int | None,
    indication: str | None = None,
    job_id: int | None = None,
    author: str | None = None,
    model_name: str | None = None,
    model_version: str | None = None,
    now: datetime | None = None,
) -> ReportVersion:
    """Keep an SR as the next version of its study's report.

    Parameters
    ----------
    db, reports_dir
        The node's database and reports folder (``settings.storage.reports_dir``).
    sr
        The SR dataset; its study must be recorded in the database.
    kind
        Draft, amendment, edit or sign-off.
    findings_text, impression_text, findings
        The report's content, stored with the row for listing without reading the file.
    based_on
        The version number this one replaces (None for a study's first report). A new
        draft of a study that already has versions passes the latest version.
    indication, job_id, author, model_name, model_version, now
        Provenance.

    Returns
    -------
    ReportVersion
        The stored row (detached).

    Raises
    ------
    StaleVersionError
        When `based_on` is no longer the study's latest version.
    ReportStoreError
        When the study is unknown or the file cannot be written.
    """
    sr_uid = str(sr.SOPInstanceUID)
    now = now or datetime.now(UTC)
    with db.session() as session:
        study_id = session.scalar(
            select(Study.id).where(Study.study_instance_uid == str(sr.StudyInstanceUID))
        )
    if study_id is None:
        raise ReportStoreError(f"the study {uid_digest(sr.StudyInstanceUID)} is not recorded")
    _check_latest(db, study_id, based_on)
    relative = report_path(sr_uid)
    try:
        Spool(reports_dir).write(relative, encode_dicom_file(sr))
    except SpoolError as exc:
        raise ReportStoreError(f"cannot write the SR version: {exc}") from exc
    try:
        with db.session() as session:
            predecessor_id = None
            if based_on is not None:
                predecessor_id = session.scalar(
                    select(ReportVersion.id).where(
                        ReportVersion.study_id == study_id, ReportVersion.version == based_on
                    )
                )
            row = ReportVersion(
                study_id=study_id,
                job_id=job_id,
                version=(based_on or 0) + 1,
                kind=kind,
                predecessor_id=predecessor_id,
                sr_sop_instance_uid=sr_uid,
                sr_path=relative.as_posix(),
                findings_text=findings_text,
                impression_text=impression_text,
                findings_json=findings_to_json(findings),
                indication=indication,
                model_name=model_name,
                model_version=model_version,
                author=author,
                created_at=now,
            )
            session.add(row)
            session.flush()
            session.expunge(row)
    except IntegrityError as exc:
        # Another version based on the same predecessor won the race.
        (reports_dir / relative).unlink(missing_ok=True)
        latest = _latest_number(db, study_id)
        raise StaleVersionError(
            f"report version {based_on} is no longer the latest (now {latest})", latest
        ) from exc
    logger.info(
        "report version %d (%s) of study %s stored as SR %s",
        row.version,
        kind.value,
        uid_digest(sr.StudyInstanceUID),
        uid_digest(sr_uid),
    )
    return row


def store_and_enqueue(
    db: Database,
    reports_dir: Path,
    outbox_dir: Path,
    sr: Dataset,
    destinations: Sequence[str],
    **version: Any,
) -> tuple[ReportVersion, list[int]]:
    """Keep an SR as the next report version, then put it in the outbox for `destinations`.

    The one order every new version follows, the draft job's and the dialog's alike: a
    version that could not be stored is never sent, and a stored one is queued at once (a
    crash in between is repaired by the draft job's retry, which queues a stored draft again).

    Parameters
    ----------
    db, reports_dir, outbox_dir
        The node's database, reports folder and outbox folder.
    sr
        The SR dataset.
    destinations
        Names of the PACS destinations (``[pacs.<name>]``) to send it to.
    **version
        Keyword arguments of :func:`store_report_version` (``kind``, texts, ``findings``,
        ``based_on``, provenance); ``job_id`` also tags the outbox rows.

    Returns
    -------
    tuple of ReportVersion and list of int
        The stored row and the ids of its outbox rows.

    Raises
    ------
    StaleVersionError, ReportStoreError
        As :func:`store_report_version`; nothing is queued.
    OutboxError
        When the SR cannot be put in the outbox (the version stays stored).
    """
    row = store_report_version(db, reports_dir, sr, **version)
    ids = enqueue_sr(db, outbox_dir, sr, destinations, job_id=version.get("job_id"))
    return row, ids


def requeue_version(
    db: Database,
    reports_dir: Path,
    outbox_dir: Path,
    version: ReportVersion,
    destinations: Sequence[str],
) -> list[int]:
    """Put a stored version's SR in the outbox again (a job retried after a crash).

    Parameters
    ----------
    db, reports_dir, outbox_dir
        The node's database, reports folder and outbox folder.
    version
        The stored row; its SR is read from ``reports_dir``.
    destinations
        Names of the PACS destinations to send it to.

    Returns
    -------
    list of int
        The ids of its outbox rows.

    Raises
    ------
    ReportStoreError
        When the stored SR cannot be read.
    OutboxError
        When the SR cannot be put in the outbox.
    """
    sr = read_report_sr(reports_dir, version)
    return enqueue_sr(db, outbox_dir, sr, destinations, job_id=version.job_id)


def _latest_number(db: Database, study_id: int) -> int | None:
    with db.session() as session:
        value = session.scalar(
            select(func.max(ReportVersion.version)).where(ReportVersion.study_id == study_id)
        )
    return None if value is None else int(value)


def _check_latest(db: Database, study_id: int, based_on: int | None) -> None:
    latest = _latest_number(db, study_id)
    if latest != based_on:
        raise StaleVersionError(
            f"report version {based_on} is not the latest version ({latest})", latest
        )


__all__ = [
    "REPORT_SUFFIX",
    "FindingRecord",
    "FindingSource",
    "findings_from_json",
    "findings_to_json",
    "latest_version",
    "read_report_sr",
    "report_path",
    "requeue_version",
    "store_and_enqueue",
    "store_report_version",
    "version_history",
]
