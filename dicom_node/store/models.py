"""ORM models of the node's database: studies, instances, jobs, the SR outbox, the worklist.

The tables hold what the node must not lose across a restart: which instances are in the
spool, which studies have been assembled into report jobs, and which SRs still wait for
delivery. Patient names are never stored; patients appear only as a pseudonymous key.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from dicom_node.store._types import UTCDateTime

#: Longest UID (PS3.5 UI).
UID_LENGTH = 64


class Base(DeclarativeBase):
    """Declarative base of the node's tables."""


class JobState(enum.StrEnum):
    """Life cycle of a report job."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    #: Not run: a newer job of the same study (more instances) replaced it.
    SUPERSEDED = "superseded"


class IndicationSource(enum.StrEnum):
    """The worklist attribute a clinical indication was taken from."""

    #: Reason for the Requested Procedure (0040,1002).
    REASON_FOR_REQUESTED_PROCEDURE = "reason"
    #: Requested Procedure Description (0032,1060).
    REQUESTED_PROCEDURE_DESCRIPTION = "procedure"
    #: Admitting Diagnoses Description (0008,1080).
    ADMITTING_DIAGNOSES_DESCRIPTION = "admitting"


class OutboxState(enum.StrEnum):
    """Life cycle of an SR waiting for delivery to one PACS destination."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


def _state_column(enum_class: type[enum.StrEnum]) -> Enum:
    # Stored as the lowercase values (not the member names), as a VARCHAR with a CHECK
    # constraint rather than a native PostgreSQL enum, so new states need no type migration.
    return Enum(
        enum_class,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


class Study(Base):
    """A study the node has received instances of."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    accession_number: Mapped[str | None] = mapped_column(String(64))
    #: SHA-256 of Issuer of Patient ID and Patient ID; never the ID itself.
    patient_key: Mapped[str | None] = mapped_column(String(64), index=True)
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: Arrival time of the newest instance; the stability rule counts from here.
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    #: Instances recorded; incremented in the transaction that records each one.
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    #: ``instance_count`` at the last assembly; differs from it = instances to assemble.
    assembled_count: Mapped[int | None] = mapped_column(Integer)
    #: When the study was last assembled.
    assembled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Why the routing rules did not queue the study at its last assembly; None = queued.
    not_reportable_reason: Mapped[str | None] = mapped_column(String(200))
    #: Marked urgent by a reader (the reader page); urgent studies head the worklist.
    urgent: Mapped[bool] = mapped_column(Boolean, server_default=false())

    instances: Mapped[list[Instance]] = relationship(back_populates="study")
    jobs: Mapped[list[Job]] = relationship(back_populates="study", order_by="Job.id")


class Instance(Base):
    """One received SOP instance, stored in the spool."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    series_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    modality: Mapped[str | None] = mapped_column(String(64))
    body_part: Mapped[str | None] = mapped_column(String(64))
    view_position: Mapped[str | None] = mapped_column(String(64))
    #: File path relative to the spool folder.
    path: Mapped[str] = mapped_column(String(400))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    calling_ae: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())

    study: Mapped[Study] = relationship(back_populates="instances")

    __table_args__ = (Index("ix_instances_study_received", "study_id", "received_at"),)


class Job(Base):
    """A request to draft a report for a study's instances as they were at assembly."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    #: SHA-256 of the sorted SOP Instance UIDs the job covers: one job per instance set.
    instance_set_hash: Mapped[str] = mapped_column(String(64))
    instance_count: Mapped[int] = mapped_column(Integer)
    #: The job covers the study's instances received up to this time.
    instances_until: Mapped[datetime] = mapped_column(UTCDateTime())
    state: Mapped[JobState] = mapped_column(
        _state_column(JobState), default=JobState.QUEUED, index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: When the job was last sent to the queue (None = not yet).
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    study: Mapped[Study] = relationship(back_populates="jobs")

    __table_args__ = (
        UniqueConstraint("study_id", "instance_set_hash", name="uq_jobs_study_instance_set"),
    )


class OutboxItem(Base):
    """An SR file waiting for (or done with) delivery to one PACS destination."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    sr_sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    #: File path relative to the outbox folder.
    sr_path: Mapped[str] = mapped_column(String(400))
    #: Name of the ``[pacs]`` destination.
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[OutboxState] = mapped_column(
        _state_column(OutboxState), default=OutboxState.PENDING, index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("sr_sop_instance_uid", "destination", name="uq_outbox_sr_destination"),
    )


