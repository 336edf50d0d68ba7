"""Request and response bodies of the dialog API (pydantic models, JSON on the wire)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dicom_node.store.dialog import MessageKind, MessageRole, ProposalStatus
from dicom_node.store.models import ReportKind

#: Draft status of a study in the worklist.
StudyStatus = Literal["received", "queued", "running", "failed", "drafted", "amended", "signed"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MessageRequest(_Request):
    """A reader's message to a study's dialog."""

    text: str = Field(description="The question or instruction.")
    intent: Literal["auto", "question", "amend"] = Field(
        default="auto",
        description="auto = classify the message; question = always answer; amend = always "
        "propose a revision.",
    )


class PriorityRequest(_Request):
    """A reader marks a study urgent, or takes the mark off."""

    urgent: bool = Field(description="true = urgent: the study heads the worklist.")


class PriorityOut(BaseModel):
    """A study's priority after a reader set it."""

    study_instance_uid: str
    urgent: bool


class EditRequest(_Request):
    """A direct edit of the report text."""

    based_on_version: int = Field(ge=1, description="The version the edit was made on.")
    findings_text: str
    impression_text: str
    findings: dict[str, str] | None = Field(
        default=None,
        description="The reader's choices, label -> present/absent/uncertain/not_assessed; "
        "they stay the reader's until changed. Other findings follow the text (see "
        "docs/amend_loop.md).",
    )
    confirm: list[str] = Field(
        default_factory=list,
        description="Labels whose code the reader confirms although the text reads "
        "otherwise (resolves a disagreement before sign-off).",
    )


class SignOffRequest(_Request):
    """Sign the current version off."""

    based_on_version: int = Field(ge=1, description="The version being signed.")
    shown_sha256: str | None = Field(
        default=None,
        description="The content_sha256 of the version the reader was shown in the sign-off "
        "confirmation; when given, the sign-off is refused (409) unless the SR would hold "
        "exactly that text and those coded findings.",
    )


class UserOut(BaseModel):
    """The authenticated reader."""

    name: str
    display_name: str
    organization: str
    may_sign: bool


class StudySummary(BaseModel):
    """A study in the worklist."""

    study_instance_uid: str
    accession_number: str | None
    received_at: datetime
    instances: int
    status: StudyStatus
    #: Why a study is not drafted: a failed job's reason, or what a queued one waits for.
    status_reason: str | None = None
    latest_version: int | None
    latest_kind: ReportKind | None
    updated_at: datetime | None
    open_proposals: int
    urgent: bool = Field(default=False, description="Marked urgent by a reader.")
    ris_priority: str | None = Field(
        default=None,
        description="The RIS's Requested Procedure Priority (STAT, HIGH, ROUTINE, MEDIUM, "
        "LOW) of the study's worklist entry, where the node has one.",
    )


class FindingOut(BaseModel):
    """A coded finding of a report version or proposal."""

    label: str
    presence: str = Field(description="present, absent, uncertain or not_assessed.")
    probability: float | None = Field(
        description="The model's probability that the finding is present (the classifier's, "
        "never the reader's)."
    )
    threshold: float | None = Field(description="The model's decision threshold.")
    source: str = Field(description="Who decided the presence: text, reader (or model, for "
                        "versions stored before codes followed the text).")
    text_presence: str | None = Field(
        description="What the labeler reads in the text; null when the text does not say."
    )
    confirmed: bool = Field(description="The reader confirmed the code against the text.")
    disagrees: bool = Field(
        description="The text states the finding otherwise and the reader has not confirmed "
        "the code; sign-off is refused while any finding disagrees."
    )


class DiffSegmentOut(BaseModel):
    """A run of unchanged, inserted or deleted text."""

    op: Literal["equal", "insert", "delete"]
    text: str


class FindingChange(BaseModel):
    """A coded finding whose presence differs between two versions."""

    label: str
    before: str | None
    after: str | None


class ReportDiff(BaseModel):
    """What changed between two report texts."""

    from_version: int
    findings: list[DiffSegmentOut]
    impression: list[DiffSegmentOut]
    findings_changes: list[FindingChange]
    unified: str


class AddendumOut(BaseModel):
    """An addendum to a signed report, as its SR holds it."""

    text: str
    author: str | None = Field(description="Who wrote and verified the addendum (DICOM PN).")
    written_at: datetime | None


