"""Helpers of the dialog API tests: settings, a drafted study, validators, Orthanc."""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from dicom_node._privacy import patient_key
from dicom_node.api import DialogService
from dicom_node.pipeline.finding_codes import code_findings
from dicom_node.pipeline.reports import (
    FindingRecord,
    latest_version,
    read_report_sr,
    store_report_version,
    version_history,
)
from dicom_node.settings import Settings, load_settings
from dicom_node.store import (
    AuditEvent,
    Database,
    DialogMessage,
    InstanceRecord,
    OutboxItem,
    Proposal,
    ReportKind,
    ReportVersion,
    Study,
)
from dicom_node.store.spool import Spool
from sr_templates import AlgorithmInfo, Finding, Presence, Report, build_draft_sr

#: Bearer tokens of the test users.
JANE_TOKEN = "jane-token-0123456789abcdef"
BOB_TOKEN = "bob-token-0123456789abcdef"
#: A second reader who may sign (the colleague of the live-update tests).
ANN_TOKEN = "ann-token-0123456789abcdef"
#: Patient attributes of the seeded study; they must never reach the log.
PATIENT_NAME = "Zyxwvu^Qwertina"
PATIENT_ID = "PID-778899-SECRET"
ACCESSION = "ACC4711"
DRAFT_FINDINGS = "Small left pleural effusion. Heart size is normal. No pneumothorax."
DRAFT_IMPRESSION = "Small left pleural effusion."
#: Longest message of the test settings.
MAX_MESSAGE_CHARS = 200
#: The screens the reader page is checked at: a laptop and a reading-room monitor.
READING_SIZES = {"1366x768": {"width": 1366, "height": 768},
                 "2560x1440": {"width": 2560, "height": 1440}}
#: Where the page tests leave screenshots for a person to look at.
SCREENS = Path("/tmp/screens/page")
SOURCE_AE = "ORTHANC"


def api_settings(folder: Path, bundle: Path, **sections: Any) -> Settings:
    """Settings of a test node: storage in `folder`, the tiny bundle, three API users (jane
    and ann may sign, bob may not)."""
    values: dict[str, Any] = {
        "storage": {"folder": folder, "min_free_bytes": 0},
        "inference": {"bundle": bundle, "device": "cpu"},
        "api": {
            "enabled": True,
            "port": 0,
            "max_message_chars": MAX_MESSAGE_CHARS,
            "users": {
                "jane": {
                    "token": JANE_TOKEN,
                    "display_name": "Doe^Jane",
                    "organization": "General Hospital",
                },
                # Configured by hash, as in production; may not sign.
                "bob": {
                    "token_sha256": _sha256(BOB_TOKEN),
                    "display_name": "Roe^Bob",
                    "organization": "General Hospital",
                    "may_sign": False,
                },
                "ann": {
                    "token_sha256": _sha256(ANN_TOKEN),
                    "display_name": "Moe^Ann",
                    "organization": "General Hospital",
                },
            },
        },
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return load_settings(None, **values)


def screenshot(page: Any, name: str) -> None:
    """Keep a picture of a Playwright page for a person to look at (in :data:`SCREENS`)."""
    SCREENS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENS / f"{name}.png"))


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def auth(token: str = JANE_TOKEN) -> dict[str, str]:
    """The Authorization header of a token."""
    return {"Authorization": f"Bearer {token}"}


@dataclass
class SeededStudy:
    """A study with one image in the spool and a drafted report (version 1)."""

    study_uid: str
    image: Dataset
    image_path: Path
    draft: Dataset


