"""The amend dialog's operations, independent of HTTP: :class:`DialogService`.

Every operation takes the authenticated :class:`~dicom_node.api._auth.Reader` and a Study
Instance UID, reads the study's state from the database and either answers or changes it:

* a **question** is answered by the model (:meth:`ChestXrayVLM.stream_chat`) with the
  current report in context; the exchange is stored, the report stays;
* a **correction, rewrite, summary or easy-language request** makes the model propose a
  revised report: stored as an open :class:`~dicom_node.store.Proposal` based on the
  current version, and shown with a diff against it;
* **accepting** a proposal, **editing** the text and **signing off** each build a new SR
  with :func:`sr_templates.build_amended_sr` from the latest one (so it names its
  predecessors), store it as the next report version and put it in the outbox for the PACS
  destinations of the study; a background thread sends it at once. A request based on a
  version that is no longer the latest is refused (409) and changes nothing.

Refused requests (unknown study, empty or too long message, unknown proposal, stale
version) raise an :class:`~dicom_node.api.errors.ApiError` before anything is written. Every
request that names a study is recorded in the ``audit_events`` table; log messages carry UID
digests only.

Model work runs in :attr:`DialogService.model_executor`, off the event loop, on the one
model of the process (:func:`dicom_node.models.model_cache.get_model`); the LLM generates one
sequence at a time under its own lock (it switches LoRA adapters per call), shared with the
draft jobs of the process. The vision side runs once per study and image set, then its
result comes from an LRU cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from sqlalchemy import and_, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from dicom_node._privacy import describe_exception, uid_digest
from dicom_node.api._analysis import AnalysisCache
from dicom_node.api._auth import Reader
from dicom_node.api._classify import Intent, classify_message
from dicom_node.api._findings import prompt_findings
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
    TurnResult,
    VersionOut,
    VersionResult,
)
from dicom_node.api._text import (
    clean_generated,
    parse_revision,
    report_context,
    unified_report_diff,
    word_diff,
)
from dicom_node.api.errors import (
    ApiError,
    ConflictError,
    FindingsDisagreeConflict,
    ForbiddenError,
    InvalidInputError,
    ModelOutputError,
    ModelUnavailableError,
    NoReportError,
    NotFoundError,
    PayloadTooLargeError,
    StaleVersionConflict,
    StudyNotFoundError,
)
from dicom_node.errors import NodeError, StaleVersionError
from dicom_node.models.model_cache import get_model
from dicom_node.pipeline.assembly import model_images
from dicom_node.pipeline.delivery import DeliveryOutcome, deliver_items
from dicom_node.pipeline.finding_codes import (
    FindingChoiceError,
    code_findings,
    correction_choices,
    disagreements,
    disagrees,
)
from dicom_node.pipeline.local_study import FRONTAL_VIEWS
from dicom_node.pipeline.reports import (
    FindingRecord,
    FindingSource,
    findings_from_json,
    findings_to_json,
    latest_version,
    read_report_sr,
    store_and_enqueue,
    version_history,
)
from dicom_node.settings import Settings
from dicom_node.store import (
    AuditEvent,
    AuditOutcome,
    Database,
    DialogMessage,
    Instance,
    Job,
    MessageKind,
    MessageRole,
    Proposal,
    ProposalStatus,
    ReportKind,
    ReportVersion,
    Study,
)
from sr_templates import (
    Finding,
    PersonInfo,
    Presence,
    SRError,
    VerifierInfo,
    build_addendum_sr,
    build_amended_sr,
    read_report,
)

if TYPE_CHECKING:
    from inference import ChestXrayVLM, StudyAnalysis, Turn

logger = logging.getLogger(__name__)

#: Returns the process's model (loaded on first use).
ModelProvider = Callable[[], "ChestXrayVLM"]


def report_content_sha256(
    findings_text: str, impression_text: str, records: Sequence[FindingRecord]
) -> str:
    """SHA-256 of what an SR of a version holds for the reader: both texts, and each coded
    finding's label and presence (probabilities are the model's and do not change)."""
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


def _active_model(settings: Settings, db: Database) -> ChestXrayVLM:
    """The registry's active model version, from the process's model cache (the one the
    embedded worker drafts with, so serve holds one copy and follows promotions)."""
    from dicom_node.models.readiness import require_ready
    from dicom_node.models.registry import active_bundle

    require_ready()  # serve's warm-up may still be building or loading it
    return get_model(settings.inference, bundle=active_bundle(db, settings).bundle)
#: Threads running dialog turns (generation itself is serialised by the LLM's lock).
MODEL_THREADS = 4
#: SOP Class UID prefix of the structured reports (not rendered or analysed).
SR_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
#: Modalities of non-image instances.
NON_IMAGE_MODALITIES = frozenset({"SR", "KO", "PR", "DOC", "OT"})
#: Longest audit detail stored.
AUDIT_DETAIL_CHARS = 300
#: Versions that are signed: their SR is VERIFIED and never changes; an addendum follows.
SIGNED_KINDS = frozenset({ReportKind.SIGNOFF, ReportKind.ADDENDUM})


@dataclasses.dataclass(frozen=True)
class PreparedTurn:
    """A checked message, ready for the model (see :meth:`DialogService.prepare_turn`)."""

    reader: Reader
    study_id: int
    study_uid: str
    text: str
    kind: MessageKind
    based_on_version: int


@dataclasses.dataclass
class _AuditNote:
    study_id: int | None = None
    status_code: int = 200
    detail: str | None = None
    #: One audit row each: the coded findings a new version changed.
    code_changes: list[str] = dataclasses.field(default_factory=list)


def _code_changes(
    version: int, before: Sequence[FindingRecord], after: Sequence[FindingRecord]
) -> list[str]:
    """What a new version changed in the coded findings, one line per label, naming who
    decided (text or reader)."""
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


def _now() -> datetime:
    return datetime.now(UTC)


class DialogService:
    """The amend dialog of every study, backed by the node's database.

    Parameters
    ----------
    settings
        The node's settings (``[api]``, ``[storage]``, ``[pacs]``, ``[inference]``).
    db
        The node's database (shared with the rest of the node).
    model_provider
        Returns the model; default the registry's active version
        (:func:`dicom_node.models.registry.active_bundle`), loaded once per process by
        :func:`~dicom_node.models.model_cache.get_model` with ``settings.inference``.
    """

    def __init__(
        self, settings: Settings, db: Database, model_provider: ModelProvider | None = None
    ) -> None:
        self.settings = settings
        self.db = db
        self._model_provider: ModelProvider = model_provider or (
            lambda: _active_model(settings, db)
        )
        self._analyses = AnalysisCache(settings.api.analysis_cache_size)
        self.images = ImageRenderer(max_image_bytes=settings.api.max_image_bytes)
        #: Runs dialog turns (model work) off the event loop.
        self.model_executor = ThreadPoolExecutor(MODEL_THREADS, "dicom-node-dialog")
        self._delivery = ThreadPoolExecutor(1, "dicom-node-api-delivery")
        self._closed = False

    # ------------------------------------------------------------------ life cycle
    def close(self) -> None:
        """Wait for running dialog turns and SR deliveries, then stop their threads."""
        if self._closed:
            return
        self._closed = True
        self.model_executor.shutdown(wait=True)
        self._delivery.shutdown(wait=True)

    # ------------------------------------------------------------------ audit
    @contextmanager
    def _audited(
        self, reader: Reader, action: str, study_uid: str | None, *, record_success: bool = True
    ) -> Iterator[_AuditNote]:
        note = _AuditNote()
        try:
            yield note
        except ApiError as exc:
            outcome = AuditOutcome.REFUSED if exc.status_code < 500 else AuditOutcome.FAILED
            self._write_audit(
                reader, action, study_uid, note.study_id, outcome, exc.status_code, str(exc)
            )
            raise
        except (NodeError, SQLAlchemyError, SRError, OSError, ValueError) as exc:
            self._write_audit(
                reader, action, study_uid, note.study_id, AuditOutcome.FAILED, 500,
                f"internal error ({type(exc).__name__})",
            )
            raise
        if record_success:
            self._write_audit(
                reader, action, study_uid, note.study_id, AuditOutcome.OK, note.status_code,
                note.detail,
            )
            for change in note.code_changes:
                self._write_audit(
                    reader, "change_code", study_uid, note.study_id, AuditOutcome.OK,
                    note.status_code, change,
                )

    def _write_audit(
        self,
        reader: Reader,
        action: str,
        study_uid: str | None,
        study_id: int | None,
        outcome: AuditOutcome,
        status_code: int,
        detail: str | None,
    ) -> None:
        try:
            with self.db.session() as session:
                session.add(
                    AuditEvent(
                        at=_now(),
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

    # ------------------------------------------------------------------ lookups
    def _study(self, study_uid: str) -> Study:
        with self.db.session() as session:
            study = session.scalars(
                select(Study).where(Study.study_instance_uid == study_uid)
            ).first()
            if study is None:
                raise StudyNotFoundError("no such study")
            session.expunge(study)
            return study

    def _latest(self, study_id: int) -> ReportVersion:
        latest = latest_version(self.db, study_id)
        if latest is None:
            raise NoReportError("the study has no report yet (its draft is not written)")
        return latest

    @staticmethod
    def _check_open_for_changes(latest: ReportVersion) -> None:
        if latest.kind in SIGNED_KINDS:
            raise ConflictError(
                f"the report is signed off (version {latest.version}); it cannot be changed, "
                "only an addendum can be added"
            )

    @staticmethod
    def _check_based_on(based_on: int, latest: ReportVersion, what: str) -> None:
        if based_on != latest.version:
            raise StaleVersionConflict(
                f"{what} is based on version {based_on}, but the latest version is "
                f"{latest.version}",
                latest.version,
            )

    def _image_instances(self, study_id: int) -> list[Instance]:
        with self.db.session() as session:
            rows = list(
                session.scalars(
                    select(Instance).where(Instance.study_id == study_id).order_by(Instance.id)
                )
            )
            for row in rows:
                session.expunge(row)
        images = [
            row
            for row in rows
            if not row.sop_class_uid.startswith(SR_SOP_CLASS_PREFIX)
            and (row.modality or "").upper() not in NON_IMAGE_MODALITIES
        ]
        return sorted(images, key=lambda row: (row.view_position or "") not in FRONTAL_VIEWS)

    def _destinations(self, study_id: int) -> list[str]:
        with self.db.session() as session:
            calling_ae = session.scalar(
                select(Instance.calling_ae)
                .where(Instance.study_id == study_id)
                .order_by(Instance.id)
                .limit(1)
            )
        if calling_ae is None:
            return sorted(self.settings.pacs)
        return self.settings.destinations_for(calling_ae)

    def _proposal(self, study_id: int, proposal_id: int) -> Proposal:
        with self.db.session() as session:
            proposal = session.get(Proposal, proposal_id)
            if proposal is None or proposal.study_id != study_id:
                raise NotFoundError(f"the study has no proposal {proposal_id}")
            session.expunge(proposal)
            return proposal

    # ------------------------------------------------------------------ worklist
    def list_studies(self, *, drafted_only: bool = False, limit: int = 100) -> list[StudySummary]:
        """The studies, newest first, with their draft status.

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
            .order_by(Study.last_received_at.desc(), Study.id.desc())
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
            return [
                self._summary(study, versions.get(study.id), jobs.get(study.id),
                              open_counts.get(study.id, 0))
                for study, _ in rows
            ]

    @staticmethod
    def _summary(
        study: Study,
        latest: ReportVersion | None,
        job: tuple[str, str | None] | None,
        open_proposals: int,
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
                reason = job_error or "no reason recorded"
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
        )

    # ------------------------------------------------------------------ one study
    def study_detail(self, reader: Reader, study_uid: str) -> StudyDetail:
        """Report, version history, dialog, proposals and images of one study.

        Raises
        ------
        StudyNotFoundError
            For an unknown study.
        """
        with self._audited(reader, "view_study", study_uid) as note:
            study = self._study(study_uid)
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
        latest = history[-1] if history else None
        versions = [
            self._version_out(version, by_number.get(version.version - 1))
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
            ),
            patient=self._patient(latest),
            current=versions[-1] if versions else None,
            versions=versions,
            messages=[self._message_out(message) for message in messages],
            proposals=[
                self._proposal_out(
                    p, by_number.get(p.based_on_version), latest, instructions.get(p.id)
                )
                for p in proposals
            ],
            images=[
                ImageOut(id=row.id, modality=row.modality, view_position=row.view_position)
                for row in self._image_instances(study.id)
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

    # ------------------------------------------------------------------ conversions
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

    def _version_out(self, version: ReportVersion, previous: ReportVersion | None) -> VersionOut:
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
    def _message_out(message: DialogMessage) -> MessageOut:
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

    def _proposal_out(
        self,
        proposal: Proposal,
        base: ReportVersion | None,
        latest: ReportVersion | None,
        instruction: str | None = None,
    ) -> ProposalOut:
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
        study = self._study(study_uid)
        for row in self._image_instances(study.id):
            if row.id == instance_id:
                return self.settings.storage.spool_dir / row.path
        raise NotFoundError(f"the study has no image {instance_id}")

    def image_info(self, study_uid: str, instance_id: int) -> ImageInfo:
        """Window defaults and value range of one image."""
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

    # ------------------------------------------------------------------ dialog turns
    def prepare_turn(
        self, reader: Reader, study_uid: str, text: str, intent: Intent = "auto"
    ) -> PreparedTurn:
        """Check a message and classify it; nothing is written unless it is refused (audit).

        Raises
        ------
        StudyNotFoundError
            For an unknown study (404).
        InvalidInputError
            For an empty message (422).
        PayloadTooLargeError
            For a message over ``api.max_message_chars`` (413).
        NoReportError
            When the study has no report version yet (409).
        ConflictError
            For a revision request on a signed-off report (409).
        """
        with self._audited(reader, "post_message", study_uid, record_success=False) as note:
            study = self._study(study_uid)
            note.study_id = study.id
            message = text.strip()
            if not message:
                raise InvalidInputError("the message is empty")
            limit = self.settings.api.max_message_chars
            if len(message) > limit:
                raise PayloadTooLargeError(
                    f"the message has {len(message)} characters; the limit is {limit}"
                )
            kind = classify_message(message, intent)
            latest = self._latest(study.id)
            if kind is not MessageKind.QUESTION:
                self._check_open_for_changes(latest)
            return PreparedTurn(reader, study.id, study_uid, message, kind, latest.version)

    def _model(self) -> ChestXrayVLM:
        from dicom_node.models.readiness import ModelNotReadyError
        from inference import BundleError, InferenceError
        from inference.selftest import SelfTestError

        try:
            return self._model_provider()
        except ModelNotReadyError as exc:
            raise ModelUnavailableError(f"{exc}; try again later") from exc
        except SelfTestError as exc:
            raise ModelUnavailableError(
                f"the model failed its self-test ({exc.check}); see the node's log"
            ) from exc
        except (BundleError, InferenceError) as exc:
            logger.error("the model bundle cannot be loaded: %s", exc)
            raise ModelUnavailableError("the model cannot be loaded; see the node's log") from exc

    def _history(self, study_id: int, version: int) -> list[Turn]:
        from inference import Turn

        turns = self.settings.api.history_turns
        if turns == 0:
            return []
        with self.db.session() as session:
            messages = list(
                session.scalars(
                    select(DialogMessage)
                    .where(
                        DialogMessage.study_id == study_id,
                        DialogMessage.based_on_version == version,
                    )
                    .order_by(DialogMessage.id)
                )
            )
        pairs: list[tuple[str, str]] = []
        pending: str | None = None
        for message in messages:
            if message.role is MessageRole.USER:
                pending = message.text
            elif pending is not None:
                pairs.append((pending, message.text or "-"))
                pending = None
        history: list[Turn] = []
        for question, answer in pairs[-turns:]:
            history.extend([Turn("user", question), Turn("assistant", answer)])
        return history

    def run_turn(
        self, turn: PreparedTurn, on_text: Callable[[str], None] | None = None
    ) -> TurnResult:
        """Let the model answer or propose a revision, then store the exchange.

        Runs the model (call it from :attr:`model_executor`, not from an event loop).

        Parameters
        ----------
        turn
            From :meth:`prepare_turn`.
        on_text
            Called with each piece of generated text as it appears (control characters
            removed).

        Returns
        -------
        TurnResult
            The stored message, the model's answer and, for a revision request, the
            proposal with its diff against the current version.

        Raises
        ------
        ModelUnavailableError
            When the bundle cannot be loaded or the images cannot be analysed (503).
        ModelOutputError
            When a revision has an empty findings or impression section (502); nothing is
            stored.
        """

        with self._audited(turn.reader, "post_message", turn.study_uid) as note:
            note.study_id = turn.study_id
            history_rows = version_history(self.db, turn.study_id)
            base = next((v for v in history_rows if v.version == turn.based_on_version), None)
            if base is None:
                raise NoReportError(f"report version {turn.based_on_version} is gone")
            # The images the draft job gives the model, by the same rule.
            images = model_images(self._image_instances(turn.study_id))
            paths = [self.settings.storage.spool_dir / row.path for row in images]
            if not paths:
                raise ConflictError("the study has no frontal CR/DX chest image in the spool")
            history = self._history(turn.study_id, turn.based_on_version)
            context = report_context(base.findings_text, base.impression_text, turn.kind)
            model = self._model()
            key = (id(model), model.name, model.version, turn.study_uid, tuple(map(str, paths)))
            pieces: list[str] = []
            try:
                # ONNX Runtime sessions may run concurrently; generation holds the LLM's own
                # lock (LanguageModel.adapter), shared with the draft jobs of this process.
                analysis = self._analyses.get(key, lambda: model.analyse(paths))
                listed = prompt_findings(
                    findings_from_json(base.findings_json), turn.kind, turn.text
                )
                for piece in model.stream_chat(
                    analysis, context, history, turn.text, indication=base.indication,
                    findings=listed,
                ):
                    pieces.append(piece)
                    if on_text is not None:
                        on_text(clean_generated(piece, strip=False))
                if turn.kind is MessageKind.CORRECTION:
                    pieces = self._checked_correction(
                        model, analysis, base.indication, listed, turn.text, pieces, on_text
                    )
            except ApiError:
                raise
            except Exception as exc:  # noqa: BLE001 - a model failure is a 503 with its type
                logger.error(
                    "the model failed on study %s: %s",
                    uid_digest(turn.study_uid), describe_exception(exc), exc_info=True,
                )
                raise ModelUnavailableError(
                    f"the model cannot process the study ({type(exc).__name__}); see the "
                    "node's log"
                ) from exc
            answer = clean_generated("".join(pieces))
            proposal: Proposal | None = None
            if turn.kind is not MessageKind.QUESTION:
                findings_text, impression_text = parse_revision(
                    answer, turn.kind, base.findings_text, base.impression_text
                )
                if not findings_text or not impression_text:
                    raise ModelOutputError(
                        "the model's revision has an empty findings or impression section; "
                        "nothing was stored, please rephrase"
                    )
                # A correction's statements are the reader's choices; every proposal's other
                # codes follow its own text.
                records = code_findings(
                    findings_text, impression_text,
                    previous=findings_from_json(base.findings_json),
                    choices=correction_choices(turn.text)
                    if turn.kind is MessageKind.CORRECTION else None,
                    reader=turn.reader.display_name,
                )
                proposal = Proposal(
                    study_id=turn.study_id,
                    kind=turn.kind,
                    based_on_version=base.version,
                    findings_text=findings_text,
                    impression_text=impression_text,
                    findings_json=findings_to_json(records),
                    status=ProposalStatus.OPEN,
                    requested_by=turn.reader.name,
                    created_at=_now(),
                )
            now = _now()
            with self.db.session() as session:
                asked = DialogMessage(
                    study_id=turn.study_id, role=MessageRole.USER, kind=turn.kind,
                    text=turn.text, based_on_version=base.version, author=turn.reader.name,
                    created_at=now,
                )
                session.add(asked)
                if proposal is not None:
                    session.add(proposal)
                    session.flush()
                answered = DialogMessage(
                    study_id=turn.study_id, role=MessageRole.ASSISTANT, kind=turn.kind,
                    text=answer, based_on_version=base.version, author=None,
                    created_at=now, proposal_id=None if proposal is None else proposal.id,
                )
                session.add(answered)
                session.flush()
                for row in (asked, answered) + (() if proposal is None else (proposal,)):
                    session.expunge(row)
            note.detail = f"{turn.kind.value} " + (
                "answered" if proposal is None else f"proposal {proposal.id}"
            )
            latest = history_rows[-1]
            return TurnResult(
                kind=turn.kind,
                message=self._message_out(asked),
                answer=self._message_out(answered),
                proposal=None
                if proposal is None
                else self._proposal_out(proposal, base, latest, turn.text),
            )

    @staticmethod
    def _checked_correction(
        model: ChestXrayVLM,
        analysis: StudyAnalysis,
        indication: str | None,
        listed: Sequence[str],
        instruction: str,
        pieces: list[str],
        on_text: Callable[[str], None] | None,
    ) -> list[str]:
        """The correction's text: the dialog answer, or a redraft where it does better.

        When the answer leaves a finding the reader stated unmet (still describes a denied
        one, or omits an asserted one), the report is redrafted from the corrected findings
        with the report adapter, and the redraft is proposed if it meets more of the
        statements (:func:`report_language.stated_findings.choose_correction`).
        """
        from report_language.stated_findings import choose_correction, unmet_statements

        answer = "".join(pieces)
        if not unmet_statements(answer, instruction):
            return pieces
        logger.info("correction answer left stated findings unmet: redrafting")
        if on_text is not None:
            on_text("\n\n[redrafting from the corrected findings]\n\n")
        _, stream = model.stream_report(analysis, indication, findings=listed)
        redraft: list[str] = []
        for piece in stream:
            redraft.append(piece)
            if on_text is not None:
                on_text(clean_generated(piece, strip=False))
        _, took_redraft = choose_correction(answer, "".join(redraft), instruction)
        return redraft if took_redraft else pieces

    # ------------------------------------------------------------------ new versions
    def accept(self, reader: Reader, study_uid: str, proposal_id: int) -> VersionResult:
        """Make an open proposal the next report version and send its SR to the PACS.

        Raises
        ------
        StudyNotFoundError, NotFoundError
            For an unknown study or proposal (404).
        ConflictError
            When the proposal is not open, or the report is signed off (409).
        StaleVersionConflict
            When the report changed since the proposal was made (409); nothing changes.
        """
        with self._audited(reader, "accept_proposal", study_uid) as note:
            study = self._study(study_uid)
            note.study_id = study.id
            proposal = self._proposal(study.id, proposal_id)
            if proposal.status is not ProposalStatus.OPEN:
                raise ConflictError(f"proposal {proposal_id} is already {proposal.status.value}")
            latest = self._latest(study.id)
            self._check_open_for_changes(latest)
            self._check_based_on(proposal.based_on_version, latest, f"proposal {proposal_id}")
            result = self._new_version(
                reader, study, latest, ReportKind.AMENDMENT, proposal.findings_text,
                proposal.impression_text, findings_from_json(proposal.findings_json),
            )
            with self.db.session() as session:
                session.execute(
                    update(Proposal)
                    .where(Proposal.id == proposal_id, Proposal.status == ProposalStatus.OPEN)
                    .values(
                        status=ProposalStatus.ACCEPTED, decided_by=reader.name,
                        decided_at=_now(), accepted_version=result.version.version,
                    )
                )
            note.status_code = 201
            note.detail = f"proposal {proposal_id} -> version {result.version.version}"
            note.code_changes = _code_changes(
                result.version.version, findings_from_json(latest.findings_json),
                findings_from_json(proposal.findings_json),
            )
            return result

    def reject(self, reader: Reader, study_uid: str, proposal_id: int) -> ProposalOut:
        """Close an open proposal without changing the report.

        Raises
        ------
        StudyNotFoundError, NotFoundError
            For an unknown study or proposal (404).
        ConflictError
            When the proposal is not open (409).
        """
        with self._audited(reader, "reject_proposal", study_uid) as note:
            study = self._study(study_uid)
            note.study_id = study.id
            proposal = self._proposal(study.id, proposal_id)
            if proposal.status is not ProposalStatus.OPEN:
                raise ConflictError(f"proposal {proposal_id} is already {proposal.status.value}")
            with self.db.session() as session:
                changed = session.execute(
                    update(Proposal)
                    .where(Proposal.id == proposal_id, Proposal.status == ProposalStatus.OPEN)
                    .values(
                        status=ProposalStatus.REJECTED, decided_by=reader.name,
                        decided_at=_now(),
                    )
                )
                if not getattr(changed, "rowcount", 1):
                    raise ConflictError(f"proposal {proposal_id} was decided meanwhile")
            note.detail = f"proposal {proposal_id} rejected"
            history = version_history(self.db, study.id)
            by_number = {v.version: v for v in history}
            return self._proposal_out(
                self._proposal(study.id, proposal_id),
                by_number.get(proposal.based_on_version),
                history[-1] if history else None,
            )

    def edit(
        self,
        reader: Reader,
        study_uid: str,
        based_on_version: int,
        findings_text: str,
        impression_text: str,
        findings: dict[str, str] | None = None,
        confirm: Sequence[str] = (),
    ) -> VersionResult:
        """Store the reader's own text as the next report version and send its SR.

        The codes follow the new text (:func:`~dicom_node.pipeline.finding_codes.code_findings`),
        except for the reader's choices: earlier ones, `findings` (label -> presence) and the
        labels in `confirm`, whose code the reader keeps against a text that reads otherwise.

        Raises
        ------
        StudyNotFoundError
            For an unknown study (404).
        InvalidInputError
            For an empty section, a text the SR cannot hold, or an unknown label (422).
        PayloadTooLargeError
            For a section over ``api.max_report_chars`` (413).
        StaleVersionConflict
            When `based_on_version` is not the latest version (409); nothing changes.
        """
        with self._audited(reader, "edit_report", study_uid) as note:
            study = self._study(study_uid)
            note.study_id = study.id
            new_findings, new_impression = findings_text.strip(), impression_text.strip()
            self._check_report_length(new_findings, new_impression)
            latest = self._latest(study.id)
            self._check_open_for_changes(latest)
            self._check_based_on(based_on_version, latest, "the edit")
            if not new_findings or not new_impression:
                raise InvalidInputError("the findings and the impression must not be empty")
            try:
                records = code_findings(
                    new_findings, new_impression,
                    previous=findings_from_json(latest.findings_json),
                    choices=findings, confirm=confirm, reader=reader.display_name,
                )
            except FindingChoiceError as exc:
                raise InvalidInputError(str(exc)) from exc
            result = self._new_version(
                reader, study, latest, ReportKind.EDIT, new_findings, new_impression, records
            )
            note.status_code = 201
            note.detail = f"version {result.version.version}"
            note.code_changes = _code_changes(
                result.version.version, findings_from_json(latest.findings_json), records
            )
            return result

    def _check_report_length(self, findings_text: str, impression_text: str) -> None:
        """Refuse a section over ``api.max_report_chars`` (413): the limit keeps SRs, the
        model's prompt and every diff shown with the study bounded."""
        limit = self.settings.api.max_report_chars
        for name, text in (("findings", findings_text), ("impression", impression_text)):
            if len(text) > limit:
                raise PayloadTooLargeError(
                    f"the {name} text has {len(text)} characters; the limit is {limit} "
                    "(api.max_report_chars)"
                )

    def sign_off(
        self,
        reader: Reader,
        study_uid: str,
        based_on_version: int,
        shown_sha256: str | None = None,
    ) -> VersionResult:
        """Sign the latest version off: a verified, complete SR naming the reader.

        With ``shown_sha256`` (the :func:`report_content_sha256` of what the confirmation
        showed), the sign-off goes through only when the SR would hold exactly that content.

        Raises
        ------
        ForbiddenError
            When the reader may not sign (403).
        StudyNotFoundError
            For an unknown study (404).
        ConflictError, StaleVersionConflict
            When the report is already signed off, or `based_on_version` is not the
            latest version (409); nothing changes.
        """
        with self._audited(reader, "sign_off", study_uid) as note:
            if not reader.may_sign:
                raise ForbiddenError("this user may not sign reports off")
            study = self._study(study_uid)
            note.study_id = study.id
            latest = self._latest(study.id)
            self._check_open_for_changes(latest)
            self._check_based_on(based_on_version, latest, "the sign-off")
            records = findings_from_json(latest.findings_json)
            disagreeing = disagreements(records)
            if disagreeing:
                raise FindingsDisagreeConflict(
                    f"the text and the codes disagree for {', '.join(disagreeing)}: choose for "
                    "each whether the code follows the text or stays as coded, then sign",
                    disagreeing,
                )
            if shown_sha256 is not None and shown_sha256 != report_content_sha256(
                latest.findings_text, latest.impression_text, records
            ):
                raise ConflictError(
                    "the report you were shown is not the one that would be signed; reload "
                    "the study and review it again"
                )
            result = self._new_version(
                reader, study, latest, ReportKind.SIGNOFF, latest.findings_text,
                latest.impression_text, findings_from_json(latest.findings_json),
                sign_off=True,
            )
            note.status_code = 201
            note.detail = f"version {result.version.version} signed"
            return result

    def add_addendum(
        self, reader: Reader, study_uid: str, based_on_version: int, text: str
    ) -> VersionResult:
        """Add an addendum to the signed report: a new verified SR that holds the signed
        report unchanged, every earlier addendum and this one, names the signed SR as its
        predecessor and the reader as its verifying observer (see docs/sr.md, Addenda).

        Raises
        ------
        ForbiddenError
            When the reader may not sign (403): an addendum is verified by its author.
        StudyNotFoundError
            For an unknown study (404).
        ConflictError, StaleVersionConflict
            When the report is not signed off yet, or `based_on_version` is not the latest
            version (409); nothing changes.
        InvalidInputError, PayloadTooLargeError
            For an empty text or one the SR cannot hold (422), or one over
            ``api.max_report_chars`` (413).
        """
        with self._audited(reader, "add_addendum", study_uid) as note:
            if not reader.may_sign:
                raise ForbiddenError("this user may not sign reports, nor addenda, off")
            study = self._study(study_uid)
            note.study_id = study.id
            addendum = text.strip()
            limit = self.settings.api.max_report_chars
            if len(addendum) > limit:
                raise PayloadTooLargeError(
                    f"the addendum has {len(addendum)} characters; the limit is {limit} "
                    "(api.max_report_chars)"
                )
            latest = self._latest(study.id)
            if latest.kind not in SIGNED_KINDS:
                raise ConflictError(
                    f"version {latest.version} is not signed off; change the report itself, "
                    "an addendum follows a signed report"
                )
            self._check_based_on(based_on_version, latest, "the addendum")
            if not addendum:
                raise InvalidInputError("the addendum must not be empty")
            signed = read_report_sr(self.settings.storage.reports_dir, latest)
            person = PersonInfo(reader.display_name, reader.organization, login_name=reader.name)
            try:
                sr = build_addendum_sr(
                    signed, addendum, person,
                    VerifierInfo(reader.display_name, reader.organization),
                )
            except (SRError, TypeError, ValueError) as exc:
                raise InvalidInputError(f"the addendum cannot be stored: {exc}") from exc
            result = self._store_and_send(
                reader, study, latest, ReportKind.ADDENDUM, sr, latest.findings_text,
                latest.impression_text, findings_from_json(latest.findings_json),
            )
            note.status_code = 201
            note.detail = f"version {result.version.version}: addendum to {latest.version}"
            return result

    def _new_version(
        self,
        reader: Reader,
        study: Study,
        latest: ReportVersion,
        kind: ReportKind,
        findings_text: str,
        impression_text: str,
        records: Sequence[FindingRecord],
        *,
        sign_off: bool = False,
    ) -> VersionResult:
        previous = read_report_sr(self.settings.storage.reports_dir, latest)
        person = PersonInfo(reader.display_name, reader.organization, login_name=reader.name)
        verifier = VerifierInfo(reader.display_name, reader.organization) if sign_off else None
        try:
            report = dataclasses.replace(
                read_report(previous),
                findings_text=findings_text,
                impression_text=impression_text,
                # A reader's choice is written as their observation (who chose it).
                findings=tuple(
                    Finding(
                        r.label, Presence(r.presence), r.probability,
                        observer=PersonInfo(r.chosen_by)
                        if r.source is FindingSource.READER and r.chosen_by else None,
                    )
                    for r in records
                ),
            )
            sr = build_amended_sr(previous, report, person, sign_off=verifier)
        except (SRError, TypeError) as exc:
            raise InvalidInputError(f"the report cannot be stored: {exc}") from exc
        return self._store_and_send(reader, study, latest, kind, sr, report.findings_text,
                                    report.impression_text, records)

    def _store_and_send(
        self,
        reader: Reader,
        study: Study,
        latest: ReportVersion,
        kind: ReportKind,
        sr: Dataset,
        findings_text: str,
        impression_text: str,
        records: Sequence[FindingRecord],
    ) -> VersionResult:
        """Keep `sr` as the version after `latest`, then queue it for the PACS."""
        destinations = self._destinations(study.id)
        try:
            row, outbox_ids = store_and_enqueue(
                self.db,
                self.settings.storage.reports_dir,
                self.settings.storage.outbox_dir,
                sr,
                destinations,
                kind=kind,
                findings_text=findings_text,
                impression_text=impression_text,
                findings=records,
                based_on=latest.version,
                indication=latest.indication,
                author=reader.name,
                model_name=latest.model_name,
                model_version=latest.model_version,
            )
        except StaleVersionError as exc:
            raise StaleVersionConflict(
                f"version {latest.version} is no longer the latest (now {exc.latest})",
                exc.latest,
            ) from exc
        if outbox_ids and not self._closed:
            self._delivery.submit(self._deliver, outbox_ids)
        return VersionResult(
            version=self._version_out(row, latest),
            destinations=destinations if outbox_ids else [],
        )

    def _deliver(self, outbox_ids: list[int]) -> None:
        try:
            report = deliver_items(self.settings, self.db, outbox_ids)
        except (NodeError, SQLAlchemyError, OSError) as exc:
            logger.warning(
                "SR delivery failed (%s); the node's delivery loop retries it",
                type(exc).__name__,
            )
            return
        logger.info(
            "SR delivery: %d sent, %d to retry, %d failed",
            report.count(DeliveryOutcome.SENT), report.count(DeliveryOutcome.RETRY),
            report.count(DeliveryOutcome.FAILED),
        )


__all__ = ["MODEL_THREADS", "DialogService", "ModelProvider", "PreparedTurn"]
