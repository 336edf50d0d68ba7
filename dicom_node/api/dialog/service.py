"""The amend dialog's entry point, independent of HTTP: :class:`DialogService`.

It composes the dialog's parts and forwards each operation to the one that does it:
:class:`~dicom_node.api.dialog.views.StudyViews` reads,
:class:`~dicom_node.api.dialog.turns.DialogTurns` runs the turns and rejects proposals,
:class:`~dicom_node.api.dialog.versions.ReportVersions` makes new versions; all of them
find rows through one :class:`~dicom_node.api.dialog.lookups.StudyLookups` and record
through one :class:`~dicom_node.api.dialog.audit.AuditLog`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from dicom_node.api._auth import Reader
from dicom_node.api._classify import Intent
from dicom_node.api._images import ImageRenderer
from dicom_node.api._schemas import (
    ImageInfo,
    PriorityOut,
    PriorStudyOut,
    ProposalOut,
    StudyDetail,
    StudySummary,
    TurnResult,
    VersionResult,
)
from dicom_node.api.dialog.audit import AuditLog
from dicom_node.api.dialog.lookups import StudyLookups
from dicom_node.api.dialog.priority import StudyPriority
from dicom_node.api.dialog.priors import PriorStudies
from dicom_node.api.dialog.turns import DialogTurns, ModelProvider, PreparedTurn
from dicom_node.api.dialog.versions import ReportVersions
from dicom_node.api.dialog.views import StudyViews
from dicom_node.settings import Settings
from dicom_node.store import Database


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
        self.images = ImageRenderer(max_image_bytes=settings.api.max_image_bytes)
        audit = AuditLog(db)
        lookups = StudyLookups(settings, db)
        self._views = StudyViews(settings, db, lookups, audit, self.images)
        self._turns = DialogTurns(settings, db, lookups, self._views, audit, model_provider)
        self._versions = ReportVersions(settings, db, lookups, self._views, audit)
        self._priority = StudyPriority(db, lookups, audit)
        self._priors = PriorStudies(settings, db, lookups)
        #: The vision side's results per study (the turns' cache).
        self._analyses = self._turns.analyses
        #: Runs dialog turns (model work) off the event loop.
        self.model_executor = self._turns.executor
        self._closed = False

    # ------------------------------------------------------------------ life cycle
    def close(self) -> None:
        """Wait for running dialog turns and SR deliveries, then stop their threads."""
        if self._closed:
            return
        self._closed = True
        # Deliveries first: from here on a version still being made (an edit, an accept) is
        # left to the node's delivery loop. Turns make no versions, so the order of the two
        # waits changes nothing else.
        self._versions.close()
        self._turns.close()

    # ------------------------------------------------------------------ reading
    def list_studies(self, *, drafted_only: bool = False, limit: int = 100) -> list[StudySummary]:
        """The studies, newest first, with their draft status
        (:meth:`StudyViews.list_studies <dicom_node.api.dialog.views.StudyViews.list_studies>`).
        """
        return self._views.list_studies(drafted_only=drafted_only, limit=limit)

    def study_detail(self, reader: Reader, study_uid: str) -> StudyDetail:
        """Report, version history, dialog, proposals and images of one study
        (:meth:`StudyViews.study_detail <dicom_node.api.dialog.views.StudyViews.study_detail>`).
        """
        return self._views.study_detail(reader, study_uid)

    def image_path(self, study_uid: str, instance_id: int) -> Path:
        """The spool file of one image of a study
        (:meth:`StudyViews.image_path <dicom_node.api.dialog.views.StudyViews.image_path>`).
        """
        return self._views.image_path(study_uid, instance_id)

    def priors(self, study_uid: str) -> list[PriorStudyOut]:
        """Earlier studies of the same patient with their images, newest first
        (:meth:`PriorStudies.priors <dicom_node.api.dialog.priors.PriorStudies.priors>`).
        """
        return self._priors.priors(study_uid)

    def image_info(self, study_uid: str, instance_id: int) -> ImageInfo:
        """Window defaults and value range of one image
        (:meth:`StudyViews.image_info <dicom_node.api.dialog.views.StudyViews.image_info>`).
        """
        return self._views.image_info(study_uid, instance_id)

    def set_urgent(self, reader: Reader, study_uid: str, urgent: bool) -> PriorityOut:
        """Mark a study urgent or normal; urgent studies head the worklist
        (:meth:`StudyPriority.set_urgent
        <dicom_node.api.dialog.priority.StudyPriority.set_urgent>`).
        """
        return self._priority.set_urgent(reader, study_uid, urgent)

    # ------------------------------------------------------------------ dialog turns
    def prepare_turn(
        self, reader: Reader, study_uid: str, text: str, intent: Intent = "auto"
    ) -> PreparedTurn:
        """Check a message and classify it; nothing is written unless it is refused
        (:meth:`DialogTurns.prepare_turn <dicom_node.api.dialog.turns.DialogTurns.prepare_turn>`).
        """
        return self._turns.prepare_turn(reader, study_uid, text, intent)

    def run_turn(
        self, turn: PreparedTurn, on_text: Callable[[str], None] | None = None
    ) -> TurnResult:
        """Let the model answer or propose a revision, then store the exchange; call it from
        :attr:`model_executor`
        (:meth:`DialogTurns.run_turn <dicom_node.api.dialog.turns.DialogTurns.run_turn>`).
        """
        return self._turns.run_turn(turn, on_text)

    def reject(self, reader: Reader, study_uid: str, proposal_id: int) -> ProposalOut:
        """Close an open proposal without changing the report
        (:meth:`DialogTurns.reject <dicom_node.api.dialog.turns.DialogTurns.reject>`).
        """
        return self._turns.reject(reader, study_uid, proposal_id)

    # ------------------------------------------------------------------ new versions
    def accept(self, reader: Reader, study_uid: str, proposal_id: int) -> VersionResult:
        """Make an open proposal the next report version and send its SR to the PACS
        (:meth:`ReportVersions.accept <dicom_node.api.dialog.versions.ReportVersions.accept>`).
        """
        return self._versions.accept(reader, study_uid, proposal_id)

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
        """Store the reader's own text as the next report version and send its SR
        (:meth:`ReportVersions.edit <dicom_node.api.dialog.versions.ReportVersions.edit>`).
        """
        return self._versions.edit(
            reader, study_uid, based_on_version, findings_text, impression_text, findings,
            confirm,
        )

    def sign_off(
        self,
        reader: Reader,
        study_uid: str,
        based_on_version: int,
        shown_sha256: str | None = None,
    ) -> VersionResult:
        """Sign the latest version off: a verified, complete SR naming the reader
        (:meth:`ReportVersions.sign_off <dicom_node.api.dialog.versions.ReportVersions.sign_off>`).
        """
        return self._versions.sign_off(reader, study_uid, based_on_version, shown_sha256)

    def add_addendum(
        self, reader: Reader, study_uid: str, based_on_version: int, text: str
    ) -> VersionResult:
        """Add an addendum to the signed report
        (:meth:`ReportVersions.add_addendum
        <dicom_node.api.dialog.versions.ReportVersions.add_addendum>`).
        """
        return self._versions.add_addendum(reader, study_uid, based_on_version, text)


__all__ = ["DialogService"]
