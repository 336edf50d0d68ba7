"""A reader's priority mark on a study: :class:`StudyPriority`.

A study marked urgent heads the worklist (``studies.urgent``); each mark and each removal
is audited (``set_priority``) with who set it and when.
"""

from __future__ import annotations

from sqlalchemy import update

from dicom_node.api._auth import Reader
from dicom_node.api._schemas import PriorityOut
from dicom_node.api.dialog.audit import AuditLog
from dicom_node.api.dialog.lookups import StudyLookups
from dicom_node.store import Database, Study


class StudyPriority:
    """Marks studies urgent, or takes the mark off.

    Parameters
    ----------
    db
        The node's database.
    lookups
        Finds the study.
    audit
        Records each change.
    """

    def __init__(self, db: Database, lookups: StudyLookups, audit: AuditLog) -> None:
        self.db = db
        self.lookups = lookups
        self.audit = audit

    def set_urgent(self, reader: Reader, study_uid: str, urgent: bool) -> PriorityOut:
        """Mark the study urgent (``urgent=True``) or normal.

        Parameters
        ----------
        reader
            Who sets it (any reader may: priority is not a signature).
        study_uid
            The study's Study Instance UID.
        urgent
            The new priority.

        Returns
        -------
        PriorityOut
            The study's priority as stored.

        Raises
        ------
        StudyNotFoundError
            For an unknown study (404).
        """
        with self.audit.audited(reader, "set_priority", study_uid) as note:
            study = self.lookups.study(study_uid)
            note.study_id = study.id
            with self.db.session() as session:
                session.execute(update(Study).where(Study.id == study.id).values(urgent=urgent))
            note.detail = "marked urgent" if urgent else "urgent mark removed"
            return PriorityOut(study_instance_uid=study_uid, urgent=urgent)


__all__ = ["StudyPriority"]
