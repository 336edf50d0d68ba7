"""Helpers of the registry and retrain tests: site settings, signed-off phantom studies."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import select

from dicom_node._privacy import patient_key
from dicom_node.pipeline.assembly import assemble
from dicom_node.pipeline.drafting import draft_job
from dicom_node.pipeline.reports import (
    FindingRecord,
    latest_version,
    read_report_sr,
    store_report_version,
)
from dicom_node.settings import Settings, load_settings
from dicom_node.store import (
    Database,
    DialogMessage,
    InstanceRecord,
    MessageKind,
    MessageRole,
    Proposal,
    ProposalStatus,
    ReportKind,
    ReportVersion,
)
from report_language.labels import CHEXPERT_LABELS
from sr_templates import Finding, PersonInfo, Presence, VerifierInfo, build_amended_sr, read_report

#: The reader of the seeded dialogs (a user name, as the API records it).
READER = "dr.house"
READER_NAME = "House^Gregory"
ORGANIZATION = "Princeton Plainsboro"
#: The correction every seeded study's dialog asks for.
INSTRUCTION = "there is no pleural effusion, please correct the report"


def site_settings(folder: Path, bundle: Path, **sections: Any) -> Settings:
    """Settings of a test site: storage in `folder`, the given bundle, fast registry checks."""
    base: dict[str, Any] = {
        "node": {"port": 0, "http_port": 0, "bind_address": "127.0.0.1", "stable_seconds": 0.0,
                 "assembly_interval_s": 0.1},
        "storage": {"folder": folder, "min_free_bytes": 0},
        "inference": {"bundle": bundle, "device": "cpu"},
        "retrain": {"active_check_s": 0.2},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return load_settings(None, **base)


def toml_text(data: Mapping[str, Any]) -> str:
    """A TOML document of nested tables of str, Path, int, float and bool values."""

    def value(item: Any) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, int | float):
            return repr(item)
        return '"' + str(item).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, Mapping)]
    for key, table in data.items():
        if isinstance(table, Mapping):
            lines.append(f"[{key}]")
            lines.extend(f"{k} = {value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


def _presence(value: str) -> str:
    return {"1.0": "present", "-1.0": "uncertain"}.get(value, "absent")


def phantom_rows(phantoms: Path) -> list[dict[str, str]]:
    """Rows of a phantom folder's ``phantoms.csv``."""
    with (phantoms / "phantoms.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def seed_signed_off(
    settings: Settings,
    db: Database,
    model: Any,
    phantoms: Path,
    *,
    signed_at: datetime | None = None,
) -> list[str]:
    """Receive the DICOM phantoms, draft them with `model`, amend and sign each one off.

    Every study goes through the node's own code: the instance is recorded as the SCP
    records it, assembled into a job and drafted by :func:`draft_job`. Then a reader asks for
    a correction in the dialog (a message and an accepted proposal: version 2, the phantom's
    reference report with its labels) and signs it off (version 3). Returns the Study
    Instance UIDs.
    """
    signed_at = signed_at or datetime.now(UTC)
    uids = []
    person = PersonInfo(READER_NAME, ORGANIZATION, login_name=READER)
    verifier = VerifierInfo(READER_NAME, ORGANIZATION)
    for row in phantom_rows(phantoms):
        source = phantoms / row["path"]
        ds = pydicom.dcmread(source)
        relative = Path("in") / f"{hashlib.sha256(str(ds.SOPInstanceUID).encode()).hexdigest()}.dcm"
        target = settings.storage.spool_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        received = datetime.now(UTC) - timedelta(seconds=60)
        db.record_instance(
            InstanceRecord(
                sop_instance_uid=str(ds.SOPInstanceUID),
                study_instance_uid=str(ds.StudyInstanceUID),
                series_instance_uid=str(ds.SeriesInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                modality=str(ds.Modality),
                body_part="CHEST",
                view_position=str(ds.ViewPosition),
                accession_number=str(ds.AccessionNumber),
                patient_key=patient_key(str(ds.PatientID), None),
                path=relative.as_posix(),
                size_bytes=target.stat().st_size,
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                calling_ae="MODALITY",
                received_at=received,
            )
        )
        uids.append(str(ds.StudyInstanceUID))
    for job_id in assemble(db, 0.0, datetime.now(UTC)).jobs_created:
        outcome = draft_job(settings, db, model, job_id)
        if outcome.report_version != 1:
            raise RuntimeError(f"job {job_id} was not drafted: {outcome}")
    by_study = {r["study_id"]: r for r in phantom_rows(phantoms)}
    for uid, row in zip(uids, phantom_rows(phantoms), strict=True):
        _amend_and_sign(settings, db, uid, by_study[row["study_id"]], person, verifier,
                        signed_at)
    return uids


def _study_id(db: Database, uid: str) -> int:
    from dicom_node.store import Study

    with db.session() as session:
        value = session.scalar(select(Study.id).where(Study.study_instance_uid == uid))
    if value is None:
        raise RuntimeError("study not recorded")
    return int(value)


def _new_version(
    settings: Settings, db: Database, latest: ReportVersion, kind: ReportKind,
    findings_text: str, impression_text: str, records: list[FindingRecord],
    person: PersonInfo, verifier: VerifierInfo | None, at: datetime,
) -> ReportVersion:
    previous = read_report_sr(settings.storage.reports_dir, latest)
    report = dataclasses.replace(
        read_report(previous),
        findings_text=findings_text,
        impression_text=impression_text,
        findings=tuple(Finding(r.label, Presence(r.presence), r.probability) for r in records),
    )
    sr = build_amended_sr(previous, report, person, sign_off=verifier)
    return store_report_version(
        db, settings.storage.reports_dir, sr, kind=kind, findings_text=findings_text,
        impression_text=impression_text, findings=records, based_on=latest.version,
        indication=latest.indication, author=READER, model_name=latest.model_name,
        model_version=latest.model_version, now=at,
    )


def _amend_and_sign(
    settings: Settings, db: Database, uid: str, row: Mapping[str, str], person: PersonInfo,
    verifier: VerifierInfo, signed_at: datetime,
) -> None:
    study_id = _study_id(db, uid)
    draft = latest_version(db, study_id)
    if draft is None:
        raise RuntimeError("no draft")
    records = [FindingRecord(label, _presence(row[label])) for label in CHEXPERT_LABELS]
    with db.session() as session:
        proposal = Proposal(
            study_id=study_id, kind=MessageKind.CORRECTION, based_on_version=1,
            findings_text=row["findings"], impression_text=row["impression"],
            findings_json="[]", status=ProposalStatus.OPEN, requested_by=READER,
            created_at=signed_at,
        )
        session.add(proposal)
        session.flush()
        session.add(DialogMessage(
            study_id=study_id, role=MessageRole.USER, kind=MessageKind.CORRECTION,
            text=INSTRUCTION, based_on_version=1, author=READER, created_at=signed_at,
        ))
        session.flush()
        session.add(DialogMessage(
            study_id=study_id, role=MessageRole.ASSISTANT, kind=MessageKind.CORRECTION,
            text="Revised report proposed.", based_on_version=1, proposal_id=proposal.id,
            created_at=signed_at,
        ))
        proposal_id = proposal.id
    latest = _new_version(settings, db, draft, ReportKind.AMENDMENT, row["findings"],
                          row["impression"], records, person, None, signed_at)
    with db.session() as session:
        stored = session.get(Proposal, proposal_id)
        assert stored is not None
        stored.status = ProposalStatus.ACCEPTED
        stored.accepted_version = latest.version
        stored.decided_by = READER
        stored.decided_at = signed_at
    _new_version(settings, db, latest, ReportKind.SIGNOFF, latest.findings_text,
                 latest.impression_text, records, person, verifier, signed_at)


def said(result: Any) -> str:
    """A command's output with rich's line wrapping undone (one space between words)."""
    return " ".join(str(result.output).split())
