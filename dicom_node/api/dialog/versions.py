"""New report versions: accepted proposals, the reader's edits, sign-offs and addenda.

Each builds a new SR from the latest one (:func:`sr_templates.build_amended_sr`, or
:func:`sr_templates.build_addendum_sr` after a sign-off), so it names its predecessors,
stores it as the next report version and puts it in the outbox for the study's PACS
destinations (:func:`dicom_node.pipeline.reports.store_and_enqueue`); a background thread
sends it at once (:func:`dicom_node.pipeline.delivery.deliver_items`), and the node's
delivery loop retries what that thread could not send. A request based on a version that is
no longer the latest is refused (409) and changes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from pydicom.dataset import Dataset
from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError

from dicom_node.api._auth import Reader
from dicom_node.api._schemas import VersionResult
from dicom_node.api.dialog.audit import AuditLog, code_changes
from dicom_node.api.dialog.lookups import (
    SIGNED_KINDS,
    StudyLookups,
    check_based_on,
    check_open_for_changes,
)
from dicom_node.api.dialog.views import StudyViews, report_content_sha256
from dicom_node.api.errors import (
    ConflictError,
    FindingsDisagreeConflict,
    ForbiddenError,
    InvalidInputError,
    PayloadTooLargeError,
    StaleVersionConflict,
)
from dicom_node.errors import NodeError, StaleVersionError
from dicom_node.pipeline.delivery import DeliveryOutcome, deliver_items
from dicom_node.pipeline.finding_codes import FindingChoiceError, code_findings, disagreements
from dicom_node.pipeline.reports import (
    FindingRecord,
    FindingSource,
    findings_from_json,
    read_report_sr,
    store_and_enqueue,
)
from dicom_node.settings import Settings
from dicom_node.store import Database, Proposal, ProposalStatus, ReportKind, ReportVersion, Study
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

logger = logging.getLogger(__name__)


class ReportVersions:
    """Makes the study's next report version and sends its SR to the PACS.

    Parameters
    ----------
    settings
        The node's settings (``[api]`` limits, ``[storage]``, ``[pacs]``).
    db
        The node's database.
    lookups
        Finds the study, its latest version, its proposals and its destinations.
    views
        Maps the new version to the API's response model.
    audit
        Records each change, and each coded finding it changed.
    """

    def __init__(
        self,
        settings: Settings,
        db: Database,
        lookups: StudyLookups,
        views: StudyViews,
        audit: AuditLog,
    ) -> None:
        self.settings = settings
        self.db = db
        self.lookups = lookups
        self.views = views
        self.audit = audit
        self._delivery = ThreadPoolExecutor(1, "dicom-node-api-delivery")
        self._closed = False

    def close(self) -> None:
        """Send no new versions from here on (the node's delivery loop takes them), wait for
        the deliveries under way, then stop their thread."""
        self._closed = True
        self._delivery.shutdown(wait=True)

    # ------------------------------------------------------------------ requests
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
        with self.audit.audited(reader, "accept_proposal", study_uid) as note:
            study = self.lookups.study(study_uid)
            note.study_id = study.id
            proposal = self.lookups.open_proposal(study.id, proposal_id)
            latest = self.lookups.latest(study.id)
            check_open_for_changes(latest)
            check_based_on(proposal.based_on_version, latest, f"proposal {proposal_id}")
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
                        decided_at=datetime.now(UTC), accepted_version=result.version.version,
                    )
                )
            note.status_code = 201
            note.detail = f"proposal {proposal_id} -> version {result.version.version}"
            note.code_changes = code_changes(
                result.version.version, findings_from_json(latest.findings_json),
                findings_from_json(proposal.findings_json),
            )
            return result

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
        with self.audit.audited(reader, "edit_report", study_uid) as note:
            study = self.lookups.study(study_uid)
            note.study_id = study.id
            new_findings, new_impression = findings_text.strip(), impression_text.strip()
            self._check_report_length(new_findings, new_impression)
            latest = self.lookups.latest(study.id)
            check_open_for_changes(latest)
            check_based_on(based_on_version, latest, "the edit")
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
            note.code_changes = code_changes(
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

        With ``shown_sha256`` (the :func:`~dicom_node.api.dialog.views.report_content_sha256`
        of what the confirmation showed), the sign-off goes through only when the SR would
        hold exactly that content.

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
        with self.audit.audited(reader, "sign_off", study_uid) as note:
            if not reader.may_sign:
                raise ForbiddenError("this user may not sign reports off")
            study = self.lookups.study(study_uid)
            note.study_id = study.id
            latest = self.lookups.latest(study.id)
            check_open_for_changes(latest)
            check_based_on(based_on_version, latest, "the sign-off")
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
        with self.audit.audited(reader, "add_addendum", study_uid) as note:
            if not reader.may_sign:
                raise ForbiddenError("this user may not sign reports, nor addenda, off")
            study = self.lookups.study(study_uid)
            note.study_id = study.id
            addendum = text.strip()
            limit = self.settings.api.max_report_chars
            if len(addendum) > limit:
                raise PayloadTooLargeError(
                    f"the addendum has {len(addendum)} characters; the limit is {limit} "
                    "(api.max_report_chars)"
                )
            latest = self.lookups.latest(study.id)
            if latest.kind not in SIGNED_KINDS:
                raise ConflictError(
                    f"version {latest.version} is not signed off; change the report itself, "
                    "an addendum follows a signed report"
                )
            check_based_on(based_on_version, latest, "the addendum")
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

    # ------------------------------------------------------------------ the new SR
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
        destinations = self.lookups.destinations(study.id)
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
            version=self.views.version_out(row, latest),
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


__all__ = ["ReportVersions"]
