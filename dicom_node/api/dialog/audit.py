"""The dialog's audit log: one ``audit_events`` row per request that names a study.

:meth:`AuditLog.audited` wraps an operation: it records the outcome (``ok``, ``refused`` for
an :class:`~dicom_node.api.errors.ApiError` below 500, ``failed`` otherwise) with what the
operation noted on its :class:`AuditNote`, and one ``change_code`` row per coded finding a
new version changed (:func:`code_changes`). Log messages carry UID digests only.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError

from dicom_node._privacy import uid_digest
from dicom_node.api._auth import Reader
from dicom_node.api.errors import ApiError
from dicom_node.errors import NodeError
from dicom_node.pipeline.reports import FindingRecord
from dicom_node.store import AuditEvent, AuditOutcome, Database
from sr_templates import SRError

logger = logging.getLogger(__name__)

#: Longest audit detail stored.
AUDIT_DETAIL_CHARS = 300


@dataclasses.dataclass
class AuditNote:
    """What an audited operation tells the audit log about itself while it runs."""

    study_id: int | None = None
    status_code: int = 200
    detail: str | None = None
    #: One audit row each: the coded findings a new version changed.
    code_changes: list[str] = dataclasses.field(default_factory=list)


def code_changes(
    version: int, before: Sequence[FindingRecord], after: Sequence[FindingRecord]
) -> list[str]:
    """What a new version changed in the coded findings.

    Parameters
    ----------
    version
        The new version's number.
    before, after
        The coded findings of the previous and of the new version.

    Returns
    -------
    list of str
        One line per changed label, naming who decided (text or reader).
    """
    old = {r.label: r for r in before}
    changes = []
    for record in after:
        previous = old.get(record.label)
        if previous is None or (previous.presence, previous.source) != (
            record.presence, record.source
        ) or previous.confirmed != record.confirmed:
            was = "none" if previous is None else previous.presence
            confirmed = ", confirmed against the text" if record.confirmed else ""
            changes.append(
                f"version {version}: {record.label} {was} -> {record.presence} "
                f"({record.source.value}{confirmed})"
            )
    return changes


class AuditLog:
    """Writes the dialog's audit events to the node's database.

    Parameters
    ----------
    db
        The node's database.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    @contextmanager
    def audited(
        self, reader: Reader, action: str, study_uid: str | None, *, record_success: bool = True
    ) -> Iterator[AuditNote]:
        """Record the outcome of the operation run in the ``with`` block.

        Parameters
        ----------
        reader
            Who asked.
        action
            The event's action (``view_study``, ``post_message``, ``edit_report``, ...).
        study_uid
            The study the request names (stored truncated to 64 characters).
        record_success
            Whether a block that ends without an error is recorded (a turn's check is not:
            the turn itself records it).

        Yields
        ------
        AuditNote
            Filled in by the block: the study's row id, status code, detail and code changes.
        """
        note = AuditNote()
        try:
            yield note
        except ApiError as exc:
            outcome = AuditOutcome.REFUSED if exc.status_code < 500 else AuditOutcome.FAILED
            self.write(
                reader, action, study_uid, note.study_id, outcome, exc.status_code, str(exc)
            )
            raise
        except (NodeError, SQLAlchemyError, SRError, OSError, ValueError) as exc:
            self.write(
                reader, action, study_uid, note.study_id, AuditOutcome.FAILED, 500,
                f"internal error ({type(exc).__name__})",
            )
            raise
        if record_success:
            self.write(
                reader, action, study_uid, note.study_id, AuditOutcome.OK, note.status_code,
                note.detail,
            )
            for change in note.code_changes:
                self.write(
                    reader, "change_code", study_uid, note.study_id, AuditOutcome.OK,
                    note.status_code, change,
                )

    def write(
        self,
        reader: Reader,
        action: str,
        study_uid: str | None,
        study_id: int | None,
        outcome: AuditOutcome,
        status_code: int,
        detail: str | None,
    ) -> None:
        """Store one audit event and log it; a database error is logged, never raised.

        Parameters
        ----------
        reader
            Who asked.
        action
            The event's action.
        study_uid, study_id
            The study the request names, and its row id where it is known.
        outcome
            How the request ended.
        status_code
            The HTTP status it ended with.
        detail
            What happened (stored up to :data:`AUDIT_DETAIL_CHARS` characters).
        """
        try:
            with self.db.session() as session:
                session.add(
                    AuditEvent(
                        at=datetime.now(UTC),
                        user=reader.name,
                        action=action,
                        study_id=study_id,
                        study_instance_uid=None if study_uid is None else study_uid[:64],
                        outcome=outcome,
                        status_code=status_code,
                        detail=None if detail is None else detail[:AUDIT_DETAIL_CHARS],
                    )
                )
        except SQLAlchemyError as exc:
            logger.error(
                "audit event %s of study %s not written: %s",
                action, uid_digest(study_uid), type(exc).__name__,
            )
        logger.info(
            "%s by %s on study %s: %s %d",
            action, reader.name, uid_digest(study_uid), outcome.value, status_code,
        )


__all__ = ["AUDIT_DETAIL_CHARS", "AuditLog", "AuditNote", "code_changes"]
