"""What every dialog operation reads first, and the rules a change is checked against.

:class:`StudyLookups` finds a study, its latest report version, a proposal, its image
instances and its PACS destinations, raising the API's 404/409 errors for what is missing;
:func:`check_open_for_changes` and :func:`check_based_on` refuse a change to a signed report
or to a version that is no longer the latest.
"""

from __future__ import annotations

from sqlalchemy import select

from dicom_node.api.errors import (
    ConflictError,
    NoReportError,
    NotFoundError,
    StaleVersionConflict,
    StudyNotFoundError,
)
from dicom_node.pipeline.local_study import FRONTAL_VIEWS
from dicom_node.pipeline.reports import latest_version
from dicom_node.settings import Settings
from dicom_node.store import (
    Database,
    Instance,
    Proposal,
    ProposalStatus,
    ReportKind,
    ReportVersion,
    Study,
)

#: Versions that are signed: their SR is VERIFIED and never changes; an addendum follows.
SIGNED_KINDS = frozenset({ReportKind.SIGNOFF, ReportKind.ADDENDUM})
#: SOP Class UID prefix of the structured reports (not rendered or analysed).
SR_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
#: Modalities of non-image instances.
NON_IMAGE_MODALITIES = frozenset({"SR", "KO", "PR", "DOC", "OT"})


def check_open_for_changes(latest: ReportVersion) -> None:
    """Refuse a change to a signed report.

    Parameters
    ----------
    latest
        The study's latest version.

    Raises
    ------
    ConflictError
        When `latest` is signed (409): only an addendum can follow.
    """
    if latest.kind in SIGNED_KINDS:
        raise ConflictError(
            f"the report is signed off (version {latest.version}); it cannot be changed, "
            "only an addendum can be added"
        )


def check_based_on(based_on: int, latest: ReportVersion, what: str) -> None:
    """Refuse a request based on a version that is no longer the latest.

    Parameters
    ----------
    based_on
        The version the request was made on.
    latest
        The study's latest version.
    what
        The request, as the error message names it (``"the edit"``, ``"proposal 3"``).

    Raises
    ------
    StaleVersionConflict
        When `based_on` is not `latest` (409).
    """
    if based_on != latest.version:
        raise StaleVersionConflict(
            f"{what} is based on version {based_on}, but the latest version is "
            f"{latest.version}",
            latest.version,
        )


class StudyLookups:
    """Reads one study's rows for the dialog's operations.

    Parameters
    ----------
    settings
        The node's settings (``[pacs]`` and the routing rules of the destinations).
    db
        The node's database.
    """

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db

    def study(self, study_uid: str) -> Study:
        """The study with this Study Instance UID (detached from its session).

        Raises
        ------
        StudyNotFoundError
            For an unknown study (404).
        """
        with self.db.session() as session:
            study = session.scalars(
                select(Study).where(Study.study_instance_uid == study_uid)
            ).first()
            if study is None:
                raise StudyNotFoundError("no such study")
            session.expunge(study)
            return study

    def latest(self, study_id: int) -> ReportVersion:
        """The study's latest report version.

        Raises
        ------
        NoReportError
            When the study has no version yet (409).
        """
        latest = latest_version(self.db, study_id)
        if latest is None:
            raise NoReportError("the study has no report yet (its draft is not written)")
        return latest

    def proposal(self, study_id: int, proposal_id: int) -> Proposal:
        """One proposal of the study (detached from its session).

        Raises
        ------
        NotFoundError
            When the study has no such proposal (404).
        """
        with self.db.session() as session:
            proposal = session.get(Proposal, proposal_id)
            if proposal is None or proposal.study_id != study_id:
                raise NotFoundError(f"the study has no proposal {proposal_id}")
            session.expunge(proposal)
            return proposal

    def open_proposal(self, study_id: int, proposal_id: int) -> Proposal:
        """One open proposal of the study, for a decision.

        Raises
        ------
        NotFoundError
            When the study has no such proposal (404).
        ConflictError
            When the proposal is already accepted or rejected (409).
        """
        proposal = self.proposal(study_id, proposal_id)
        if proposal.status is not ProposalStatus.OPEN:
            raise ConflictError(f"proposal {proposal_id} is already {proposal.status.value}")
        return proposal

    def image_instances(self, study_id: int) -> list[Instance]:
        """The study's image instances, frontal views first (no SRs, KOs, PRs, ...).

        Parameters
        ----------
        study_id
            The study's row id.

        Returns
        -------
        list of Instance
            Detached rows, in the order they were received within each group.
        """
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

    def destinations(self, study_id: int) -> list[str]:
        """The PACS destinations of the study's SRs: those routed for the AE that sent its
        first instance, or every configured PACS when the sender is unknown."""
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


__all__ = [
    "NON_IMAGE_MODALITIES",
    "SIGNED_KINDS",
    "SR_SOP_CLASS_PREFIX",
    "StudyLookups",
    "check_based_on",
    "check_open_for_changes",
]