class ReportKind(enum.StrEnum):
    """How a report version came about."""

    #: Drafted by the model from the images.
    DRAFT = "draft"
    #: A proposal of the amend dialog, accepted by a reader.
    AMENDMENT = "amendment"
    #: Text edited directly by a reader.
    EDIT = "edit"
    #: Signed off: the verified final report.
    SIGNOFF = "signoff"
    #: An addendum to the signed report: a new verified SR naming the signed one.
    ADDENDUM = "addendum"


class ReportVersion(Base):
    """One version of a study's report: the SR the node wrote for it, kept in ``reports/``.

    Version 1 is the model's draft; each accepted amendment, direct edit or sign-off adds
    the next version, whose SR names its predecessor's. The SR file is kept (the outbox
    copy is deleted once delivered) because the next amendment is built from it.
    """

    __tablename__ = "report_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    #: 1 for the draft, then 2, 3, ... per study.
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[ReportKind] = mapped_column(_state_column(ReportKind))
    predecessor_id: Mapped[int | None] = mapped_column(
        ForeignKey("report_versions.id", ondelete="SET NULL")
    )
    sr_sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    #: SR file path relative to the reports folder.
    sr_path: Mapped[str] = mapped_column(String(400))
    findings_text: Mapped[str] = mapped_column(Text)
    impression_text: Mapped[str] = mapped_column(Text)
    #: JSON list of ``{"label", "probability", "threshold", "presence"}``.
    findings_json: Mapped[str] = mapped_column(Text)
    indication: Mapped[str | None] = mapped_column(Text)
    model_name: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(64))
    #: User name of the reader who made this version (None for the model's draft).
    author: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("study_id", "version", name="uq_report_versions_study_version"),
    )


class WorklistEntry(Base):
    """An order of the RIS modality worklist, as last returned by a C-FIND.

    Entries are kept after the RIS drops them (a procedure step usually leaves the worklist
    once the images are taken, before they reach the node) until ``ris.retention_days``
    after they were last returned. Patient names and IDs are not stored, only the
    pseudonymous patient key.
    """

    __tablename__ = "worklist_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: SHA-256 of accession number and Study Instance UID: one row per order.
    entry_key: Mapped[str] = mapped_column(String(64), unique=True)
    accession_number: Mapped[str | None] = mapped_column(String(64), index=True)
    study_instance_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH), index=True)
    #: SHA-256 of Issuer of Patient ID and Patient ID; never the ID itself.
    patient_key: Mapped[str | None] = mapped_column(String(64))
    requested_procedure_id: Mapped[str | None] = mapped_column(String(64))
    requested_procedure_description: Mapped[str | None] = mapped_column(Text)
    #: The clinical indication (see :mod:`dicom_node.dicom.worklist` for the rule).
    indication: Mapped[str | None] = mapped_column(Text)
    indication_source: Mapped[IndicationSource | None] = mapped_column(
        _state_column(IndicationSource)
    )
    #: Modality of the (first) scheduled procedure step.
    modality: Mapped[str | None] = mapped_column(String(16))
    #: Scheduled Procedure Step Start Date (YYYYMMDD) of the (first) step.
    scheduled_date: Mapped[str | None] = mapped_column(String(8))
    #: Requested Procedure Priority (0040,1003): STAT, HIGH, ROUTINE, MEDIUM or LOW.
    priority: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: When the RIS last returned the entry.
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


__all__ = [
    "UID_LENGTH",
    "IndicationSource",
    "Base",
    "Instance",
    "Job",
    "JobState",
    "OutboxItem",
    "OutboxState",
    "ReportKind",
    "ReportVersion",
    "Study",
    "WorklistEntry",
]