class AddendumRequest(_Request):
    """An addendum to the signed report."""

    based_on_version: int = Field(ge=1, description="The signed version it follows.")
    text: str = Field(description="The addendum's text.")


class VersionOut(BaseModel):
    """One version of the study's report."""

    version: int
    kind: ReportKind
    author: str | None
    created_at: datetime
    findings_text: str
    impression_text: str
    indication: str | None
    verified: bool
    sr_sop_instance_uid: str
    findings: list[FindingOut]
    diff: ReportDiff | None = Field(description="Changes against the previous version.")
    addenda: list[AddendumOut] = Field(
        default_factory=list,
        description="The addenda an addendum version holds, oldest first (read from its SR).",
    )
    content_sha256: str = Field(
        description="SHA-256 of what a signed SR of this version holds: findings text, "
        "impression text and each coded finding's presence (see report_content_sha256)."
    )


class MessageOut(BaseModel):
    """A message of the dialog."""

    id: int
    role: MessageRole
    kind: MessageKind
    text: str
    based_on_version: int | None
    author: str | None
    created_at: datetime
    proposal_id: int | None


class ProposalOut(BaseModel):
    """A revision the model proposed."""

    id: int
    kind: MessageKind
    based_on_version: int
    status: ProposalStatus
    stale: bool = Field(description="True when the report has changed since (accept -> 409).")
    findings_text: str
    impression_text: str
    findings: list[FindingOut]
    requested_by: str
    created_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    accepted_version: int | None
    diff: ReportDiff | None
    unmet_statements: list[str] = Field(
        default_factory=list,
        description="Findings the reader's correction stated that the proposal still gets "
        "wrong (the labeler's reading of its text), e.g. ['Pleural Effusion'].",
    )


class ImageOut(BaseModel):
    """An image of the study (pixels: ``.../images/{id}/pixels``, PNG: ``.../{id}.png``)."""

    id: int
    modality: str | None
    view_position: str | None


class PriorStudyOut(BaseModel):
    """An earlier study of the same patient on this node, with its images (for the viewer)."""

    study_instance_uid: str
    study_date: date | None = Field(description="Study Date of its first image's header.")
    accession_number: str | None
    received_at: datetime
    images: list[ImageOut]


class ImageInfo(BaseModel):
    """Window defaults and value range of an image (the viewer reads them from
    ``.../images/{id}/pixels``)."""

    id: int
    rows: int
    columns: int
    photometric: str
    default_center: float
    default_width: float
    minimum: float
    maximum: float


class PatientOut(BaseModel):
    """Patient and study identification, from the latest SR (shown to the reader only)."""

    name: str
    patient_id: str
    birth_date: str
    sex: str
    study_date: str
    accession_number: str


class StudyDetail(BaseModel):
    """One study: report, history, dialog, proposals and images."""

    study: StudySummary
    patient: PatientOut | None
    current: VersionOut | None
    versions: list[VersionOut]
    messages: list[MessageOut]
    proposals: list[ProposalOut]
    images: list[ImageOut]


class TurnResult(BaseModel):
    """The outcome of posting a message."""

    kind: MessageKind
    message: MessageOut
    answer: MessageOut
    proposal: ProposalOut | None


class VersionResult(BaseModel):
    """A new report version (accepted proposal, edit or sign-off)."""

    version: VersionOut
    destinations: list[str] = Field(description="PACS destinations the SR is queued for.")


class ProposalResult(BaseModel):
    """A proposal after it was rejected."""

    proposal: ProposalOut


__all__ = [
    "DiffSegmentOut",
    "AddendumOut",
    "AddendumRequest",
    "EditRequest",
    "FindingChange",
    "FindingOut",
    "ImageInfo",
    "ImageOut",
    "MessageOut",
    "MessageRequest",
    "PatientOut",
    "PriorStudyOut",
    "PriorityOut",
    "PriorityRequest",
    "ProposalOut",
    "ProposalResult",
    "ReportDiff",
    "SignOffRequest",
    "StudyDetail",
    "StudyStatus",
    "StudySummary",
    "TurnResult",
    "UserOut",
    "VersionOut",
    "VersionResult",
]
