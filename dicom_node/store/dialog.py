"""ORM models of the amend dialog: messages, proposals and the audit log.

Dialog state belongs to a study and lives in the database, never in a process: several
readers can work on several studies at once, through any number of API processes.

* ``dialog_messages``: every message of a study's dialog, the reader's and the model's,
  with the message kind, the report version it was about and its author.
* ``proposals``: revised reports the model proposed; open until a reader accepts one
  (it becomes a new report version) or rejects it.
* ``audit_events``: who did what to which study, when, and how it ended. The application
  log stays free of PHI; this table is the place that names users and studies.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from dicom_node.store._types import UTCDateTime
from dicom_node.store.models import UID_LENGTH, Base, _state_column

#: Longest user name stored (``api.users`` keys).
USER_NAME_LENGTH = 64


class MessageRole(enum.StrEnum):
    """Who wrote a dialog message."""

    USER = "user"
    ASSISTANT = "assistant"


class MessageKind(enum.StrEnum):
    """What a reader's message asks for (see :func:`dicom_node.api.classify_message`)."""

    #: A question about the study or report; the model answers, the report stays.
    QUESTION = "question"
    #: A factual correction ("there is no effusion"); the model proposes a revised report.
    CORRECTION = "correction"
    #: A rewording of the report (rephrase, restructure, translate).
    REWRITE = "rewrite"
    #: A summary; proposed as the new impression.
    SUMMARY = "summary"
    #: The report in plain language for patients.
    EASY_LANGUAGE = "easy_language"


class ProposalStatus(enum.StrEnum):
    """Life cycle of a proposed revision."""

    OPEN = "open"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class AuditOutcome(enum.StrEnum):
    """How an audited request ended."""

    #: Done.
    OK = "ok"
    #: Refused with a 4xx answer (bad input, stale version, not allowed); nothing changed.
    REFUSED = "refused"
    #: The node could not do it (5xx: model unavailable, unusable model output, bug).
    FAILED = "failed"


class DialogMessage(Base):
    """One message of a study's amend dialog."""

    __tablename__ = "dialog_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    role: Mapped[MessageRole] = mapped_column(_state_column(MessageRole))
    kind: Mapped[MessageKind] = mapped_column(_state_column(MessageKind))
    text: Mapped[str] = mapped_column(Text)
    #: The report version the message was about (None before the draft exists).
    based_on_version: Mapped[int | None] = mapped_column(Integer)
    #: The proposal an assistant message carries, if any.
    proposal_id: Mapped[int | None] = mapped_column(
        ForeignKey("proposals.id", ondelete="SET NULL")
    )
    #: User name of the reader; None for the model's messages.
    author: Mapped[str | None] = mapped_column(String(USER_NAME_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_dialog_messages_study", "study_id", "id"),)


class Proposal(Base):
    """A revised report the model proposed for a study."""

    __tablename__ = "proposals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    kind: Mapped[MessageKind] = mapped_column(_state_column(MessageKind))
    #: The report version the proposal revises; accepting it on any other version is refused.
    based_on_version: Mapped[int] = mapped_column(Integer)
    findings_text: Mapped[str] = mapped_column(Text)
    impression_text: Mapped[str] = mapped_column(Text)
    #: JSON list of ``{"label", "presence", "probability", "threshold"}`` (as report versions).
    findings_json: Mapped[str] = mapped_column(Text)
    status: Mapped[ProposalStatus] = mapped_column(
        _state_column(ProposalStatus), default=ProposalStatus.OPEN, index=True
    )
    #: User name of the reader whose message led to the proposal.
    requested_by: Mapped[str] = mapped_column(String(USER_NAME_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    decided_by: Mapped[str | None] = mapped_column(String(USER_NAME_LENGTH))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: The report version an accepted proposal became.
    accepted_version: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (Index("ix_proposals_study", "study_id", "id"),)


class AuditEvent(Base):
    """One audited request: who did what to which study, when, and the outcome."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    #: User name of the authenticated reader.
    user: Mapped[str] = mapped_column(String(USER_NAME_LENGTH), index=True)
    #: What was done: ``view_study``, ``post_message``, ``accept_proposal``, ...
    action: Mapped[str] = mapped_column(String(32))
    #: The study, when it is recorded.
    study_id: Mapped[int | None] = mapped_column(
        ForeignKey("studies.id", ondelete="SET NULL"), index=True
    )
    #: The Study Instance UID the request named (also for unknown studies).
    study_instance_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    outcome: Mapped[AuditOutcome] = mapped_column(_state_column(AuditOutcome))
    #: HTTP status of the answer.
    status_code: Mapped[int] = mapped_column(Integer)
    #: What resulted ("version 2", "proposal 3") or why it was refused; never report text.
    detail: Mapped[str | None] = mapped_column(String(300))


__all__ = [
    "USER_NAME_LENGTH",
    "AuditEvent",
    "AuditOutcome",
    "DialogMessage",
    "MessageKind",
    "MessageRole",
    "Proposal",
    "ProposalStatus",
]
