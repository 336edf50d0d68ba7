"""The dialog's read side: the worklist, one study, its images, and the response models.

:class:`StudyViews` answers ``GET`` requests and maps the stored rows (report versions,
dialog messages, proposals) to the API's response models; the write side
(:mod:`~dicom_node.api.dialog.turns`, :mod:`~dicom_node.api.dialog.versions`) answers with
the same mappings. :func:`report_content_sha256` is the digest of what a version shows the
reader, which a sign-off may be bound to.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from dicom_node.api._auth import Reader
from dicom_node.api._images import ImageRenderer
from dicom_node.api._schemas import (
    AddendumOut,
    DiffSegmentOut,
    FindingChange,
    FindingOut,
    ImageInfo,
    ImageOut,
    MessageOut,
    PatientOut,
    ProposalOut,
    ReportDiff,
    StudyDetail,
    StudyStatus,
    StudySummary,
    VersionOut,
)
from dicom_node.api._text import unified_report_diff, word_diff
from dicom_node.api.dialog.audit import AuditLog
from dicom_node.api.dialog.lookups import SIGNED_KINDS, StudyLookups
from dicom_node.api.errors import NotFoundError
from dicom_node.errors import NodeError
from dicom_node.pipeline.finding_codes import disagrees
from dicom_node.pipeline.reports import (
    FindingRecord,
    findings_from_json,
    read_report_sr,
    version_history,
)
from dicom_node.settings import Settings
from dicom_node.store import (
    Database,
    DialogMessage,
    Job,
    MessageKind,
    MessageRole,
    Proposal,
    ProposalStatus,
    ReportKind,
    ReportVersion,
    Study,
    WorklistEntry,
)
from sr_templates import SRError, read_report

logger = logging.getLogger(__name__)


def report_content_sha256(
    findings_text: str, impression_text: str, records: Sequence[FindingRecord]
) -> str:
    """SHA-256 of what an SR of a version holds for the reader.

    Parameters
    ----------
    findings_text, impression_text
        The version's two sections.
    records
        Its coded findings: each one's label and presence count (probabilities are the
        model's and do not change).

    Returns
    -------
    str
        Lower-case hex digest of a canonical JSON of the three.
    """
    canonical = json.dumps(
        {
            "findings_text": findings_text,
            "impression_text": impression_text,
            "findings": sorted([r.label, r.presence] for r in records),
        },
        ensure_ascii=False,
        separators=(",", ":"),
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


#: A failed job's technical reasons, as a reader reads them (prefix -> plain words).
_FAILURES_IN_WORDS = (
    ("time limit exceeded", "drafting took longer than the node allows; it was stopped"),
    ("the worker was lost", "the drafting process stopped several times (time limit or "
     "crash); the node gave up"),
    ("unexpected error", "drafting stopped on an unexpected error; the node's log has the "
     "details"),
    ("database error", "the node's database could not be reached while drafting"),
)


def failure_in_words(error: str | None) -> str:
    """Why a study's draft job failed, in words a reader understands.

    Parameters
    ----------
    error
        The job's recorded error (``jobs.error``), scrubbed of patient data.

    Returns
    -------
    str
        The reason: a known technical one is said in plain words, a reason the pipeline
        already words for a reader (``not drafted: ...``, a refused image) is kept.
    """
    if not error:
        return "the node recorded no reason"
    lowered = error.lower()
    for prefix, words in _FAILURES_IN_WORDS:
        if lowered.startswith(prefix):
            return words
    return error


class StudyViews:
    """The worklist, one study's state and its images, as the API's response models.

    Parameters
    ----------
    settings
        The node's settings (``[storage]``: the SRs and the spool).
    db
        The node's database.
    lookups
        Finds the study and its images.
    audit
        Records each view of a study.
    images
        Decodes and renders the study's images.
    """

    def __init__(
        self,
        settings: Settings,
        db: Database,
        lookups: StudyLookups,
        audit: AuditLog,
        images: ImageRenderer,
    ) -> None:
        self.settings = settings
        self.db = db
        self.lookups = lookups
        self.audit = audit
        self.images = images

    # ------------------------------------------------------------------ worklist
    def list_studies(self, *, drafted_only: bool = False, limit: int = 100) -> list[StudySummary]:
        """The studies, urgent ones first, then newest first, with their draft status.

        Parameters
        ----------
        drafted_only
            Only studies with at least one report version.
        limit
            Most studies returned.
        """
        newest = (
            select(ReportVersion.study_id, func.max(ReportVersion.version).label("version"))
            .group_by(ReportVersion.study_id)
            .subquery()
        )
        query = (
            select(Study, newest.c.version)
            .outerjoin(newest, newest.c.study_id == Study.id)
            .order_by(Study.urgent.desc(), Study.last_received_at.desc(), Study.id.desc())
            .limit(limit)
        )
        if drafted_only:
            query = query.where(newest.c.version.is_not(None))
        with self.db.session() as session:
            rows = session.execute(query).all()
            ids = [study.id for study, _ in rows]
            versions = {
                row.study_id: row
                for row in session.scalars(
                    select(ReportVersion)
                    .join(
                        newest,
                        and_(
                            newest.c.study_id == ReportVersion.study_id,
                            newest.c.version == ReportVersion.version,
                        ),
                    )
                    .where(ReportVersion.study_id.in_(ids))
                )
            }
            jobs: dict[int, tuple[str, str | None]] = {}
            for study_id, state, error in session.execute(
                select(Job.study_id, Job.state, Job.error)
                .where(Job.study_id.in_(ids))
                .order_by(Job.id)
            ):
                jobs[study_id] = (state.value, error)
            open_counts: dict[int, int] = {}
            for study_id, based_on in session.execute(
                select(Proposal.study_id, Proposal.based_on_version).where(
                    Proposal.study_id.in_(ids), Proposal.status == ProposalStatus.OPEN
                )
            ):
                current = versions.get(study_id)
                if current is not None and current.version == based_on:
                    open_counts[study_id] = open_counts.get(study_id, 0) + 1
            priorities = self._ris_priorities(session, [study for study, _ in rows])
            return [
                self._summary(study, versions.get(study.id), jobs.get(study.id),
                              open_counts.get(study.id, 0), priorities.get(study.id))
                for study, _ in rows
            ]

    @staticmethod
    def _ris_priorities(session: Session, studies: Sequence[Study]) -> dict[int, str]:
        """The RIS priority of each study that has a worklist entry with one: the entry of
        its Study Instance UID, else of its accession number (not one of another patient)."""
        uids = {study.study_instance_uid for study in studies}
        accessions = {study.accession_number for study in studies if study.accession_number}
        entries = session.scalars(
            select(WorklistEntry)
            .where(
                WorklistEntry.priority.is_not(None),
                or_(WorklistEntry.study_instance_uid.in_(uids),
                    WorklistEntry.accession_number.in_(accessions)),
            )
            .order_by(WorklistEntry.fetched_at)
        ).all()
        by_uid = {e.study_instance_uid: e.priority for e in entries if e.study_instance_uid}
        priorities: dict[int, str] = {}
        for study in studies:
            priority = by_uid.get(study.study_instance_uid)
            if priority is None and study.accession_number:
                for entry in entries:
                    other_patient = (entry.patient_key and study.patient_key
                                     and entry.patient_key != study.patient_key)
                    if entry.accession_number == study.accession_number and not other_patient:
                        priority = entry.priority
            if priority is not None:
                priorities[study.id] = priority
        return priorities

    @staticmethod
    def _summary(
        study: Study,
        latest: ReportVersion | None,
        job: tuple[str, str | None] | None,
        open_proposals: int,
        ris_priority: str | None = None,
    ) -> StudySummary:
        from dicom_node.models.readiness import READINESS, ModelPhase

        status: StudyStatus
        reason: str | None = None
        job_state, job_error = job if job is not None else (None, None)
        if latest is not None:
            status = {
                ReportKind.DRAFT: "drafted",
                ReportKind.SIGNOFF: "signed",
                ReportKind.ADDENDUM: "signed",
            }.get(latest.kind, "amended")  # type: ignore[assignment]
        elif job_state in ("queued", "running", "failed"):
            status = job_state  # type: ignore[assignment]
            if job_state == "failed":
                reason = failure_in_words(job_error)
            elif job_state == "queued":
                model = READINESS.status()
                if model.phase is ModelPhase.FAILED:
                    reason = "waiting: the model is not usable (see /healthz)"
                elif model.phase in (ModelPhase.BUILDING, ModelPhase.LOADING):
                    reason = f"waiting for the model ({model.phase.value}: {model.detail})"
        else:
            status = "received"
        return StudySummary(
            study_instance_uid=study.study_instance_uid,
            accession_number=study.accession_number,
            received_at=study.last_received_at,
            instances=study.instance_count,
            status=status,
            status_reason=reason,
            latest_version=None if latest is None else latest.version,
            latest_kind=None if latest is None else latest.kind,
            updated_at=None if latest is None else latest.created_at,
            open_proposals=open_proposals,
            urgent=bool(study.urgent),
            ris_priority=ris_priority,
        )

    # ------------------------------------------------------------------ one study
    def study_detail(self, reader: Reader, study_uid: str) -> StudyDetail:
        """Report, version history, dialog, proposals and images of one study.

        Raises
        ------
        StudyNotFoundError
            For an unknown study.
        """
        with self.audit.audited(reader, "view_study", study_uid) as note:
            study = self.lookups.study(study_uid)
            note.study_id = study.id
            return self._detail(study)

    def _detail(self, study: Study) -> StudyDetail:
        history = version_history(self.db, study.id)
        by_number = {version.version: version for version in history}
        with self.db.session() as session:
            messages = list(
                session.scalars(
                    select(DialogMessage)
                    .where(DialogMessage.study_id == study.id)
                    .order_by(DialogMessage.id)
                )
            )
            proposals = list(
                session.scalars(
                    select(Proposal).where(Proposal.study_id == study.id).order_by(Proposal.id)
                )
            )
            job_row = session.execute(
                select(Job.state, Job.error)
                .where(Job.study_id == study.id)
                .order_by(Job.id.desc())
                .limit(1)
            ).first()
            ris_priority = self._ris_priorities(session, [study]).get(study.id)
        latest = history[-1] if history else None
        versions = [
            self.version_out(version, by_number.get(version.version - 1))
            for version in history
        ]
        open_count = sum(
            1
            for p in proposals
            if p.status is ProposalStatus.OPEN
            and latest is not None
            and p.based_on_version == latest.version
        )
        # The reader's message that led to each proposal: the user message before the answer
        # that carries the proposal.
        instructions: dict[int, str] = {}
        asked: str | None = None
        for message in messages:
            if message.role is MessageRole.USER:
                asked = message.text
            elif message.proposal_id is not None and asked is not None:
                instructions[message.proposal_id] = asked
        return StudyDetail(
            study=self._summary(
                study,
                latest,
                None if job_row is None else (job_row[0].value, job_row[1]),
                open_count,
                ris_priority,
            ),
            patient=self._patient(latest),
            current=versions[-1] if versions else None,
            versions=versions,
            messages=[self.message_out(message) for message in messages],
            proposals=[
                self.proposal_out(
                    p, by_number.get(p.based_on_version), latest, instructions.get(p.id)
                )
                for p in proposals
            ],
            images=[
                ImageOut(id=row.id, modality=row.modality, view_position=row.view_position)
                for row in self.lookups.image_instances(study.id)
            ],
        )

    def _patient(self, latest: ReportVersion | None) -> PatientOut | None:
        if latest is None:
            return None
        try:
            ds = read_report_sr(self.settings.storage.reports_dir, latest)
        except NodeError as exc:
            logger.warning("the latest SR cannot be read: %s", type(exc).__name__)
            return None
        return PatientOut(
            name=str(ds.get("PatientName", "") or ""),
            patient_id=str(ds.get("PatientID", "") or ""),
            birth_date=str(ds.get("PatientBirthDate", "") or ""),
            sex=str(ds.get("PatientSex", "") or ""),
            study_date=str(ds.get("StudyDate", "") or ""),
            accession_number=str(ds.get("AccessionNumber", "") or ""),
        )

    # ------------------------------------------------------------------ response models
    @staticmethod
    def _findings_out(records: Sequence[FindingRecord]) -> list[FindingOut]:
        return [
            FindingOut(
                label=r.label, presence=r.presence, probability=r.probability,
                threshold=r.threshold, source=r.source.value, text_presence=r.text_presence,
                confirmed=r.confirmed, disagrees=disagrees(r),
            )
            for r in records
        ]

    @staticmethod
    def _diff(
        old: ReportVersion, findings_text: str, impression_text: str,
        findings: Sequence[FindingRecord], new_label: str,
    ) -> ReportDiff:
        before = {r.label: r.presence for r in findings_from_json(old.findings_json)}
        after = {r.label: r.presence for r in findings}
        changes = [
            FindingChange(label=label, before=before.get(label), after=after.get(label))
            for label in list(before) + [label for label in after if label not in before]
            if before.get(label) != after.get(label)
        ]
        return ReportDiff(
            from_version=old.version,
            findings=[
                DiffSegmentOut(op=s.op, text=s.text)
                for s in word_diff(old.findings_text, findings_text)
            ],
            impression=[
                DiffSegmentOut(op=s.op, text=s.text)
                for s in word_diff(old.impression_text, impression_text)
            ],
            findings_changes=changes,
            unified=unified_report_diff(
                (old.findings_text, old.impression_text),
                (findings_text, impression_text),
                f"version {old.version}",
                new_label,
            ),
        )

    def _addenda_out(self, version: ReportVersion) -> list[AddendumOut]:
        """The addenda an addendum version's SR holds, read from the SR itself: the page
        shows what the PACS holds."""
        if version.kind is not ReportKind.ADDENDUM:
            return []
        try:
            report = read_report(read_report_sr(self.settings.storage.reports_dir, version))
        except (NodeError, SRError) as exc:
            logger.warning("the addenda of a version cannot be read: %s", type(exc).__name__)
            return []
        return [
            AddendumOut(
                text=addendum.text,
                author=None if addendum.author is None else addendum.author.name,
                written_at=addendum.datetime,
            )
            for addendum in report.addenda
        ]

    def version_out(self, version: ReportVersion, previous: ReportVersion | None) -> VersionOut:
        """One report version as the API shows it.

        Parameters
        ----------
        version
            The version.
        previous
            The version before it; the diff is against it (none for the first).
        """
        records = findings_from_json(version.findings_json)
        return VersionOut(
            version=version.version,
            kind=version.kind,
            author=version.author,
            created_at=version.created_at,
            findings_text=version.findings_text,
            impression_text=version.impression_text,
            indication=version.indication,
            verified=version.kind in SIGNED_KINDS,
            addenda=self._addenda_out(version),
            sr_sop_instance_uid=version.sr_sop_instance_uid,
            findings=self._findings_out(records),
            content_sha256=report_content_sha256(
                version.findings_text, version.impression_text, records
            ),
            diff=None
            if previous is None
            else self._diff(
                previous, version.findings_text, version.impression_text, records,
                f"version {version.version}",
            ),
        )

    @staticmethod
    def message_out(message: DialogMessage) -> MessageOut:
        """One dialog message as the API shows it.

        Parameters
        ----------
        message
            The stored message.
        """
        return MessageOut(
            id=message.id,
            role=message.role,
            kind=message.kind,
            text=message.text,
            based_on_version=message.based_on_version,
            author=message.author,
            created_at=message.created_at,
            proposal_id=message.proposal_id,
        )

    def proposal_out(
        self,
        proposal: Proposal,
        base: ReportVersion | None,
        latest: ReportVersion | None,
        instruction: str | None = None,
    ) -> ProposalOut:
        """One proposal as the API shows it.

        Parameters
        ----------
        proposal
            The stored proposal.
        base
            The version it is based on; the diff is against it (none when it is gone).
        latest
            The study's latest version: a proposal on another one is ``stale``.
        instruction
            The reader's message that asked for it; for a correction, the statements of it
            that the proposed text leaves unmet are listed.
        """
        records = findings_from_json(proposal.findings_json)
        unmet: list[str] = []
        if instruction is not None and proposal.kind is MessageKind.CORRECTION:
            from report_language.stated_findings import unmet_statements

            unmet = list(unmet_statements(
                f"{proposal.findings_text}\n{proposal.impression_text}", instruction
            ))
        return ProposalOut(
            unmet_statements=unmet,
            id=proposal.id,
            kind=proposal.kind,
            based_on_version=proposal.based_on_version,
            status=proposal.status,
            stale=latest is None or proposal.based_on_version != latest.version,
            findings_text=proposal.findings_text,
            impression_text=proposal.impression_text,
            findings=self._findings_out(records),
            requested_by=proposal.requested_by,
            created_at=proposal.created_at,
            decided_by=proposal.decided_by,
            decided_at=proposal.decided_at,
            accepted_version=proposal.accepted_version,
            diff=None
            if base is None
            else self._diff(
                base, proposal.findings_text, proposal.impression_text, records,
                f"proposal {proposal.id}",
            ),
        )

    # ------------------------------------------------------------------ images
    def image_path(self, study_uid: str, instance_id: int) -> Path:
        """The spool file of one image of a study.

        Raises
        ------
        StudyNotFoundError, NotFoundError
            For an unknown study, or an instance that is not one of its images.
        """
        study = self.lookups.study(study_uid)
        for row in self.lookups.image_instances(study.id):
            if row.id == instance_id:
                return self.settings.storage.spool_dir / row.path
        raise NotFoundError(f"the study has no image {instance_id}")

    def image_info(self, study_uid: str, instance_id: int) -> ImageInfo:
        """Window defaults and value range of one image.

        Raises
        ------
        StudyNotFoundError, NotFoundError
            For an unknown study, or an instance that is not one of its images.
        """
        image = self.images.decoded(self.image_path(study_uid, instance_id))
        return ImageInfo(
            id=instance_id,
            rows=image.rows,
            columns=image.columns,
            photometric=image.photometric,
            default_center=image.default_center,
            default_width=image.default_width,
            minimum=image.minimum,
            maximum=image.maximum,
        )


__all__ = ["StudyViews", "report_content_sha256"]