def spool_instance(settings: Settings, db: Database, ds: Dataset, view_position: str) -> Path:
    """Do what the SCP does with a received image: write it to the spool and record it (the
    test patient's key, the test accession). Returns the spooled file."""
    spool = Spool(settings.storage.spool_dir)
    relative = spool.relative_path(
        str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    )
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    path = spool.write(relative, buffer.getvalue())
    db.record_instance(
        InstanceRecord(
            sop_instance_uid=str(ds.SOPInstanceUID),
            study_instance_uid=str(ds.StudyInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            modality=str(ds.Modality),
            body_part="CHEST",
            view_position=view_position,
            accession_number=ACCESSION,
            patient_key=patient_key(PATIENT_ID, None),
            path=relative.as_posix(),
            size_bytes=path.stat().st_size,
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            calling_ae=SOURCE_AE,
            received_at=_now(),
        )
    )
    return path


def seed_drafted_study(
    settings: Settings, db: Database, model: Any, source: Path, *, instances: int = 1
) -> SeededStudy:
    """Do what the node and the draft job do: spool the image, record it, store the draft.

    The image is a copy of `source` with new UIDs and the test patient; the draft SR is built
    from it with the model's finding probabilities, each finding coded from the draft text.
    """
    image = pydicom.dcmread(source)
    image.StudyInstanceUID = generate_uid()
    image.SeriesInstanceUID = generate_uid()
    image.SOPInstanceUID = generate_uid()
    image.file_meta.MediaStorageSOPInstanceUID = image.SOPInstanceUID
    image.PatientName = PATIENT_NAME
    image.PatientID = PATIENT_ID
    image.AccessionNumber = ACCESSION
    path = spool_instance(settings, db, image, "PA")
    analysis = model.analyse([path])
    # As the draft job does: the codes follow the draft's text, the model's probabilities stay.
    records = code_findings(
        DRAFT_FINDINGS,
        DRAFT_IMPRESSION,
        model=[
            FindingRecord(f.label, "not_assessed", f.probability, f.threshold)
            for f in analysis.findings
        ],
    )
    report = Report(
        findings_text=DRAFT_FINDINGS,
        impression_text=DRAFT_IMPRESSION,
        indication="Cough and fever.",
        findings=tuple(
            Finding(r.label, Presence(r.presence), r.probability) for r in records
        ),
        language="en",
    )
    header = copy.deepcopy(image)
    del header.PixelData
    draft = build_draft_sr([header], report, AlgorithmInfo(model.name, model.version))
    store_report_version(
        db,
        settings.storage.reports_dir,
        draft,
        kind=ReportKind.DRAFT,
        findings_text=report.findings_text,
        impression_text=report.impression_text,
        findings=records,
        based_on=None,
        indication=report.indication,
        model_name=model.name,
        model_version=model.version,
    )
    return SeededStudy(str(image.StudyInstanceUID), image, path, draft)


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def state_counts(db: Database) -> dict[str, int]:
    """Rows of the dialog and report state (the audit log is counted separately)."""
    counts = {}
    with db.session() as session:
        for name, model in (
            ("messages", DialogMessage),
            ("proposals", Proposal),
            ("versions", ReportVersion),
            ("outbox", OutboxItem),
        ):
            counts[name] = int(session.scalar(select(func.count()).select_from(model)) or 0)
        counts["open_proposals"] = int(
            session.scalar(
                select(func.count()).select_from(Proposal).where(Proposal.status == "open")
            )
            or 0
        )
    return counts


def audit_rows(db: Database) -> list[AuditEvent]:
    """Every audit event, oldest first."""
    with db.session() as session:
        rows = list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))
        for row in rows:
            session.expunge(row)
        return rows


def predecessor_uids(sr: Dataset) -> list[str]:
    """SOP Instance UIDs named by an SR's Predecessor Documents Sequence."""
    uids: list[str] = []
    for study in sr.get("PredecessorDocumentsSequence", []):
        for series in study.ReferencedSeriesSequence:
            for item in series.ReferencedSOPSequence:
                uids.append(str(item.ReferencedSOPInstanceUID))
    return uids


def all_text(records: Sequence[Any]) -> str:
    """Every logged message and argument, as one string."""
    return "\n".join(record.getMessage() for record in records)


@dataclass
class ApiUnderTest:
    """The app with a drafted study."""

    client: TestClient
    settings: Settings
    db: Database
    service: DialogService
    study: SeededStudy

    def path(self, suffix: str = "", study_uid: str | None = None) -> str:
        return f"/api/studies/{study_uid or self.study.study_uid}{suffix}"


# --------------------------------------------------------------------------- requests
def post_message(api: ApiUnderTest, text: str, intent: str = "auto", token: str = JANE_TOKEN,
                 study_uid: str | None = None) -> Any:
    return api.client.post(
        api.path("/messages", study_uid), json={"text": text, "intent": intent},
        headers=auth(token),
    )


def propose(api: ApiUnderTest, text: str = "There is no pleural effusion.") -> dict[str, Any]:
    response = post_message(api, text)
    assert response.status_code == 200, response.text
    proposal = response.json()["proposal"]
    assert proposal is not None
    return dict(proposal)


def version_sr(api: ApiUnderTest, version: int) -> tuple[pydicom.Dataset, Any]:
    """The stored SR of a report version and its row."""
    study_id = latest_version_row(api).study_id
    row = next(v for v in version_history(api.db, study_id) if v.version == version)
    return read_report_sr(api.settings.storage.reports_dir, row), row


def latest_version_row(api: ApiUnderTest) -> Any:
    with api.db.session() as session:
        study_id = session.scalar(
            select(Study.id).where(Study.study_instance_uid == api.study.study_uid)
        )
    row = latest_version(api.db, int(study_id))
    assert row is not None
    return row
